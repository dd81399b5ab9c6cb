"""Reading benchmark: ``read_geometries`` on a built collection against rasterio over HTTP.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_read [--scenes 20] [--fields 100] [--latency 0.05] [--json out.json]

What it does, in one run:

1. Reuses (or generates) ``bench_cog``'s Sentinel-2-like COGs in ``--data-dir`` (default
   ``benchmarks/.data``): 10980 x 10980 uint16 red and nir bands on the grid of MGRS tile
   43PGQ (EPSG:32643), Deflate + predictor 2, 1024 px tiles, overviews, nodata 0, hard-linked
   under one name per scene and band, so every file is its own URL.
2. Serves them through ``RangeServer`` with ``--latency`` seconds per request, and one STAC
   item per scene (Earth Search's ``sentinel-2-l2a`` item format, from the demo world's recorded
   template; footprint = the files' valid-data area in lon/lat, red/nir hrefs on the range
   server) through ``StacServer``.
3. ``index``: ``build_collection("sentinel-2-l2a", ...)`` over every scene, in a fresh process:
   the one-time cost (header GETs) after which reads need no header request.
4. Two workloads, each mode in its own fresh process (peak RSS per mode, no shared cache):

   ``quickstart``  the original Rasteret quick start: the two AOIs, red and nir, every scene,
                   masked to the polygons (pixel centres), float values.
   ``fields``      ``--fields`` field-sized polygons (rotated rectangles, 100-300 m a side)
                   spread over a 20 km x 20 km area around the AOIs, same bands and scenes.

   ``engine``       ``load_collection`` + ``read_geometries(collection, geometries,
                    ["red", "nir"], values="float")``; both are timed.
   ``rasterio-8t``  ``rasterio.mask.mask(src, [polygon], crop=True)`` of every polygon in every
                    file over ``/vsicurl/`` with ``bench_cog``'s tuned GDAL settings, one
                    dataset per file on a ThreadPoolExecutor(8); opening is timed (a rasterio
                    user pays it on every read).

   The engine's pixels (NaN outside the polygon and at nodata) and window transforms must equal
   rasterio's for every (scene, band, polygon) (SHA-256 of each array), or the run fails.
5. Prints a table (seconds, GETs, header GETs, MB, peak RSS, speed-up against rasterio with 8
   threads) from the range server's request log, checks the targets, and writes JSON with
   ``--json``. The STAC server's log must not move during any read.

Targets: quickstart engine >= 3x faster than rasterio-8t, <= 40 GETs (one per file: both AOIs
lie in one tile), no header GET, peak RSS < 400 MB; fields engine >= 3x faster than
rasterio-8t and GETs <= the distinct tiles the polygons need (computed with rasterio's
``geometry_window`` on GDAL's block layout).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._common import (
    Traffic,
    account,
    add_lab_arguments,
    command_line,
    cpu_seconds,
    exit_status,
    first_tile_offsets,
    indexed,
    lab,
    median_run,
    peak_rss_mb,
    print_table_head,
    print_targets,
    settle,
    write_json,
)
from benchmarks.bench_cog import (
    AOIS,
    BLOCK,
    CRS,
    GDAL_HTTP_ENV,
    ORIGIN,
    PIXEL,
    SIZE,
    TILE,
    check_grid,
    ensure_data,
    warm_page_cache,
)

COLLECTION = "bench_read"
SOURCE = "sentinel-2-l2a"
BANDS = ("red", "nir")
WORKER_MODULE = "benchmarks.bench_read"
WORKLOADS = ("quickstart", "fields")
MODES = ("engine", "rasterio-8t")
BASELINE = "rasterio-8t"
FIELD_AREA_M = 20_000.0
FIELD_SIDES_M = (100.0, 300.0)
TARGET_SPEEDUP = 3.0
TARGET_QUICKSTART_GETS = 40
TARGET_RSS_MB = 400.0
NAN_DIGEST_FILL = np.float32(-99999.0)


# -- geometries ------------------------------------------------------------------------------------


def quickstart_geometries() -> list[tuple[str, str]]:
    """(id, WKT in lon/lat) of the quick start's two AOIs (ids 1 and 2, as a list input gets)."""
    import shapely.geometry

    return [(str(i), shapely.geometry.box(*b).wkt) for i, b in enumerate(AOIS, start=1)]


def field_geometries(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` rotated rectangles, 100-300 m a side, centres uniform over a 20 km square centred
    on the AOIs, as (id, WKT in lon/lat)."""
    import shapely.affinity
    import shapely.geometry
    from pyproj import Transformer

    to_utm = Transformer.from_crs("EPSG:4326", CRS, always_xy=True)
    to_ll = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    lon = sum((b[0] + b[2]) / 2 for b in AOIS) / len(AOIS)
    lat = sum((b[1] + b[3]) / 2 for b in AOIS) / len(AOIS)
    cx, cy = to_utm.transform(lon, lat)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = cx + rng.uniform(-0.5, 0.5) * (FIELD_AREA_M - 2 * FIELD_SIDES_M[1])
        y = cy + rng.uniform(-0.5, 0.5) * (FIELD_AREA_M - 2 * FIELD_SIDES_M[1])
        w, h = rng.uniform(*FIELD_SIDES_M, size=2)
        rect = shapely.geometry.box(x - w / 2, y - h / 2, x + w / 2, y + h / 2)
        rect = shapely.affinity.rotate(rect, rng.uniform(0, 90), origin="center")
        ll = shapely.geometry.Polygon([to_ll.transform(px, py) for px, py in rect.exterior.coords])
        out.append((f"field-{i:03d}", ll.wkt))
    return out


def to_grid_crs(wkts: list[str]):
    """The lon/lat polygons in the tile's CRS (pyproj, x/y order: what the engine computes)."""
    import shapely
    from pyproj import Transformer

    t = Transformer.from_crs("EPSG:4326", CRS, always_xy=True)
    out = []
    for w in wkts:
        g = shapely.from_wkt(w)
        out.append(shapely.transform(g, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1]))))
    return out


def needed_tiles(masters_dir: Path, master: str, wkts: list[str]) -> set[tuple[int, int]]:
    """Full-resolution tiles (row, col) under rasterio's ``geometry_window`` of each polygon,
    non-sparse per GDAL's block layout; the same in every file (all share one layout)."""
    import rasterio
    import rasterio.features

    tiles = set()
    with rasterio.open(masters_dir / master) as src:
        bh, bw = src.block_shapes[0]
        for g in to_grid_crs(wkts):
            win = rasterio.features.geometry_window(src, [g])
            for row in range(int(win.row_off) // bh, (int(win.row_off + win.height) - 1) // bh + 1):
                for col in range(int(win.col_off) // bw, (int(win.col_off + win.width) - 1) // bw + 1):
                    if int(src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1) or 0):
                        tiles.add((row, col))
    return tiles


# -- STAC items ------------------------------------------------------------------------------------


def valid_footprint():
    """The valid-data area of bench_cog's images in lon/lat: the tile minus its nodata wedge
    (rows >= 0.72 n, columns < 0.8 (row - 0.72 n)), edges densified."""
    import shapely.geometry
    from pyproj import Transformer

    n = SIZE
    corners_px = [(0, 0), (n, 0), (n, n), (0.8 * 0.28 * n, n), (0, 0.72 * n)]
    ring = []
    for (c0, r0), (c1, r1) in zip(corners_px, corners_px[1:] + corners_px[:1]):
        for t in np.linspace(0, 1, 11)[:-1]:
            ring.append((c0 + t * (c1 - c0), r0 + t * (r1 - r0)))
    to_ll = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    pts = [to_ll.transform(ORIGIN[0] + c * PIXEL, ORIGIN[1] - r * PIXEL) for c, r in ring]
    return shapely.geometry.Polygon(pts)


def scene_date(file_name: str) -> dt.date:
    return dt.datetime.strptime(file_name.split("_")[2], "%Y%m%d").date()


def make_items(files: list[str], url_for) -> list[dict]:
    """One Earth Search sentinel-2-l2a item per scene (demo template), red/nir on the server."""
    import shapely.geometry

    from rasteret_pipelines_demo import demo_data

    by_date: dict[dt.date, dict[str, str]] = {}
    for name in files:
        band = name.rsplit("_", 1)[1].removesuffix(".tif")
        by_date.setdefault(scene_date(name), {})[band] = url_for(name)
    footprint = valid_footprint()
    geometry = shapely.geometry.mapping(footprint)
    items = []
    for i, (date, hrefs) in enumerate(sorted(by_date.items())):
        platform = "sentinel-2a" if i % 2 == 0 else "sentinel-2b"
        scene = demo_data.DemoScene(date, cloud_cover=float((i * 37) % 60), platform=platform)
        item = demo_data.make_item(scene, {**hrefs, "scl": None}, size_10m=SIZE)
        del item["assets"]["scl"]  # bench_cog writes red and nir only
        item["geometry"] = {"type": "Polygon", "coordinates": [[list(c) for c in geometry["coordinates"][0]]]}
        item["bbox"] = list(footprint.bounds)
        items.append(item)
    return items


# -- workers (each mode runs in a fresh process) ---------------------------------------------------


def _digest(arr: np.ndarray, transform) -> str:
    """SHA-256 of a float32 array (NaN as one fixed value) and its window transform (1e-6 m)."""
    a = np.asarray(arr, dtype=np.float32)
    a = np.where(np.isnan(a), NAN_DIGEST_FILL, a)
    h = hashlib.sha256()
    h.update(f"{a.shape}|{[round(float(v), 6) for v in tuple(transform)[:6]]}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def worker_build(spec: dict) -> dict:
    import pystac_client  # noqa: F401  (imported before the clock)

    from rasteret_pipelines.collections import build_collection

    t0, c0 = time.perf_counter(), cpu_seconds()
    report = build_collection(
        SOURCE,
        spec.get("collection", COLLECTION),
        spec["workspace"],
        date_range=tuple(spec["date_range"]),
        bands=list(BANDS),
        stac_url=spec["stac_url"],
        progress=False,
    )
    return {
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": cpu_seconds() - c0,
        "items": report.items,
        "failed": [f.__dict__ for f in report.failed],
        "peak_rss_mb": peak_rss_mb(),
    }


def worker_engine(spec: dict) -> dict:
    import geopandas as gpd
    import shapely
    import xarray  # noqa: F401  (imported before the clock)

    from rasteret_pipelines.collections import load_collection
    from rasteret_pipelines.reading import read_geometries
    from rasteret_pipelines.reading.model import geometry_transform

    ids = [i for i, _ in spec["geometries"]]
    shapes = [shapely.from_wkt(w) for _, w in spec["geometries"]]
    if spec["workload"] == "quickstart":
        geometries = shapes  # the quick start passes a list of polygons (ids 1..n)
    else:
        geometries = gpd.GeoDataFrame(geometry=shapes, index=ids, crs="EPSG:4326")
    t0, c0 = time.perf_counter(), cpu_seconds()
    collection = load_collection(COLLECTION, spec["workspace"])
    ds = read_geometries(collection, geometries, list(BANDS), values="float")
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0

    digests = {}
    for gi, gid in enumerate(ds["geometry"].values.tolist()):
        h, w = int(ds["height"].values[gi]), int(ds["width"].values[gi])
        transform = geometry_transform(ds, gid)
        for ti in range(ds.sizes["time"]):
            scene = str(ds["scene_id"].values[gi, ti])
            if not scene:
                continue
            date = scene.split("_")[2]
            for band in BANDS:
                digests[f"{date}|{band}|{gid}"] = _digest(ds[band].values[gi, ti, :h, :w], transform)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "digests": digests,
        "dataset_mb": ds.nbytes / 1e6,
        "dims": {k: int(v) for k, v in ds.sizes.items()},
        "peak_rss_mb": peak_rss_mb(),
    }


def worker_rasterio(spec: dict) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    import rasterio
    import rasterio.mask

    ids = [i for i, _ in spec["geometries"]]
    shapes = to_grid_crs([w for _, w in spec["geometries"]])
    threads = int(spec["threads"])

    def read_file(href: str):
        # One dataset per task: rasterio datasets must not be shared between threads.
        out = []
        with rasterio.open("/vsicurl/" + href) as src:
            for g in shapes:
                arr, transform = rasterio.mask.mask(src, [g], crop=True, filled=False)
                out.append((np.ma.filled(arr[0].astype(np.float32), np.nan), transform))
        return out

    hrefs = spec["hrefs"]
    with rasterio.Env():  # drivers registered before the clock starts; options from env
        t0, c0 = time.perf_counter(), cpu_seconds()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            results = list(pool.map(read_file, hrefs))
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0

    digests = {}
    for href, per_geom in zip(hrefs, results):
        name = href.rsplit("/", 1)[1]
        date, band = name.split("_")[2], name.rsplit("_", 1)[1].removesuffix(".tif")
        for gid, (arr, transform) in zip(ids, per_geom):
            digests[f"{date}|{band}|{gid}"] = _digest(arr, transform)
    return {"seconds": seconds, "cpu_seconds": cpu, "digests": digests, "peak_rss_mb": peak_rss_mb()}


WORKERS = {"build": worker_build, "engine": worker_engine, "rasterio-8t": worker_rasterio}


def prepare_lab(args):
    """The COG lab both read benchmarks use: ``bench_cog``'s files made (once) and linked for
    ``args``, their first tile offsets (to tell header GETs from tile GETs), the page cache
    warmed, and the scene dates.

    Returns:
        ``(root, masters_dir, master_of, names, first_offset_by_name, dates)``.
    """
    check_grid()
    data = ensure_data(args.data_dir, args.scenes, args.variants)
    masters_dir = args.data_dir / "masters"
    master_of = dict(data["files"])
    names = [n for n, _ in data["files"]]
    offsets_master = first_tile_offsets(masters_dir, set(master_of.values()))
    first_offset_by_name = {n: offsets_master[m] for n, m in master_of.items()}
    warm_page_cache(masters_dir / m for m in set(master_of.values()))
    dates = sorted({scene_date(n) for n in names})
    return data["root"], masters_dir, master_of, names, first_offset_by_name, dates


# -- main ------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_lab_arguments(
        p,
        seed_help="seed of the field polygons; default 7",
        repeat_default=1,
        repeat_help="fresh-process runs per mode, median reported",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = command_line(argv, WORKERS, parse_args)
    if args is None:
        return 0
    if args.scenes < 1 or args.fields < 1 or args.repeat < 1 or args.variants < 1:
        raise SystemExit("--scenes, --fields, --variants and --repeat must be >= 1")
    root, masters_dir, master_of, names, first_offset_by_name, dates = prepare_lab(args)

    geometries = {"quickstart": quickstart_geometries(), "fields": field_geometries(args.fields, args.seed)}
    any_master = next(iter(master_of.values()))
    tiles = {w: needed_tiles(masters_dir, any_master, [g for _, g in geoms]) for w, geoms in geometries.items()}
    distinct = {w: len(t) * len(names) for w, t in tiles.items()}
    print(
        f"{len(names)} files ({len(dates)} scenes x {len(BANDS)} bands, {TILE}, {SIZE}x{SIZE}, "
        f"{BLOCK} px tiles); quickstart: {len(geometries['quickstart'])} AOIs in "
        f"{len(tiles['quickstart'])} tile(s) per file; fields: {args.fields} polygons in "
        f"{len(tiles['fields'])} tiles per file ({distinct['fields']} distinct tiles)"
    )

    results: dict[str, dict] = {}
    traffic: dict[str, Traffic] = {}
    stac_moves: dict[str, int] = {}
    with lab(WORKER_MODULE, root, names, first_offset_by_name, latency=args.latency, make_items=make_items) as the_lab:
        srv, workspace, hrefs = the_lab.srv, the_lab.workspace, the_lab.hrefs
        srv.reset_log()
        with indexed(the_lab, dates, "running index (build_collection) ...") as (stac, build):
            results["index"] = build
            traffic["index"] = account(settle(srv), first_offset_by_name)

            for workload in WORKLOADS:
                spec = {
                    "workload": workload,
                    "geometries": geometries[workload],
                    "workspace": str(workspace),
                    "hrefs": hrefs,
                    "threads": args.threads,
                }
                for mode in MODES:
                    key = f"{workload}/{mode}"
                    runs = []
                    for i in range(args.repeat):
                        stac.reset_log()
                        env = GDAL_HTTP_ENV if mode.startswith("rasterio") else None
                        run = the_lab.run(mode, spec, workload, i, args.repeat, env)
                        run["stac_requests"] = stac.count()
                        runs.append(run)
                    for r in runs[1:]:
                        if r["digests"] != runs[0]["digests"]:
                            raise SystemExit(f"FAILED: {key} returned different pixels on repeated runs")
                    median = dict(median_run(runs, "seconds"))
                    median["seconds_all"] = [r["seconds"] for r in runs]
                    traffic[key] = median.pop("traffic")
                    stac_moves[key] = max(r["stac_requests"] for r in runs)
                    results[key] = median

    # -- correctness ------------------------------------------------------------------------------
    problems = []
    for workload in WORKLOADS:
        eng, rio = results[f"{workload}/engine"]["digests"], results[f"{workload}/{BASELINE}"]["digests"]
        expected_keys = len(dates) * len(BANDS) * len(geometries[workload])
        if len(rio) != expected_keys:
            problems.append(f"{workload}: rasterio produced {len(rio)} arrays, expected {expected_keys}")
        if set(eng) != set(rio):
            problems.append(f"{workload}: engine arrays {len(eng)} != rasterio arrays {len(rio)}")
        bad = sorted(k for k in set(eng) & set(rio) if eng[k] != rio[k])
        if bad:
            problems.append(f"{workload}: {len(bad)} arrays differ from rasterio, e.g. {bad[:3]}")
        if stac_moves[f"{workload}/engine"]:
            problems.append(f"{workload}: the engine made {stac_moves[f'{workload}/engine']} STAC requests")
    if problems:
        for p in problems:
            print("MISMATCH:", p, file=sys.stderr)
        raise SystemExit("FAILED: the engine's pixels are not rasterio's pixels")
    print(
        "correctness: "
        + "; ".join(f"{w}: all {len(results[f'{w}/engine']['digests'])} masked arrays identical" for w in WORKLOADS)
        + " (engine vs rasterio.mask.mask, sha256 of values and window transform)"
    )

    # -- report -----------------------------------------------------------------------------------
    rows = []
    for key in ["index"] + [f"{w}/{m}" for w in WORKLOADS for m in MODES]:
        r, t = results[key], traffic[key]
        workload, _, mode = key.partition("/")
        base = results.get(f"{workload}/{BASELINE}", {}).get("seconds")
        rows.append(
            {
                "workload": workload if mode else "index",
                "mode": mode or "engine build_collection",
                "seconds": r["seconds"],
                "seconds_all": r.get("seconds_all", [r["seconds"]]),
                "cpu_seconds": r["cpu_seconds"],
                "gets": t.gets,
                "header_gets": t.header_gets,
                "heads": t.heads,
                "bytes": t.bytes,
                "peak_rss_mb": r["peak_rss_mb"],
                "speedup_vs_rasterio_8t": (base / r["seconds"]) if (base and mode) else None,
                "stac_requests": stac_moves.get(key),
                "process_wall_seconds": r["process_wall_seconds"],
                **({"dataset_mb": r["dataset_mb"], "dims": r["dims"]} if "dims" in r else {}),
                "traffic": t.__dict__,
            }
        )
    head = (
        f"{'workload':<11} {'mode':<24} {'seconds':>8} {'CPU s':>6} {'GETs':>5} {'hdr GETs':>8} {'MB':>7} "
        f"{'peak RSS MB':>11} {'vs rio-8t':>9}"
    )
    print()
    print(
        f"{len(dates)} scenes x {len(BANDS)} bands = {len(names)} COGs, {args.latency * 1000:.0f} ms latency per "
        f"request" + (f", median of {args.repeat} runs" if args.repeat > 1 else "")
    )
    print_table_head(head)
    for row in rows:
        speed = f"{row['speedup_vs_rasterio_8t']:>8.2f}x" if row["speedup_vs_rasterio_8t"] else f"{'':>9}"
        print(
            f"{row['workload']:<11} {row['mode']:<24} {row['seconds']:>8.2f} {row['cpu_seconds']:>6.2f} {row['gets']:>5} "
            f"{row['header_gets']:>8} {row['bytes'] / 1e6:>7.1f} {row['peak_rss_mb']:>11.0f} {speed}"
        )
    print()
    print("(index: once per collection; engine: load_collection + read_geometries, masked, float;")
    print(" rasterio-8t: open + rasterio.mask.mask(crop=True) per file and polygon, 8 threads;")
    print(f" CPU s: the worker's user + system CPU time while timed; this machine has {os.cpu_count()} CPUs,")
    print(" shared with the range server)")

    row = {(r["workload"], r["mode"]): r for r in rows}
    qe, fe = row[("quickstart", "engine")], row[("fields", "engine")]
    targets = {
        f"quickstart engine >= {TARGET_SPEEDUP:g}x faster than rasterio-8t": qe["speedup_vs_rasterio_8t"]
        >= TARGET_SPEEDUP,
        f"quickstart engine GETs <= {TARGET_QUICKSTART_GETS}": qe["gets"] + qe["heads"] <= TARGET_QUICKSTART_GETS,
        "quickstart engine header GETs == 0": qe["header_gets"] == 0,
        f"quickstart engine peak RSS < {TARGET_RSS_MB:g} MB": qe["peak_rss_mb"] < TARGET_RSS_MB,
        f"fields engine >= {TARGET_SPEEDUP:g}x faster than rasterio-8t": fe["speedup_vs_rasterio_8t"] >= TARGET_SPEEDUP,
        f"fields engine GETs <= distinct tiles needed ({distinct['fields']})": fe["gets"] + fe["heads"]
        <= distinct["fields"],
        "fields engine header GETs == 0": fe["header_gets"] == 0,
    }
    print_targets(targets)

    if args.json:
        report = {
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "scenes": len(dates),
            "files": len(names),
            "latency_seconds": args.latency,
            "grid": {"tile": TILE, "crs": CRS, "origin": ORIGIN, "pixel": PIXEL, "size": SIZE, "block": BLOCK},
            "geometries": {w: len(g) for w, g in geometries.items()},
            "field_area_m": FIELD_AREA_M,
            "field_sides_m": FIELD_SIDES_M,
            "seed": args.seed,
            "tiles_per_file": {w: len(t) for w, t in tiles.items()},
            "distinct_tiles": distinct,
            "rasterio_env": GDAL_HTTP_ENV,
            "rasterio_threads": args.threads,
            "repeat": args.repeat,
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "rows": rows,
            "targets": targets,
        }
        write_json(args.json, report, "\n")
    return exit_status(args.strict, targets)


if __name__ == "__main__":
    sys.exit(main())
