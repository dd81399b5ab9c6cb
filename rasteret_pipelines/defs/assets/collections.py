"""One monthly-partitioned collection asset per source."""

import time

import dagster as dg

from rasteret_pipelines.collections import get_source
from rasteret_pipelines.defs.assets._common import retries_left, source_pool, step_errors
from rasteret_pipelines.defs.checks import collection_check_specs, collection_columns, header_check_result, header_gaps
from rasteret_pipelines.defs.io_managers import COLLECTIONS, MONTH_FILE
from rasteret_pipelines.defs.partitions import Partitions, month_key
from rasteret_pipelines.defs.pipeline import build_month, collection_bands
from rasteret_pipelines.defs.resources import (
    AoiFileResource,
    DataSourceResource,
    HttpClientResource,
    StorageResource,
)
from rasteret_pipelines.defs.settings import source_slug
from rasteret_pipelines.errors import FetchError
from rasteret_pipelines.redaction import redact


def collection_key(source_id: str) -> dg.AssetKey:
    return dg.AssetKey(["collections", source_slug(source_id)])


def collection_asset(
    source_id: str,
    partitions: Partitions,
    retry_policy: dg.RetryPolicy | None = None,
    stac_label: str | None = None,
) -> dg.AssetsDefinition:
    """The ``collections/<source>`` asset: month M is the source's STAC items of M over the AOIs,
    with every band's COG header cached, as GeoParquet (built incrementally by the library).

    Args:
        retry_policy: Retries of the step after a transient fault (bad input is never retried).
        stac_label: Where the items come from, for the description (default: the source's own API).
    """
    source = get_source(source_id)
    bands = collection_bands(source.id)
    stac_label = stac_label or f"the public STAC API at {source.stac_url}"
    # the source's own description names its public API: only true when that API is searched
    what_items = (
        source.description if source.stac_url in stac_label else f"{source.id} (STAC collection {source.collection})"
    )

    @dg.asset(
        key=collection_key(source.id),
        partitions_def=partitions.months,
        check_specs=collection_check_specs(collection_key(source.id), partitions.months, bands),
        io_manager_key="collection_io_manager",
        group_name="collections",
        pool=source_pool(source.id),
        retry_policy=retry_policy,
        kinds={"stac", "parquet"},
        metadata={
            "source": source.id,
            "stac_collection": source.collection,
            "bands": ", ".join(bands),
        },
        description=(
            f"{what_items}, searched through {stac_label}: the month's STAC items over the "
            f"fields' bounds, every header of {', '.join(bands)} cached, as GeoParquet at "
            f"`collections/{source_slug(source.id)}/month=YYYY-MM/items.parquet`. Rebuilding a month "
            "re-reads only new or changed headers."
        ),
    )
    def collection(
        context: dg.AssetExecutionContext,
        storage: StorageResource,
        data_source: DataSourceResource,
        http: HttpClientResource,
        aois: AoiFileResource,
    ):
        month = month_key(context.partition_key)
        what = f"{source.id} collection month {month}"
        t0 = time.perf_counter()
        with step_errors(context, what, retry_policy):
            areas = aois.fields()  # bad rows are skipped (and named), the others searched for
            if areas.invalid:
                context.log.warning(
                    f"{what}: {len(areas.invalid)} rows of the field file left out of the search area: "
                    + "; ".join(f"{k}: {v}" for k, v in areas.invalid.items())[:2000]
                )
            stac_url = data_source.stac_url_for(source.id)
            built = build_month(
                source.id,
                source_slug(source.id),
                month,
                storage_uri=storage.uri(),
                aois=areas,
                stac_url=stac_url,
                cloud_cover_lt=data_source.cloud_cover_lt,
                fetch_config=http.fetch_config(),
            )
            report = built.report
            if report.failed and retries_left(context, retry_policy):
                # the month file records the failures; the retry re-reads only those headers
                first = report.failed[0]
                raise FetchError(
                    first.href or first.item_id,
                    f"{len(report.failed)} band headers of {what} failed (first: {first.band} of "
                    f"{first.item_id}: {first.error[:200]})",
                )
        gaps = header_gaps(month_table(storage, source.id, month, bands), bands)
        metadata = {
            "items": report.items,
            "header_gets": dg.MetadataValue.int(report.header_requests),
            "headers_fetched": report.headers_fetched,
            "headers_reused": report.headers_reused,
            "failed_assets": len(report.failed),
            "missing_headers": dg.MetadataValue.int(len(gaps.missing)),
            "lacked_bands": dg.MetadataValue.int(len(gaps.lacked)),
            "skipped_items": len(report.skipped_items),
            "bytes": dg.MetadataValue.int(report.bytes),
            "duration_s": dg.MetadataValue.float(round(time.perf_counter() - t0, 3)),
            "stac_url": redact(built.stac_url),  # a signed or tokened URL never reaches the UI
            "search_bbox": dg.MetadataValue.json(built.output.search["bbox"]),
            "fields": len(areas.ids),
            "field_groups": len(areas.groups),
        }
        if areas.invalid:
            metadata["skipped_fields"] = dg.MetadataValue.json(dict(list(areas.invalid.items())[:200]))
        if report.failed:
            lines = ["| item | band | error |", "| --- | --- | --- |"]
            lines += [f"| {f.item_id} | {f.band} | {f.error[:160]} |" for f in report.failed[:50]]
            metadata["failed"] = dg.MetadataValue.md("\n".join(lines))
        context.log.info(
            f"{what}: {report.items} items, {report.headers_fetched} headers fetched with "
            f"{report.header_requests} GETs, {report.headers_reused} reused, {len(report.failed)} failed"
        )
        yield dg.Output(built.output, metadata=metadata)
        yield header_check_result(gaps, bands)

    return collection


def month_table(storage: StorageResource, source_id: str, month: str, bands):
    """The columns of a built month file that the header check reads (ids, hrefs, headers, errors)."""
    import io

    import pyarrow.parquet as pq

    data = storage.storage().read_bytes(COLLECTIONS, source_slug(source_id), f"month={month}", MONTH_FILE)
    month_file = pq.ParquetFile(io.BytesIO(data))
    return month_file.read(columns=collection_columns(month_file.schema_arrow.names, bands))
