"""Jobs: the collections, the field statistics and the field time series, each over its own partitions."""

from __future__ import annotations

import dagster as dg

from rasteret_pipelines.defs.assets import collection_key, field_stats_key, field_timeseries_key


def build_jobs(sources) -> list:
    """Partitioning comes from the selected assets (months, months x groups, groups)."""
    return [
        dg.define_asset_job(
            "collections_job",
            selection=dg.AssetSelection.assets(*[collection_key(s) for s in sources]),
            description="Build one month of every source's collection.",
        ),
        dg.define_asset_job(
            "field_stats_job",
            selection=dg.AssetSelection.assets(*[field_stats_key(s) for s in sources]),
            description=(
                "NDVI statistics tables and COGs of (month, group) partitions, for every source; a run over "
                "many partitions reads each month's fields together."
            ),
        ),
        dg.define_asset_job(
            "field_timeseries_job",
            selection=dg.AssetSelection.assets(*[field_timeseries_key(s) for s in sources]),
            description="The NDVI time series of every field of groups (one partition per group), for every source.",
        ),
    ]
