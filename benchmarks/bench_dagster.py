"""The main job at scale, as a user runs it: ``dagster dev`` after the demo, 100 new fields.

::

    .venv/bin/python -m benchmarks.bench_dagster              # 100 new AOIs x 3 months
    .venv/bin/python -m benchmarks.bench_dagster --aois 200 --json bench_dagster.json

1. ``rasteret-pipelines demo`` (:func:`rasteret_pipelines_demo.demo.run_demo`) in a fresh folder:
   the demo world's 3 months indexed, the quick start's 2 AOIs processed, the runs recorded in a
   persistent SQLite ``DAGSTER_HOME`` seeded with the repository's dagster.yaml; the demo's
   mirror then exits with it, as it does for a user.
2. ``dagster dev -w workspace.yaml`` on that home (webserver, daemon with the default run
   launcher, run queue and sensors, as a user runs it), on 127.0.0.1.
3. ``--aois`` new small fields (about 90 m x 90 m, inside the demo's data area and the area the
   months were indexed for) are written to the AOI file; the clock starts.
4. The instance is polled until every (month, new AOI) NDVI partition of the 3 months is
   materialised. Meanwhile the RSS high-water mark (``VmHWM``) of every run process
   (``dagster api execute_run``) is sampled from /proc.
5. The same work through the library in one process: ``load_collection`` + one
   ``read_geometries`` per month of all new AOIs + ``ndvi_dataset`` + ``save_per_geometry``.

Printed: runs and failed runs (NDVI and other), wall time from the file write, wall time from
the sensor's first request (the sensor interval left out), the peak RSS of the largest run, and
the library-only time. Targets: no failed run; at most one NDVI run per month; wall time without
the sensor interval <= 60 s + 3 x the library-only time.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import REPO_ROOT, exit_status, print_targets, write_json
from rasteret_pipelines_demo.demo_mirror import free_port_pair

MONTHS = ("2024-01", "2024-02", "2024-03")
NDVI = ("ndvi", "sentinel_2_l2a_ndvi")


def new_fields(n: int) -> dict:
    """``n`` fields of 0.0008 x 0.0008 degrees on a grid inside the quick start AOIs' bounds."""
    import shapely.geometry

    per_row = 25
    out = {}
    for i in range(n):
        x = 77.552 + (i % per_row) * 0.0014
        y = 13.012 + (i // per_row) * 0.0014
        out[f"field{i:04d}"] = shapely.geometry.box(x, y, x + 0.0008, y + 0.0008)
    return out


def run_processes(session: int) -> dict[int, int]:
    """``{pid: VmHWM kB}`` of the run and step processes of ``dagster dev`` (session ``session``).

    The code server starts each run, and the multiprocess executor each step, as a
    ``multiprocessing`` child (``spawn_main``/forkserver), so those are the processes whose
    command line names ``multiprocessing``; the webserver, daemon and code server do not.
    """
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[3]) != session:
                continue
            if b"multiprocessing" not in (proc / "cmdline").read_bytes():
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out[int(proc.name)] = int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return out


def library_time(storage: Path, aoi_file: Path, ids: list[str], out_dir: Path) -> tuple[float, int]:
    """Seconds (and GeoTIFFs) of the same NDVI work through the library in this process."""
    from rasteret_pipelines.aois import load_aois
    from rasteret_pipelines.collections import load_collection
    from rasteret_pipelines.defs.partitions import month_bounds
    from rasteret_pipelines.products import ndvi_dataset, save_per_geometry
    from rasteret_pipelines.reading import read_geometries

    t0 = time.perf_counter()
    collection = load_collection("sentinel_2_l2a", storage / "collections")
    aois = load_aois(str(aoi_file)).subset(ids)
    files = 0
    for month in MONTHS:
        first, last = month_bounds(month)
        try:
            ds = read_geometries(collection, aois, ["red", "nir"], date_range=(first, last),
                                 values="reflectance", cloud_mask=True)
        except Exception as exc:  # a month without scenes: nothing to write
            print(f"  library: {month}: {exc}")
            continue
        paths = save_per_geometry(ndvi_dataset(ds, "red", "nir"), out_dir / month)
        files += sum(len(v) for v in paths.values())
    return time.perf_counter() - t0, files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aois", type=int, default=100, help="new AOIs written to the file (100)")
    parser.add_argument("--demo-dir", default=str(REPO_ROOT / ".rasteret_data" / "demo_world"),
                        help="demo world folder (written once, reused)")
    parser.add_argument("--timeout", type=float, default=1800, help="give up after this many seconds")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--strict", action="store_true", help="exit 1 on a missed target")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench_dagster_"))
    home, storage, aoi_file = work / "dagster_home", work / "data", work / "data" / "aois.geojson"
    port = free_port_pair()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RASTERET_", "DAGSTER_"))}
    env.update(DAGSTER_HOME=str(home), RASTERET_STORAGE=str(storage), RASTERET_AOI_FILE=str(aoi_file),
               RASTERET_DEMO_DIR=args.demo_dir, RASTERET_DEMO_PORT=str(port),
               RASTERET_DEMO_MONTHS=",".join(MONTHS), RASTERET_START_MONTH=MONTHS[0])
    print(f"work folder {work}; demo mirror port {port}; `uptime`: {os.popen('uptime').read().strip()}")

    # 1. the demo, in a fresh process (it exits, and its mirror with it)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from rasteret_pipelines_demo.demo import run_demo; run_demo()"],
                   env=env, cwd=work, check=True, stdout=subprocess.DEVNULL)
    print(f"demo: {time.perf_counter() - t0:.1f} s")

    # 2. dagster dev, as the demo's closing hint starts it (rasteret-pipelines ui)
    web = free_port_pair()  # a free port (and its neighbour): the webserver's
    log = open(work / "dagster_dev.log", "wb")
    dev = subprocess.Popen(
        [str(Path(sys.executable).parent / "rasteret-pipelines"), "ui", "-h", "127.0.0.1", "-p", str(web)],
        cwd=work, env={**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"},
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    report: dict = {"aois": args.aois, "months": len(MONTHS), "uptime_before": os.popen("uptime").read().strip()}
    try:
        import urllib.request

        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{web}/server_info", timeout=2):
                    break
            except OSError:
                assert dev.poll() is None and time.monotonic() < deadline, (work / "dagster_dev.log").read_text()[-3000:]
                time.sleep(1)
        time.sleep(5)  # let the daemon start its sensor loop
        os.environ.update({k: v for k, v in env.items() if k.startswith(("DAGSTER_", "RASTERET_"))})
        import dagster as dg

        from rasteret_pipelines.aois import load_aois, write_aois_geojson

        instance = dg.DagsterInstance.get()
        before = {r.run_id for r in instance.get_runs()}
        current = load_aois(str(aoi_file))
        fields = new_fields(args.aois)
        aois = {**{i: current.geometry(i) for i in current.ids}, **fields}

        # 3. the new fields; the clock starts
        t_write = time.time()
        write_aois_geojson(aois, aoi_file)
        wanted = {f"{a}|{m}-01" for a in fields for m in MONTHS}
        key = dg.AssetKey(list(NDVI))
        hwm: dict[int, int] = {}
        while True:
            for pid, kb in run_processes(dev.pid).items():
                hwm[pid] = max(hwm.get(pid, 0), kb)
            done = instance.get_materialized_partitions(key) & wanted
            runs = [r for r in instance.get_runs() if r.run_id not in before]
            failed = [r for r in runs if r.status == dg.DagsterRunStatus.FAILURE]
            if len(done) == len(wanted) and all(r.is_finished for r in runs):
                break
            if failed and all(r.is_finished for r in runs) and len(done) < len(wanted):
                print(f"  {len(failed)} failed runs; {len(done)} of {len(wanted)} partitions")
                break
            assert time.time() - t_write < args.timeout, f"{len(done)} of {len(wanted)} after {args.timeout} s"
            time.sleep(0.5)
        t_end = max(
            (rec.timestamp for rec in instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, asset_partitions=sorted(wanted)), limit=len(wanted) + 10).records),
            default=time.time(),
        )
        runs = [r for r in instance.get_runs() if r.run_id not in before]
        first_request = min(instance.get_run_record_by_id(r.run_id).create_timestamp.timestamp() for r in runs)
        ndvi_runs = [r for r in runs if any(k.path == list(NDVI) for k in (r.asset_selection or []))]
        report.update(
            runs=len(runs), ndvi_runs=len(ndvi_runs), other_runs=len(runs) - len(ndvi_runs),
            failed_runs=sum(r.status == dg.DagsterRunStatus.FAILURE for r in runs),
            partitions=len(instance.get_materialized_partitions(key) & wanted), wanted=len(wanted),
            wall_s=round(t_end - t_write, 1), wall_without_sensor_s=round(t_end - first_request, 1),
            sensor_wait_s=round(first_request - t_write, 1),
            peak_run_rss_mb=round(max(hwm.values(), default=0) / 1024, 1),
        )
    finally:
        for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(dev.pid, sig)
                dev.wait(timeout=wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()

    # 5. the library alone (the mirror a run started on demand is still serving)
    from rasteret_pipelines_demo.demo import DemoMirror, probe_demo_mirror

    mirror = None if probe_demo_mirror(f"http://127.0.0.1:{port}") else DemoMirror(args.demo_dir, port).start()
    try:
        seconds, files = library_time(storage, aoi_file, sorted(new_fields(args.aois)), work / "library")
    finally:
        if mirror is not None:
            mirror.stop()
    report.update(library_s=round(seconds, 1), library_files=files, uptime_after=os.popen("uptime").read().strip())
    _stop_detached_mirror(Path(args.demo_dir), port)

    print()
    print(f"| {args.aois} new AOIs x {len(MONTHS)} months | value |")
    print("|---|---|")
    rows = [
        ("NDVI partitions materialised", f"{report['partitions']} of {report['wanted']}"),
        ("runs (NDVI + other)", f"{report['runs']} ({report['ndvi_runs']} + {report['other_runs']})"),
        ("failed runs", report["failed_runs"]),
        ("wall time from the file write", f"{report['wall_s']} s"),
        ("  of which waiting for the sensor tick", f"{report['sensor_wait_s']} s"),
        ("wall time without the sensor interval", f"{report['wall_without_sensor_s']} s"),
        ("peak RSS of the largest run or step process", f"{report['peak_run_rss_mb']} MB"),
        ("library only, one process", f"{report['library_s']} s ({files} GeoTIFFs)"),
    ]
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(f"\nload: before {report['uptime_before']}\n      after  {report['uptime_after']}")
    targets = {
        "no failed run": report["failed_runs"] == 0 and report["partitions"] == report["wanted"],
        f"at most one NDVI run per month ({report['ndvi_runs']} for {len(MONTHS)})": report["ndvi_runs"] <= len(MONTHS),
        f"wall without the sensor interval <= 60 s + 3 x library ({report['wall_without_sensor_s']} <= "
        f"{60 + 3 * report['library_s']:.1f})": report["wall_without_sensor_s"] <= 60 + 3 * report["library_s"],
    }
    print_targets(targets)
    if args.json:
        write_json(args.json, {**report, "targets": targets})
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return exit_status(args.strict, targets)


def _stop_detached_mirror(demo_dir: Path, port: int) -> None:
    """Stop the demo mirror a run started on ``port`` (its pid is in the world's mirror.log)."""
    import re

    log = demo_dir / "mirror.log"
    if not log.exists():
        return
    for pid in re.findall(rf"STAC API http://127\.0\.0\.1:{port}, COGs .*\(pid (\d+)\)", log.read_text()):
        try:
            os.killpg(int(pid), signal.SIGTERM)
        except ProcessLookupError:
            pass


if __name__ == "__main__":
    sys.exit(main())
