"""Collections: STAC items as month-partitioned STAC-GeoParquet with every band's COG header.

Build once (:func:`build_collection`), then read any window of any scene with no header
request: :meth:`Collection.to_table` filters locally and :meth:`Collection.headers` returns
the cached :class:`~rasteret_pipelines.cog.CogHeader` objects.

Names are imported on first use: ``DataSources`` needs neither pyarrow nor the COG engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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

_LAZY = {
    "BuildReport": "rasteret_pipelines.collections.build",
    "FailedAsset": "rasteret_pipelines.collections.build",
    "MonthReport": "rasteret_pipelines.collections.build",
    "build_collection": "rasteret_pipelines.collections.build",
    "collection_name": "rasteret_pipelines.collections.build",
    "Collection": "rasteret_pipelines.collections.query",
    "list_collections": "rasteret_pipelines.collections.query",
    "load_collection": "rasteret_pipelines.collections.query",
    "SOURCES": "rasteret_pipelines.collections.sources",
    "DataSource": "rasteret_pipelines.collections.sources",
    "DataSources": "rasteret_pipelines.collections.sources",
    "get_source": "rasteret_pipelines.collections.sources",
    "stac_url_env_var": "rasteret_pipelines.collections.sources",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
