"""The offline demo: a local Sentinel-2 L2A mirror and the Dagster pipeline run against it.

``rasteret-pipelines demo`` (:func:`run_demo`)

1. writes the demo world once (real GDAL COGs on the 10980 x 10980 grid of MGRS tile 43PGQ
   around the original quick start's Bangalore AOIs, sparse elsewhere; two scenes a month) under
   ``RASTERET_DEMO_DIR`` (default ``./.rasteret_data/demo_world``) and reuses it afterwards,
2. serves it on 127.0.0.1: a STAC API on ``RASTERET_DEMO_PORT`` (default 47610) and a
   range-capable COG server on the next port, in background threads of this process, stopped
   when the command ends (this folder's mirror already running is reused; another folder's
   mirror on that port is not: see below), and selects it explicitly
   (``RASTERET_STAC_URL=demo``, unless that variable is set),
3. writes the quick start's two AOIs to the field file as two fields (unless one exists),
   registers their groups as ``field_group`` partitions and records a materialisation of the
   ``fields`` asset for each group (as the field sensor does),
4. materialises the collection of every month (one run each), the NDVI statistics and COGs of
   every (month, group) (ONE run over all of them) and the time series of every group (one run)
   through the project's code location (runs with its repository origin, executed in this
   process: :mod:`rasteret_pipelines.defs.location_runs`), recording the runs in a
   persistent ``DAGSTER_HOME`` (default ``./.dagster_home``, seeded with the repository's
   ``dagster.yaml``), so that ``rasteret-pipelines ui`` (``dagster dev`` on that folder) shows them,
5. prints where the GeoTIFFs and tables are.

The ports stay put because the collections store the COG URLs: a mirror restarted on the same
ports keeps every cached header valid. A mirror says which demo folder it serves (a hash of the
folder's path and of its world's token, on its landing page), and only this folder's mirror is
reused: when another checkout's mirror (or another program) holds the port, this folder's mirror
starts on a free pair, recorded in ``<demo dir>/mirror.json``, and the demo says so.

``rasteret-pipelines ui`` (:func:`run_ui`) runs the Dagster UI (``dg dev``) on the demo: it
serves the mirror in its own process (on the recorded port, so the collections' COG URLs stay
valid) while ``dg dev`` runs, gives it ``RASTERET_STAC_URL=demo`` (unless set), and stops the
mirror when ``dg dev`` exits. ``rasteret-pipelines demo --serve`` serves only the mirror, until
Ctrl-C. Nothing else starts a mirror: the Dagster resources only check that it answers.

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
from collections.abc import Mapping, Sequence
from pathlib import Path

from rasteret_pipelines_demo.demo_mirror import (  # noqa: F401 - the demo's mirror, re-exported
    DEMO_TITLE,
    IDLE_TIMEOUT,
    WORLD_FILE,
    WORLD_VERSION,
    DemoMirror,
    ensure_ignored_dir,
    main,
    open_mirror,
    prepare_world,
    probe_demo_mirror,
    running_mirror_url,
    serve,
    start_mirror,
)

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
"""Run config of the demo's runs: Dagster's console logger shows warnings and errors only."""


def demo_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with the demo selected explicitly: ``RASTERET_STAC_URL=demo`` unless the
    variable is set (``public`` or a URL run the same commands against that API)."""
    from rasteret_pipelines.defs.settings import DEMO

    env = dict(environ)
    if not env.get("RASTERET_STAC_URL"):
        env["RASTERET_STAC_URL"] = DEMO
    return env


@contextlib.contextmanager
def _os_environment(updates: Mapping[str, str]):
    """``os.environ`` with ``updates`` while the block runs (the in-process runs read it), restored after."""
    before = {k: os.environ.get(k) for k in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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
    mirror, url = start_mirror(
        settings.demo_dir, settings.demo_port, months=months, default_port=DEFAULT_DEMO_PORT, log=log
    )
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

    The runs execute in this process and read the settings from ``os.environ``: the demo's
    choices (``RASTERET_STAC_URL=demo`` unless set, ``RASTERET_DEMO_MONTHS`` from ``months``)
    are put there while the demo runs and taken out after.

    Raises:
        RuntimeError: a run failed (its error is printed first).
    """
    updates = {"RASTERET_STAC_URL": demo_environment(os.environ)["RASTERET_STAC_URL"]}
    if months:  # the partitions cover exactly these months
        updates["RASTERET_DEMO_MONTHS"] = ",".join(months)
    with _os_environment(updates):
        return _run_demo(months=months, dagster_home=dagster_home, keep_serving=keep_serving, log=log)


def _run_demo(*, months, dagster_home, keep_serving, log) -> dict:
    import dagster as dg

    from rasteret_pipelines.aois import write_aois_geojson
    from rasteret_pipelines.defs.instance_home import prepare_dagster_home
    from rasteret_pipelines.defs.partitions import group_partitions, month_partition_key
    from rasteret_pipelines.defs.settings import DEFAULT_DEMO_PORT, Settings
    from rasteret_pipelines_demo.demo_data import QUICKSTART_AOIS

    t_start = time.perf_counter()
    home = prepare_dagster_home(dagster_home)
    settings = Settings.from_env()
    months = tuple(months or settings.demo_months)
    too_early = [m for m in months if m < settings.start_month]
    if too_early:
        raise ValueError(f"months {too_early} are before RASTERET_START_MONTH={settings.start_month}")
    if not settings.storage.startswith("s3://"):
        ensure_ignored_dir(settings.storage)

    mirror = None
    stack = contextlib.ExitStack()
    if settings.uses_demo:
        mirror, _url = start_mirror(
            settings.demo_dir, settings.demo_port, months=months, default_port=DEFAULT_DEMO_PORT, log=log
        )
    try:
        aoi_file = settings.aoi_file
        if not _exists(aoi_file):
            write_aois_geojson(
                {str(k): v for k, v in QUICKSTART_AOIS.items()},
                aoi_file,
                names={"1": "quick start AOI 1", "2": "quick start AOI 2"},
            )
            log(f"wrote the quick start's two AOIs to {aoi_file}")
        # the resources hold EnvVars when the variables are set (resolved only inside runs): the
        # demo's own reads use the settings' plain values
        from rasteret_pipelines.defs.assets import FIELDS_KEY
        from rasteret_pipelines.defs.resources import storage_resource
        from rasteret_pipelines.fields import load_fields

        storage = storage_resource(settings.storage)
        fields = load_fields(settings.aoi_file, cell_deg=settings.group_cell_deg)
        instance = dg.DagsterInstance.get()
        known = set(instance.get_dynamic_partitions(group_partitions.name))
        new = [g for g in fields.groups if g not in known]
        if new:
            instance.add_dynamic_partitions(group_partitions.name, new)
        sizes = fields.frame.groupby("group").size().to_dict()
        for group, digest in fields.group_digests().items():  # what the field sensor records
            instance.report_runless_asset_event(
                dg.AssetMaterialization(
                    asset_key=FIELDS_KEY,
                    partition=group,
                    metadata={"fields": int(sizes[group]), "digest": digest, "file": fields.uri},
                )
            )
        log(
            f"fields: {', '.join(fields.ids)} in groups {', '.join(fields.groups)} (from {aoi_file}); "
            f"Dagster instance {home}"
        )

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
                label, extra = f"{first}..{last}", {"partition_range": (first, last)}
            result = runner.run(job_name, run_config=QUIET, **extra)
            status = "ok" if result.success else "FAILED"
            log(f"  {job_name} [{label}]: {status} in {time.perf_counter() - t0:.1f} s (run {result.run_id[:8]})")
            if not result.success:
                for event in result.all_events:
                    if event.is_step_failure:
                        log(f"    {event.step_key}: {event.step_failure_data.error.message.strip()}")
                raise RuntimeError(f"{job_name} [{label}] failed (run {result.run_id})")
            return result

        # the file's groups as a range of group partitions: one run covers every month x group
        order = instance.get_dynamic_partitions(group_partitions.name)
        mine = [g for g in order if g in set(fields.groups)]
        first_group, last_group = mine[0], mine[-1]

        summary: dict = {"dagster_home": str(home), "storage": storage.uri(), "runs": []}
        log(
            f"materialising {len(months)} months x {len(fields.groups)} groups of {len(fields.ids)} fields for "
            f"{', '.join(settings.sources)} (one statistics run over all of them):"
        )
        keys = [month_partition_key(m) for m in months]
        for key in keys:
            summary["runs"].append(run("collections_job", key).run_id)
        summary["runs"].append(run("field_stats_job", f"{first_group}|{min(keys)}", f"{last_group}|{max(keys)}").run_id)
        summary["runs"].append(run("field_timeseries_job", first_group, last_group).run_id)
        summary.update(_report(storage, settings, fields, log))
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


def run_ui(dagster_home: str | None = None, extra_args: Sequence[str] = (), *, log=print) -> int:
    """``rasteret-pipelines ui``: the Dagster UI (``dg dev``) on the kept instance, on the demo.

    The demo is selected explicitly for ``dg dev`` and every run it starts (``RASTERET_STAC_URL=demo``
    unless set); with it selected, this folder's mirror is served from this process while ``dg dev``
    runs (reused when it already runs elsewhere) and stopped when ``dg dev`` exits.

    Returns:
        ``dg dev``'s exit status.
    """
    import subprocess

    from rasteret_pipelines.defs.instance_home import dagster_ui_command, prepare_dagster_home
    from rasteret_pipelines.defs.settings import DEFAULT_DEMO_PORT, Settings

    home = prepare_dagster_home(dagster_home)
    argv, env, cwd = dagster_ui_command(home, demo_environment(os.environ), extra_args)
    settings = Settings.from_env(env)
    mirror = None
    if settings.uses_demo:
        mirror, _url = start_mirror(
            settings.demo_dir,
            settings.demo_port,
            months=settings.demo_months,
            default_port=DEFAULT_DEMO_PORT,
            log=log,
        )
    try:
        # dg dev in its own session: a signal to this command (Ctrl-C, SIGTERM, a closed terminal)
        # reaches dg dev once, through this command, as the SIGINT on which dg dev shuts its
        # webserver and daemon down; the mirror stops after dg dev has exited
        proc = subprocess.Popen(argv, env=env, cwd=cwd, start_new_session=True)
        forwarded = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                forwarded[sig] = signal.signal(sig, lambda *_: proc.send_signal(signal.SIGINT))
        try:
            return proc.wait()
        finally:
            for sig, handler in forwarded.items():
                signal.signal(sig, handler)
    finally:
        if mirror is not None:
            mirror.stop()
            log("stopped the demo mirror")


def dagster_dev_command(home: Path, settings) -> str:
    """The shell command that opens the demo's runs in the UI: ``rasteret-pipelines ui`` of this
    interpreter (the virtualenv's, not whatever is on PATH), which runs ``dagster dev`` on the
    demo's ``DAGSTER_HOME``, with the ``RASTERET_*`` variables the demo ran with (a signed URL's
    secret redacted)."""
    import shlex

    from rasteret_pipelines.defs.instance_home import interpreter_command
    from rasteret_pipelines.redaction import redact

    command = interpreter_command("rasteret-pipelines", "rasteret_pipelines.cli")
    env = {
        "DAGSTER_HOME": str(home),
        **{k: redact(v) for k, v in sorted(settings.env.items()) if k.startswith("RASTERET_")},
    }
    return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), *map(shlex.quote, command), "ui"])


def _exists(uri: str) -> bool:
    if uri.startswith("s3://"):
        import posixpath

        from rasteret_pipelines.storage import Storage

        parent, name = posixpath.split(uri.rstrip("/"))
        return Storage.from_uri(parent).exists(name)
    return os.path.exists(uri)


def _report(storage_resource, settings, fields, log) -> dict:
    import io

    import pyarrow.parquet as pq

    from rasteret_pipelines.defs.assets import field_stats_prefix, field_timeseries_prefix
    from rasteret_pipelines.defs.settings import source_slug

    store = storage_resource.storage()
    out: dict = {"geotiffs": {}, "tables": {}, "series": {}, "collections": {}}
    for source in settings.sources:
        slug = source_slug(source)
        stats, series = field_stats_prefix(source).split("/"), field_timeseries_prefix(source).split("/")
        tifs = store.list_files("field_ndvi", slug, suffix=".tif")
        tables = store.list_files(*stats, suffix=".parquet")
        series_files = store.list_files(*series, suffix=".parquet")
        months = store.list_files("collections", slug, suffix="items.parquet")
        uri = (lambda p: p) if store.is_local else (lambda p: f"s3://{p}")
        out["geotiffs"][source] = [uri(p) for p in tifs]
        out["tables"][source] = [uri(p) for p in tables]
        out["series"][source] = [uri(p) for p in series_files]
        out["collections"][source] = [uri(p) for p in months]
        log(f"{source}:")
        log(
            f"  collection months ({len(months)} files): {store.uri_of('collections', slug)}/month=YYYY-MM/items.parquet"
        )
        log(f"  field statistics ({len(tables)} tables): {store.uri_of(*stats)}/month=YYYY-MM/group=<group>.parquet")
        log(
            f"  NDVI COGs ({len(tifs)} files):          {store.uri_of('field_ndvi', slug)}/geometry_<group>/ndvi_YYYYMMDD.tif"
        )
        log(f"  time series ({len(series_files)} tables):     {store.uri_of(*series)}/group=<group>.parquet and .svg")
        for group in fields.groups:
            if not store.exists(*series, f"group={group}.parquet"):
                continue
            rows = pq.read_table(io.BytesIO(store.read_bytes(*series, f"group={group}.parquet"))).to_pylist()
            for fid in sorted({r["id"] for r in rows}):
                cells = [
                    f"{r['date']:%m-%d} {r['ndvi_mean']:.2f} ({r['ndvi_valid_fraction']:.0%})"
                    for r in rows
                    if r["id"] == fid and r["ndvi_mean"] is not None
                ]
                log(f"  field {fid} (group {group}) mean NDVI (valid pixels): " + ", ".join(cells))
    return out


if __name__ == "__main__":
    sys.exit(main())
