"""A month's dry run of the Dagster fields flow at many fields: warm process, step by step.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_month_plan [--fields 50000] [--cell-deg 0.01] [--repeat 2]

What the fields asset does for a month before it reads anything, at the scale of issue "scale in
fields": the demo world is made first (``run_demo`` in a fresh process, into a temporary storage;
not timed), then in this process ``--fields`` fields from ``bench_dagster.new_fields`` are parsed
as the field sensor's file is (``parse_fields`` of GeoParquet bytes, ``--cell-deg`` group cells:
0.01 makes 32 groups of the demo area, 0.1 one group), and for every month of the demo's
collection this times ``fields_of``, ``fields_outside`` and ``plan_field_month`` (the exact dry
run of the month's statistics read and COG reads, from the cached headers alone: no request),
with one ``GroupAreas`` per round as the asset keeps one per run. Seconds are wall time in a warm
process (imports and the demo excluded); the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import collections
import functools
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import REPO_ROOT
from benchmarks.bench_dagster import MONTHS, demo_env, new_fields, run_demo_process


def _timed(owner, name: str, label: str, seconds: collections.Counter) -> None:
    real = getattr(owner, name)

    @functools.wraps(real)
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            seconds[label] += time.perf_counter() - t

    setattr(owner, name, wrapper)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fields", type=int, default=50_000)
    p.add_argument("--cell-deg", type=float, default=0.01, help="group cell size (0.01: 32 groups, 0.1: one)")
    p.add_argument("--repeat", type=int, default=2, help="rounds over the months, each with a new GroupAreas")
    p.add_argument(
        "--demo-dir", default=str(REPO_ROOT / ".rasteret_data" / "demo_world"), help="demo world folder (reused)"
    )
    args = p.parse_args(argv)

    import geopandas as gpd

    from rasteret_pipelines.collections import load_collection
    from rasteret_pipelines.defs import pipeline
    from rasteret_pipelines.defs.io_managers import CollectionSlice
    from rasteret_pipelines.fields import parse_fields
    from rasteret_pipelines.reading import explain as explain_module
    from rasteret_pipelines_demo.demo_mirror import free_port_pair

    work = Path(tempfile.mkdtemp(prefix="bench_month_plan_"))
    storage = work / "data"
    env = demo_env(work / "dagster_home", storage, args.demo_dir, free_port_pair())
    print("making the demo world's collection (not timed) ...", flush=True)
    run_demo_process(env, work)
    root = storage / "collections"
    full = load_collection("sentinel_2_l2a", root)
    searches = {m: json.loads((root / "sentinel_2_l2a" / f"month={m}" / "_search.json").read_text()) for m in MONTHS}
    collection = CollectionSlice(
        name=full.name, storage=full.storage, manifest=full.manifest, month_keys=tuple(MONTHS), searches=searches
    )

    t = time.perf_counter()
    fields = new_fields(args.fields)
    frame = gpd.GeoDataFrame({"id": list(fields)}, geometry=list(fields.values()), crs="EPSG:4326")
    buf = io.BytesIO()
    frame.to_parquet(buf)
    fieldset = parse_fields(buf.getvalue(), cell_deg=args.cell_deg)
    print(
        f"{len(fieldset.frame)} fields in {len(fieldset.groups)} groups (cell {args.cell_deg}), made and parsed in "
        f"{time.perf_counter() - t:.2f} s; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )

    seconds: collections.Counter = collections.Counter()
    real_explain = explain_module.explain

    def explain(read, *a, **k):
        t = time.perf_counter()
        try:
            return real_explain(read, *a, **k)
        finally:
            seconds[f"explain {read}"] += time.perf_counter() - t

    explain_module.explain = explain
    _timed(pipeline, "_geotiff_reads", "group areas and batches", seconds)
    print(
        f"\n{'round':>5} {'month':>8} {'total s':>8} {'fields_of':>10} {'outside':>8} {'plan s':>7} "
        f"{'areas s':>8} {'explain get_xarray':>19} {'explain zonal_stats':>20}"
    )
    for round_ in range(1, args.repeat + 1):
        # (GroupAreas since 2008c1e; the script runs on earlier commits too, for an A/B)
        extra = {"areas": pipeline.GroupAreas()} if hasattr(pipeline, "GroupAreas") else {}
        for month in MONTHS:
            seconds.clear()
            t0 = time.perf_counter()
            sub = fieldset.fields_of(fieldset.groups)
            t1 = time.perf_counter()
            outside = set(pipeline.fields_outside(collection, month, sub))
            read = sub[~sub.index.isin(outside)]
            t2 = time.perf_counter()
            pipeline.plan_field_month("sentinel-2-l2a", collection, month, read, **extra)
            t3 = time.perf_counter()
            print(
                f"{round_:>5} {month:>8} {t3 - t0:>8.2f} {t1 - t0:>10.3f} {t2 - t1:>8.3f} {t3 - t2:>7.2f} "
                f"{seconds['group areas and batches']:>8.2f} {seconds['explain get_xarray']:>19.2f} "
                f"{seconds['explain zonal_stats']:>20.2f}"
            )
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
