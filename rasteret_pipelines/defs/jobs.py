"""Jobs: the collections, the NDVI and the time series, each over its own partitions."""

from __future__ import annotations

import dagster as dg

from rasteret_pipelines.defs.assets import collection_key, ndvi_key, timeseries_key


def build_jobs(sources) -> list:
    """Partitioning comes from the selected assets (months, months x AOIs, AOIs)."""
    return [
        dg.define_asset_job(
            "collections_job",
            selection=dg.AssetSelection.assets(*[collection_key(s) for s in sources]),
            description="Build one month of every source's collection.",
        ),
        dg.define_asset_job(
            "ndvi_job",
            selection=dg.AssetSelection.assets(*[ndvi_key(s) for s in sources]),
            description=(
                "NDVI GeoTIFFs and manifests of (month, AOI) partitions, for every source; a run over "
                "a partition range reads each month's AOIs together."
            ),
        ),
        dg.define_asset_job(
            "ndvi_timeseries_job",
            selection=dg.AssetSelection.assets(*[timeseries_key(s) for s in sources]),
            description="The NDVI time series of AOIs (one partition each), for every source.",
        ),
    ]
