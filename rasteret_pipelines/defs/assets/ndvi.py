"""NDVI per month x AOI: GeoTIFFs read through the cached headers, and their manifest."""


import time

import dagster as dg

from rasteret_pipelines.defs.aois import AoiFileError
from rasteret_pipelines.defs.assets._common import after_upstream_updates, raise_for, source_pool
from rasteret_pipelines.defs.assets.collections import collection_key
from rasteret_pipelines.defs.io_managers import JSON, KIND, CollectionSlice
from rasteret_pipelines.defs.partitions import MONTH_DIMENSION, Partitions, month_key, split_month_aoi
from rasteret_pipelines.defs.pipeline import AoiNotIndexedError, ndvi_month
from rasteret_pipelines.defs.resources import AoiFileResource, HttpClientResource, StorageResource
from rasteret_pipelines.defs.settings import source_slug
from rasteret_pipelines.errors import RasteretError


def ndvi_key(source_id: str) -> dg.AssetKey:
    return dg.AssetKey(["ndvi", source_slug(source_id)])


def ndvi_asset(source_id: str, partitions: Partitions) -> dg.AssetsDefinition:
    """The ``ndvi/<source>`` asset (see :func:`rasteret_pipelines.defs.pipeline.ndvi_month`)."""
    slug = source_slug(source_id)

    @dg.asset(
        key=ndvi_key(source_id),
        partitions_def=partitions.month_aoi,
        ins={
            "collection": dg.AssetIn(
                key=collection_key(source_id),
                partition_mapping=dg.MultiToSingleDimensionPartitionMapping(
                    partition_dimension_name=MONTH_DIMENSION
                ),
            )
        },
        io_manager_key="rasteret_io",
        group_name="ndvi",
        pool=source_pool(source_id),
        kinds={"geotiff", "json"},
        metadata={KIND: JSON, "source": source_id},
        automation_condition=after_upstream_updates(),
        description=(
            "NDVI of one AOI in one month, cloud-masked, from surface reflectance read through the "
            "collection's cached headers (no header request): one Cloud-Optimized GeoTIFF per date at "
            f"ndvi/{slug}/tif/geometry_<aoi>/ndvi_YYYYMMDD.tif and a manifest (paths, dates, valid "
            f"pixel fraction, mean and median NDVI) at ndvi/{slug}/aoi=<aoi>/month=YYYY-MM.json."
        ),
    )
    def ndvi(
        context: dg.AssetExecutionContext,
        collection: CollectionSlice,
        storage: StorageResource,
        http: HttpClientResource,
        aois: AoiFileResource,
    ):
        month_partition, aoi_id = split_month_aoi(context.partition_key)
        month = month_key(month_partition)
        what = f"NDVI of AOI {aoi_id} in {month} ({source_id})"
        t0 = time.perf_counter()
        try:
            areas = aois.load()
            if aoi_id not in areas.ids:
                raise dg.Failure(
                    description=f"{what}: AOI {aoi_id} is no longer in {areas.uri} (it has "
                    f"{', '.join(areas.ids)}); delete its partition or add it back",
                    allow_retries=False,
                )
            manifest = ndvi_month(
                source_id, collection, month, aoi_id, areas,
                output_uri=storage.uri("ndvi", slug, "tif"),
                fetch_config=http.fetch_config(),
            )
        except (AoiFileError, AoiNotIndexedError) as exc:
            raise dg.Failure(description=f"{what}: {exc}", allow_retries=False) from exc
        except RasteretError as exc:
            raise_for(context, exc, what, http.transient_retries, http.transient_retry_seconds)
        dates = manifest["dates"]
        valid = [d for d in dates if d["mean_ndvi"] is not None]
        metadata = {
            "dates": len(dates),
            "files": len(manifest["files"]),
            "mean_ndvi": dg.MetadataValue.float(
                round(sum(d["mean_ndvi"] for d in valid) / len(valid), 4) if valid else float("nan")
            ),
            "mean_valid_fraction": dg.MetadataValue.float(
                round(sum(d["valid_fraction"] for d in dates) / len(dates), 4) if dates else 0.0
            ),
            "geotiffs": dg.MetadataValue.md("\n".join(f"- `{p}`" for p in manifest["files"]) or "(none)"),
            "duration_s": dg.MetadataValue.float(round(time.perf_counter() - t0, 3)),
        }
        if "note" in manifest:
            metadata["note"] = manifest["note"]
        if "reads" in manifest:  # tile reads through the cached headers
            metadata["tile_get_requests"] = manifest["reads"]["requests"]
            metadata["header_get_requests"] = manifest["reads"]["header_requests"]
            metadata["bytes_read"] = manifest["reads"]["bytes_read"]
        if dates:
            lines = ["| date | valid fraction | mean NDVI | median NDVI |", "| --- | --- | --- | --- |"]
            for d in dates:
                mean = "" if d["mean_ndvi"] is None else f"{d['mean_ndvi']:.3f}"
                median = "" if d["median_ndvi"] is None else f"{d['median_ndvi']:.3f}"
                lines.append(f"| {d['date']} | {d['valid_fraction']:.3f} | {mean} | {median} |")
            metadata["per_date"] = dg.MetadataValue.md("\n".join(lines))
        return dg.Output(manifest, metadata=metadata)

    return ndvi
