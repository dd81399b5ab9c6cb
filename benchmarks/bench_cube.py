"""Cube benchmark: ``read_cube`` (eager and dask) against odc-stac and rasterio over HTTP.

Run from the repository root (``pip install -e '.[dask,bench]'`` for dask and odc-stac)::

    .venv/bin/python -m benchmarks.bench_cube [--scenes 20] [--latency 0.05] [--data-dir benchmarks/.data]

The lab is ``bench_read``'s: ``bench_cog``'s 20 Sentinel-2-like scenes (red and nir, 10980 x
10980 at 10 m on MGRS 43PGQ, 1024 px tiles, overviews) served by ``RangeServer`` with
``--latency`` per request, one STAC item per scene, and a collection built once
(``build_collection``, not timed here). Three workloads on a 20 km x 20 km area centred on
the quick start's AOIs (a lon/lat box, so the grid is a little larger), EPSG:32643, red and nir:

``cube10``    10 m, ``groupby="solar_day"``, first-valid mosaic (one scene per day here).
``cube20``    20 m, average resampling (every reader takes the 2x overview, GDAL's choice).
``median10``  10 m monthly medians (``groupby="month", mosaic="median"``).

Modes, each in its own fresh process (the time is the whole process: spawn to exit):

``engine``        ``read_cube`` eager.
``engine-dask``   ``read_cube(..., chunks={"time": 1, "y": 2048, "x": 2048}).compute()`` on dask's
                  threaded scheduler (cube10 and cube20).
``odc-stac``      ``odc.stac.load(items, geobox=<the same grid>, groupby="solar_day",
                  resampling=..., dtype="float32")`` as documented (eager, no chunks: its
                  default pool reads one file at a time), and for ``median10``
                  ``.resample(time="1MS").median()`` (stackstac's pattern). The targets.
``odc-stac-8t``   The same with ``pool=8`` (8 reading threads), reported beside it.
``rasterio-8t``   ``/vsicurl/`` + ``src.read(window, out_shape, resampling)`` per file (GDAL picks
                  the overview), 8 threads, numpy ``nanmedian`` per month.

Every mode reports, per band and step, the valid-pixel count and the sum of values; the table
shows the largest relative difference from the engine's. Targets: engine >= 3x faster than
odc-stac on every workload; engine-dask within 1.5x of engine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time

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
from benchmarks.bench_cog import AOIS, CRS, GDAL_HTTP_ENV
from benchmarks.bench_read import make_items, prepare_lab, worker_build

COLLECTION = "bench_cube"
SOURCE = "sentinel-2-l2a"
BANDS = ("red", "nir")
WORKER_MODULE = "benchmarks.bench_cube"
AREA_M = 20_000.0
WORKLOADS = {
    "cube10": {"resolution": 10, "resampling": "nearest", "groupby": "solar_day", "mosaic": "first"},
    "cube20": {"resolution": 20, "resampling": "average", "groupby": "solar_day", "mosaic": "first"},
    "median10": {"resolution": 10, "resampling": "nearest", "groupby": "month", "mosaic": "median"},
}
MODES = ("engine", "engine-dask", "odc-stac", "odc-stac-8t", "rasterio-8t")
DASK_CHUNKS = {"time": 1, "y": 2048, "x": 2048}
TARGET_VS_ODC = 3.0
TARGET_DASK = 1.5


def area_bbox() -> tuple[float, float, float, float]:
    """A lon/lat box around a 20 km UTM square centred on the AOIs."""
    from pyproj import Transformer

    lon = sum((b[0] + b[2]) / 2 for b in AOIS) / len(AOIS)
    lat = sum((b[1] + b[3]) / 2 for b in AOIS) / len(AOIS)
    to_utm = Transformer.from_crs("EPSG:4326", CRS, always_xy=True)
    cx, cy = to_utm.transform(lon, lat)
    h = AREA_M / 2
    return Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform_bounds(cx - h, cy - h, cx + h, cy + h)


def _summary(arrays: dict, times) -> dict:
    """Per band: [valid count, sum] per step (float64)."""
    out = {"times": [str(np.datetime64(t, "D")) for t in times]}
    for band, a in arrays.items():
        a = np.asarray(a, dtype=np.float32)
        out[band] = [[int(np.isfinite(x).sum()), float(np.nansum(x, dtype=np.float64))] for x in a]
    return out


# -- workers -----------------------------------------------------------------------------------


def worker_engine(spec: dict) -> dict:
    import xarray  # noqa: F401  (loaded by any cube read)

    from rasteret_pipelines.collections import load_collection
    from rasteret_pipelines.reading.cube import read_cube

    w = spec["params"]
    t0, c0 = time.perf_counter(), cpu_seconds()
    collection = load_collection(COLLECTION, spec["workspace"])
    ds = read_cube(
        collection,
        list(BANDS),
        bbox=tuple(spec["bbox"]),
        crs=CRS,
        resolution=w["resolution"],
        resampling=w["resampling"],
        groupby=w["groupby"],
        mosaic=w["mosaic"],
        chunks=spec.get("chunks"),
    )
    if spec.get("chunks"):
        ds = ds.compute()
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_rss_mb": peak_rss_mb(),
        "summary": _summary({b: ds[b].values for b in BANDS}, ds["time"].values),
        "shape": [int(ds.sizes[d]) for d in ("time", "y", "x")],
    }


def worker_odc(spec: dict) -> dict:
    import odc.stac
    import pystac
    from affine import Affine
    from odc.geo.geobox import GeoBox

    w = spec["params"]
    items = [pystac.Item.from_dict(d) for d in spec["items"]]
    g = spec["grid"]
    geobox = GeoBox((g["height"], g["width"]), Affine(*g["transform"]), CRS)
    t0, c0 = time.perf_counter(), cpu_seconds()
    ds = odc.stac.load(
        items,
        bands=list(BANDS),
        geobox=geobox,
        groupby="solar_day",
        resampling=w["resampling"],
        dtype="float32",
        pool=spec.get("pool"),
    )
    if w["mosaic"] == "median":
        ds = ds.resample(time="1MS").median()
    arrays = {b: ds[b].values for b in BANDS}
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_rss_mb": peak_rss_mb(),
        "summary": _summary(arrays, ds["time"].values),
        "shape": list(arrays[BANDS[0]].shape),
    }


def worker_rasterio(spec: dict) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import from_bounds

    w = spec["params"]
    g = spec["grid"]
    a, _, c, _, e, f = g["transform"]
    bounds = (c, f + e * g["height"], c + a * g["width"], f)

    def read(href: str) -> np.ndarray:
        with rasterio.open("/vsicurl/" + href) as src:
            window = from_bounds(*bounds, transform=src.transform)
            arr = src.read(
                1,
                window=window,
                out_shape=(g["height"], g["width"]),
                resampling=Resampling[w["resampling"]],
                masked=True,
            )
        return np.ma.filled(arr.astype(np.float32), np.nan)

    hrefs = spec["hrefs"]
    with rasterio.Env():
        t0, c0 = time.perf_counter(), cpu_seconds()
        with ThreadPoolExecutor(8) as pool:
            layers = list(pool.map(read, hrefs))
        by_band: dict = {b: {} for b in BANDS}
        for href, arr in zip(hrefs, layers):
            name = href.rsplit("/", 1)[1]
            day, band = name.split("_")[2], name.rsplit("_", 1)[1].removesuffix(".tif")
            by_band[band][day] = arr
        arrays, times = {}, []
        for band in BANDS:
            days = sorted(by_band[band])
            if w["mosaic"] == "median":
                months = sorted({d[:6] for d in days})
                arrays[band] = np.stack(
                    [np.nanmedian(np.stack([by_band[band][d] for d in days if d[:6] == m]), axis=0) for m in months]
                )
                times = [np.datetime64(f"{m[:4]}-{m[4:]}-01") for m in months]
            else:
                arrays[band] = np.stack([by_band[band][d] for d in days])
                times = [np.datetime64(f"{d[:4]}-{d[4:6]}-{d[6:]}") for d in days]
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_rss_mb": peak_rss_mb(),
        "summary": _summary(arrays, times),
        "shape": list(arrays[BANDS[0]].shape),
    }


WORKERS = {
    "build": worker_build,
    "engine": worker_engine,
    "engine-dask": worker_engine,
    "odc-stac": worker_odc,
    "odc-stac-8t": worker_odc,
    "rasterio-8t": worker_rasterio,
}


def _difference(a: dict, b: dict) -> float:
    """Largest relative difference of counts and sums between two summaries (inf: other steps)."""
    if a["times"] != b["times"]:
        return float("inf")
    worst = 0.0
    for band in BANDS:
        for (na, sa), (nb, sb) in zip(a[band], b[band]):
            worst = max(worst, abs(na - nb) / max(na, 1), abs(sa - sb) / max(abs(sa), 1.0))
    return worst


# -- main --------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_lab_arguments(p, seed_help="unused", repeat_default=1, repeat_help="fresh-process runs per mode (median)")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset of " + ", ".join(WORKLOADS))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = command_line(argv, WORKERS, parse_args)
    if args is None:
        return 0
    chosen = [w for w in args.workloads.split(",") if w]
    if not chosen or set(chosen) - set(WORKLOADS):
        raise SystemExit(f"--workloads takes {', '.join(WORKLOADS)}")
    root, masters_dir, master_of, names, first_offset_by_name, dates = prepare_lab(args)

    import shapely

    from rasteret_pipelines.reading.cube import cube_grid

    bbox = area_bbox()
    load_before = os.getloadavg()[0]
    results: dict[str, dict] = {}
    with lab(WORKER_MODULE, root, names, first_offset_by_name, latency=args.latency, make_items=make_items) as the_lab:
        workspace, items, hrefs = the_lab.workspace, the_lab.items, the_lab.hrefs
        the_lab.index(dates, "building the collection (not timed) ...", collection=COLLECTION)
        for workload in chosen:
            params = WORKLOADS[workload]
            grid = cube_grid(crs=CRS, resolution=params["resolution"], area_4326=shapely.box(*bbox))
            spec = {
                "params": params,
                "bbox": list(bbox),
                "workspace": str(workspace),
                "items": items,
                "hrefs": hrefs,
                "grid": {"transform": list(grid.transform), "width": grid.width, "height": grid.height},
            }
            for mode in MODES:
                if mode == "engine-dask" and workload == "median10":
                    continue
                key = f"{workload}/{mode}"
                runs = []
                for i in range(args.repeat):
                    env = GDAL_HTTP_ENV if mode.startswith(("odc", "rasterio")) else None
                    mode_spec = dict(
                        spec,
                        chunks=DASK_CHUNKS if mode == "engine-dask" else None,
                        pool=8 if mode == "odc-stac-8t" else None,
                    )
                    run = the_lab.run(mode, mode_spec, workload, i, args.repeat, env)
                    run["traffic"] = run["traffic"].__dict__
                    runs.append(run)
                results[key] = median_run(runs, "process_wall_seconds")
                results[key]["grid"] = spec["grid"]
    load_after = os.getloadavg()[0]

    head = (
        f"{'workload':<9} {'mode':<12} {'process s':>9} {'read s':>7} {'CPU s':>6} {'GETs':>5} {'hdr':>4} "
        f"{'MB':>7} {'RSS MB':>7} {'vs odc':>7} {'max rel diff':>12}"
    )
    print()
    print(
        f"{len(dates)} scenes x {len(BANDS)} bands, 20 km x 20 km at 10/20 m, {args.latency * 1000:.0f} ms per "
        f"request, load average {load_before:.2f} before, {load_after:.2f} after ({os.cpu_count()} CPUs)"
    )
    print_table_head(head)
    targets = {}
    rows = []
    for workload in chosen:
        eng = results[f"{workload}/engine"]
        odc = results[f"{workload}/odc-stac"]
        for mode in MODES:
            r = results.get(f"{workload}/{mode}")
            if r is None:
                continue
            t = r["traffic"]
            vs = odc["process_wall_seconds"] / r["process_wall_seconds"]
            diff = _difference(eng["summary"], r["summary"])
            rows.append(
                {
                    "workload": workload,
                    "mode": mode,
                    **{k: r[k] for k in ("process_wall_seconds", "seconds", "cpu_seconds", "peak_rss_mb", "shape")},
                    "traffic": t,
                    "vs_odc": vs,
                    "max_rel_diff": diff,
                }
            )
            print(
                f"{workload:<9} {mode:<12} {r['process_wall_seconds']:>9.2f} {r['seconds']:>7.2f} "
                f"{r['cpu_seconds']:>6.2f} {t['gets']:>5} {t['header_gets']:>4} {t['bytes'] / 1e6:>7.1f} "
                f"{r['peak_rss_mb']:>7.0f} {vs:>6.2f}x {diff:>12.2e}"
            )
        targets[f"{workload}: engine >= {TARGET_VS_ODC:g}x faster than odc-stac (whole process)"] = (
            odc["process_wall_seconds"] / eng["process_wall_seconds"] >= TARGET_VS_ODC
        )
        dask = results.get(f"{workload}/engine-dask")
        if dask is not None:
            targets[f"{workload}: engine-dask within {TARGET_DASK:g}x of engine (whole process)"] = (
                dask["process_wall_seconds"] <= TARGET_DASK * eng["process_wall_seconds"]
            )
    print()
    print("(process s: spawn to exit of the worker; read s: load_collection + read (engine), load (odc-stac),")
    print(" reads + numpy (rasterio), medians included; max rel diff: counts and sums per band and step against")
    print(" the engine's; engine-dask: dask's threaded scheduler, chunks time 1, 2048 x 2048)")
    print_targets(targets)
    if args.json:
        write_json(
            args.json,
            {
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "latency_seconds": args.latency,
                "bbox": bbox,
                "rows": rows,
                "targets": targets,
                "load_average": [load_before, load_after],
            },
            "\n",
        )
    return exit_status(args.strict, targets)


if __name__ == "__main__":
    sys.exit(main())
