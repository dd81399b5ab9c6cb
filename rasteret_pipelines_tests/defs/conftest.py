"""The Dagster project against the offline demo world, served on 127.0.0.1.

The world (two months, two Sentinel-2 scenes each, on the real 43PGQ grid) is written once per
session (about 20 s: the COG writing dominates, the grid size barely matters since the quick
start's AOIs sit near the tile's centre) and served by a :class:`DemoMirror` on free ports.
"""

import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from rasteret_pipelines.defs import build_definitions
from rasteret_pipelines.defs.aois import load_aois, write_aois_geojson
from rasteret_pipelines.defs.settings import Settings
from rasteret_pipelines.demo import DemoMirror, prepare_world
from rasteret_pipelines.mirror.demo_data import QUICKSTART_AOIS

REPO = Path(__file__).resolve().parents[2]
MONTHS = ("2024-01", "2024-02")
AOIS = {str(k): v for k, v in QUICKSTART_AOIS.items()}

warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory) -> Path:
    """A demo world folder (``world.json`` + COGs) for :data:`MONTHS`."""
    folder = tmp_path_factory.mktemp("demo_world")
    prepare_world(folder, MONTHS, log=None)
    return folder


@pytest.fixture(scope="session")
def mirror(demo_world) -> Iterator[DemoMirror]:
    """The world served on free ports (STAC API and COG server) for the whole session."""
    with DemoMirror(demo_world, port=0) as m:
        yield m


@pytest.fixture
def clean_mirror(mirror) -> Iterator[DemoMirror]:
    """The session mirror with empty request logs, no faults, and its items restored after."""
    items = mirror.stac.items
    for server in (mirror.stac, mirror.cogs):
        server.reset_log()
        server.faults = None
    yield mirror
    original = {(i["collection"], i["id"]) for i in items}
    for item in mirror.stac.items:
        if (item["collection"], item["id"]) not in original:
            mirror.stac.remove_item(item["collection"], item["id"])
    for item in items:
        if mirror.stac.get_item(item["collection"], item["id"]) is None:
            mirror.stac.add_items([item])
        else:
            mirror.stac.replace_item(item)
    for server in (mirror.stac, mirror.cogs):
        server.faults = None


@dataclass
class Project:
    """Definitions over a temporary storage location, and what they were built from."""

    defs: dg.Definitions
    settings: Settings
    storage: str
    aoi_file: str
    instance: dg.DagsterInstance

    @property
    def resources(self) -> dict:
        return self.defs.resources

    def assets(self):
        return list(self.defs.assets or []) + list(self.defs.asset_checks or [])

    def job(self, name: str):
        return self.defs.resolve_job_def(name)

    def run(self, job_name: str, partition_key, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        return self.job(job_name).execute_in_process(
            instance=self.instance, partition_key=str(partition_key), raise_on_error=raise_on_error
        )

    def run_range(self, job_name: str, first: str, last: str, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        """One run over the partitions ``first..last`` (what a backfill's multi-partition run does)."""
        return self.job(job_name).execute_in_process(
            instance=self.instance, raise_on_error=raise_on_error,
            tags={"dagster/asset_partition_range_start": str(first), "dagster/asset_partition_range_end": str(last)},
        )

    def register_aois(self, ids=None) -> None:
        ids = list(ids or load_aois(self.aoi_file).ids)
        known = set(self.instance.get_dynamic_partitions("aoi"))
        new = [i for i in ids if i not in known]
        if new:
            self.instance.add_dynamic_partitions("aoi", new)


def make_project(
    storage: str,
    stac_url: str,
    aoi_file: str,
    *,
    instance: dg.DagsterInstance | None = None,
    start_month: str = "2024-01",
    aois: dict | None = None,
    extra: dict | None = None,
) -> Project:
    """Definitions reading from ``stac_url`` and writing to ``storage`` (folder or s3://)."""
    if aois is not False:
        write_aois_geojson(aois or AOIS, aoi_file)
    env = {
        "RASTERET_STORAGE": storage,
        "RASTERET_AOI_FILE": aoi_file,
        "RASTERET_STAC_URL": stac_url,
        "RASTERET_START_MONTH": start_month,
        "RASTERET_TRANSIENT_RETRIES": "0",
        "RASTERET_TRANSIENT_RETRY_SECONDS": "0.1",
        "RASTERET_HTTP_MAX_RETRIES": "1",
        **(extra or {}),
    }
    settings = Settings.from_env(env)
    return Project(
        defs=build_definitions(settings),
        settings=settings,
        storage=storage,
        aoi_file=aoi_file,
        instance=instance or dg.DagsterInstance.ephemeral(),
    )


def local_instance(home: Path) -> dg.DagsterInstance:
    """A SQLite instance in ``home`` configured by the repository's dagster.yaml."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    return dg.DagsterInstance.local_temp(str(home))


@pytest.fixture
def project(tmp_path, clean_mirror) -> Project:
    """Local storage under ``tmp_path``, the quick start's AOIs registered, a SQLite instance
    (sensors resolving dynamic partitions need an instance reference, as in the daemon)."""
    p = make_project(str(tmp_path / "data"), clean_mirror.stac_url, str(tmp_path / "aois.geojson"),
                     instance=local_instance(tmp_path / "dagster_home"))
    p.register_aois()
    return p


def failure_messages(result: dg.ExecuteInProcessResult) -> str:
    """Every error message of the run's events (step and resource failures), joined: what the UI shows."""
    out = []
    for event in result.all_events:
        err = getattr(event.event_specific_data, "error", None)
        while err is not None:
            out.append(err.message)
            err = err.cause
    return "\n".join(out)


def file_digests(folder: str) -> dict[str, bytes]:
    """``{relative path: bytes}`` of every file below ``folder`` (to prove nothing changed)."""
    root = Path(folder)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
