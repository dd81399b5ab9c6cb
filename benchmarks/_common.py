"""What the benchmark scripts share: fresh-process workers, hard-linked test files, the COG
header/tile boundary, the lab's servers and its indexing, runs of one mode and their median,
accounting of the range server's request log, and the report."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

REPO_ROOT = Path(__file__).resolve().parent.parent


# -- files -----------------------------------------------------------------------------------------


def link_file(master: Path, dst: Path) -> bool:
    """Make ``dst`` a hard link of ``master`` (a copy where hard links are not supported).

    Returns ``False`` when ``dst`` already is ``master``, ``True`` when it was (re)made.
    """
    if dst.exists():
        if os.path.samefile(dst, master):
            return False
        dst.unlink()
    try:
        os.link(master, dst)
    except OSError:  # file system without hard links: a copy costs disk, not correctness
        import shutil

        shutil.copyfile(master, dst)
    return True


def cog_params(
    version: dict, *, size: int, block: int, crs: str, origin: tuple[float, float], pixel: float, **extra
) -> dict:
    """What a benchmark's generated COGs depend on, the key of its COG cache: ``version`` (its
    own data version, first), the grid, the layout (Deflate, predictor 2, overviews), ``extra``,
    and GDAL's version (another GDAL may write other bytes)."""
    import rasterio

    return {
        **version,
        "size": size,
        "block": block,
        "crs": crs,
        "origin": list(origin),
        "pixel": pixel,
        "compress": "DEFLATE",
        "predictor": 2,
        "overviews": "AUTO",
        **extra,
        "gdal": rasterio.__gdal_version__,
    }


def first_tile_offsets(masters_dir: Path, names: set[str]) -> dict[str, int]:
    """Smallest tile offset of each master over all levels: bytes before it are the header."""
    import rasterio

    out = {}
    for name in sorted(names):
        path = masters_dir / name
        offsets = []
        with rasterio.open(path) as src:
            levels = len(src.overviews(1))
            offsets.append(int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1)))
        for lvl in range(levels):
            with rasterio.open(path, OVERVIEW_LEVEL=lvl) as src:
                offsets.append(int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1)))
        out[name] = min(o for o in offsets if o > 0)
    return out


# -- workers (each runs in a fresh process) -------------------------------------------------------


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB.

    ``VmHWM`` is the high-water mark of the current address space, so it starts afresh at
    ``exec``; ``ru_maxrss`` would carry over the RSS of the (big, data-generating) parent the
    worker was forked from. ``ru_maxrss`` is only the fallback where /proc is missing.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    scale = 1024.0 if sys.platform != "darwin" else 1024.0 * 1024.0  # KiB on Linux, B on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all threads, imports included)."""
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def run_worker(
    module: str,
    mode: str,
    spec: dict,
    workdir: Path,
    *,
    tag: str | None = None,
    what: str = "mode",
    env_extra: dict | None = None,
) -> dict:
    """Run ``python -m <module> --worker <mode> <spec> <out>`` in a fresh process; its result.

    ``tag`` (default: ``mode``) names the spec and result files and the messages; ``what``
    says what a tag is in the failure message. The result gets ``process_wall_seconds``.
    """
    tag = mode if tag is None else tag
    spec_path, out_path = workdir / f"{tag}.spec.json", workdir / f"{tag}.out.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if env_extra:
        env.update(env_extra)
    cmd = [sys.executable, "-m", module, "--worker", mode, str(spec_path), str(out_path)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not out_path.exists():
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"benchmark {what} {tag} failed (exit code {proc.returncode})")
    if proc.stderr.strip():
        # Warnings are fine, but keep them visible.
        sys.stderr.write(f"[{tag} stderr]\n{proc.stderr[-4000:]}\n")
    result = json.loads(out_path.read_text())
    result["process_wall_seconds"] = wall
    return result


def command_line(
    argv: list[str] | None,
    workers: dict[str, Callable[[dict], dict]] | Callable[[str, dict], dict],
    parse_args: Callable[[list[str]], argparse.Namespace],
) -> argparse.Namespace | None:
    """The start of every benchmark's ``main``: ``argv`` (``sys.argv[1:]`` when None) parsed by
    ``parse_args``, or None when it was a worker's (``--worker MODE SPEC OUT``), which has run:
    ``workers[MODE](spec)``, or ``workers(MODE, spec)`` when ``workers`` is one function."""
    if argv is None:
        argv = sys.argv[1:]
    work = workers if callable(workers) else (lambda mode, spec: workers[mode](spec))
    if serve_worker(argv, work):
        return None
    return parse_args(argv)


def serve_worker(argv: list[str], work: Callable[[str, dict], dict]) -> bool:
    """The worker side of :func:`run_worker`: when ``argv`` is ``--worker MODE SPEC OUT``, run
    ``work(MODE, spec)`` and write its result to ``OUT``. Returns whether it did."""
    if not argv or argv[0] != "--worker":
        return False
    mode, spec_path, out_path = argv[1:4]
    result = work(mode, json.loads(Path(spec_path).read_text()))
    Path(out_path).write_text(json.dumps(result))
    return True


# -- the lab: servers, index, runs -----------------------------------------------------------------


class Lab(NamedTuple):
    """A read benchmark's lab while it runs (:func:`lab`)."""

    module: str
    """The benchmark's module, whose workers (``--worker MODE``) the runs start."""
    workdir: Path
    """A temporary folder for the workers' specs and results (removed afterwards)."""
    workspace: Path
    """The collections' workspace, inside :attr:`workdir`."""
    srv: Any
    """The ``RangeServer`` serving the COGs, with the latency asked for."""
    items: list[dict]
    """The STAC items of the COGs, their hrefs on :attr:`srv`."""
    hrefs: list[str]
    """The URL of every file on :attr:`srv`, in the order of the names."""
    first_offset_by_name: dict[str, int]
    """Each file's first tile offset (:func:`first_tile_offsets`): where its header ends."""

    def index(self, dates: Sequence, message: str, **spec) -> dict:
        """:func:`indexed` for a benchmark that needs no STAC API afterwards; the build's result."""
        with indexed(self, dates, message, **spec) as (_, build):
            return build

    def run(self, mode: str, spec: dict, workload: str, i: int, repeat: int, env: dict | None = None) -> dict:
        """Run ``i`` (of ``repeat``) of ``workload`` in ``mode``: a fresh worker process
        (:func:`run_worker`, with ``env`` added to its environment) against a fresh request log.

        The result gets ``load_average`` (the 1-minute load just before the worker started) and
        ``traffic`` (:func:`account` of the requests the run made).
        """
        self.srv.reset_log()
        print(f"running {workload}/{mode} ({i + 1}/{repeat}) ...", flush=True)
        load = os.getloadavg()[0]
        run = run_worker(self.module, mode, spec, self.workdir, tag=f"{workload}-{mode}-{i}", what="run", env_extra=env)
        run["load_average"] = load
        run["traffic"] = account(settle(self.srv), self.first_offset_by_name)
        return run


@contextmanager
def lab(
    module: str,
    root: Path,
    names: Sequence[str],
    first_offset_by_name: dict[str, int],
    *,
    latency: float,
    make_items: Callable[[Sequence[str], Callable[[str], str]], list[dict]],
) -> Iterator[Lab]:
    """The files ``names`` under ``root`` served with ``latency`` seconds per request, their items
    (``make_items(names, url_for)``) and a temporary work folder named after ``module``."""
    from rasteret_pipelines_demo.range_server import RangeServer

    prefix = module.rsplit(".", 1)[-1] + "_"
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp, RangeServer(root, latency=latency) as srv:
        workdir = Path(tmp)
        hrefs = [srv.url_for(n) for n in names]
        items = make_items(names, srv.url_for)
        yield Lab(module, workdir, workdir / "workspace", srv, items, hrefs, first_offset_by_name)


@contextmanager
def indexed(lab: Lab, dates: Sequence, message: str, **spec) -> Iterator[tuple[Any, dict]]:
    """The lab's items behind a ``StacServer`` and indexed by the ``build`` worker of the lab's
    module (``build_collection`` over the dates, in a fresh process, after printing
    ``message``); yields the server and the build's result. ``spec`` goes to the worker too.

    Raises:
        SystemExit: the build failed, or indexed another number of items than ``dates``.
    """
    from rasteret_pipelines_demo.stac_server import StacServer

    with StacServer(lab.items) as stac:
        print(message, flush=True)
        build = run_worker(
            lab.module,
            "build",
            {
                "workspace": str(lab.workspace),
                "stac_url": stac.url,
                "date_range": [str(dates[0]), str(dates[-1])],
                **spec,
            },
            lab.workdir,
        )
        if build["failed"] or build["items"] != len(dates):
            raise SystemExit(f"FAILED: build indexed {build['items']} items, failures {build['failed']}")
        yield stac, build


def median_run(runs: Sequence[dict], key: str) -> dict:
    """The median run by ``key`` (the lower middle one of an even number)."""
    ordered = sorted(runs, key=lambda r: r[key])
    return ordered[(len(ordered) - 1) // 2]


# -- request log accounting -----------------------------------------------------------------------


@dataclass
class Traffic:
    requests: int = 0
    gets: int = 0
    heads: int = 0
    other: int = 0
    header_gets: int = 0
    ranged_gets: int = 0
    full_gets: int = 0
    bytes: int = 0


def settle(srv, timeout: float = 2.0) -> list:
    """The request log once it stopped growing (the worker has exited; stragglers get logged)."""
    deadline = time.monotonic() + timeout
    n = -1
    while time.monotonic() < deadline:
        records = list(srv.requests)
        if len(records) == n:
            return records
        n = len(records)
        time.sleep(0.1)
    return list(srv.requests)


def account(records, first_offset_by_name: dict[str, int]) -> Traffic:
    """Count a range server's request records; a *header GET* is a GET without a range or whose
    range starts before the file's first tile (``first_offset_by_name``, by file name)."""
    t = Traffic()
    for r in records:
        t.requests += 1
        t.bytes += int(r.bytes_sent or 0)
        method = str(r.method).upper()
        if method == "HEAD":
            t.heads += 1
            continue
        if method != "GET":
            t.other += 1
            continue
        t.gets += 1
        name = os.path.basename(str(r.path).split("?", 1)[0])
        limit = first_offset_by_name.get(name, 1)
        if r.range is None:
            t.full_gets += 1
            t.header_gets += 1
        else:
            t.ranged_gets += 1
            if int(r.range[0]) < limit:
                t.header_gets += 1
    return t


# -- report ---------------------------------------------------------------------------------------


def add_lab_arguments(p, *, seed_help: str | None, repeat_default: int, repeat_help: str, fields: bool = True) -> None:
    """The options every read benchmark shares: the lab (scenes, fields unless ``fields`` is
    False, latency, COG cache), the rasterio baseline's threads, repetitions, JSON output and
    --strict."""
    from benchmarks.bench_cog import DEFAULT_DATA_DIR

    p.add_argument("--scenes", type=int, default=20, help="scenes (x2 bands = files); default 20")
    if fields:
        p.add_argument("--fields", type=int, default=100, help="polygons of the fields workload; default 100")
    p.add_argument("--seed", type=int, default=7, help=seed_help)
    p.add_argument("--latency", type=float, default=0.05, help="seconds per request; default 0.05")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="bench_cog's COG cache")
    p.add_argument("--variants", type=int, default=4, help="distinct images per band (bench_cog); default 4")
    p.add_argument("--threads", type=int, default=8, help="threads of the rasterio baseline; default 8")
    p.add_argument("--repeat", type=int, default=repeat_default, help=repeat_help)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")


def write_json(path: Path, report: dict, note_prefix: str = "") -> None:
    """Write ``report`` to ``path`` (indented) and say so, after ``note_prefix``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"{note_prefix}wrote {path}")


def print_table_head(head: str) -> None:
    """A table's column heads and a rule as wide."""
    print(head)
    print("-" * len(head))


def print_targets(targets: dict[str, bool]) -> None:
    """One ``PASS``/``MISS`` line per target, after a blank line."""
    print()
    for name, ok in targets.items():
        print(f"  {'PASS' if ok else 'MISS'}  {name}")


def exit_status(strict: bool, targets: dict[str, bool]) -> int:
    """1 under ``--strict`` when a target is missed, else 0."""
    return 1 if strict and not all(targets.values()) else 0
