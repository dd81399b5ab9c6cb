"""Collections: STAC items as month-partitioned STAC-GeoParquet with every band's COG header.

Build once (:func:`build_collection`), then read any window of any scene with no header
request: :meth:`Collection.to_table` filters locally and :meth:`Collection.headers` returns
the cached :class:`~rasteret_pipelines.cog.CogHeader` objects.
"""

from rasteret_pipelines.collections.build import (
    BuildReport,
    FailedAsset,
    MonthReport,
    build_collection,
    collection_name,
)
from rasteret_pipelines.collections.query import Collection, list_collections, load_collection
from rasteret_pipelines.collections.sources import (
    SOURCES,
    DataSource,
    DataSources,
    get_source,
    stac_url_env_var,
)

__all__ = [
    "SOURCES",
    "BuildReport",
    "Collection",
    "DataSource",
    "DataSources",
    "FailedAsset",
    "MonthReport",
    "build_collection",
    "collection_name",
    "get_source",
    "list_collections",
    "load_collection",
    "stac_url_env_var",
]
