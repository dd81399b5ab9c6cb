"""Fresh-process benchmark: from a new Python interpreter to an NDVI mean, imports included.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_fresh [--repeat 5] [--latency 0.05] [--json out.json]

What a container, a Lambda or a restarted kernel pays: every mode runs in its own new
interpreter, timed by the parent from just before the process is spawned to the moment the
worker has its answer (``time.time()`` on both sides; writing the result file afterwards is
not counted). Each worker also reports the time spent in its imports, so the table shows the
whole process and the work after imports. Runs are interleaved (round 1 of every mode, then
round 2, ...) and medians are reported, so a burst of load on this shared machine hits every
mode alike.

Data and servers are ``bench_read``'s: ``bench_cog``'s Sentinel-2-like COGs (20 scenes x red,
nir; 10980 px, 1024 px Deflate tiles) behind ``RangeServer`` with ``--latency`` per request,
Earth Search items behind ``StacServer``, and a collection built once by ``build_collection``
(not timed here; ``bench_read`` times it).

Modes:

``import``            ``from rasteret_pipelines import Rasteret, DataSources, save_per_geometry``
                      (in-process time of that statement; target <= 0.5 s). ``import-rasterio``
                      times ``import rasterio`` for scale.

For each workload (``quickstart``: the original quick start's two AOIs; ``fields``: 100
rotated 100-300 m rectangles over 20 km, ``bench_read``'s, both as lists of shapely
polygons in lon/lat, ids 1..n):

``engine``            ``from rasteret_pipelines import Rasteret``; ``Rasteret.load_collection``;
                      ``get_xarray(polygons, ["red", "nir"])`` (masked to pixel centres, float);
                      ``ndvi = (ds.nir - ds.red) / (ds.nir + ds.red)``; ``float(ndvi.mean())``.
``engine-windows``    the bare engine: ``rasteret_pipelines.cog.read_windows`` of the same pixel
                      windows (rasterio's ``geometry_window`` of each polygon) with headers from
                      JSON (``CogHeader.from_dict``); no mask, no NDVI: the floor for ``engine``.
``rasterio-8t``       ``rasterio.open("/vsicurl/...")`` + ``rasterio.mask.mask(src, [polygon],
                      crop=True)`` of every polygon, one dataset per file on a
                      ``ThreadPoolExecutor(8)`` with ``bench_cog``'s tuned GDAL settings, then the
                      same NDVI mean over the same pixels (numpy).

The engine's and rasterio's NDVI means must agree (to 1e-6: xarray averages float32, numpy's
side sums in float64) and count the same pixels, or the run fails. GETs and bytes come from the range server's log; peak RSS is the
worker's ``VmHWM``. Targets (from issue 12): import <= 0.5 s; whole process, engine vs
rasterio-8t: quickstart >= 2x, fields >= 3x; after imports >= 4x on both; engine within 1.3x
of engine-windows (``load_collection`` + ``get_xarray`` against ``read_windows``); GETs <= 40
(quickstart) and <= 120 (fields). Issue 20 (item 7): the quick start's read within 1.5x of
engine-windows, fields whole process >= 3x. Besides the medians of wall time, the table gives
the engine's time from ``get_xarray``'s return to the NDVI mean (``NDVI s``: xarray's first
arithmetic, which imports dask when it is installed) and each read's CPU time (all threads),
which a loaded machine inflates less than wall time.
"""

from __future__ import annotations

# Only the standard library at module level: a worker's clock starts with the interpreter.
import json
import os
import sys
import time
from pathlib import Path

WORKER_MODULE = "benchmarks.bench_fresh"
COLLECTION = "bench_read"
WORKLOADS = ("quickstart", "fields")
IMPORT_MODES = ("import", "import-rasterio")
READ_MODES = ("engine", "engine-windows", "rasterio-8t")
BASELINE = "rasterio-8t"
TARGET_IMPORT_S = 0.5
TARGET_WHOLE = {"quickstart": 2.0, "fields": 3.0}
TARGET_AFTER_IMPORTS = 4.0
TARGET_ENGINE_OVERHEAD = 1.3
TARGET_READ_VS_BARE = 1.5
"""Issue 20 item 7: the quick start's read (``read s``) at most this many times the bare engine's."""
TARGET_GETS = {"quickstart": 40, "fields": 120}


# -- workers (each in a fresh interpreter; the parent's clock started before the spawn) --------


def _cpu_seconds() -> float:
    """User + system CPU time of this process so far (all threads, imports included)."""
    import resource

    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def worker_import(spec: dict) -> dict:
    t0 = time.perf_counter()
    from rasteret_pipelines import DataSources, Rasteret, save_per_geometry  # noqa: F401

    seconds = time.perf_counter() - t0
    return {"t_end": time.time(), "import_seconds": seconds, "modules": sorted(sys.modules)}


def worker_import_rasterio(spec: dict) -> dict:
    t0 = time.perf_counter()
    import rasterio  # noqa: F401

    seconds = time.perf_counter() - t0
    return {"t_end": time.time(), "import_seconds": seconds, "modules": sorted(sys.modules)}


def worker_engine(spec: dict) -> dict:
    t_start = time.time()
    import shapely  # the user's polygons (the quick start builds them with shapely)

    # What the calls below load anyway (pyarrow, aiohttp, imagecodecs, pyproj), imported
    # here only to split the clock like the rasterio worker's imports; xarray (with pandas) is left to the
    # read, which imports it in the background once the last bytes have arrived.
    import rasteret_pipelines.collections.query  # noqa: F401
    import rasteret_pipelines.reading.read  # noqa: F401
    from rasteret_pipelines import Rasteret

    if spec.get("user_imports"):
        # --user-imports: what the README's quick start imports at its top, xarray included
        # (`import xarray as xr`), so its time falls before the read instead of inside it
        import xarray  # noqa: F401

    t_imports = time.time()
    cpu_imports = _cpu_seconds()
    polygons = [shapely.from_wkt(w) for w in spec["wkts"]]
    processor = Rasteret.load_collection(COLLECTION, spec["workspace"])
    t_load = time.time()
    ds = processor.get_xarray(geometries=polygons, bands=["red", "nir"])
    t_read = time.time()
    cpu_read = _cpu_seconds()
    ndvi = (ds.nir - ds.red) / (ds.nir + ds.red)
    mean = float(ndvi.mean())
    t_end = time.time()
    cpu = _cpu_seconds()
    count = int(ndvi.count())
    return {
        "t_start": t_start,
        "t_imports": t_imports,
        "t_load": t_load,
        "t_read": t_read,
        "t_end": t_end,
        "cpu_seconds": cpu,
        "cpu_imports": cpu_imports,
        "cpu_read": cpu_read,
        "ndvi_mean": mean,
        "pixels": count,
        "peak_rss_mb": _peak_rss_mb(),
        "modules": len(sys.modules),
    }


def worker_engine_windows(spec: dict) -> dict:
    t_start = time.time()
    from rasteret_pipelines.cog import CogHeader, read_windows

    t_imports = time.time()
    cpu_imports = _cpu_seconds()
    headers = [CogHeader.from_dict(d) for d in spec["headers"]]
    requests = [(h, w) for h in headers for w in spec["windows"]]
    arrays = read_windows(requests)
    t_end = time.time()
    cpu = _cpu_seconds()
    return {
        "t_start": t_start,
        "t_imports": t_imports,
        "t_read": t_end,
        "t_end": t_end,
        "cpu_seconds": cpu,
        "cpu_imports": cpu_imports,
        "cpu_read": cpu,
        "pixels": int(sum(a.size for a in arrays)),
        "peak_rss_mb": _peak_rss_mb(),
        "modules": len(sys.modules),
    }


def worker_rasterio(spec: dict) -> dict:
    t_start = time.time()
    import warnings
    from concurrent.futures import ThreadPoolExecutor, as_completed

    import numpy as np
    import rasterio
    import rasterio.mask
    import shapely
    from pyproj import Transformer

    t_imports = time.time()
    to_utm = Transformer.from_crs("EPSG:4326", spec["crs"], always_xy=True)
    shapes = [
        shapely.transform(shapely.from_wkt(w), lambda xy: np.column_stack(to_utm.transform(xy[:, 0], xy[:, 1])))
        for w in spec["wkts"]
    ]

    def read_file(href: str):
        # One dataset per task: rasterio datasets must not be shared between threads.
        with rasterio.open("/vsicurl/" + href) as src:
            out = []
            for g in shapes:
                arr, _ = rasterio.mask.mask(src, [g], crop=True, filled=False)
                out.append(np.ma.filled(arr[0].astype(np.float32), np.nan))
            return out

    # rasterio.mask warns (NotGeoreferencedWarning) for polygons over the file's nodata edge.
    warnings.filterwarnings("ignore", category=rasterio.errors.NotGeoreferencedWarning)
    partner = {}
    for red_href, nir_href in spec["pairs"]:
        partner[red_href], partner[nir_href] = nir_href, red_href
    nir_hrefs = {nir for _, nir in spec["pairs"]}
    total, count = 0.0, 0
    done: dict[str, list] = {}
    with rasterio.Env(), ThreadPoolExecutor(max_workers=int(spec["threads"])) as pool:
        futures = {pool.submit(read_file, href): href for href in spec["hrefs"]}
        # NDVI per (scene, polygon) as soon as both bands of the scene are in: no array waits
        # for the whole batch (this machine pages out memory idle for about a second).
        for future in as_completed(futures):
            href = futures[future]
            other = partner[href]
            if other not in done:
                done[href] = future.result()
                continue
            a, b = future.result(), done.pop(other)
            reds, nirs = (b, a) if href in nir_hrefs else (a, b)
            with np.errstate(divide="ignore", invalid="ignore"):
                for red, nir in zip(reds, nirs):
                    ndvi = (nir - red) / (nir + red)
                    valid = ~np.isnan(ndvi)
                    total += float(ndvi[valid].sum(dtype=np.float64))
                    count += int(valid.sum())
    mean = total / count if count else float("nan")
    t_end = time.time()
    return {
        "t_start": t_start,
        "t_imports": t_imports,
        "t_end": t_end,
        "cpu_seconds": _cpu_seconds(),
        "ndvi_mean": mean,
        "pixels": count,
        "peak_rss_mb": _peak_rss_mb(),
        "modules": len(sys.modules),
    }


WORKERS = {
    "import": worker_import,
    "import-rasterio": worker_import_rasterio,
    "engine": worker_engine,
    "engine-windows": worker_engine_windows,
    "rasterio-8t": worker_rasterio,
}


PROFILE_ENV = "BENCH_FRESH_PROFILE_DIR"
"""Set by ``--profile DIR``: workers run under cProfile and dump ``DIR/<tag>.prof``."""


def serve(argv: list[str]) -> bool:
    if not argv or argv[0] != "--worker":
        return False
    mode, spec_path, out_path = argv[1:4]
    spec = json.loads(Path(spec_path).read_text())
    profile_dir = os.environ.get(PROFILE_ENV)
    if profile_dir:
        import cProfile

        profiler = cProfile.Profile()
        result = profiler.runcall(WORKERS[mode], spec)
        profiler.dump_stats(str(Path(profile_dir) / (Path(out_path).name.removesuffix(".out.json") + ".prof")))
    else:
        result = WORKERS[mode](spec)
    Path(out_path).write_text(json.dumps(result))
    return True


# -- parent ----------------------------------------------------------------------------------------


def spawn(
    mode: str, spec: dict, workdir: Path, tag: str, env_extra: dict | None = None, python: str = sys.executable
) -> dict:
    """Run one worker in a new interpreter; ``seconds`` = spawn to answer (imports included)."""
    import subprocess

    from benchmarks._common import REPO_ROOT

    spec_path, out_path = workdir / f"{tag}.spec.json", workdir / f"{tag}.out.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(env_extra or {})
    cmd = [python, "-m", WORKER_MODULE, "--worker", mode, str(spec_path), str(out_path)]
    t_spawn = time.time()
    proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0 or not out_path.exists():
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"worker {tag} failed (exit code {proc.returncode})")
    if proc.stderr.strip():
        sys.stderr.write(f"[{tag} stderr]\n{proc.stderr[-2000:]}\n")
    result = json.loads(out_path.read_text())
    result["seconds"] = result["t_end"] - t_spawn
    if "t_imports" in result:
        result["after_imports"] = result["t_end"] - result["t_imports"]
        result["startup_and_imports"] = result["t_imports"] - t_spawn
    if "t_read" in result:
        result["read"] = result["t_read"] - result["t_imports"]
        result["after_read"] = result["t_end"] - result["t_read"]
    return result


def parse_args(argv=None):
    import argparse

    from benchmarks._common import add_lab_arguments

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_lab_arguments(
        p,
        seed_help="seed of the field polygons (bench_read's); default 7",
        repeat_default=5,
        repeat_help="interleaved rounds, medians reported; default 5",
    )
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated; default both")
    p.add_argument(
        "--user-imports",
        action="store_true",
        help="the engine worker imports what the README's quick start imports (xarray included) "
        "before its clock splits; by default xarray is imported by the read, during the fetch",
    )
    p.add_argument(
        "--python",
        default=sys.executable,
        metavar="PATH",
        help="the interpreter of every worker (default: this one). The README's install "
        "(`pip install .`, no extras) has no dask, which xarray imports at a Dataset's first "
        "arithmetic where it is installed (the test extras install it): see benchmarks/README.md",
    )
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="run every worker under cProfile (main thread only) and write DIR/<mode>-<round>.prof; "
        "the profiler slows the workers, so read the profiles, not the timings",
    )
    return p.parse_args(argv)


def _median(values):
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def _windows(masters_dir: Path, master: str, wkts: list[str]) -> list[list[int]]:
    """rasterio's ``geometry_window`` of each polygon on the files' grid: what the reads cover."""
    import rasterio
    import rasterio.features

    from benchmarks.bench_read import to_grid_crs

    out = []
    with rasterio.open(masters_dir / master) as src:
        for g in to_grid_crs(wkts):
            w = rasterio.features.geometry_window(src, [g])
            out.append([int(w.col_off), int(w.row_off), int(w.width), int(w.height)])
    return out


def _load_headers(workspace: Path, hrefs: list[str]) -> list[dict]:
    """The cached header dicts of ``hrefs`` from the built collection (what engine-windows loads)."""
    from rasteret_pipelines.collections import load_collection
    from rasteret_pipelines.collections.schema import band_columns

    collection = load_collection(COLLECTION, workspace)
    table = collection.to_table(columns=[band_columns(band)[1] for band in ("red", "nir")])
    wanted = set(hrefs)
    found = {}
    for band in ("red", "nir"):
        for header in collection.headers(table, band):
            if header is not None and header.href in wanted:
                found[header.href] = header.to_dict()
    if len(found) != len(wanted):
        raise SystemExit(f"FAILED: {len(found)} of {len(wanted)} headers found in the collection")
    return [found[h] for h in hrefs]


def _dask_note(python: str) -> str:
    """Whether dask is installed for ``python``: xarray imports it at a Dataset's first arithmetic."""
    import subprocess

    probe = "import importlib.util as u; print(u.find_spec('dask') is not None)"
    found = subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout.strip() == "True"
    return "dask installed: xarray imports it at the NDVI" if found else "no dask"


def compile_bytecode() -> None:
    """Write the bytecode of the package and the benchmarks, as an installed package has it.

    A wheel install (and any earlier import with bytecode writing on) leaves ``__pycache__``
    files; a source tree run with ``PYTHONDONTWRITEBYTECODE=1`` has none, and every fresh worker
    would then compile each of the package's modules from source (about 60 ms of CPU), which
    is not what a user's process pays. rasterio and the other dependencies come from
    site-packages, compiled at install time, so both sides are measured alike.
    """
    import compileall

    from benchmarks._common import REPO_ROOT

    for folder in ("rasteret_pipelines", "benchmarks"):
        if not compileall.compile_dir(REPO_ROOT / folder, quiet=1, workers=1):
            raise SystemExit(f"FAILED: could not compile {folder}")


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if serve(argv):
        return 0
    import datetime as dt
    import tempfile

    from benchmarks._common import account, exit_status, print_targets, run_worker, settle, write_json
    from benchmarks.bench_cog import AOIS, CRS, GDAL_HTTP_ENV
    from benchmarks.bench_read import (
        WORKER_MODULE as READ_MODULE,
    )
    from benchmarks.bench_read import (
        field_geometries,
        make_items,
        prepare_lab,
        quickstart_geometries,
        scene_date,
    )

    args = parse_args(argv)
    workloads = [w for w in args.workloads.split(",") if w]
    if args.repeat < 1 or not set(workloads) <= set(WORKLOADS):
        raise SystemExit(f"--repeat must be >= 1 and --workloads a subset of {WORKLOADS}")
    root, masters_dir, master_of, names, first_offset_by_name, dates = prepare_lab(args)
    wkts = {
        "quickstart": [w for _, w in quickstart_geometries()],
        "fields": [w for _, w in field_geometries(args.fields, args.seed)],
    }
    assert len(wkts["quickstart"]) == len(AOIS)
    any_master = next(iter(master_of.values()))
    windows = {w: _windows(masters_dir, any_master, wkts[w]) for w in workloads}

    from rasteret_pipelines_demo.range_server import RangeServer
    from rasteret_pipelines_demo.stac_server import StacServer

    compile_bytecode()
    load = os.getloadavg()
    print(
        f"{len(names)} files ({len(dates)} scenes x red, nir), {args.latency * 1000:.0f} ms per request; "
        f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs"
        + ("; engine: the quick start's imports, xarray included, before the read" if args.user_imports else ""),
        flush=True,
    )
    print(f"workers: {args.python} ({_dask_note(args.python)})", flush=True)
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_fresh_") as tmp, RangeServer(root, latency=args.latency) as srv:
        workdir = Path(tmp)
        workspace = workdir / "workspace"
        hrefs = [srv.url_for(n) for n in names]
        by_scene: dict = {}
        for name, href in zip(names, hrefs):
            band = name.rsplit("_", 1)[1].removesuffix(".tif")
            by_scene.setdefault(scene_date(name), {})[band] = href
        pairs = [[b["red"], b["nir"]] for _, b in sorted(by_scene.items())]
        with StacServer(make_items(names, srv.url_for)) as stac:
            print("building the collection (not timed) ...", flush=True)
            build = run_worker(
                READ_MODULE,
                "build",
                {"workspace": str(workspace), "stac_url": stac.url, "date_range": [str(dates[0]), str(dates[-1])]},
                workdir,
            )
            if build["failed"] or build["items"] != len(dates):
                raise SystemExit(f"FAILED: build indexed {build['items']} items, failures {build['failed']}")
            headers = _load_headers(workspace, hrefs)
            plan = [(m, None, {}) for m in IMPORT_MODES]
            for w in workloads:
                base = {"workspace": str(workspace), "wkts": wkts[w], "crs": CRS}
                plan += [
                    ("engine", w, {**base, "user_imports": args.user_imports}),
                    ("engine-windows", w, {"headers": headers, "windows": windows[w]}),
                    (BASELINE, w, {**base, "hrefs": hrefs, "pairs": pairs, "threads": args.threads}),
                ]
            for i in range(args.repeat):
                for mode, workload, spec in plan:
                    key = mode if workload is None else f"{workload}/{mode}"
                    srv.reset_log()
                    stac.reset_log()
                    print(f"round {i + 1}/{args.repeat}: {key} ...", flush=True)
                    env = dict(GDAL_HTTP_ENV) if mode == BASELINE else {}
                    if args.profile is not None:
                        args.profile.mkdir(parents=True, exist_ok=True)
                        env[PROFILE_ENV] = str(args.profile.resolve())
                    run = spawn(
                        mode, spec, workdir, tag=f"{key.replace('/', '-')}-{i}", env_extra=env, python=args.python
                    )
                    run["traffic"] = account(settle(srv, 1.0), first_offset_by_name).__dict__
                    run["stac_requests"] = stac.count()
                    run["load1"] = os.getloadavg()[0]
                    runs.setdefault(key, []).append(run)
    load_after = os.getloadavg()

    # -- correctness ---------------------------------------------------------------------------
    problems = []
    for w in workloads:
        eng, rio = runs[f"{w}/engine"], runs[f"{w}/{BASELINE}"]
        e_mean, r_mean = eng[0]["ndvi_mean"], rio[0]["ndvi_mean"]
        if eng[0]["pixels"] != rio[0]["pixels"]:
            problems.append(f"{w}: the engine's NDVI has {eng[0]['pixels']} pixels, rasterio's {rio[0]['pixels']}")
        if abs(e_mean - r_mean) > 1e-6:
            problems.append(f"{w}: NDVI mean {e_mean!r} (engine) != {r_mean!r} (rasterio)")
        if any(r["stac_requests"] for r in eng):
            problems.append(f"{w}: the engine made STAC requests")
        if any(r["traffic"]["header_gets"] for r in eng):
            problems.append(f"{w}: the engine made header GETs")
    if problems:
        for p in problems:
            print("MISMATCH:", p, file=sys.stderr)
        raise SystemExit("FAILED: the engine's NDVI is not rasterio's")
    print(
        "correctness: "
        + "; ".join(
            f"{w}: NDVI mean {runs[f'{w}/engine'][0]['ndvi_mean']:.6f} over {runs[f'{w}/engine'][0]['pixels']:,} pixels "
            "in both tools"
            for w in workloads
        )
    )

    # -- report -----------------------------------------------------------------------------------
    def summary(key: str) -> dict:
        rs = runs[key]
        out = {
            "key": key,
            "runs": len(rs),
            "seconds": _median([r["seconds"] for r in rs]),
            "seconds_all": [round(r["seconds"], 3) for r in rs],
            "load1_all": [round(r["load1"], 2) for r in rs],
        }
        if "read" in rs[0]:
            out["read"] = _median([r["read"] for r in rs])
            out["after_read"] = _median([r["after_read"] for r in rs])
            out["read_cpu"] = _median([r["cpu_read"] - r["cpu_imports"] for r in rs])
        if "after_imports" in rs[0]:
            out["after_imports"] = _median([r["after_imports"] for r in rs])
            out["startup_and_imports"] = _median([r["startup_and_imports"] for r in rs])
            out["gets"] = _median([r["traffic"]["gets"] for r in rs])
            out["header_gets"] = max(r["traffic"]["header_gets"] for r in rs)
            out["bytes"] = _median([r["traffic"]["bytes"] for r in rs])
            out["peak_rss_mb"] = _median([r["peak_rss_mb"] for r in rs])
            out["cpu_seconds"] = _median([r["cpu_seconds"] for r in rs])
        if "import_seconds" in rs[0]:
            out["import_seconds"] = _median([r["import_seconds"] for r in rs])
            out["modules"] = len(rs[0]["modules"])
        return out

    rows = {key: summary(key) for key in runs}
    print()
    print(
        f"fresh processes, median of {args.repeat} interleaved rounds; {args.latency * 1000:.0f} ms latency; "
        f"load average {load[0]:.2f} before, {load_after[0]:.2f} after ({os.cpu_count()} CPUs)"
    )
    print()
    for m in IMPORT_MODES:
        r = rows[m]
        what = (
            "from rasteret_pipelines import Rasteret, DataSources, save_per_geometry"
            if m == "import"
            else "import rasterio"
        )
        print(f"  {what:<75} {r['import_seconds']:.3f} s  ({r['modules']} modules loaded)")
    head = (
        f"{'workload':<11} {'mode':<15} {'whole s':>8} {'imports s':>9} {'after s':>8} {'read s':>7} {'NDVI s':>7} {'CPU s':>6} "
        f"{'GETs':>5} {'MB':>6} {'RSS MB':>7} {'whole vs rio':>12} {'after vs rio':>12}"
    )
    print()
    print(head)
    print("-" * len(head))
    for w in workloads:
        base = rows[f"{w}/{BASELINE}"]
        for mode in READ_MODES:
            r = rows[f"{w}/{mode}"]
            vs_whole = base["seconds"] / r["seconds"]
            vs_after = base["after_imports"] / r["after_imports"]
            r["whole_vs_rasterio"], r["after_vs_rasterio"] = vs_whole, vs_after
            read = f"{r['read']:>7.2f}" if "read" in r else f"{'':>7}"
            read += f" {r['after_read']:>7.2f}" if mode == "engine" else f" {'':>7}"
            print(
                f"{w:<11} {mode:<15} {r['seconds']:>8.2f} {r['startup_and_imports']:>9.2f} {r['after_imports']:>8.2f} "
                f"{read} {r['cpu_seconds']:>6.2f} {r['gets']:>5.0f} {r['bytes'] / 1e6:>6.1f} {r['peak_rss_mb']:>7.0f} {vs_whole:>11.2f}x "
                f"{vs_after:>11.2f}x"
            )
    print()
    print("(whole s: process spawn to NDVI mean (engine-windows: to the arrays); imports s: spawn to the end of")
    print(" the worker's imports (interpreter start included); after s: the rest; read s: load_collection +")
    print(" get_xarray (engine), read_windows (engine-windows); CPU s: the worker's user + system CPU, imports")
    print(" included (the range server's is not). engine: Rasteret.load_collection + get_xarray")
    print(" (masked, float) + NDVI mean; engine-windows: cog.read_windows of the same windows from cached headers,")
    print(" no mask; rasterio-8t: /vsicurl/ + rasterio.mask.mask(crop=True), 8 threads, same NDVI mean;")
    print(" NDVI s: engine, get_xarray's return to the NDVI mean)")
    print()
    for w in workloads:
        e, bare = rows[f"{w}/engine"], rows[f"{w}/engine-windows"]
        print(
            f"{w}: read s engine / engine-windows {e['read'] / bare['read']:.2f}x; CPU s of the read (all threads) "
            f"engine {e['read_cpu']:.2f}, engine-windows {bare['read_cpu']:.2f}"
        )

    targets = {f"import <= {TARGET_IMPORT_S} s": rows["import"]["import_seconds"] <= TARGET_IMPORT_S}
    for w in workloads:
        e, bare = rows[f"{w}/engine"], rows[f"{w}/engine-windows"]
        targets[f"{w}: whole process >= {TARGET_WHOLE[w]:g}x rasterio-8t"] = e["whole_vs_rasterio"] >= TARGET_WHOLE[w]
        targets[f"{w}: after imports >= {TARGET_AFTER_IMPORTS:g}x rasterio-8t"] = (
            e["after_vs_rasterio"] >= TARGET_AFTER_IMPORTS
        )
        targets[f"{w}: engine read within {TARGET_ENGINE_OVERHEAD}x of engine-windows"] = (
            e["read"] <= TARGET_ENGINE_OVERHEAD * bare["read"]
        )
        if w == "quickstart":
            targets[f"{w}: engine read within {TARGET_READ_VS_BARE}x of engine-windows (issue 20)"] = (
                e["read"] <= TARGET_READ_VS_BARE * bare["read"]
            )
        targets[f"{w}: GETs <= {TARGET_GETS[w]}, no header GET"] = e["gets"] <= TARGET_GETS[w] and e["header_gets"] == 0
    print_targets(targets)
    if args.json:
        report = {
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "files": len(names),
            "latency_seconds": args.latency,
            "repeat": args.repeat,
            "load_before": load,
            "load_after": load_after,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "rows": rows,
            "targets": targets,
        }
        write_json(args.json, report, "\n")
    return exit_status(args.strict, targets)


if __name__ == "__main__":
    sys.exit(main())
