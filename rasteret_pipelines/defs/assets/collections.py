"""One monthly-partitioned collection asset per source."""


import time

import dagster as dg

from rasteret_pipelines.collections import get_source
from rasteret_pipelines.errors import AoiFileError
from rasteret_pipelines.defs.assets._common import raise_for, source_pool
from rasteret_pipelines.defs.io_managers import COLLECTION, KIND
from rasteret_pipelines.defs.partitions import Partitions, month_key
from rasteret_pipelines.defs.pipeline import build_month, collection_bands
from rasteret_pipelines.defs.resources import (
    AoiFileResource,
    DataSourceResource,
    HttpClientResource,
    StorageResource,
)
from rasteret_pipelines.defs.settings import source_slug
from rasteret_pipelines.errors import RasteretError
from rasteret_pipelines.redaction import redact


def collection_key(source_id: str) -> dg.AssetKey:
    return dg.AssetKey(["collections", source_slug(source_id)])


def collection_asset(source_id: str, partitions: Partitions) -> dg.AssetsDefinition:
    """The ``collections/<source>`` asset: month M is the source's STAC items of M over the AOIs,
    with every band's COG header cached, as GeoParquet (built incrementally by the library)."""
    source = get_source(source_id)
    bands = collection_bands(source.id)

    @dg.asset(
        key=collection_key(source.id),
        partitions_def=partitions.months,
        io_manager_key="rasteret_io",
        group_name="collections",
        pool=source_pool(source.id),
        kinds={"stac", "parquet"},
        metadata={KIND: COLLECTION, "source": source.id, "stac_collection": source.collection,
                  "bands": ", ".join(bands)},
        description=(
            f"{source.description}: the month's STAC items over the AOIs' bounds, every header of "
            f"{', '.join(bands)} cached, as GeoParquet at collections/{source_slug(source.id)}/"
            "month=YYYY-MM/items.parquet. Rebuilding a month re-reads only new or changed headers."
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
        try:
            areas = aois.load(lenient=True)  # an AOI with an unusable geometry fails its own NDVI only
            if areas.invalid:
                context.log.warning(f"{what}: left out of the search area: " + "; ".join(areas.invalid.values())[:2000])
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
        except AoiFileError as exc:
            raise dg.Failure(description=f"{what}: {exc}", allow_retries=False) from exc
        except RasteretError as exc:
            raise_for(context, exc, what, http.transient_retries, http.transient_retry_seconds)
        report = built.report
        if report.failed and context.retry_number < http.transient_retries:
            context.log.warning(
                f"{what}: {len(report.failed)} band headers failed (recorded in the month file); "
                f"retrying the month in {http.transient_retry_seconds:g} s, which re-reads only those"
            )
            raise dg.RetryRequested(
                max_retries=http.transient_retries, seconds_to_wait=http.transient_retry_seconds
            )
        metadata = {
            "items": report.items,
            "header_gets": dg.MetadataValue.int(report.header_requests),
            "headers_fetched": report.headers_fetched,
            "headers_reused": report.headers_reused,
            "failed_assets": len(report.failed),
            "skipped_items": len(report.skipped_items),
            "bytes": dg.MetadataValue.int(report.bytes),
            "duration_s": dg.MetadataValue.float(round(time.perf_counter() - t0, 3)),
            "stac_url": redact(built.stac_url),  # a signed or tokened URL never reaches the UI
            "search_bbox": dg.MetadataValue.json(built.output.search["bbox"]),
            "aoi_ids": ", ".join(areas.ids),
        }
        if areas.invalid:
            metadata["unusable_aois"] = dg.MetadataValue.json(areas.invalid)
        if report.failed:
            lines = ["| item | band | error |", "| --- | --- | --- |"]
            lines += [f"| {f.item_id} | {f.band} | {f.error[:160]} |" for f in report.failed[:50]]
            metadata["failed"] = dg.MetadataValue.md("\n".join(lines))
        context.log.info(
            f"{what}: {report.items} items, {report.headers_fetched} headers fetched with "
            f"{report.header_requests} GETs, {report.headers_reused} reused, {len(report.failed)} failed"
        )
        return dg.Output(built.output, metadata=metadata)

    return collection
