"""Asset factories: one collection, one NDVI and one NDVI time-series asset per source."""

from rasteret_pipelines.defs.assets.collections import collection_asset, collection_key
from rasteret_pipelines.defs.assets.ndvi import ndvi_asset, ndvi_key
from rasteret_pipelines.defs.assets.timeseries import timeseries_asset, timeseries_key

__all__ = [
    "collection_asset",
    "collection_key",
    "ndvi_asset",
    "ndvi_key",
    "timeseries_asset",
    "timeseries_key",
]
