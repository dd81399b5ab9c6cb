"""NDVI per month x AOI: GeoTIFFs read through the cached headers, and their manifest.

One run covers many partitions (the asset's backfill policy, ``RASTERET_PARTITIONS_PER_RUN``).
Inside a run the partition keys are grouped by month, and each month's AOIs are read together,
with one :func:`~rasteret_pipelines.reading.read_geometries` call per batch (batches bounded by
``RASTERET_NDVI_BATCH_AOIS`` and ``RASTERET_NDVI_BATCH_MB``), so a tile shared by neighbouring
AOIs is fetched and decoded once. Every (month, AOI) partition still gets its own
materialization (with its files, dates, NDVI, valid fraction and the read's GETs) and its own
check results, logged as soon as its batch is written.

Failure isolation: a bad AOI (an unusable geometry in the AOI file, no longer in the file,
outside the area the month was indexed for, a read that fails for it alone) fails its own
partition only; the others of the run are
materialised. The run then fails naming every failed partition, and a retry (a step retry after
a transient fault, or a re-execution of the failed run) skips the partitions this run or the
failed run it retries already materialised.
"""

import time
from collections import defaultdict

import dagster as dg

from rasteret_pipelines.errors import AoiFileError
from rasteret_pipelines.collections import get_source
from rasteret_pipelines.defs.assets._common import (
    TRANSIENT_ERRORS,
    after_upstream_updates,
    beta_backfill_policy,
    retries_left,
    source_pool,
    step_errors,
)
from rasteret_pipelines.defs.assets.collections import collection_key
from rasteret_pipelines.defs.io_managers import JSON, KIND, CollectionSlice, MissingPartitionError, write_value
from rasteret_pipelines.defs.partitions import (
    Partitions,
    month_key,
    split_month_aoi,
)
from rasteret_pipelines.defs.pipeline import (
    check_aoi_indexed,
    chunk_aois,
    month_bounds,
    ndvi_batch,
)
from rasteret_pipelines.defs.resources import (
    AoiFileResource,
    BatchResource,
    DataSourceResource,
    HttpClientResource,
    StorageResource,
)
from rasteret_pipelines.defs.settings import source_slug
from rasteret_pipelines.errors import AoiNotInFileError, RasteretError, UnsafePartitionKeyError



def ndvi_key(source_id: str) -> dg.AssetKey:
    """``ndvi/<source>_ndvi``: the UI labels an asset node with its key's last part, so each
    asset of a source ends differently (``sentinel_2_l2a``, ``sentinel_2_l2a_ndvi``, ...)."""
    return dg.AssetKey(["ndvi", f"{source_slug(source_id)}_ndvi"])


def ndvi_asset(
    source_id: str,
    partitions: Partitions,
    backfill_policy: dg.BackfillPolicy | None = None,
    retry_policy: dg.RetryPolicy | None = None,
) -> dg.AssetsDefinition:
    """The NDVI asset (see the module docs and :func:`~rasteret_pipelines.defs.pipeline.ndvi_batch`).

    Its ``collection`` input maps each month x AOI partition to its month: Dagster infers that
    mapping (the months are one dimension of the month x AOI partitions).
    """
    key = ndvi_key(source_id)
    where = "/".join(key.path)

    with beta_backfill_policy():  # the one beta parameter used
        define_asset = dg.asset(
            key=key,
            partitions_def=partitions.month_aoi,
            backfill_policy=backfill_policy or dg.BackfillPolicy.multi_run(500),
            ins={"collection": dg.AssetIn(key=collection_key(source_id))},
            io_manager_key="rasteret_io",
            output_required=False,
            group_name="ndvi",
            pool=source_pool(source_id),
            retry_policy=retry_policy,
            kinds={"geotiff", "json"},
            metadata={KIND: JSON, "source": source_id},
            automation_condition=after_upstream_updates(),
            description=(
                "NDVI of each AOI in each month, cloud-masked, from surface reflectance read through the "
                "collection's cached headers (no header request): one Cloud-Optimized GeoTIFF per date at "
                f"`{where}/tif/geometry_<aoi>/ndvi_YYYYMMDD.tif` and a manifest (paths, dates, valid "
                f"pixel fraction, mean and median NDVI) at `{where}/aoi=<aoi>/month=YYYY-MM.json`. "
                "A run covers many partitions; each month's AOIs are read together."
            ),
        )

    @define_asset
    def ndvi(
        context: dg.AssetExecutionContext,
        collection: CollectionSlice,
        storage: StorageResource,
        http: HttpClientResource,
        aois: AoiFileResource,
        data_source: DataSourceResource,
        batching: BatchResource,
    ):
        from rasteret_pipelines.defs.checks import ndvi_check_results

        t_run = time.perf_counter()
        keys = [str(k) for k in context.partition_keys]
        partitions_def = context.assets_def.partitions_def
        what = f"NDVI ({source_id})"
        failures: dict[str, BaseException] = {}
        by_month: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for k in keys:
            try:
                month_partition, aoi_id = split_month_aoi(k)
            except UnsafePartitionKeyError as exc:
                failures[k] = exc
                continue
            by_month[month_partition].append((k, aoi_id))
        done = already_materialised(context, key, keys)
        if done:
            context.log.info(f"{what}: {len(done)} of {len(keys)} partitions were materialised by this run "
                             "(or the failed run it retries) before; only the others are redone")
        with step_errors(context, what, retry_policy):  # a bad AOI file, a local server down: not retried
            areas = aois.load(lenient=True) if by_month else None
            if by_month:
                data_source.ensure_cog_servers(collection_hrefs(collection, source_id),
                                               f"collection {collection.name}")
        store = storage.storage()
        output_uri = storage.uri(*key.path, "tif")
        materialised = 0
        for month_partition, entries in sorted(by_month.items()):
            month = month_key(month_partition)
            key_of: dict[str, str] = {}
            for k, aoi_id in entries:
                if k in done:
                    continue
                try:
                    if aoi_id in areas.invalid:
                        raise AoiFileError(areas.invalid[aoi_id])
                    if aoi_id not in areas.ids:
                        raise AoiNotInFileError(
                            f"AOI {aoi_id} is no longer in {areas.uri} (it has {len(areas.ids)} AOIs); "
                            "delete its partition or add it back"
                        )
                    if month not in collection.month_keys:
                        raise MissingPartitionError(
                            f"collection {collection.name} has no month {month}: materialise partition "
                            f"{month_partition} of {collection_key(source_id).to_user_string()} first"
                        )
                    check_aoi_indexed(collection, month, aoi_id, areas.geometry(aoi_id))
                except RasteretError as exc:
                    failures[k] = exc
                    continue
                key_of[aoi_id] = k
            if not key_of:
                continue
            first, last = month_bounds(month)
            n_scenes = collection.to_table(date_range=(first, last), columns=["id"]).num_rows if len(key_of) > 1 else 1
            batches = chunk_aois(
                areas, list(key_of), max_aois=batching.max_aois, max_bytes=batching.max_bytes,
                n_dates=n_scenes, pixel_size=get_source(source_id).pixel_size,
            )
            context.log.info(f"{what} {month}: {len(key_of)} AOIs in {len(batches)} read(s)")
            for batch in batches:
                t0 = time.perf_counter()
                results = read_isolated(source_id, collection, month, batch, areas, output_uri, http.fetch_config())
                seconds = time.perf_counter() - t0
                for aoi_id, result in results.items():
                    k = key_of[aoi_id]
                    if isinstance(result, BaseException):
                        failures[k] = result
                        context.log.warning(f"{what}: AOI {aoi_id} in {month}: {type(result).__name__}: {result}")
                        continue
                    where = write_value(store, key, partitions_def, k, result)
                    metadata = manifest_metadata(result, where, seconds)
                    yield dg.AssetMaterialization(asset_key=key, partition=k, metadata=metadata)
                    for name, check in ndvi_check_results(result).items():
                        yield dg.AssetCheckEvaluation(
                            asset_key=key, check_name=name, passed=check.passed, metadata=check.metadata,
                            partition=k, severity=check.severity,
                        )
                    materialised += 1
        context.log.info(
            f"{what}: {materialised} partitions materialised, {len(failures)} failed, {len(done)} kept from "
            f"before, in {time.perf_counter() - t_run:.1f} s"
        )
        if failures:
            raise_for_failures(context, what, keys, failures, materialised, retry_policy)

    return ndvi


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


def read_isolated(source_id, collection, month, batch, areas, output_uri, fetch_config) -> dict[str, object]:
    """``{aoi: manifest or the error of that AOI}`` for one batch.

    The batch is read at once; when that read fails for a reason that is not transient, each
    AOI is read on its own so the bad one fails alone. A transient fault (STAC API, fetch)
    fails the whole batch: the step retry redoes it.
    """
    try:
        return ndvi_batch(source_id, collection, month, batch, areas, output_uri=output_uri, fetch_config=fetch_config)
    except TRANSIENT_ERRORS as exc:
        return {a: exc for a in batch}
    except RasteretError as exc:
        if len(batch) == 1:
            return {batch[0]: exc}
    out: dict[str, object] = {}
    for aoi_id in batch:
        try:
            out.update(ndvi_batch(source_id, collection, month, [aoi_id], areas, output_uri=output_uri,
                                  fetch_config=fetch_config))
        except RasteretError as exc:
            out[aoi_id] = exc
    return out


def manifest_metadata(manifest: dict, where: str, seconds: float) -> dict:
    """Materialization metadata of one partition: what the UI shows per (month, AOI)."""
    dates = manifest["dates"]
    valid = [d for d in dates if d["mean_ndvi"] is not None]
    metadata = {
        "path": dg.MetadataValue.path(where),
        "dates": len(dates),
        "files": len(manifest["files"]),
        "mean_ndvi": dg.MetadataValue.float(
            round(sum(d["mean_ndvi"] for d in valid) / len(valid), 4) if valid else float("nan")
        ),
        "mean_valid_fraction": dg.MetadataValue.float(
            round(sum(d["valid_fraction"] for d in dates) / len(dates), 4) if dates else 0.0
        ),
        "geotiffs": dg.MetadataValue.md("\n".join(f"- `{p}`" for p in manifest["files"]) or "(none)"),
        "duration_s": dg.MetadataValue.float(round(seconds, 3)),
    }
    if "note" in manifest:
        metadata["note"] = manifest["note"]
    if "reads" in manifest:  # tile reads through the cached headers, shared by the batch's AOIs
        reads = manifest["reads"]
        metadata["tile_get_requests"] = reads["requests"]
        metadata["header_get_requests"] = reads["header_requests"]
        metadata["bytes_read"] = reads["bytes_read"]
        metadata["read_batch_aois"] = reads.get("batch_aois", 1)
    if dates:
        lines = ["| date | valid fraction | mean NDVI | median NDVI |", "| --- | --- | --- | --- |"]
        for d in dates:
            mean = "" if d["mean_ndvi"] is None else f"{d['mean_ndvi']:.3f}"
            median = "" if d["median_ndvi"] is None else f"{d['median_ndvi']:.3f}"
            lines.append(f"| {d['date']} | {d['valid_fraction']:.3f} | {mean} | {median} |")
        metadata["per_date"] = dg.MetadataValue.md("\n".join(lines))
    return metadata


def raise_for_failures(context, what: str, keys, failures: dict, materialised: int,
                       retry_policy: dg.RetryPolicy | None):
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
            "failed_partitions": dg.MetadataValue.json({k: f"{type(e).__name__}: {e}" for k, e in sorted(failures.items())}),
            "materialised": materialised,
            "retries": context.retry_number,
        },
        allow_retries=retry,
    )
