"""The offline demo: a local Sentinel-2 L2A mirror and the Dagster pipeline run against it.

``rasteret-pipelines demo`` (:func:`run_demo`)

1. writes the demo world once (real GDAL COGs on the 10980 x 10980 grid of MGRS tile 43PGQ
   around the original quick start's Bangalore AOIs, sparse elsewhere; two scenes a month) under
   ``RASTERET_DEMO_DIR`` (default ``./.rasteret_data/demo_world``) and reuses it afterwards,
2. serves it on 127.0.0.1: a STAC API on ``RASTERET_DEMO_PORT`` (default 47610) and a
   range-capable COG server on the next port, in background threads (this folder's mirror
   already running is reused; another folder's mirror on that port is not: see below),
3. writes the quick start's two AOIs to the AOI file (unless one exists) and registers them as
   ``aoi`` partitions,
4. materialises the collection of every month, the NDVI of every (month, AOI) (one run per
   month over all its AOIs, read together) and the NDVI time series of every AOI (one run)
   through the project's code location (runs with its repository origin, executed in this
   process: :mod:`rasteret_pipelines.defs.location_runs`), recording the runs in a
   persistent ``DAGSTER_HOME`` (default ``./.dagster_home``, seeded with the repository's
   ``dagster.yaml``), so that ``rasteret-pipelines ui`` (``dagster dev`` on that folder) shows them,
5. prints where the GeoTIFFs and tables are.

The ports stay put because the collections store the COG URLs: a mirror restarted on the same
ports keeps every cached header valid. A mirror says which demo folder it serves (a hash of the
folder's path and of its world's token, on its landing page), and only this folder's mirror is
reused: when another checkout's mirror (or another program) holds the port, this folder's mirror
starts on a free pair, recorded in ``<demo dir>/mirror.json``, and the demo says so. When
``dagster dev`` later runs a partition with the demo selected and this folder's mirror is not
listening, :func:`demo_stac_url` starts one (on the recorded port) in a detached process
(``python -m rasteret_pipelines_demo.demo_mirror serve``) that exits after an hour without requests.

With ``RASTERET_STAC_URL`` (e.g. ``public`` for Earth Search) and ``RASTERET_STORAGE`` (e.g.
``s3://bucket/prefix``) set, the same command runs the same pipeline against them; the mirror
is then not started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from rasteret_pipelines_demo.demo_mirror import (  # noqa: F401 - the demo's mirror, re-exported
    DEMO_TITLE,
    IDLE_TIMEOUT,
    WORLD_FILE,
    WORLD_VERSION,
    DemoMirror,
    demo_stac_url,
    ensure_ignored_dir,
    main,
    open_mirror,
    prepare_world,
    probe_demo_mirror,
    serve,
    spawn_demo_mirror,
)

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
"""Run config of the demo's runs: Dagster's console logger shows warnings and errors only."""


def quickstart_environment(stac_url: str) -> dict[str, str]:
    """The environment that points the library's Sentinel-2 source at the demo STAC API."""
    from rasteret_pipelines.collections import DataSources, stac_url_env_var

    return {stac_url_env_var(DataSources.SENTINEL2): stac_url}


def serve_for_quickstart(months: Sequence[str] | None = None, *, log=print, stop: threading.Event | None = None) -> int:
    """``rasteret-pipelines demo --serve``: serve the demo mirror in the foreground for the quick start.

    Writes the world if needed, serves it on ``RASTERET_DEMO_PORT`` (and the next port), prints
    the ``export`` lines that point the library at it, and serves until Ctrl-C (or ``stop``).
    This folder's mirror already running is reused: the lines are printed and nothing else is
    done. Another folder's mirror on that port is not: this one starts on free ports (recorded,
    see :func:`~rasteret_pipelines_demo.demo_mirror.open_mirror`).
    """
    from rasteret_pipelines.defs.settings import DEFAULT_DEMO_PORT, Settings

    settings = Settings.from_env()
    months = tuple(months or settings.demo_months)
    prepare_world(settings.demo_dir, months, log=log)
    mirror, url = open_mirror(settings.demo_dir, settings.demo_port, default=DEFAULT_DEMO_PORT, log=log)
    try:
        log(f"demo mirror (Sentinel-2 L2A, MGRS 43PGQ, {', '.join(months)}): STAC API {url}")
        log("point the library at it (in the shell or notebook that runs the quick start):")
        for name, value in quickstart_environment(url).items():
            log(f"  export {name}={value}")
        if mirror is None:
            return 0
        log("serving until Ctrl-C ...")
        stop = stop or threading.Event()
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                handlers[sig] = signal.signal(sig, lambda *_: stop.set())
        try:
            stop.wait()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        return 0
    finally:
        if mirror is not None:
            mirror.stop()


# --- the main job ---------------------------------------------------------------------------------


def run_demo(
    *,
    months: Sequence[str] | None = None,
    dagster_home: str | None = None,
    keep_serving: bool = False,
    log=print,
) -> dict:
    """Run the main job (see the module docs); returns what was materialised and where.

    Raises:
        RuntimeError: a run failed (its error is printed first).
    """
    import dagster as dg

    from rasteret_pipelines.defs.instance_home import prepare_dagster_home
    from rasteret_pipelines.aois import write_aois_geojson
    from rasteret_pipelines.defs.partitions import aoi_partitions, month_partition_key
    from rasteret_pipelines.defs.settings import DEFAULT_DEMO_PORT, DEMO, Settings
    from rasteret_pipelines_demo.demo_data import QUICKSTART_AOIS

    t_start = time.perf_counter()
    home = prepare_dagster_home(dagster_home)
    if months:  # the partitions (and the mirror started by later runs) cover exactly these months
        os.environ["RASTERET_DEMO_MONTHS"] = ",".join(months)
    settings = Settings.from_env()
    months = tuple(months or settings.demo_months)
    too_early = [m for m in months if m < settings.start_month]
    if too_early:
        raise ValueError(f"months {too_early} are before RASTERET_START_MONTH={settings.start_month}")
    stac_choice = (settings.get("RASTERET_STAC_URL") or DEMO).lower()
    uses_mirror = stac_choice == DEMO and not any(
        os.environ.get(f"RASTERET_STAC_URL_{s.upper().replace('-', '_')}") for s in settings.sources
    )
    if not settings.storage.startswith("s3://"):
        ensure_ignored_dir(settings.storage)

    mirror = None
    stack = contextlib.ExitStack()
    if uses_mirror:
        prepare_world(settings.demo_dir, months, log=log)
        mirror, _url = open_mirror(settings.demo_dir, settings.demo_port, default=DEFAULT_DEMO_PORT, log=log)
    try:
        aoi_file = settings.aoi_file
        if not _exists(aoi_file):
            write_aois_geojson({str(k): v for k, v in QUICKSTART_AOIS.items()}, aoi_file,
                               names={"1": "quick start AOI 1", "2": "quick start AOI 2"})
            log(f"wrote the quick start's two AOIs to {aoi_file}")
        # the resources hold EnvVars when the variables are set (resolved only inside runs): the
        # demo's own reads use the settings' plain values
        from rasteret_pipelines.aois import load_aois
        from rasteret_pipelines.defs.resources import storage_resource

        storage = storage_resource(settings.storage)
        aois = load_aois(settings.aoi_file)
        instance = dg.DagsterInstance.get()
        known = set(instance.get_dynamic_partitions(aoi_partitions.name))
        new = [a for a in aois.ids if a not in known]
        if new:
            instance.add_dynamic_partitions(aoi_partitions.name, new)
        log(f"AOIs: {', '.join(aois.ids)} (from {aoi_file}); Dagster instance {home}")

        # the runs go through the instance and the code location (with a repository origin), so the
        # UI's Overview timeline, job pages and asset pages count them; they execute in this process
        from rasteret_pipelines.defs.location_runs import LocationRunner

        runner = stack.enter_context(LocationRunner(instance))

        def run(job_name: str, first: str, last: str | None = None):
            """One run of ``job_name`` over the partition ``first`` or the range ``first..last``."""
            t0 = time.perf_counter()
            if last is None or last == first:
                label, extra = first, {"partition_key": first}
            else:
                label = f"{first}..{last}"
                extra = {"tags": {"dagster/asset_partition_range_start": first,
                                  "dagster/asset_partition_range_end": last}}
            result = runner.run(job_name, run_config=QUIET, **extra)
            status = "ok" if result.success else "FAILED"
            log(f"  {job_name} [{label}]: {status} in {time.perf_counter() - t0:.1f} s (run {result.run_id[:8]})")
            if not result.success:
                for event in result.all_events:
                    if event.is_step_failure:
                        log(f"    {event.step_key}: {event.step_failure_data.error.message.strip()}")
                raise RuntimeError(f"{job_name} [{label}] failed (run {result.run_id})")
            return result

        # the file's AOIs as runs of consecutive aoi partitions (usually one): one run covers them
        from rasteret_pipelines.defs.sensors import consecutive_runs

        spans = consecutive_runs(instance.get_dynamic_partitions(aoi_partitions.name), set(aois.ids))

        summary: dict = {"dagster_home": str(home), "storage": storage.uri(), "runs": []}
        log(f"materialising {len(months)} months x {len(aois.ids)} AOIs for {', '.join(settings.sources)} "
            "(one NDVI run per month, reading its AOIs together):")
        for month in months:
            key = month_partition_key(month)
            summary["runs"].append(run("collections_job", key).run_id)
            for span in spans:
                summary["runs"].append(run("ndvi_job", f"{span[0]}|{key}", f"{span[-1]}|{key}").run_id)
        for span in spans:
            summary["runs"].append(run("ndvi_timeseries_job", span[0], span[-1]).run_id)
        summary.update(_report(storage, settings, aois.ids, log))
        log(f"done in {time.perf_counter() - t_start:.1f} s. See the runs in the UI (from this folder):")
        log(f"  {dagster_dev_command(home, settings)}")
        if keep_serving and mirror is not None:
            log("serving the demo mirror until Ctrl-C ...")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
        return summary
    finally:
        stack.close()
        if mirror is not None:
            mirror.stop()


def dagster_dev_command(home: Path, settings) -> str:
    """The shell command that opens the demo's runs in the UI: ``rasteret-pipelines ui`` of this
    interpreter (the virtualenv's, not whatever is on PATH), which runs ``dagster dev`` on the
    demo's ``DAGSTER_HOME``, with the ``RASTERET_*`` variables the demo ran with (a signed URL's
    secret redacted)."""
    import shlex

    from rasteret_pipelines.defs.instance_home import interpreter_command
    from rasteret_pipelines.redaction import redact

    command = interpreter_command("rasteret-pipelines", "rasteret_pipelines.cli")
    env = {"DAGSTER_HOME": str(home),
           **{k: redact(v) for k, v in sorted(settings.env.items()) if k.startswith("RASTERET_")}}
    return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), *map(shlex.quote, command), "ui"])


def _exists(uri: str) -> bool:
    if uri.startswith("s3://"):
        import posixpath

        from rasteret_pipelines.storage import Storage

        parent, name = posixpath.split(uri.rstrip("/"))
        return Storage.from_uri(parent).exists(name)
    return os.path.exists(uri)


def _report(storage_resource, settings, aoi_ids, log) -> dict:
    import io

    import pyarrow.parquet as pq

    from rasteret_pipelines.defs.assets import ndvi_key, timeseries_key
    from rasteret_pipelines.defs.settings import source_slug

    store = storage_resource.storage()
    out: dict = {"geotiffs": {}, "tables": {}, "collections": {}}
    for source in settings.sources:
        slug = source_slug(source)
        ndvi, series = ndvi_key(source).path, timeseries_key(source).path
        tifs = store.list_files(*ndvi, suffix=".tif")
        tables = store.list_files(*series, suffix=".parquet")
        months = store.list_files("collections", slug, suffix="items.parquet")
        uri = (lambda p: p) if store.is_local else (lambda p: f"s3://{p}")
        out["geotiffs"][source] = [uri(p) for p in tifs]
        out["tables"][source] = [uri(p) for p in tables]
        out["collections"][source] = [uri(p) for p in months]
        log(f"{source}:")
        log(f"  collection months ({len(months)} files): {store.uri_of('collections', slug)}/month=YYYY-MM/items.parquet")
        log(f"  NDVI GeoTIFFs ({len(tifs)} files):     {store.uri_of(*ndvi, 'tif')}/geometry_<aoi>/ndvi_YYYYMMDD.tif")
        log(f"  NDVI manifests:                 {store.uri_of(*ndvi)}/aoi=<aoi>/month=YYYY-MM.json")
        log(f"  NDVI time series ({len(tables)} tables):  {store.uri_of(*series)}/aoi=<aoi>.parquet and .svg")
        for aoi in aoi_ids:
            if not store.exists(*series, f"aoi={aoi}.parquet"):
                continue
            rows = pq.read_table(io.BytesIO(store.read_bytes(*series, f"aoi={aoi}.parquet"))).to_pylist()
            cells = [
                f"{r['date']:%m-%d} {r['mean_ndvi']:.2f} ({r['valid_fraction']:.0%})"
                for r in rows if r["mean_ndvi"] is not None
            ]
            log(f"  AOI {aoi} mean NDVI (valid pixels): " + ", ".join(cells))
    return out


if __name__ == "__main__":
    sys.exit(main())
