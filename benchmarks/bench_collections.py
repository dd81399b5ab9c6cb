"""Collections benchmark: header-indexing throughput of a build, and local filter time.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_collections [--items 500] [--latency 0.05] [--rows 10000]

What it does, in one run:

1. Writes one small but real GDAL COG that is header-wise a Sentinel-2 10 m band (10980 x
   10980 uint16, 1024 x 1024 tiles, overviews, Deflate + predictor 2, nodata 0, on the grid
   of the recorded item's MGRS tile 24MUA, EPSG:32724), sparse (one block written, ~20 KB),
   into ``--data-dir`` (default ``benchmarks/.data/collections``), and hard-links it under
   ``--items`` x 2 band paths (``<item id>/B04.tif``, ``<item id>/B08.tif``): every asset is a
   distinct URL.
2. Serves that folder through ``RangeServer`` with ``--latency`` seconds per request, and
   ``--items`` STAC items derived from the recorded Earth Search item
   ``S2B_24MUA_20250731_0_L2A`` (new ids, datetimes spread over July 2025, varied cloud cover,
   red/nir hrefs on the range server) through ``StacServer``.
3. ``build``: ``build_collection(...)`` of the month in a fresh process (the real code path:
   pystac-client search, one header read per asset, GeoParquet write, manifest). The library
   is not changed; the worker wraps ``build.search_items`` and ``build._build_month`` to time
   the search and the header phase (item rows + every header fetched and parsed + the Arrow
   table) of the same run. Header GETs come from the range server's log.
4. ``rebuild``: the same call again, unchanged, in another fresh process (target: 0 header GETs).
5. Derives a ``--rows`` collection over 10 months from the built month table (new ids,
   datetimes, cloud cover, platforms, grid codes and footprints moved over a 5 x 4 grid of
   cells, one degree apart), written with the library's own month writer (stac-geoparquet) and
   manifest writer.
6. ``filter``: in a fresh process, ``load_collection`` and three ``Collection.to_table`` filters
   (date range + cloud cover + bbox; a polygon; a property), ``--repeat`` times, median
   reported; row counts are checked against numbers computed independently while deriving,
   and both servers' request logs (and the worker's socket audit events) must not move.

Prints a table (measure | value | target | PASS/MISS) and writes it as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import (
    REPO_ROOT,
    Traffic,
    account,
    cog_params,
    command_line,
    exit_status,
    first_tile_offsets,
    link_file,
    peak_rss_mb,
    run_worker,
    settle,
    write_json,
)

SOURCE = "sentinel-2-l2a"
RECORDED_ITEM = (
    REPO_ROOT
    / "rasteret_pipelines_tests"
    / "data"
    / "stac"
    / "earth-search-v1"
    / "sentinel-2-l2a"
    / "S2B_24MUA_20250731_0_L2A.json"
)
DEFAULT_DATA_DIR = REPO_ROOT / "benchmarks" / ".data" / "collections"
BANDS = {"red": "B04.tif", "nir": "B08.tif"}  # asset key -> file name, as on Earth Search
BUILD_MONTH = (dt.date(2025, 7, 1), dt.date(2025, 7, 31))
BUILD_NAME = "bench_build"
DERIVED_NAME = "bench_filter"
DERIVED_MONTHS = [f"2025-{m:02d}" for m in range(1, 11)]  # 10 months, none of them July's

# COG: the grid of MGRS tile 24MUA (proj:transform of the recorded item's 10 m assets).
CRS = "EPSG:32724"
ORIGIN = (300000.0, 9600040.0)
PIXEL = 10.0
SIZE = 10980
BLOCK = 1024
COG_VERSION = 1  # bump when the generated file changes

# The derived collection's footprints: the recorded footprint moved over a 5 x 4 grid of cells.
GRID_COLS, GRID_ROWS, GRID_STEP = 5, 4, 1.0
SQUARES = [f"{c}{r}" for c in "UVWXY" for r in "ABCD"]  # one MGRS-like square per cell
PLATFORMS = ("sentinel-2a", "sentinel-2b", "sentinel-2c")

# The filters timed on the derived collection (JSON-able keyword arguments of to_table).
FILTERS = {
    "date+cloud+bbox": {
        "date_range": ["2025-03-01", "2025-05-31"],
        "cloud_cover_lt": 20.0,
        "bbox": [-40.0, -4.0, -38.0, -2.0],
    },
    "polygon": {
        # A thin field-like quadrilateral across four cells: it meets the bboxes of the
        # footprints of all four but the footprints of two only (their west edge is the
        # slanted swath edge), so the exact intersection test matters.
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[-40.33, -3.70], [-40.22, -3.66], [-39.05, -2.75], [-39.20, -2.62], [-40.33, -3.70]]],
        },
    },
    "property": {"properties": {"grid:code": "MGRS-24MVB"}},
}

TARGET_HEADERS_PER_S = 200.0
TARGET_FILTER_S = 0.5  # "well under a second"


# -- data ---------------------------------------------------------------------------------------


def master_params() -> dict:
    return cog_params(
        {"version": COG_VERSION}, size=SIZE, block=BLOCK, crs=CRS, origin=ORIGIN, pixel=PIXEL, sparse=True
    )


def ensure_master(data_dir: Path) -> tuple[Path, float]:
    """The sparse Sentinel-2-like COG (generated once, ~1.5 s); returns (path, seconds spent)."""
    import numpy as np
    from rasterio.windows import Window

    from rasteret_pipelines_demo.demo_data import write_sparse_cog

    data_dir.mkdir(parents=True, exist_ok=True)
    master = data_dir / "master_s2_10m.tif"
    meta = data_dir / "master.json"
    params = master_params()
    if master.exists() and meta.exists():
        try:
            if json.loads(meta.read_text()) == {"params": params, "size": master.stat().st_size}:
                return master, 0.0
        except ValueError:
            pass
    t0 = time.perf_counter()
    # One real block (a ramp); every other block stays sparse (offset 0, no bytes).
    ramp = (1000 + np.add.outer(np.arange(BLOCK), np.arange(BLOCK)) % 2000).astype("uint16")
    write_sparse_cog(
        master, ramp, Window(0, 0, BLOCK, BLOCK), size=SIZE, crs=CRS, origin=ORIGIN, pixel=PIXEL, block=BLOCK
    )
    meta.write_text(json.dumps({"params": params, "size": master.stat().st_size}))
    return master, time.perf_counter() - t0


def item_ids(n: int) -> list[tuple[str, dt.datetime]]:
    """(id, datetime) of ``n`` items spread evenly over the build month."""
    start = dt.datetime.combine(BUILD_MONTH[0], dt.time(0, 30), dt.timezone.utc)
    span = (BUILD_MONTH[1] - BUILD_MONTH[0]).days * 86400 + 23 * 3600
    out = []
    for i in range(n):
        when = start + dt.timedelta(seconds=int(span * i / n))
        out.append((f"S2B_24MUA_{when:%Y%m%d}_{i}_L2A", when))
    return out


def link_cogs(master: Path, root: Path, ids: list[str]) -> int:
    """Hard-link ``master`` as ``root/<id>/<band file>`` for every item; returns links made."""
    made = 0
    for item_id in ids:
        (root / item_id).mkdir(parents=True, exist_ok=True)
        for fname in BANDS.values():
            if link_file(master, root / item_id / fname):  # without hard links, a ~20 KB copy
                made += 1
    return made


def make_items(recorded: dict, ids, url_for) -> list[dict]:
    """STAC items derived from the recorded one: new id, datetime, cloud cover, local hrefs."""
    import random

    rng = random.Random(7)
    out = []
    for item_id, when in ids:
        item = copy.deepcopy(recorded)
        item["id"] = item_id
        props = item["properties"]
        props["datetime"] = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        props["eo:cloud_cover"] = round(rng.uniform(0, 100), 6)
        for key, fname in BANDS.items():
            item["assets"][key]["href"] = url_for(f"{item_id}/{fname}")
        out.append(item)
    return out


# -- the derived collection ---------------------------------------------------------------------


def derive_collection(workspace: Path, rows: int, seed: int = 11) -> dict:
    """Write ``DERIVED_NAME``: ``rows`` rows over ``DERIVED_MONTHS``, copied from the built month.

    The built month's items (read back with ``stac_table_to_items``) are re-dated and moved, then
    written with the library's own writers (``schema.items_table``, ``schema.with_band_columns``,
    ``build.write_month``, ``build._write_manifest``), so the files and manifest are what a build
    writes. Returns the expected row ids of every filter in :data:`FILTERS`, computed here
    independently.
    """
    import numpy as np
    import pyarrow.parquet as pq
    import shapely
    import shapely.affinity
    import shapely.geometry
    from stac_geoparquet.arrow import stac_table_to_items

    from rasteret_pipelines.collections import build as build_module
    from rasteret_pipelines.collections import schema
    from rasteret_pipelines.collections.search import SearchSpec
    from rasteret_pipelines.collections.sources import get_source
    from rasteret_pipelines.storage import Storage

    src = get_source(SOURCE)
    keys = list(BANDS)
    store = Storage.from_uri(workspace)
    base = pq.ParquetFile(store.path(BUILD_NAME, "month=2025-07", build_module.MONTH_FILE)).read()
    nbase = base.num_rows
    base_items = list(stac_table_to_items(schema.stac_view(base)))
    base_bands = {c: base.column(c).to_pylist() for b in keys for c in schema.band_columns(b)}
    base_geoms = [shapely.geometry.shape(i["geometry"]) for i in base_items]

    rng = np.random.default_rng(seed)
    per_month = [
        rows // len(DERIVED_MONTHS) + (1 if i < rows % len(DERIVED_MONTHS) else 0) for i in range(len(DERIVED_MONTHS))
    ]
    report = build_module.BuildReport(name=DERIVED_NAME, source=src.id, location=store.uri_of(DERIVED_NAME))
    expected: dict[str, list[str]] = {k: [] for k in FILTERS}
    f_geom = shapely.geometry.shape(FILTERS["polygon"]["geometry"])
    f1 = FILTERS["date+cloud+bbox"]
    f1_lo = dt.datetime.fromisoformat(f1["date_range"][0]).replace(tzinfo=dt.timezone.utc)
    f1_hi = dt.datetime.fromisoformat(f1["date_range"][1]).replace(tzinfo=dt.timezone.utc)
    f1_hi += dt.timedelta(days=1)
    bx0, by0, bx1, by1 = f1["bbox"]
    want_code = FILTERS["property"]["properties"]["grid:code"]
    bbox_candidates = 0
    j = 0
    for key, n in zip(DERIVED_MONTHS, per_month):
        year, mon = map(int, key.split("-"))
        first = dt.datetime(year, mon, 1, tzinfo=dt.timezone.utc)
        nxt = dt.datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=dt.timezone.utc)
        idx = np.arange(j, j + n) % nbase
        secs = np.sort(rng.uniform(0, (nxt - first).total_seconds(), n))
        cells = rng.integers(0, GRID_COLS * GRID_ROWS, n)
        clouds = np.round(rng.uniform(0, 100, n), 4)
        plats = rng.integers(0, len(PLATFORMS), n)
        items = []
        for k in range(n):
            when = first + dt.timedelta(seconds=float(secs[k]))
            cell = int(cells[k])
            sq = SQUARES[cell]
            code = f"MGRS-24M{sq}"
            item_id = f"S2{PLATFORMS[plats[k]][-1].upper()}_24M{sq}_{when:%Y%m%d}_{j + k}_L2A"
            geom = shapely.affinity.translate(
                base_geoms[idx[k]], xoff=GRID_STEP * (cell % GRID_COLS), yoff=GRID_STEP * (cell // GRID_COLS)
            )
            minx, miny, maxx, maxy = geom.bounds
            item = dict(base_items[idx[k]])
            props = dict(item["properties"])
            props.update(
                {
                    "datetime": when.isoformat(timespec="microseconds").replace("+00:00", "Z"),
                    "eo:cloud_cover": float(clouds[k]),
                    "platform": PLATFORMS[plats[k]],
                    "grid:code": code,
                    "mgrs:grid_square": sq,
                }
            )
            item.update(
                {
                    "id": item_id,
                    "properties": props,
                    "bbox": [minx, miny, maxx, maxy],
                    "geometry": shapely.geometry.mapping(geom),
                }
            )
            items.append(item)
            # Expected answers, from the generated values (not from the library).
            in_bbox = minx <= bx1 and maxx >= bx0 and miny <= by1 and maxy >= by0
            if f1_lo <= when < f1_hi and clouds[k] < f1["cloud_cover_lt"] and in_bbox:
                expected["date+cloud+bbox"].append(item_id)
            gx0, gy0, gx1, gy1 = f_geom.bounds
            if minx <= gx1 and maxx >= gx0 and miny <= gy1 and maxy >= gy0:
                bbox_candidates += 1
                if geom.intersects(f_geom):
                    expected["polygon"].append(item_id)
            if code == want_code:
                expected["property"].append(item_id)
        j += n
        values = {c: [v[i] for i in idx] for c, v in base_bands.items()}
        table = schema.with_band_columns(schema.items_table(items), keys, values)
        path = build_module.write_month(store, table, DERIVED_NAME, key)
        report.months.append(build_module.MonthReport(month=key, path=path, items=n))
    date_range = (dt.date(2025, 1, 1), dt.date(2025, 10, 31))  # DERIVED_MONTHS
    search = SearchSpec(source=src, date_range=date_range, bands=keys).checked()
    build_module._write_manifest(store, DERIVED_NAME, {}, search, report)
    return {
        "expected": expected,
        "polygon_bbox_candidates": bbox_candidates,
        "bytes": sum(
            Path(store.path(DERIVED_NAME, f"month={k}", build_module.MONTH_FILE)).stat().st_size for k in DERIVED_MONTHS
        ),
    }


def ids_digest(ids) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


# -- workers (fresh processes) ------------------------------------------------------------------


def worker_build(spec: dict) -> dict:
    import pystac_client  # noqa: F401  (imported before the clock: build imports it lazily)
    import requests  # noqa: F401

    from rasteret_pipelines.collections import build as build_module
    from rasteret_pipelines.collections import build_collection

    phases = {"search": 0.0, "headers": 0.0, "previous": 0.0}
    search_items, build_month, previous = (
        build_module.search_items,
        build_module._build_month,
        build_module._previous_headers,
    )

    def timed_search(*a, **k):
        t0 = time.perf_counter()
        try:
            return search_items(*a, **k)
        finally:
            phases["search"] += time.perf_counter() - t0

    async def timed_build_month(*a, **k):
        t0 = time.perf_counter()
        try:
            return await build_month(*a, **k)
        finally:
            phases["headers"] += time.perf_counter() - t0

    def timed_previous(*a, **k):
        t0 = time.perf_counter()
        try:
            return previous(*a, **k)
        finally:
            phases["previous"] += time.perf_counter() - t0

    build_module.search_items = timed_search
    build_module._build_month = timed_build_month
    build_module._previous_headers = timed_previous

    def run():
        return build_collection(
            SOURCE,
            spec["name"],
            spec["workspace"],
            date_range=spec["date_range"],
            bands=list(BANDS),
            stac_url=spec["stac_url"],
            progress=False,
        )

    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
    cpu0, t0 = time.process_time(), time.perf_counter()
    report = profiler.runcall(run) if profiler else run()
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    if profiler:
        profiler.dump_stats(spec["profile"])
    months = [
        {
            "month": m.month,
            "items": m.items,
            "headers_fetched": m.headers_fetched,
            "headers_reused": m.headers_reused,
            "header_requests": m.header_requests,
            "bytes": m.bytes,
            "seconds": m.seconds,
            "failed": len(m.failed),
            "skipped": len(m.skipped_items),
        }
        for m in report.months
    ]
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "search_seconds": phases["search"],
        "header_phase_seconds": phases["headers"],
        "previous_seconds": phases["previous"],
        "other_seconds": seconds - phases["search"] - phases["headers"] - phases["previous"],
        "months": months,
        "items": report.items,
        "failed": [f"{f.item_id}/{f.band}: {f.error}" for f in report.failed][:5],
        "peak_rss_mb": peak_rss_mb(),
    }


def worker_filter(spec: dict) -> dict:
    import pyarrow  # noqa: F401
    import pyarrow.dataset  # noqa: F401
    import shapely  # noqa: F401

    from rasteret_pipelines.collections import load_collection

    # Every socket operation of this process while filtering is counted (Python's audit hooks
    # see connect, getaddrinfo, sendto, ... from any Python code); local files need none.
    audit = {"on": False, "events": []}

    def hook(event, args):
        if audit["on"] and event.startswith("socket."):
            audit["events"].append(event)

    sys.addaudithook(hook)
    reps = int(spec["repeat"])
    times: dict[str, list[float]] = {"load_collection": [], "open_dataset": []}
    rows: dict[str, int] = {}
    digests: dict[str, str] = {}
    for name in FILTERS:
        times[name] = []
    audit["on"] = True
    for _ in range(reps):
        t0 = time.perf_counter()
        coll = load_collection(spec["name"], spec["workspace"])
        t1 = time.perf_counter()
        coll.dataset  # noqa: B018  (the cached pyarrow dataset: lists and reads the month schemas)
        t2 = time.perf_counter()
        times["load_collection"].append(t1 - t0)
        times["open_dataset"].append(t2 - t1)
        for name, kwargs in FILTERS.items():
            t0 = time.perf_counter()
            table = coll.to_table(**kwargs)
            times[name].append(time.perf_counter() - t0)
            rows[name] = table.num_rows
            digests[name] = ids_digest(table.column("id").to_pylist())
            del table
    audit["on"] = False
    return {
        "times": times,
        "median": {k: statistics.median(v) for k, v in times.items()},
        "first": {k: v[0] for k, v in times.items()},
        "rows": rows,
        "digests": digests,
        "size": len(coll),
        "socket_events": len(audit["events"]),
        "socket_event_kinds": sorted(set(audit["events"])),
        "peak_rss_mb": peak_rss_mb(),
    }


WORKERS = {"build": worker_build, "filter": worker_filter}
WORKER_MODULE = "benchmarks.bench_collections"


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=500, help="STAC items (x2 bands = COGs); default 500")
    p.add_argument("--latency", type=float, default=0.05, help="seconds per COG request; default 0.05")
    p.add_argument("--rows", type=int, default=10000, help="rows of the filtered collection; default 10000")
    p.add_argument("--repeat", type=int, default=5, help="filter repetitions (median); default 5")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="COG cache directory")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--profile", type=Path, default=None, help="cProfile the first build into this file")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = command_line(argv, WORKERS, parse_args)
    if args is None:
        return 0
    if args.items < 1 or args.rows < len(DERIVED_MONTHS) or args.repeat < 1:
        raise SystemExit(f"--items and --repeat must be >= 1, --rows >= {len(DERIVED_MONTHS)}")
    t_run = time.perf_counter()
    master, gen_s = ensure_master(args.data_dir)
    ids = item_ids(args.items)
    root = args.data_dir / "cogs"
    t0 = time.perf_counter()
    made = link_cogs(master, root, [i for i, _ in ids])
    link_s = time.perf_counter() - t0
    first_offset = first_tile_offsets(master.parent, {master.name})[master.name]
    offsets = {fname: first_offset for fname in BANDS.values()}
    n_cogs = args.items * len(BANDS)
    print(
        f"COG: {master.stat().st_size} bytes, {SIZE}x{SIZE} uint16, {BLOCK} px tiles, first tile at "
        f"byte {first_offset}"
        + (f" (generated in {gen_s:.1f} s)" if gen_s else " (cached)")
        + f"; {n_cogs} hrefs ({made} new links in {link_s:.2f} s)"
    )

    from rasteret_pipelines_demo.range_server import RangeServer
    from rasteret_pipelines_demo.stac_server import StacServer, load_items

    recorded = load_items(RECORDED_ITEM)[0]
    results: dict = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench_collections_") as tmp,
        RangeServer(root, latency=args.latency) as cogs,
    ):
        workdir = Path(tmp)
        workspace = workdir / "workspace"
        items = make_items(recorded, ids, cogs.url_for)
        with StacServer(items) as stac:
            spec = {
                "name": BUILD_NAME,
                "workspace": str(workspace),
                "stac_url": stac.url,
                "date_range": [d.isoformat() for d in BUILD_MONTH],
            }
            # 1. build, 2. rebuild unchanged
            for step in ("build", "rebuild"):
                cogs.reset_log()
                stac.reset_log()
                print(
                    f"running {step} ({args.items} items x {len(BANDS)} bands, "
                    f"{args.latency * 1000:.0f} ms per COG request) ...",
                    flush=True,
                )
                extra = {"profile": str(args.profile)} if (args.profile and step == "build") else {}
                cpu0 = time.process_time()
                r = run_worker(WORKER_MODULE, "build", {**spec, **extra}, workdir, tag=step, what="step")
                # This process only waits for the worker: its CPU time is the two servers'.
                r["servers_cpu_seconds"] = time.process_time() - cpu0
                records = settle(cogs)
                r["traffic"] = account(records, offsets).__dict__
                r["distinct_cog_paths"] = len({x.path for x in records})
                r["stac_requests"] = len(stac.requests)
                r["stac_searches"] = stac.count("/search")
                results[step] = r

            # 3. derive the big collection, 4. filter it with both servers up and logged
            print(f"deriving a {args.rows}-row collection over {len(DERIVED_MONTHS)} months ...", flush=True)
            t0 = time.perf_counter()
            derived = derive_collection(workspace, args.rows)
            results["derive_seconds"] = time.perf_counter() - t0
            cogs.reset_log()
            stac.reset_log()
            before = (len(cogs.requests), len(stac.requests))
            print(f"running filter ({args.repeat} repetitions, fresh process) ...", flush=True)
            f = run_worker(
                WORKER_MODULE,
                "filter",
                {"name": DERIVED_NAME, "workspace": str(workspace), "repeat": args.repeat},
                workdir,
                what="step",
            )
            time.sleep(0.2)
            after = (len(settle(cogs)), len(stac.requests))
            f["server_requests_before"], f["server_requests_after"] = before, after
            results["filter"] = f

    # -- checks ---------------------------------------------------------------------------------
    b, rb, f = results["build"], results["rebuild"], results["filter"]
    problems = []
    if b["failed"]:
        problems.append(f"build: failed headers, e.g. {b['failed']}")
    if b["items"] != args.items:
        problems.append(f"build indexed {b['items']} items, expected {args.items}")
    for name, want in derived["expected"].items():
        if f["rows"][name] != len(want) or f["digests"][name] != ids_digest(want):
            problems.append(f"filter {name}: {f['rows'][name]} rows, expected {len(want)} (or different ids)")
    if f["size"] != args.rows:
        problems.append(f"derived collection holds {f['size']} rows, expected {args.rows}")
    if problems:
        for p in problems:
            print("MISMATCH:", p, file=sys.stderr)
        raise SystemExit("FAILED")

    # -- report ---------------------------------------------------------------------------------
    from rasteret_pipelines.cog import FetchConfig

    fetched = sum(m["headers_fetched"] for m in b["months"])
    bt, rbt = Traffic(**b["traffic"]), Traffic(**rb["traffic"])
    hps = fetched / b["header_phase_seconds"] if b["header_phase_seconds"] else 0.0
    hps_total = fetched / b["seconds"] if b["seconds"] else 0.0
    concurrency = FetchConfig().max_concurrency
    floor = -(-fetched // concurrency) * args.latency  # ceil(headers / concurrency) x latency
    no_network = f["server_requests_before"] == f["server_requests_after"] and f["socket_events"] == 0
    med = f["median"]
    rows: list[tuple[str, str, str, bool | None]] = []  # measure, value, target, met (None: info)

    def row(measure: str, value: str, target: str = "", ok: bool | None = None) -> None:
        rows.append((measure, value, target, ok))

    fast = f"< {TARGET_FILTER_S}"
    row(f"build: {args.items} items, {n_cogs} COGs (s)", f"{b['seconds']:.2f}")
    row("  STAC search, pystac-client (s)", f"{b['search_seconds']:.2f}")
    row("  header phase (s)", f"{b['header_phase_seconds']:.2f}")
    row("  parquet + manifest + rest (s)", f"{b['other_seconds']:.2f}")
    row("  CPU: build process / both servers (s)", f"{b['cpu_seconds']:.2f} / {b['servers_cpu_seconds']:.2f}")
    row("  latency floor of the header phase (s)", f"{floor:.2f}", "(info)")
    row("headers/s, header phase", f"{hps:.0f}", f">= {TARGET_HEADERS_PER_S:.0f}", hps >= TARGET_HEADERS_PER_S)
    row("headers/s, whole build", f"{hps_total:.0f}", "(info)")
    row(
        "header GETs (range server log)", f"{bt.header_gets}", f"<= {int(1.1 * n_cogs)}", bt.header_gets <= 1.1 * n_cogs
    )
    row("  all COG requests / distinct paths", f"{bt.requests} / {b['distinct_cog_paths']}")
    row("  MonthReport.header_requests", f"{sum(m['header_requests'] for m in b['months'])}")
    row("build peak RSS (MB)", f"{b['peak_rss_mb']:.0f}")
    row("rebuild unchanged (s)", f"{rb['seconds']:.2f}")
    row("  STAC search (s)", f"{rb['search_seconds']:.2f}")
    row("rebuild header GETs", f"{rbt.header_gets}", "0", rbt.header_gets == 0 and rbt.requests == 0)
    row("  headers reused", f"{sum(m['headers_reused'] for m in rb['months'])}")
    row("rebuild peak RSS (MB)", f"{rb['peak_rss_mb']:.0f}")
    row(
        f"load_collection, {args.rows} rows (s)",
        f"{med['load_collection']:.4f}",
        fast,
        med["load_collection"] < TARGET_FILTER_S,
    )
    row("  open dataset, 10 months (s)", f"{med['open_dataset']:.4f}", fast, med["open_dataset"] < TARGET_FILTER_S)
    labels = {
        "date+cloud+bbox": "to_table(date_range, cloud_cover_lt, bbox)",
        "polygon": "to_table(geometry=polygon)",
        "property": "to_table(properties={grid:code})",
    }
    for name in FILTERS:
        row(f"{labels[name]} (s)", f"{med[name]:.4f}", fast, med[name] < TARGET_FILTER_S)
        row("  rows returned", f"{f['rows'][name]}")
    row("filter peak RSS (MB)", f"{f['peak_rss_mb']:.0f}")
    moved = (
        f["server_requests_after"][0] - f["server_requests_before"][0],
        f["server_requests_after"][1] - f["server_requests_before"][1],
        f["socket_events"],
    )
    row("requests while filtering (COG, STAC, sockets)", ", ".join(map(str, moved)), "0, 0, 0", no_network)
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    print()
    print(
        f"{args.items} items x {len(BANDS)} bands = {n_cogs} COGs, {args.latency * 1000:.0f} ms per "
        f"COG request, {os.cpu_count()} CPUs; filters: median of {args.repeat} in a fresh process"
    )
    head = f"{'measure':<{w0}} | {'value':>{w1}} | {'target':<{w2}} | result"
    print(head)
    print("-" * len(head))
    for measure, value, target, ok in rows:
        verdict = "" if ok is None else ("PASS" if ok else "MISS")
        print(f"{measure:<{w0}} | {value:>{w1}} | {target:<{w2}} | {verdict}")
    print(
        f"\n(polygon: {derived['polygon_bbox_candidates']} rows meet its bbox, "
        f"{len(derived['expected']['polygon'])} its shape; derived collection "
        f"{derived['bytes'] / 1e6:.1f} MB of Parquet, written in {results['derive_seconds']:.1f} s; "
        f"whole run {time.perf_counter() - t_run:.0f} s)"
    )
    if args.profile:
        print(
            f"cProfile of the build: {args.profile} (python -m pstats {args.profile}); "
            "profiling slows the build, so its timings above are inflated"
        )

    targets = {r[0].strip(): r[3] for r in rows if r[3] is not None}
    if args.json:
        report = {
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "items": args.items,
            "cogs": n_cogs,
            "latency_seconds": args.latency,
            "rows": args.rows,
            "repeat": args.repeat,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "cog": {
                "path": str(master),
                "bytes": master.stat().st_size,
                "first_tile_offset": first_offset,
                **master_params(),
            },
            "build": b,
            "rebuild": rb,
            "filter": f,
            "derived": {
                "seconds": results["derive_seconds"],
                "bytes": derived["bytes"],
                "polygon_bbox_candidates": derived["polygon_bbox_candidates"],
                "expected_rows": {k: len(v) for k, v in derived["expected"].items()},
            },
            "headers_per_second_header_phase": hps,
            "headers_per_second_whole_build": hps_total,
            "filters": FILTERS,
            "table": [
                {
                    "measure": r[0].strip(),
                    "value": r[1],
                    "target": r[2],
                    "result": None if r[3] is None else ("PASS" if r[3] else "MISS"),
                }
                for r in rows
            ],
            "targets": targets,
        }
        write_json(args.json, report)
    return exit_status(args.strict, targets)


if __name__ == "__main__":
    sys.exit(main())
