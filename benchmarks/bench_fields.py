"""Fields benchmark: ``zonal_stats`` of many fields against rasterio + exactextract, whole process.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_fields [--workloads 1k,10k,100k] [--latency 0.05] [--json out.json]

What it does, in one run:

1. Reuses (or generates) ``bench_cog``'s lab: 20 scenes x (red, nir) of MGRS tile 43PGQ,
   10980 x 10980 uint16, 1024 px tiles, served by ``RangeServer`` with ``--latency`` seconds
   per request, one Earth Search ``sentinel-2-l2a`` STAC item per scene; ``build_collection``
   indexes them once (not timed here: see ``bench_read``).
2. Workloads, all fields on a jittered grid over the lab's 20 km square (rotated squares):
   ``1k`` 1,000 fields of 1 ha, ``10k`` 10,000 of 1 ha, ``100k`` 100,000 smallholder plots of
   0.15 ha (about 15 pixels each). The fields are a GeoParquet file, as a user has them.
   ``70k-points``: 70,000 points uniform over the square, red and nir sampled at each.
3. Each tool runs in a fresh process and every figure is whole-process, from spawn to the mean
   NDVI of every field and date (imports, reading the fields file, everything):

   ``engine``                 ``load_collection`` + ``zonal_stats(collection, "fields.parquet",
                              index="ndvi", stats=["mean"])``.
   ``rasterio+exactextract``  rasterio with 8 threads reads each scene's red and nir over the
                              fields' bounding box (``/vsicurl/``, bench_cog's tuned GDAL
                              settings), NDVI on reflectance, then ``exactextract``'s mean over
                              a NumPy raster source, scene by scene.

   For points: ``engine`` is ``sample_points(collection, "points.parquet", bands=["red",
   "nir"])``; ``rasterio-8t`` is ``src.sample()`` of every point in every file, 8 threads.

4. Agreement: for ``--check`` sampled fields, every date's mean is recomputed from the local
   files with ``rasterio.mask.mask`` (pixel centres, numpy mean): the engine must equal it
   (max abs difference printed). exactextract weights pixels by the fraction of each inside
   the field, so its means differ a little by design; the median difference is printed.
5. Prints a table: seconds, GETs, MB, peak RSS, speed-up against rasterio+exactextract (or
   rasterio's ``sample()``). With ``--repeat N`` every mode runs N times in interleaved rounds
   (engine, baseline, engine, ...) so both meet the same machine; the table gives each mode's
   median run and all its times, with the load average before and after.

Targets: 100k fields in <= 20 s, >= 5x faster than rasterio+exactextract, peak RSS <= 2 GB,
GETs <= distinct tiles; 70k points >= 30x faster than rasterio's sample() with 8 threads.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import sys

import numpy as np

from benchmarks._common import (
    add_lab_arguments,
    command_line,
    cpu_seconds,
    exit_status,
    lab,
    median_run,
    peak_rss_mb,
    print_table_head,
    print_targets,
    write_json,
)
from benchmarks.bench_cog import AOIS, BLOCK, CRS, GDAL_HTTP_ENV, SIZE
from benchmarks.bench_read import COLLECTION, make_items, prepare_lab, worker_build

WORKER_MODULE = "benchmarks.bench_fields"
SOURCE = "sentinel-2-l2a"
AREA_M = 20_000.0
WORKLOADS = {
    "1k": (1_000, 10_000.0),
    "10k": (10_000, 10_000.0),
    "100k": (100_000, 1_500.0),
    "70k-points": (70_000, 0.0),
}
"""name -> (fields, area of each in m²; 0 for points)."""
MODES = ("engine", "rasterio+exactextract")
BASELINE = "rasterio+exactextract"
POINT_MODES = ("engine", "rasterio-8t")
POINT_BASELINE = "rasterio-8t"
TARGET_POINTS_SPEEDUP = 30.0
TARGET_SECONDS_100K = 20.0
TARGET_SPEEDUP = 5.0
TARGET_RSS_MB = 2048.0


# -- fields ----------------------------------------------------------------------------------------


def random_points(n: int, seed: int):
    """``n`` points uniform over the 20 km square, as a GeoDataFrame in lon/lat."""
    import geopandas as gpd
    from pyproj import Transformer

    rng = np.random.default_rng(seed)
    to_utm = Transformer.from_crs("EPSG:4326", CRS, always_xy=True)
    lon = sum((b[0] + b[2]) / 2 for b in AOIS) / len(AOIS)
    lat = sum((b[1] + b[3]) / 2 for b in AOIS) / len(AOIS)
    cx, cy = to_utm.transform(lon, lat)
    x = cx + rng.uniform(-AREA_M / 2, AREA_M / 2, n)
    y = cy + rng.uniform(-AREA_M / 2, AREA_M / 2, n)
    ids = [f"p{i:06d}" for i in range(n)]
    return gpd.GeoDataFrame({"id": ids}, geometry=gpd.points_from_xy(x, y), crs=CRS).to_crs("EPSG:4326")


def jittered_fields(n: int, area_m2: float, seed: int):
    """``n`` rotated squares of ``area_m2`` on a jittered grid over the 20 km square centred on
    the quick start's AOIs, as a GeoDataFrame in lon/lat with ids ``f000000``..."""
    import geopandas as gpd
    import shapely
    from pyproj import Transformer

    rng = np.random.default_rng(seed)
    to_utm = Transformer.from_crs("EPSG:4326", CRS, always_xy=True)
    lon = sum((b[0] + b[2]) / 2 for b in AOIS) / len(AOIS)
    lat = sum((b[1] + b[3]) / 2 for b in AOIS) / len(AOIS)
    cx, cy = to_utm.transform(lon, lat)
    k = math.ceil(math.sqrt(n))
    spacing = AREA_M / k
    side = math.sqrt(area_m2)
    slack = max(spacing - side * math.sqrt(2), 0.0) / 2
    cells = rng.permutation(k * k)[:n]
    x = cx - AREA_M / 2 + (cells % k + 0.5) * spacing + rng.uniform(-slack, slack, n)
    y = cy - AREA_M / 2 + (cells // k + 0.5) * spacing + rng.uniform(-slack, slack, n)
    angle = rng.uniform(0, np.pi / 2, n)
    corners = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1), (-1, -1)], float) * side / 2
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
    px = x[:, None] + corners[:, 0] * cos - corners[:, 1] * sin
    py = y[:, None] + corners[:, 0] * sin + corners[:, 1] * cos
    squares = shapely.polygons(np.stack([px, py], axis=-1))
    ids = [f"f{i:06d}" for i in range(n)]
    return gpd.GeoDataFrame({"id": ids}, geometry=squares, crs=CRS).to_crs("EPSG:4326")


def distinct_tiles(fields_utm, files: int) -> int:
    """Tiles under the fields' windows (rasterio's geometry_window rule) x files: every file
    shares one 1024 px layout, and no tile of the lab's square is sparse."""
    import shapely

    b = shapely.bounds(np.asarray(fields_utm.geometry.values))
    x0, y0 = 699960.0, 1500000.0
    c0 = np.floor((b[:, 0] - x0) / 10.0).astype(int) // BLOCK
    c1 = (np.ceil((b[:, 2] - x0) / 10.0).astype(int) - 1) // BLOCK
    r0 = np.floor((y0 - b[:, 3]) / 10.0).astype(int) // BLOCK
    r1 = (np.ceil((y0 - b[:, 1]) / 10.0).astype(int) - 1) // BLOCK
    tiles = set()
    for a, bb, c, d in zip(c0, c1, r0, r1):
        tiles.update((r, col) for r in range(c, d + 1) for col in range(a, bb + 1))
    return len(tiles) * files


# -- workers (each in a fresh process) --------------------------------------------------------------


def worker_engine(spec: dict) -> dict:
    import pyarrow as pa

    from rasteret_pipelines.collections import load_collection
    from rasteret_pipelines.reading import zonal_stats

    collection = load_collection(COLLECTION, spec["workspace"])
    if spec.get("points"):
        from rasteret_pipelines.reading import sample_points

        table = sample_points(collection, spec["fields"], bands=["red", "nir"])
        table = table.append_column("ndvi_mean", table.column("red"))  # the value checked: red
    else:
        table = zonal_stats(collection, spec["fields"], index="ndvi", stats=["mean"])
    cpu, rss = cpu_seconds(), peak_rss_mb()  # the result exists: the clock stops here
    import pyarrow.compute as pc

    ids = sorted({k.split("|")[0] for k in spec["sample_keys"]})
    sample = table.filter(pc.is_in(table.column("id"), value_set=pa.array(ids)))
    means = {
        f"{i}|{d}": m
        for i, d, m in zip(
            sample.column("id").to_pylist(),
            map(str, sample.column("date").to_pylist()),
            sample.column("ndvi_mean").to_pylist(),
        )
    }
    return {
        "cpu_seconds": cpu,
        "peak_rss_mb": rss,
        "rows": table.num_rows,
        "means": {k: means[k] for k in spec["sample_keys"] if k in means},
    }


def worker_rasterio(spec: dict) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    import geopandas as gpd
    import rasterio
    from exactextract import exact_extract
    from exactextract.raster import NumPyRasterSource
    from rasterio.windows import Window

    fields = gpd.read_parquet(spec["fields"]).to_crs(CRS)
    minx, miny, maxx, maxy = fields.total_bounds
    wkt = fields.crs.to_wkt()

    def read_scene(scene):
        out = []
        for href in scene["hrefs"]:
            with rasterio.open("/vsicurl/" + href) as src:
                (c0, c1), (r0, r1) = ((~src.transform) @ (minx, maxy)), ((~src.transform) @ (maxx, miny))
                window = Window(
                    math.floor(c0), math.floor(c1), math.ceil(r0) - math.floor(c0), math.ceil(r1) - math.floor(c1)
                )
                out.append((src.read(1, window=window), src.window_transform(window)))
        (red, transform), (nir, _) = out
        scale, offset = scene["reflectance"]
        r = red.astype(np.float64) * scale + offset
        n = nir.astype(np.float64) * scale + offset
        with np.errstate(divide="ignore", invalid="ignore"):
            ndvi = ((n - r) / (n + r)).astype(np.float32)
        ndvi[(red == 0) | (nir == 0) | (np.abs(ndvi) > 1)] = np.nan
        return scene["date"], ndvi, transform

    means = {}
    wanted = set(spec["sample_keys"])
    with rasterio.Env(), ThreadPoolExecutor(max_workers=int(spec["threads"])) as pool:
        for date, ndvi, t in pool.map(read_scene, spec["scenes"]):
            h, w = ndvi.shape
            source = NumPyRasterSource(
                ndvi, xmin=t.c, ymin=t.f + h * t.e, xmax=t.c + w * t.a, ymax=t.f, nodata=np.nan, srs_wkt=wkt
            )
            result = exact_extract(source, fields, ["mean"], output="pandas")  # rows in feature order
            for fid, m in zip(fields["id"], result["mean"]):
                key = f"{fid}|{date}"
                if key in wanted:
                    means[key] = None if m is None or not np.isfinite(m) else float(m)
    return {"cpu_seconds": cpu_seconds(), "peak_rss_mb": peak_rss_mb(), "means": means}


def worker_rasterio_sample(spec: dict) -> dict:
    """rasterio's ``sample()`` of every point in every file, one dataset per file, 8 threads."""
    from concurrent.futures import ThreadPoolExecutor

    import geopandas as gpd
    import rasterio

    points = gpd.read_parquet(spec["fields"]).to_crs(CRS)
    xy = list(zip(points.geometry.x, points.geometry.y))

    def sample(href):
        with rasterio.open("/vsicurl/" + href) as src:
            return np.array([v[0] for v in src.sample(xy)])

    hrefs = [(scene["date"], i, h) for scene in spec["scenes"] for i, h in enumerate(scene["hrefs"])]
    with rasterio.Env(), ThreadPoolExecutor(max_workers=int(spec["threads"])) as pool:
        values = list(pool.map(sample, [h for _, _, h in hrefs]))
    cpu, rss = cpu_seconds(), peak_rss_mb()
    wanted = set(spec["sample_keys"])
    red = {}
    for (date, band, _), v in zip(hrefs, values):
        if band == 0:
            for fid, value in zip(points["id"], v):
                if f"{fid}|{date}" in wanted:
                    red[f"{fid}|{date}"] = None if value == 0 else float(value)
    return {"cpu_seconds": cpu, "peak_rss_mb": rss, "means": red}


WORKERS = {
    "build": worker_build,
    "engine": worker_engine,
    BASELINE: worker_rasterio,
    POINT_BASELINE: worker_rasterio_sample,
}


# -- agreement -------------------------------------------------------------------------------------


def rasterio_means(fields, sample_ids, scenes, path_of) -> dict[str, float | None]:
    """Mean NDVI of sampled fields per date by rasterio.mask.mask (pixel centres) on local files."""
    import rasterio
    import rasterio.mask

    sample = fields.set_index("id").loc[sample_ids].to_crs(CRS)
    out = {}
    for scene in scenes:
        arrays = {}
        for band, href in zip(("red", "nir"), scene["hrefs"]):
            with rasterio.open(path_of(href)) as src:
                arrays[band] = [rasterio.mask.mask(src, [g], crop=True, filled=False)[0][0] for g in sample.geometry]
        scale, offset = scene["reflectance"]
        for fid, red, nir in zip(sample.index, arrays["red"], arrays["nir"]):
            valid = ~np.ma.getmaskarray(red) & (red.data != 0) & (nir.data != 0)
            r = red.data.astype(np.float64) * scale + offset
            n = nir.data.astype(np.float64) * scale + offset
            with np.errstate(divide="ignore", invalid="ignore"):
                ndvi = ((n - r) / (n + r)).astype(np.float32)
            v = ndvi[valid & (np.abs(ndvi) <= 1)]
            out[f"{fid}|{scene['date']}"] = float(np.mean(v.astype(np.float64))) if v.size else None
    return out


def rasterio_samples(points, sample_ids, scenes, path_of) -> dict[str, float | None]:
    """Red of sampled points per date by rasterio ``sample()`` on local files (0 is nodata)."""
    import rasterio

    sample = points.set_index("id").loc[sample_ids].to_crs(CRS)
    out = {}
    for scene in scenes:
        with rasterio.open(path_of(scene["hrefs"][0])) as src:
            values = [v[0] for v in src.sample(zip(sample.geometry.x, sample.geometry.y))]
        for fid, v in zip(sample.index, values):
            out[f"{fid}|{scene['date']}"] = None if v == 0 else float(v)
    return out


def _max_diff(a: dict, b: dict) -> float | None:
    diffs = [abs(a[k] - b[k]) for k in b if a.get(k) is not None and b[k] is not None]
    missing = sum((a.get(k) is None) != (b[k] is None) for k in b)
    return math.inf if missing else (max(diffs) if diffs else None)


# -- main ------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="1k,10k,100k", help="comma-separated subset of 1k,10k,100k,70k-points")
    add_lab_arguments(
        p,
        seed_help="seed of the fields and points; default 7",
        repeat_default=1,
        repeat_help="fresh-process runs per mode, in interleaved rounds (engine, baseline, engine, ...); the "
        "median is reported; default 1",
        fields=False,
    )
    p.add_argument("--check", type=int, default=40, help="fields whose means are checked against rasterio.mask")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = command_line(argv, WORKERS, parse_args)
    if args is None:
        return 0
    workloads = [w for w in args.workloads.split(",") if w]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workloads {unknown}: use {', '.join(WORKLOADS)}")
    root, masters_dir, master_of, names, first_offset_by_name, dates = prepare_lab(args)

    from rasteret_pipelines.collections import get_source

    results, traffic = {}, {}
    load_before = os.getloadavg()[0]
    with lab(WORKER_MODULE, root, names, first_offset_by_name, latency=args.latency, make_items=make_items) as the_lab:
        srv, workdir, workspace, items = the_lab.srv, the_lab.workdir, the_lab.workspace, the_lab.items
        source = get_source(SOURCE)
        scenes = []
        for item in items:
            hrefs = [item["assets"][b]["href"] for b in ("red", "nir")]
            scenes.append(
                {
                    "date": item["properties"]["datetime"][:10],
                    "hrefs": hrefs,
                    "reflectance": list(source.reflectance(item["properties"])),
                }
            )
        local = {srv.url_for(n): masters_dir / master_of[n] for n in names}
        the_lab.index(dates, "indexing the lab (build_collection, not timed here) ...")
        tiles = {}
        for workload in workloads:
            n, area = WORKLOADS[workload]
            is_points = area == 0.0
            fields = random_points(n, args.seed) if is_points else jittered_fields(n, area, args.seed)
            fields_path = workdir / f"fields_{workload}.parquet"
            fields.to_parquet(fields_path)
            tiles[workload] = distinct_tiles(fields.to_crs(CRS).buffer(1e-3), len(names))
            rng = np.random.default_rng(args.seed)
            sample_ids = sorted(rng.choice(fields["id"].to_numpy(), size=min(args.check, n), replace=False).tolist())
            sample_keys = [f"{i}|{s['date']}" for i in sample_ids for s in scenes]
            oracle_of = rasterio_samples if is_points else rasterio_means
            oracle = oracle_of(fields, sample_ids, scenes, lambda href: local[href])
            spec = {
                "workspace": str(workspace),
                "fields": str(fields_path),
                "scenes": scenes,
                "threads": args.threads,
                "sample_keys": sample_keys,
                "points": is_points,
            }
            modes = POINT_MODES if is_points else MODES
            runs: dict[str, list[dict]] = {mode: [] for mode in modes}
            for i in range(args.repeat):
                for mode in modes:  # rounds interleave the modes: both see the same machine
                    env = GDAL_HTTP_ENV if mode != "engine" else None
                    run = the_lab.run(mode, spec, workload, i, args.repeat, env)
                    run["agreement"] = _max_diff(run.pop("means"), oracle)
                    if mode == "engine":
                        if run["rows"] != n * len(dates):
                            raise SystemExit(
                                f"FAILED: {workload}: the engine gave {run['rows']} rows, expected {n * len(dates)}"
                            )
                        if run["agreement"] is None or run["agreement"] > (0 if is_points else 1e-6):
                            raise SystemExit(
                                f"FAILED: {workload}: engine values differ from rasterio by {run['agreement']}"
                            )
                    runs[mode].append(run)
            for mode, mode_runs in runs.items():
                key = f"{workload}/{mode}"
                results[key] = dict(median_run(mode_runs, "process_wall_seconds"))
                results[key]["all_seconds"] = [r["process_wall_seconds"] for r in mode_runs]
                results[key]["load_averages"] = [r["load_average"] for r in mode_runs]
                traffic[key] = results[key].pop("traffic")

    rows = []
    for workload in workloads:
        modes = POINT_MODES if WORKLOADS[workload][1] == 0.0 else MODES
        base = results[f"{workload}/{modes[1]}"]["process_wall_seconds"]
        for mode in modes:
            r, t = results[f"{workload}/{mode}"], traffic[f"{workload}/{mode}"]
            rows.append(
                {
                    "workload": workload,
                    "fields": WORKLOADS[workload][0],
                    "mode": mode,
                    "seconds": r["process_wall_seconds"],
                    "cpu_seconds": r["cpu_seconds"],
                    "gets": t.gets,
                    "header_gets": t.header_gets,
                    "bytes": t.bytes,
                    "peak_rss_mb": r["peak_rss_mb"],
                    "speedup": base / r["process_wall_seconds"],
                    "max_abs_diff_vs_rasterio_mask": r["agreement"],
                    "distinct_tiles": tiles[workload],
                    "all_seconds": r["all_seconds"],
                    "load_averages": r["load_averages"],
                }
            )
    load_after = os.getloadavg()[0]
    print()
    print(
        f"{len(dates)} scenes x 2 bands = {len(names)} COGs ({SIZE} px, {BLOCK} px tiles), "
        f"{args.latency * 1000:.0f} ms per request; whole process, spawn to the mean NDVI of every field and date"
    )
    print(
        f"median of {args.repeat} fresh process(es) per mode, in interleaved rounds; load average "
        f"{load_before:.2f} before, {load_after:.2f} after ({os.cpu_count()} CPUs)"
    )
    head = (
        f"{'fields':>7} {'mode':<22} {'seconds':>8} {'CPU s':>6} {'GETs':>5} {'tiles':>5} {'MB':>7} "
        f"{'peak RSS MB':>11} {'speed-up':>8} {'mean vs rasterio.mask':>22} {'runs (s)':>9}"
    )
    print_table_head(head)
    for r in rows:
        diff = r["max_abs_diff_vs_rasterio_mask"]
        diff_text = "n/a" if diff is None else f"{diff:.1e}"
        print(
            f"{r['fields']:>7} {r['mode']:<22} {r['seconds']:>8.2f} {r['cpu_seconds']:>6.2f} {r['gets']:>5} "
            f"{r['distinct_tiles']:>5} {r['bytes'] / 1e6:>7.1f} {r['peak_rss_mb']:>11.0f} {r['speedup']:>7.2f}x "
            f"{diff_text:>22} {' '.join(f'{x:.2f}' for x in r['all_seconds'])}"
        )
    print()
    print("(mean vs rasterio.mask: the largest |difference| of the mean NDVI over the sampled fields x dates;")
    print(" for points, of the red value against rasterio sample(); engine on points: sample_points of red and nir;")
    print(" exactextract weights edge pixels by coverage, so it differs by design; tiles: distinct tiles")
    print(f" under the fields x files; this machine has {os.cpu_count()} CPUs, shared with the range server)")

    targets = {}
    by = {(r["workload"], r["mode"]): r for r in rows}
    for workload in workloads:
        e = by[(workload, "engine")]
        targets[f"{workload}: engine GETs <= distinct tiles ({e['distinct_tiles']})"] = e["gets"] <= e["distinct_tiles"]
        targets[f"{workload}: engine peak RSS <= {TARGET_RSS_MB:g} MB"] = e["peak_rss_mb"] <= TARGET_RSS_MB
    if "70k-points" in workloads:
        e = by[("70k-points", "engine")]
        targets[f"70k-points: engine >= {TARGET_POINTS_SPEEDUP:g}x faster than {POINT_BASELINE} sample()"] = (
            e["speedup"] >= TARGET_POINTS_SPEEDUP
        )
    if "100k" in workloads:
        e = by[("100k", "engine")]
        targets[f"100k: engine <= {TARGET_SECONDS_100K:g} s"] = e["seconds"] <= TARGET_SECONDS_100K
        targets[f"100k: engine >= {TARGET_SPEEDUP:g}x faster than {BASELINE}"] = e["speedup"] >= TARGET_SPEEDUP
    print_targets(targets)
    if args.json:
        write_json(
            args.json,
            {
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "latency_seconds": args.latency,
                "repeat": args.repeat,
                "load_average_before": load_before,
                "load_average_after": load_after,
                "scenes": len(dates),
                "rows": rows,
                "targets": targets,
                "python": sys.version.split()[0],
                "cpus": os.cpu_count(),
            },
            "\n",
        )
    return exit_status(args.strict, targets)


if __name__ == "__main__":
    sys.exit(main())
