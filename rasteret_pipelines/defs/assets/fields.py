"""Fields in groups: the field file, NDVI statistics per month x group, time series per group.

* ``fields`` (an external asset, one partition per group): the field file
  (``RASTERET_AOI_FILE``). Nothing materialises it: the field sensor records a materialisation
  of every group whose fields changed (new, removed or edited fields), and the statistics of
  that group follow through automation.
* ``field_stats/<source>_field_stats`` (month x group): the NDVI statistics of every field of
  the group on every date of the month (mean, median, std, min, max, count, valid fraction,
  scene ids), one GeoParquet table per partition at
  ``field_stats/<source>/month=YYYY-MM/group=<group>.parquet``, plus NDVI COGs (one per group
  and date by default). A run covers many partitions (the backfill policy); inside it every
  month's fields of all the run's groups are read with ONE ``zonal_stats`` call (each tile
  fetched once), then split by group. Every (month, group) gets its own materialisation and its
  own check results (declared once, as ``check_specs`` of the asset: no separate check step).
* ``field_timeseries/<source>_field_timeseries`` (group): every month's table of the group as
  one table, one row per field and date, plotted in the metadata.
"""

import time
from collections import defaultdict

import dagster as dg
import pyarrow as pa

from rasteret_pipelines.collections import get_source
from rasteret_pipelines.defs.assets._common import (
    TRANSIENT_ERRORS,
    after_any_upstream_update,
    after_upstream_updates,
    beta_backfill_policy,
    retries_left,
    source_pool,
    step_errors,
)
from rasteret_pipelines.defs.assets.collections import collection_key
from rasteret_pipelines.defs.checks import field_stats_check_evaluations, field_stats_check_specs
from rasteret_pipelines.defs.io_managers import PATH, CollectionSlice, read_table, write_table
from rasteret_pipelines.defs.partitions import Partitions, month_key, split_month_group
from rasteret_pipelines.defs.pipeline import (
    GroupAreas,
    empty_group_table,
    field_stats_month,
    fields_outside,
    group_geotiffs,
    group_table,
    plan_field_month,
    reads_of,
    split_by_group,
)
from rasteret_pipelines.defs.resources import (
    AoiFileResource,
    BatchResource,
    DataSourceResource,
    HttpClientResource,
    StorageResource,
)
from rasteret_pipelines.defs.settings import source_slug
from rasteret_pipelines.errors import MissingPartitionError, RasteretError, UnsafePartitionKeyError

FIELDS_KEY = dg.AssetKey(["fields"])
"""The field file as an external asset, one partition per group."""
FIELD_STATS_CHECKS = ("stats_in_range", "geotiffs_reopen")


def field_stats_key(source_id: str) -> dg.AssetKey:
    """``field_stats/<source>_field_stats`` (the UI labels a node with its key's last part)."""
    return dg.AssetKey(["field_stats", f"{source_slug(source_id)}_field_stats"])


def field_timeseries_key(source_id: str) -> dg.AssetKey:
    return dg.AssetKey(["field_timeseries", f"{source_slug(source_id)}_field_timeseries"])


def field_stats_prefix(source_id: str) -> str:
    """Where the statistics tables live below the storage: ``field_stats/<source>``."""
    return f"field_stats/{source_slug(source_id)}"


def field_timeseries_prefix(source_id: str) -> str:
    return f"field_timeseries/{source_slug(source_id)}"


def field_ndvi_parts(source_id: str) -> list[str]:
    """Where the NDVI COGs live below the storage: ``field_ndvi/<source>``."""
    return ["field_ndvi", source_slug(source_id)]


def fields_asset(partitions: Partitions) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=FIELDS_KEY,
        partitions_def=partitions.group,
        group_name="fields",
        kinds={"geoparquet"},
        description=(
            "The field file (`RASTERET_AOI_FILE`: GeoJSON or GeoParquet with `id`, geometry, optional "
            "`name` and `group`), one partition per group of fields. The field sensor records a "
            "materialisation of every group whose fields changed; their statistics follow."
        ),
    )


def field_stats_asset(
    source_id: str,
    partitions: Partitions,
    backfill_policy: dg.BackfillPolicy | None = None,
    retry_policy: dg.RetryPolicy | None = None,
) -> dg.AssetsDefinition:
    """The ``field_stats/<source>_field_stats`` asset (see the module docs)."""
    key = field_stats_key(source_id)
    prefix = field_stats_prefix(source_id)
    ndvi_where = "/".join(field_ndvi_parts(source_id))
    check_specs = field_stats_check_specs(key, partitions.month_group)
    spec = dg.AssetSpec(
        key=key,
        deps=[collection_key(source_id), FIELDS_KEY],  # month -> month x group, group -> month x group: inferred
        group_name="fields",
        kinds={"geoparquet", "geotiff"},
        metadata={PATH: prefix, "source": source_id},
        automation_condition=after_upstream_updates(),
        skippable=True,
        description=(
            "NDVI statistics of every field of the group on every date of the month (mean, median, std, min, "
            "max, count, valid fraction, scene ids), cloud-masked, from surface reflectance read through the "
            f"collection's cached headers: one GeoParquet table per partition at "
            f"`{prefix}/month=YYYY-MM/group=<group>.parquet`, and NDVI COGs at "
            f"`{ndvi_where}/geometry_<group>/ndvi_YYYYMMDD.tif` (NaN outside the fields). A run covers many "
            "partitions and reads each month's fields together."
        ),
    ).with_io_manager_key("table_io_manager")  # the tables load back through it (written by write_table)

    with beta_backfill_policy():
        define = dg.multi_asset(
            name=f"{source_slug(source_id)}_field_stats",
            specs=[spec],
            ins={"collection": dg.AssetIn(key=collection_key(source_id))},
            partitions_def=partitions.month_group,
            backfill_policy=backfill_policy or dg.BackfillPolicy.multi_run(500),
            can_subset=True,
            check_specs=check_specs,
            pool=source_pool(source_id),
            retry_policy=retry_policy,
        )

    @define
    def field_stats(
        context: dg.AssetExecutionContext,
        collection: CollectionSlice,
        storage: StorageResource,
        http: HttpClientResource,
        aois: AoiFileResource,
        data_source: DataSourceResource,
        batching: BatchResource,
    ):
        t_run = time.perf_counter()
        keys = [str(k) for k in context.partition_keys]
        partitions_def = context.assets_def.partitions_def
        what = f"field statistics ({source_id})"
        failures: dict[str, BaseException] = {}
        by_month: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for k in keys:
            try:
                month_partition, group = split_month_group(k)
            except UnsafePartitionKeyError as exc:
                failures[k] = exc
                continue
            by_month[month_partition].append((k, group))
        done = already_materialised(context, key, keys)
        if done:
            context.log.info(
                f"{what}: {len(done)} of {len(keys)} partitions were materialised by this run "
                "(or the failed run it retries) before; only the others are redone"
            )
        fieldset = None
        with step_errors(context, what, retry_policy):  # an unusable field file, a local server down
            if by_month:
                fieldset = aois.fields()
                data_source.ensure_cog_servers(collection_hrefs(collection, source_id), f"collection {collection.name}")
        if fieldset is not None and fieldset.skipped:
            context.log.warning(
                f"{what}: {len(fieldset.skipped)} rows of {fieldset.uri} skipped: "
                + "; ".join(f"{k}: {v}" for k, v in list(fieldset.skipped.items())[:20])
            )
        store = storage.storage()
        ndvi_uri = storage.uri(*field_ndvi_parts(source_id))
        materialised = 0
        areas = GroupAreas()  # the groups' unions, made once for the fields every month of the run shares
        for month_partition, entries in sorted(by_month.items()):
            month = month_key(month_partition)
            todo = [(k, g) for k, g in entries if k not in done]
            if not todo:
                continue
            if month not in collection.month_keys:
                for k, _ in todo:
                    failures[k] = MissingPartitionError(
                        f"collection {collection.name} has no month {month}: materialise partition "
                        f"{month_partition} of {collection_key(source_id).to_user_string()} first"
                    )
                continue
            t0 = time.perf_counter()
            frame = fieldset.fields_of([g for _, g in todo])
            outside = set(fields_outside(collection, month, frame))
            if outside:
                context.log.warning(
                    f"{what} {month}: {len(outside)} fields lie outside the area the collection month was indexed "
                    f"for and are left out until it is rebuilt (the field sensor requests that): "
                    + ", ".join(sorted(outside)[:20])
                )
            read = frame[~frame.index.isin(outside)]
            context.log.info(f"{what} {month}: {len(read)} fields of {len(todo)} groups in one read")
            batch = dict(mode=batching.geotiffs, max_bytes=batching.max_bytes, max_areas=batching.max_aois)
            try:
                # The batch's reads, planned from the cached headers before any of them (no request),
                # shown on every partition of the batch before its pixels are fetched; the reads then
                # run these plans instead of planning again.
                planned = plan_field_month(
                    source_id, collection, month, read, fetch_config=http.fetch_config(), areas=areas, **batch
                )
                plan_metadata = read_plan_metadata(planned.plans, month, [g for _, g in todo])
                for k, _ in todo:
                    context.log_event(dg.AssetObservation(asset_key=key, partition=k, metadata=plan_metadata))
                table = field_stats_month(
                    source_id, collection, month, read, fetch_config=http.fetch_config(), planned=planned
                )
                tifs, cog_reads = group_geotiffs(
                    source_id, collection, month, read, output_uri=ndvi_uri, planned=planned, **batch
                )
                del planned
            except (RasteretError, *TRANSIENT_ERRORS) as exc:
                context.log.warning(f"{what} {month}: {type(exc).__name__}: {exc}")
                for k, _ in todo:
                    failures[k] = exc
                continue
            seconds = time.perf_counter() - t0
            reads = reads_of(table)
            rows_of = split_by_group(table)
            sizes = frame.groupby("group").size().to_dict()
            outside_of = frame.loc[sorted(outside), "group"].value_counts().to_dict() if outside else {}
            for k, group in todo:
                rows = rows_of.get(group)
                out = group_table(rows, read, month) if rows is not None else empty_group_table(month)
                where = write_table(store, key, partitions_def, k, out, prefix)
                files = sorted(tifs.get(group, []))
                metadata = stats_metadata(
                    out,
                    where,
                    files,
                    reads,
                    seconds,
                    fields=int(sizes.get(group, 0)),
                    not_indexed=int(outside_of.get(group, 0)),
                    read_fields=len(read),
                )
                metadata["geotiff_get_requests"] = cog_reads["requests"]
                metadata["planned_get_requests"] = plan_metadata["planned_get_requests"]
                metadata["planned_bytes"] = plan_metadata["planned_bytes"]
                if not sizes.get(group):
                    metadata["note"] = f"no field of group {group} is in {fieldset.uri} any more"
                elif out.num_rows == 0:
                    metadata["note"] = (
                        f"no scene of collection {collection.name!r} covers a field of group {group} in {month}"
                    )
                yield dg.AssetMaterialization(asset_key=key, partition=k, metadata=metadata)
                yield from field_stats_check_evaluations(key, k, out, group, files, read)
                materialised += 1
        context.log.info(
            f"{what}: {materialised} partitions materialised, {len(failures)} failed, {len(done)} kept from "
            f"before, in {time.perf_counter() - t_run:.1f} s"
        )
        if failures:
            raise_for_failures(context, what, keys, failures, materialised, retry_policy)

    return field_stats


def read_plan_metadata(plans: list, month: str, groups: list[str]) -> dict:
    """Metadata of a batch's read plan (:func:`~rasteret_pipelines.defs.pipeline.plan_field_month`):
    a Markdown table (scenes, windows, tiles, GETs, MB to fetch, decoded MB, peak MB) per read
    and in total, and the totals as numbers (``planned_get_requests`` is what the batch's reads
    then send: ``tile_get_requests`` + ``geotiff_get_requests`` of its materialisations)."""
    from rasteret_pipelines.reading.explain import ReadPlan, plans_markdown

    total = ReadPlan.sequence("total", [p for _, p in plans])
    shown = ", ".join(groups[:20]) + (f" and {len(groups) - 20} more" if len(groups) > 20 else "")
    text = (
        f"Reads of {month} for {len(groups)} groups ({shown}), planned from the collection's cached headers "
        "before any pixel was fetched:\n\n" + (plans_markdown(plans) if plans else "(no read: no field to read)")
    )
    return {
        "read_plan": dg.MetadataValue.md(text),
        "planned_scenes": total.scenes,
        "planned_windows": total.windows,
        "planned_tiles": total.tiles,
        "planned_get_requests": total.gets,
        "planned_bytes": total.bytes,
        "planned_decoded_bytes": total.decoded_bytes,
        "planned_peak_bytes": total.peak_bytes,
    }


def stats_metadata(
    table: pa.Table,
    where: str,
    files: list[str],
    reads: dict,
    seconds: float,
    *,
    fields: int,
    not_indexed: int,
    read_fields: int,
) -> dict:
    """Materialisation metadata of one (month, group): what the UI shows per partition."""
    import pyarrow.compute as pc

    dates = sorted({str(d) for d in table.column("date").to_pylist()}) if table.num_rows else []
    mean = pc.mean(table.column("ndvi_mean")).as_py() if table.num_rows else None
    valid = pc.mean(table.column("ndvi_valid_fraction")).as_py() if table.num_rows else None
    return {
        "path": dg.MetadataValue.path(where),
        "fields": fields,
        "fields_with_data": len(set(table.column("id").to_pylist())) if table.num_rows else 0,
        "fields_not_indexed": not_indexed,
        "rows": table.num_rows,
        "dates": dg.MetadataValue.json(dates),
        "mean_ndvi": dg.MetadataValue.float(round(mean, 4) if mean is not None else float("nan")),
        "mean_valid_fraction": dg.MetadataValue.float(round(valid, 4) if valid is not None else 0.0),
        "geotiffs": len(files),
        "geotiff_files": dg.MetadataValue.md("\n".join(f"- `{p}`" for p in files[:50]) or "(none)"),
        # the month's one read, shared by every field of the run's groups in that month
        "tile_get_requests": reads["requests"],
        "header_get_requests": reads["header_requests"],
        "bytes_read": reads["bytes_read"],
        "read_fields": read_fields,
        "duration_s": dg.MetadataValue.float(round(seconds, 3)),
    }


def field_timeseries_asset(
    source_id: str, partitions: Partitions, backfill_policy: dg.BackfillPolicy | None = None
) -> dg.AssetsDefinition:
    """The ``field_timeseries/<source>_field_timeseries`` asset, one partition per group."""
    key = field_timeseries_key(source_id)
    stats_key = field_stats_key(source_id)
    prefix = field_timeseries_prefix(source_id)
    stats_prefix = field_stats_prefix(source_id)

    with beta_backfill_policy():
        define = dg.asset(
            key=key,
            partitions_def=partitions.group,
            backfill_policy=backfill_policy or dg.BackfillPolicy.multi_run(500),
            deps=[stats_key],  # group -> every month of the group, inferred; read below, group by group
            output_required=False,
            io_manager_key="table_io_manager",  # the tables load back through it (written by write_table)
            group_name="fields",
            kinds={"parquet"},
            metadata={PATH: prefix, "source": source_id},
            automation_condition=after_any_upstream_update(),
            description=(
                "The NDVI of every field of the group over every materialised month: one row per field and "
                f"date at `{prefix}/group=<group>.parquet`, the group's median and a few fields plotted in the "
                "metadata (`plot`), the full chart beside it as .svg (`plot_file`), a table of the fields."
            ),
        )

    @define
    def field_timeseries(context: dg.AssetExecutionContext, storage: StorageResource):
        import pyarrow.compute as pc

        from rasteret_pipelines.defs.partitions import check_aoi_id

        groups = [check_aoi_id(k, "group") for k in context.partition_keys]
        store = storage.storage()
        base = store.path(*stats_prefix.split("/"))
        files = store.list_files(*stats_prefix.split("/"), suffix=".parquet")
        by_group: dict[str, list[str]] = defaultdict(list)
        for path in files:  # .../month=YYYY-MM/group=<g>.parquet
            rel = path[len(base) :].strip("/").split("/")
            if len(rel) == 2 and rel[0].startswith("month=") and rel[1].startswith("group="):
                by_group[rel[1][len("group=") : -len(".parquet")]].append(rel[0][len("month=") :])
        stats_def = partitions.month_group
        for group in groups:
            tables = []
            for month in sorted(by_group.get(group, [])):
                table = read_table(store, stats_key, stats_def, f"{group}|{month}-01", stats_prefix)
                if table is not None and table.num_rows:
                    tables.append(table.drop_columns(["geometry"]))
            if tables:
                table = pa.concat_tables(tables, promote_options="permissive")
                table = table.take(pc.sort_indices(table, sort_keys=[("id", "ascending"), ("date", "ascending")]))
            else:
                table = empty_group_table("").drop_columns(["geometry"]).slice(0, 0)
            table = table.replace_schema_metadata(None)
            where = write_table(store, key, partitions.group, group, table, prefix)
            metadata = group_series_metadata(table, group, sorted(by_group.get(group, [])), source_id)
            svg = metadata.pop("_svg")
            metadata["path"] = dg.MetadataValue.path(where)
            metadata["plot_file"] = dg.MetadataValue.path(
                store.write_bytes(svg.encode(), *prefix.split("/"), f"group={group}.svg")
            )
            yield dg.AssetMaterialization(asset_key=key, partition=group, metadata=metadata)

    return field_timeseries


SERIES_FIELDS_DRAWN = 8
"""Fields drawn beside the group's median in the time-series chart."""
SERIES_FIELDS_LISTED = 200
"""Fields listed in the time-series metadata table (the first, by id)."""


def group_series_metadata(table: pa.Table, group: str, months: list[str], source_id: str) -> dict:
    """Materialisation metadata of a group's time series (``id``, ``date``, ``ndvi_mean``,
    ``ndvi_valid_fraction`` rows): the field and date counts, the group's median NDVI per date
    (the upper median of the fields' valid means) with the mean valid fraction, plotted, and a
    table of the first :data:`SERIES_FIELDS_LISTED` fields; ``_svg`` is the full chart.

    A group can hold 100,000 fields: the per-date figures are one sort and one ``group_by``
    over the whole table, and Python only touches the fields it shows.
    """
    import numpy as np
    import pyarrow.compute as pc

    from rasteret_pipelines.defs.plot import ndvi_sparkline_markdown, ndvi_timeseries_svg

    t = table.select(["id", "date", "ndvi_mean", "ndvi_valid_fraction"])
    mean = t.column("ndvi_mean")
    usable = pc.fill_null(pc.invert(pc.is_nan(mean)), False)  # neither null nor NaN
    good = t.filter(usable).sort_by([("date", "ascending"), ("ndvi_mean", "ascending")])
    days = good.column("date").to_numpy()
    starts = np.flatnonzero(np.r_[True, days[1:] != days[:-1]]) if len(days) else np.array([], int)
    counts = np.diff(np.r_[starts, len(days)])
    dates = good.column("date").take(pa.array(starts)).to_pylist()
    median = good.column("ndvi_mean").to_numpy()[starts + counts // 2].tolist()
    fraction = t.group_by("date").aggregate([("ndvi_valid_fraction", "mean")])
    of_date = dict(zip(fraction.column("date").to_pylist(), fraction.column("ndvi_valid_fraction_mean").to_pylist()))
    valid = [of_date.get(d) for d in dates]

    ids = pc.unique(t.column("id").drop_null())
    ids = ids.take(pc.array_sort_indices(ids))
    n_fields = len(ids) + (1 if t.column("id").null_count else 0)
    shown = ids.slice(0, SERIES_FIELDS_LISTED)
    rows = t.filter(pc.is_in(t.column("id"), value_set=shown)).sort_by([("id", "ascending"), ("date", "ascending")])
    per_field = rows.group_by("id", use_threads=False).aggregate([("date", "count", pc.CountOptions(mode="all"))])
    n_dates = dict(zip(per_field.column("id").to_pylist(), per_field.column("date_count").to_pylist()))
    own = (
        rows.filter(pc.fill_null(pc.invert(pc.is_nan(rows.column("ndvi_mean"))), False))
        .group_by("id", use_threads=False)
        .aggregate([("ndvi_mean", "mean"), ("ndvi_mean", "list"), ("date", "last")])
    )
    own_of = {
        fid: (m, values, last)
        for fid, m, values, last in zip(
            own.column("id").to_pylist(),
            own.column("ndvi_mean_mean").to_pylist(),
            own.column("ndvi_mean_list").to_pylist(),
            own.column("date_last").to_pylist(),
        )
    }
    series = {"group median": median}
    drawn = rows.filter(pc.is_in(rows.column("id"), value_set=shown.slice(0, SERIES_FIELDS_DRAWN))).to_pydict()
    lines: dict[str, dict] = {}
    for fid, day, value in zip(drawn["id"], drawn["date"], drawn["ndvi_mean"]):
        lines.setdefault(fid, {})[day] = value
    for fid, line in lines.items():
        series[fid] = [line.get(d) for d in dates]
    svg = ndvi_timeseries_svg(dates, series, None, title=f"NDVI of the fields of group {group} ({source_id})")
    records = []
    for fid in shown.to_pylist():
        m, values, last = own_of.get(fid, (None, [], None))
        records.append(
            dg.TableRecord(
                {
                    "field": fid,
                    "dates": n_dates[fid],
                    "mean_ndvi": round(m, 4) if values else float("nan"),
                    "last_date": str(last) if values else "",
                    "last_ndvi": round(values[-1], 4) if values else float("nan"),
                    "sparkline": " ".join(f"{v:.2f}" for v in values[-12:]),
                }
            )
        )
    return {
        "fields": n_fields,
        "rows": table.num_rows,
        "dates": len(dates),
        "months": dg.MetadataValue.json(months),
        "first_date": str(dates[0]) if dates else "",
        "last_date": str(dates[-1]) if dates else "",
        "plot": dg.MetadataValue.md(ndvi_sparkline_markdown(dates, median, f"median NDVI of group {group}", valid)),
        "_svg": svg,
        "fields_table": dg.MetadataValue.table(
            records=records,
            schema=dg.TableSchema(
                columns=[
                    dg.TableColumn("field", "string"),
                    dg.TableColumn("dates", "int"),
                    dg.TableColumn("mean_ndvi", "float"),
                    dg.TableColumn("last_date", "string"),
                    dg.TableColumn("last_ndvi", "float"),
                    dg.TableColumn("sparkline", "string"),
                ]
            ),
        ),
    }


# --- run bookkeeping shared with retries ---------------------------------------------------------


def already_materialised(context, asset_key: dg.AssetKey, keys) -> set[str]:
    """Partitions of ``keys`` this run materialised in an earlier attempt (step retry), or that
    the failed runs this run re-executes materialised: a retry redoes only what failed."""
    instance = context.instance
    run_ids = [context.run.run_id] if context.retry_number > 0 else []
    run = context.run
    seen = set()
    while run is not None and run.parent_run_id and run.parent_run_id not in seen:
        seen.add(run.parent_run_id)
        parent = instance.get_run_by_id(run.parent_run_id)
        if parent is None or parent.status != dg.DagsterRunStatus.FAILURE:
            break
        run_ids.append(parent.run_id)
        run = parent
    if not run_ids:
        return set()
    wanted = set(keys)
    out = set()
    for run_id in run_ids:
        records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
        for record in records:
            mat = record.event_log_entry.asset_materialization
            if mat is not None and mat.asset_key == asset_key and mat.partition in wanted:
                out.add(mat.partition)
    return out


def collection_hrefs(collection: CollectionSlice, source_id: str) -> list[str]:
    """The distinct red-band hrefs of the collection's months (to check their servers first)."""
    red = get_source(source_id).ndvi_bands.red
    if not collection.files:
        return []
    try:
        column = f"{collection.resolve_band(red)}_href"
        table = collection.dataset.to_table(columns=[column])
    except (RasteretError, KeyError, ValueError, OSError):  # a collection without that band: the read names it
        return []
    return sorted({h for h in table.column(column).to_pylist() if h})


def raise_for_failures(
    context, what: str, keys, failures: dict, materialised: int, retry_policy: dg.RetryPolicy | None
):
    """Fail the step naming every failed partition; retried by the step's RetryPolicy (which
    redoes only the partitions not materialised yet) when a failure is transient and retries
    are left, else failed at once."""
    transient = [k for k, e in failures.items() if isinstance(e, TRANSIENT_ERRORS)]
    retry = bool(transient) and retries_left(context, retry_policy)
    lines = [f"- {k}: {type(e).__name__}: {e}" for k, e in sorted(failures.items())]
    shown = "\n".join(lines[:50]) + (f"\n- ... and {len(lines) - 50} more" if len(lines) > 50 else "")
    if retry:
        context.log.warning(
            f"{what}: {len(transient)} partitions hit a transient fault; the step's retry policy retries it "
            f"(retry {context.retry_number + 1} of {retry_policy.max_retries}), redoing only the partitions "
            "not materialised yet"
        )
    raise dg.Failure(
        description=(
            f"{what}: {len(failures)} of {len(keys)} partitions failed ({materialised} materialised in this "
            f"run; re-execute or retry the backfill's failed partitions to redo only the failed ones):\n{shown}"
        ),
        metadata={
            "failed_partitions": dg.MetadataValue.json(
                {k: f"{type(e).__name__}: {e}" for k, e in sorted(failures.items())}
            ),
            "materialised": materialised,
            "retries": context.retry_number,
        },
        allow_retries=retry,
    )
