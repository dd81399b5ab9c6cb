"""Asset factories: per source a collection, a field-statistics and a field time-series asset;
the field file as one external asset."""

from rasteret_pipelines.defs.assets.collections import collection_asset, collection_key
from rasteret_pipelines.defs.assets.fields import (
    FIELDS_KEY,
    field_stats_asset,
    field_stats_key,
    field_stats_prefix,
    field_timeseries_asset,
    field_timeseries_key,
    field_timeseries_prefix,
    fields_asset,
)

__all__ = [
    "FIELDS_KEY",
    "collection_asset",
    "collection_key",
    "field_stats_asset",
    "field_stats_key",
    "field_stats_prefix",
    "field_timeseries_asset",
    "field_timeseries_key",
    "field_timeseries_prefix",
    "fields_asset",
]
