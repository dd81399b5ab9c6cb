"""Shared fixtures: a session-wide range-capable HTTP server over the test TIFFs.

``range_server`` serves one session temporary directory (``served_root``) holding

* ``tiff/...``: copies of the real fixture TIFFs from ``rasteret_pipelines_tests/data/tiff``
  (same sub-structure, see ``data/README.md`` for sources and licences), and
* ``cog/``: ``cog_dir``, where tests write generated COGs (``cog_factory.write_cog``).

Use ``served_url(path)`` (or ``range_server.url_for(path)``) with a path inside
``served_root`` to get its URL. Tests that change the server's latency or faults should use the
``clean_server`` fixture, which resets both (and the request log) around each test.
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from rasteret_pipelines_demo import RangeServer

T = TypeVar("T")

# --- the slow tier ---------------------------------------------------------------------------

SLOW: dict[str, str] = {
    # Node ids relative to rasteret_pipelines_tests/: a whole module, or one test (all its
    # parameters). Each is marked ``slow`` at collection, so ``pytest -m "not slow"`` (the
    # quick loop, CONTRIBUTING.md) leaves it out; ``.ci/run`` runs everything. Add an entry
    # when ``--durations=50`` shows a test among the slowest, with the reason.
    # Dagster layer: these build the demo world (a session fixture, tens of seconds) and run jobs on it
    "defs/test_automation.py": "sensors, schedules and automation ticks over Dagster runs on the demo world",
    "defs/test_bad_input.py": "Dagster runs that fail on purpose, on the demo world and moto",
    "defs/test_dagster_dev.py": "starts `dagster dev` (webserver and daemons) on PostgreSQL and backfills through the queue",
    "defs/test_demo.py": "runs the demo command and `rasteret-pipelines ui` (dg dev and the mirror it serves)",
    "defs/test_deprecations.py": "runs every job of the project and a schedule tick on the demo world, recording warnings",
    "defs/test_fields.py::test_5000_new_fields_become_requests_for_the_changed_groups_only": "5000 fields: collections runs and field-sensor ticks over them",
    "defs/test_fields.py::test_checks_are_declared_once_and_no_check_step_is_skipped": "collections and statistics runs over two months on the demo world",
    "defs/test_fields.py::test_the_same_assets_run_with_the_multiprocess_executor": "a Dagster run with the multiprocess executor: a child process per step",
    "defs/test_fields.py::test_time_series_automation_starts_a_bounded_number_of_runs": "400 fields: collections, statistics and time-series runs between automation evaluations",
    "defs/test_keys.py::test_a_dynamic_key_with_dotdot_is_refused_and_writes_nothing_outside": "a Dagster run on the demo world",
    "defs/test_materialize.py": "materialises collections, NDVI and time series over partitions (local and moto S3)",
    "defs/test_notebook.py": "runs the quick-start notebook in a Jupyter kernel",
    "defs/test_quickstart_offline.py": "runs `rasteret-pipelines demo --serve` and the README quick start in subprocesses",
    "defs/test_retries.py": "Dagster runs with retry policies and injected faults on the demo world",
    "defs/test_scale.py": "many AOIs and months: batched Dagster runs and sensors at scale",
    # the library
    "cog/test_fuzz.py": "fuzzing: 700 mutated COGs, each read and compared with GDAL",
    "reading/test_zonal.py::test_every_statistic_equals_rasterio_on_hard_fields": "every statistic of hard fields, against rasterio, on the big world",
    "reading/test_zonal.py::test_cloud_mask_and_raw_band_statistics": "zonal statistics of every field and date of the big world, twice",
    "reading/test_zonal.py::test_same_day_scenes_on_shifted_grids_are_mosaicked_first_valid": "every statistic of the hard fields plus a diagonal of extra ones, against a rasterio mosaic",
    "reading/test_zonal.py::test_memory_does_not_grow_with_dates_when_written_to_a_file": "traces memory through every date of the world, one date in flight",
    "reading/test_read.py::test_a_read_of_shapely_polygons_in_a_fresh_process_needs_neither_gdal_nor_geopandas": "a fresh interpreter imports the package and reads",
    "reading/test_read_limits.py::test_a_polygon_larger_than_a_scene_is_refused_before_any_request": "plans a polygon larger than a scene over every date of the world",
    "reading/test_cube.py::test_lazy_cube_on_a_cluster_equals_the_eager_read_without_refetching_tiles": "starts a dask LocalCluster of two worker processes",
    "reading/test_cube.py::test_a_cube_larger_than_the_workers_memory_is_reduced_in_bounded_memory": "a 2.1 GB cube over whole scenes on a dask LocalCluster of two worker processes",
}
"""The slow tests: ``{node id below rasteret_pipelines_tests/: reason}`` (reviewed; see above)."""


def slow_reason(nodeid: str) -> str | None:
    """The :data:`SLOW` reason of a collected test (``rasteret_pipelines_tests/...`` node id), if any."""
    relative = nodeid.removeprefix("rasteret_pipelines_tests/")
    bare = relative.split("[", 1)[0]
    for entry, reason in SLOW.items():
        if bare == entry or (entry.endswith(".py") and bare.startswith(entry + "::")):
            return reason
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test listed in :data:`SLOW` with ``pytest.mark.slow``."""
    for item in items:
        if slow_reason(item.nodeid) is not None:
            item.add_marker(pytest.mark.slow)


# --- fixtures --------------------------------------------------------------------------------

DATA_DIR = Path(__file__).parent / "data"
TIFF_DIR = DATA_DIR / "tiff"
STAC_DIR = DATA_DIR / "stac"
MANIFEST = DATA_DIR / "MANIFEST.sha256"
"""Every committed fixture under ``data/`` (``sha256sum`` format), checked by ``test_fixtures.py``."""


def committed_fixtures(under: str = "") -> list[Path]:
    """The committed fixture files below ``data/<under>`` as absolute paths (sorted), read from
    :data:`MANIFEST` instead of the disk: a missing file fails the tests that use it instead of
    silently dropping out of their parametrisation."""
    prefix = f"{under.strip('/')}/" if under else ""
    paths = [line.split("  ", 1)[1] for line in MANIFEST.read_text().splitlines() if line.strip()]
    found = sorted(DATA_DIR / p for p in paths if p.startswith(prefix))
    if not found:
        raise FileNotFoundError(f"no committed fixture below {DATA_DIR / under} in {MANIFEST}")
    return found


def fixture_tiffs() -> list[Path]:
    """Every real fixture TIFF, as paths relative to ``data/tiff`` (sorted)."""
    return [p.relative_to(TIFF_DIR) for p in committed_fixtures("tiff") if p.suffix.lower() in (".tif", ".tiff")]


def shared_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """``<name>`` in the folder every xdist worker of this run shares (the session's base
    temporary folder without xdist), for data that :func:`build_once` writes for all of them."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # pytest-of-<user>/pytest-<n>/popen-gw<i>: the run's folder is the parent
    return base / name


def build_once(folder: Path, build: Callable[[Path], object]) -> Path:
    """``build(folder)`` once per test run, for every xdist worker, and ``folder``.

    The first worker builds under an exclusive lock while the others wait, then they reuse what
    it wrote: a session fixture's data (a world of COGs) is written once instead of once per
    worker. A folder without its completion marker (a build that failed) is built again from
    empty. What ``build`` writes is shared: tests must only read it.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        done = folder / ".built"
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def served_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Session directory served over HTTP: ``tiff/`` (fixture copies) and ``cog/``."""
    root = tmp_path_factory.mktemp("served")
    shutil.copytree(TIFF_DIR, root / "tiff")
    (root / "cog").mkdir()
    return root


@pytest.fixture(scope="session")
def cog_dir(served_root: Path) -> Path:
    """Directory (served over HTTP) for COGs generated during the session."""
    return served_root / "cog"


@pytest.fixture(scope="session")
def served_tiff_dir(served_root: Path) -> Path:
    """The served copies of the fixture TIFFs (``data/tiff`` structure)."""
    return served_root / "tiff"


@pytest.fixture(scope="session")
def range_server(served_root: Path) -> Iterator[RangeServer]:
    """One :class:`RangeServer` for the whole session, serving ``served_root``."""
    with RangeServer(served_root) as srv:
        yield srv


@pytest.fixture
def clean_server(range_server: RangeServer) -> Iterator[RangeServer]:
    """The session server with no latency, no faults and an empty log (restored afterwards)."""
    range_server.latency = 0.0
    range_server.faults = None
    range_server.reset_log()
    yield range_server
    range_server.latency = 0.0
    range_server.faults = None
    range_server.reset_log()


@pytest.fixture(scope="session")
def served_url(range_server: RangeServer) -> Callable[[Path | str], str]:
    """``served_url(path)``: URL of a file given its absolute path inside ``served_root``
    (or its path relative to it)."""
    return range_server.url_for


@pytest.fixture
def server_waits(monkeypatch) -> Iterator[list[float]]:
    """The injected latencies the demo servers (``RangeServer``, ``StacServer``) await, in order,
    recorded where they await them (``asyncio.sleep`` in ``rasteret_pipelines_demo._server``), so
    a test checks that a latency is applied by the waits, never by a clock."""
    import asyncio

    from rasteret_pipelines_demo import _server

    waits: list[float] = []

    class RecordingAsyncio:
        def __getattr__(self, name: str):
            return getattr(asyncio, name)

        @staticmethod
        async def sleep(delay: float, result=None):
            waits.append(delay)
            return await asyncio.sleep(delay, result)

    monkeypatch.setattr(_server, "asyncio", RecordingAsyncio())
    yield waits


def wait_until(
    ready: Callable[[], T | None],
    *,
    process: subprocess.Popen | None = None,
    log: Callable[[], str] = lambda: "",
    interval: float = 0.2,
) -> T:
    """Poll ``ready()`` until it returns a true value, and return that value.

    Fails as soon as ``process`` (if given) has exited, with ``log()``. There is no deadline on
    purpose: how fast something comes up never decides a test. A hang is stopped by the test's
    ``pytest-timeout``, and ``log()`` is printed then too (the test's captured output).
    """
    try:
        while not (value := ready()):
            assert process is None or process.poll() is None, f"exited with {process.returncode}:\n{log()}"
            time.sleep(interval)
        return value
    except BaseException:
        print(log())
        raise


def count_calls(monkeypatch: pytest.MonkeyPatch, targets) -> Counter:
    """Wrap each ``(module, function name)`` of ``targets`` so that its calls are counted by
    name in the Counter returned; each wrapped function still does its work."""
    calls: Counter = Counter()
    for module, name in targets:
        real = getattr(module, name)

        @functools.wraps(real)
        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    return calls


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def moto_s3(monkeypatch, tmp_path) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 with empty state; the AWS environment points at it.

    Yields the endpoint URL. Credentials are test values set in the environment; no real AWS
    configuration file is read. moto keeps its state per process, so it is reset first.
    """
    import urllib.request

    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=10)
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    try:
        yield endpoint
    finally:
        server.stop()
