"""The main job at scale, as a user runs it: ``dagster dev`` after the demo, 10,000 new fields.

::

    .venv/bin/python -m benchmarks.bench_dagster                     # 10,000 new fields x 3 months
    .venv/bin/python -m benchmarks.bench_dagster --fields 2000 --cell-deg 0.01 --json bench.json

1. ``rasteret-pipelines demo`` (:func:`rasteret_pipelines_demo.demo.run_demo`) in a fresh folder:
   the demo world's 3 months indexed, the quick start's 2 fields processed, the runs recorded in
   a persistent SQLite ``DAGSTER_HOME`` seeded with the repository's dagster.yaml; the demo's
   mirror then exits with it, as it does for a user.
2. ``dagster dev`` on that home (``rasteret-pipelines ui``: webserver, daemon with the default
   run launcher, run queue, sensors and automation, as a user runs it), on 127.0.0.1.
3. ``--fields`` new small fields (about 35 m x 70 m, on a grid inside the demo's data area and
   the area the months were indexed for) are written to the field file; the clock starts.
4. The instance is polled until the statistics of every (month, changed group) and the time
   series of every changed group are materialised after the write, and every run launched
   since has finished. Meanwhile the RSS high-water mark (``VmHWM``) of every run process is
   sampled from /proc.
5. The same statistics through the library in one process: ``load_collection`` + one
   ``zonal_stats`` per month over all the fields.

Printed: runs and failed runs, wall time from the file write to the last time series (the
field sensor's tick, the automation's, the backfill daemon's and the runs included), the wait
for the first run, the peak RSS of the largest run, and the library-only time. Targets (issue
18): at most 5 minutes from the write, at most 10 runs, no failed run.
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
STATS = ("field_stats", "sentinel_2_l2a_field_stats")
SERIES = ("field_timeseries", "sentinel_2_l2a_field_timeseries")


def new_fields(n: int) -> dict:
    """``n`` fields of 0.0003 x 0.0006 degrees on a 100-column grid inside the area the demo
    indexes (the quick start AOIs' bounds, 77.55..77.59 E, 13.01..13.09 N)."""
    import shapely.geometry

    per_row = 100
    rows = max(1, -(-n // per_row))
    dy = min(0.00078, 0.078 / rows)
    out = {}
    for i in range(n):
        x = 77.5505 + (i % per_row) * 0.00039
        y = 13.0105 + (i // per_row) * dy
        out[f"field{i:05d}"] = shapely.geometry.box(x, y, x + 0.0003, y + min(0.0006, dy * 0.8))
    return out


def _processes():
    """``(pid, parent pid, session id, state)`` of every process, from /proc/<pid>/stat (a
    process that ends while it is read is left out)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                yield int(proc.name), int(fields[1]), int(fields[3]), fields[0]
            except (OSError, ValueError, IndexError):
                continue


def dev_sessions(ui_pid: int) -> set[int]:
    """The sessions of ``rasteret-pipelines ui`` (``ui_pid``, started in a session of its own)
    and of what it started: ``ui`` runs ``dg dev`` in a new session, and the webserver, daemon,
    code servers and runs are in that one."""
    return {ui_pid} | {session for _, parent, session, _ in _processes() if parent == ui_pid}


def stop_sessions(ui: subprocess.Popen, sessions: set[int]) -> None:
    """Stop ``ui`` as a user does (SIGINT: it forwards it to ``dg dev``, which shuts its
    processes down), then end whatever is left in ``sessions``: nothing outlives the benchmark."""
    for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(ui.pid, sig)
            ui.wait(timeout=wait)
            break
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _live_pids(sessions):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while _live_pids(sessions) and time.monotonic() < deadline:
            time.sleep(0.2)


def _live_pids(sessions: set[int]) -> list[int]:
    """Processes (not zombies) in any of ``sessions``, this one excepted."""
    me = os.getpid()
    return [pid for pid, _, session, state in _processes() if session in sessions and state != "Z" and pid != me]


def run_processes(sessions: set[int]) -> dict[int, int]:
    """``{pid: VmHWM kB}`` of the run and step processes of ``dagster dev`` (in ``sessions``).

    The code server starts each run, and the multiprocess executor each step, as a
    ``multiprocessing`` child (``spawn_main``/forkserver), so those are the processes whose
    command line names ``multiprocessing``; the webserver, daemon and code server do not.
    """
    out = {}
    for pid, _, session, _ in _processes():
        if session not in sessions:
            continue
        try:
            if b"multiprocessing" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out[pid] = int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return out


def library_time(storage: Path, aoi_file: Path, ids: list[str]) -> tuple[float, int]:
    """Seconds (and rows) of the same statistics through the library in this process."""
    from rasteret_pipelines.collections import load_collection
    from rasteret_pipelines.defs.partitions import month_bounds
    from rasteret_pipelines.fields import load_fields
    from rasteret_pipelines.reading import zonal_stats

    t0 = time.perf_counter()
    collection = load_collection("sentinel_2_l2a", storage / "collections")
    frame = load_fields(str(aoi_file)).subset(ids).reset_index()
    rows = 0
    for month in MONTHS:
        first, last = month_bounds(month)
        try:
            table = zonal_stats(
                collection,
                frame,
                index="ndvi",
                date_range=(first, last),
                cloud_mask=True,
                stats=("mean", "median", "std", "min", "max", "count"),
            )
        except Exception as exc:  # a month without scenes: nothing to compute
            print(f"  library: {month}: {exc}")
            continue
        rows += table.num_rows
    return time.perf_counter() - t0, rows


def demo_env(home: Path, storage: Path, demo_dir: str, port: int, **extra: str) -> dict:
    """The environment the demo and Dagster run in for a benchmark: this process's without any
    ``RASTERET_``/``DAGSTER_`` setting of the user's, the demo's months and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RASTERET_", "DAGSTER_"))}
    env.update(
        DAGSTER_HOME=str(home),
        RASTERET_STORAGE=str(storage),
        RASTERET_DEMO_DIR=demo_dir,
        RASTERET_DEMO_PORT=str(port),
        RASTERET_DEMO_MONTHS=",".join(MONTHS),
        RASTERET_START_MONTH=MONTHS[0],
        **extra,
    )
    return env


def run_demo_process(env: dict, cwd: Path) -> None:
    """``run_demo()`` in a fresh process with ``env`` (it exits, and its mirror with it)."""
    subprocess.run(
        [sys.executable, "-c", "from rasteret_pipelines_demo.demo import run_demo; run_demo()"],
        env=env,
        cwd=cwd,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fields", type=int, default=10_000, help="new fields written to the file (10000)")
    parser.add_argument(
        "--cell-deg",
        type=float,
        default=None,
        help="RASTERET_GROUP_CELL_DEG (default: the project's, 0.1: the demo area is one group)",
    )
    parser.add_argument(
        "--demo-dir",
        default=str(REPO_ROOT / ".rasteret_data" / "demo_world"),
        help="demo world folder (written once, reused)",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="give up after this many seconds")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--strict", action="store_true", help="exit 1 on a missed target")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench_dagster_"))
    home, storage, aoi_file = work / "dagster_home", work / "data", work / "data" / "aois.geojson"
    port = free_port_pair()
    env = demo_env(home, storage, args.demo_dir, port, RASTERET_AOI_FILE=str(aoi_file))
    if args.cell_deg:
        env["RASTERET_GROUP_CELL_DEG"] = str(args.cell_deg)
    print(f"work folder {work}; demo mirror port {port}; `uptime`: {os.popen('uptime').read().strip()}")

    # 1. the demo, in a fresh process (it exits, and its mirror with it)
    t0 = time.perf_counter()
    run_demo_process(env, work)
    print(f"demo: {time.perf_counter() - t0:.1f} s")

    # 2. dagster dev, as the demo's closing hint starts it (rasteret-pipelines ui)
    web = free_port_pair()  # a free port (and its neighbour): the webserver's
    log = open(work / "dagster_dev.log", "wb")
    dev = subprocess.Popen(
        [str(Path(sys.executable).parent / "rasteret-pipelines"), "ui", "-h", "127.0.0.1", "-p", str(web)],
        cwd=work,
        env={**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    sessions: set[int] = set()
    report: dict = {
        "fields": args.fields,
        "months": len(MONTHS),
        "cell_deg": args.cell_deg or 0.1,
        "uptime_before": os.popen("uptime").read().strip(),
    }
    try:
        import urllib.request

        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{web}/server_info", timeout=2):
                    break
            except OSError:
                assert dev.poll() is None and time.monotonic() < deadline, (work / "dagster_dev.log").read_text()[
                    -3000:
                ]
                time.sleep(1)
        time.sleep(5)  # let the daemon start its sensor loop
        os.environ.update({k: v for k, v in env.items() if k.startswith(("DAGSTER_", "RASTERET_"))})
        import dagster as dg

        from rasteret_pipelines.aois import write_aois_geojson
        from rasteret_pipelines.fields import load_fields

        instance = dg.DagsterInstance.get()
        before = {r.run_id for r in instance.get_runs()}
        cell = args.cell_deg or 0.1
        current = load_fields(str(aoi_file), cell_deg=cell)
        fields = new_fields(args.fields)
        everything = {**{i: current.geometry(i) for i in current.ids}, **fields}

        # 3. the new fields; the clock starts
        t_write = time.time()
        write_aois_geojson(everything, aoi_file)
        written = load_fields(str(aoi_file), cell_deg=cell)
        old_digests = current.group_digests()
        changed = sorted(g for g, d in written.group_digests().items() if old_digests.get(g) != d)
        wanted_stats = {f"{g}|{m}-01" for g in changed for m in MONTHS}
        stats_key, series_key = dg.AssetKey(list(STATS)), dg.AssetKey(list(SERIES))
        print(
            f"{args.fields} new fields written in {time.time() - t_write:.1f} s: {len(written.ids)} fields, "
            f"{len(changed)} changed groups, {len(wanted_stats)} statistics partitions"
        )

        def done_after(key, partitions) -> dict[str, float]:
            out = {}
            for rec in instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, asset_partitions=sorted(partitions)),
                limit=len(partitions) * 4 + 10,
            ).records:
                if rec.timestamp >= t_write:
                    out[rec.asset_materialization.partition] = max(
                        out.get(rec.asset_materialization.partition, 0), rec.timestamp
                    )
            return out

        hwm: dict[int, int] = {}
        sessions = dev_sessions(dev.pid)
        while True:
            for pid, kb in run_processes(sessions).items():
                hwm[pid] = max(hwm.get(pid, 0), kb)
            stats_done = done_after(stats_key, wanted_stats)
            series_done = done_after(series_key, set(changed))
            runs = [r for r in instance.get_runs() if r.run_id not in before]
            failed = [r for r in runs if r.status == dg.DagsterRunStatus.FAILURE]
            finished = all(r.is_finished for r in runs)
            if len(stats_done) == len(wanted_stats) and len(series_done) == len(changed) and finished:
                break
            if failed and finished:
                print(
                    f"  {len(failed)} failed runs; {len(stats_done)} of {len(wanted_stats)} statistics, "
                    f"{len(series_done)} of {len(changed)} time series"
                )
                break
            assert time.time() - t_write < args.timeout, (
                f"{len(stats_done)} of {len(wanted_stats)} statistics after {args.timeout} s"
            )
            time.sleep(0.5)
        t_end = max([*stats_done.values(), *series_done.values()], default=time.time())
        runs = [r for r in instance.get_runs() if r.run_id not in before]
        first_run = min(
            (instance.get_run_record_by_id(r.run_id).create_timestamp.timestamp() for r in runs), default=t_end
        )
        stats_runs = [r for r in runs if any(k.path == list(STATS) for k in (r.asset_selection or []))]
        series_runs = [r for r in runs if any(k.path == list(SERIES) for k in (r.asset_selection or []))]
        report.update(
            runs=len(runs),
            stats_runs=len(stats_runs),
            series_runs=len(series_runs),
            other_runs=len(runs) - len(stats_runs) - len(series_runs),
            failed_runs=sum(r.status == dg.DagsterRunStatus.FAILURE for r in runs),
            groups=len(changed),
            partitions=len(stats_done),
            wanted=len(wanted_stats),
            series=len(series_done),
            wall_s=round(t_end - t_write, 1),
            wall_from_first_run_s=round(t_end - first_run, 1),
            wait_for_first_run_s=round(first_run - t_write, 1),
            peak_run_rss_mb=round(max(hwm.values(), default=0) / 1024, 1),
        )
    finally:
        stop_sessions(dev, sessions | dev_sessions(dev.pid))
        log.close()

    # 5. the library alone (the mirror a run started on demand is still serving)
    from rasteret_pipelines_demo.demo import DemoMirror, probe_demo_mirror

    mirror = None if probe_demo_mirror(f"http://127.0.0.1:{port}") else DemoMirror(args.demo_dir, port).start()
    try:
        seconds, rows = library_time(storage, aoi_file, sorted(new_fields(args.fields)))
    finally:
        if mirror is not None:
            mirror.stop()
    report.update(library_s=round(seconds, 1), library_rows=rows, uptime_after=os.popen("uptime").read().strip())
    _stop_detached_mirror(Path(args.demo_dir), port)

    print()
    print(f"| {args.fields} new fields x {len(MONTHS)} months | value |")
    print("|---|---|")
    rows_out = [
        ("changed groups (cell degrees)", f"{report['groups']} ({report['cell_deg']})"),
        ("statistics partitions materialised", f"{report['partitions']} of {report['wanted']}"),
        ("time series materialised", f"{report['series']} of {report['groups']}"),
        (
            "runs (statistics + time series + other)",
            f"{report['runs']} ({report['stats_runs']} + {report['series_runs']} + {report['other_runs']})",
        ),
        ("failed runs", report["failed_runs"]),
        ("wall time from the file write to the last time series", f"{report['wall_s']} s"),
        (
            "  of which waiting for the first run (sensor + automation ticks, backfill daemon)",
            f"{report['wait_for_first_run_s']} s",
        ),
        ("peak RSS of the largest run or step process", f"{report['peak_run_rss_mb']} MB"),
        ("library only (zonal_stats, one process)", f"{report['library_s']} s ({rows} rows)"),
    ]
    for name, value in rows_out:
        print(f"| {name} | {value} |")
    print(f"\nload: before {report['uptime_before']}\n      after  {report['uptime_after']}")
    targets = {
        "no failed run, everything materialised": report["failed_runs"] == 0
        and report["partitions"] == report["wanted"]
        and report["series"] == report["groups"],
        f"at most 10 runs ({report['runs']})": report["runs"] <= 10,
        f"at most 5 minutes from the file write ({report['wall_s']} s)": report["wall_s"] <= 300,
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
