"""Collections: STAC items as month-partitioned STAC-GeoParquet with every band's COG header.

Build once (:func:`build_collection`), then read any window of any scene with no header
request: :meth:`Collection.to_table` filters locally and :meth:`Collection.headers` returns
the cached :class:`~rasteret_pipelines.cog.CogHeader` objects.

Names are imported on first use: ``DataSources`` needs neither pyarrow nor the COG engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

if TYPE_CHECKING:
    from rasteret_pipelines.collections.build import (
        BuildReport,
        FailedAsset,
        GeoreferenceNote,
        MonthReport,
        build_collection,
        collection_name,
    )
    from rasteret_pipelines.collections.cloudmask import CloudMask, MaskedBits, MaskedClasses
    from rasteret_pipelines.collections.query import Collection, list_collections, load_collection
    from rasteret_pipelines.collections.search import SearchSpec
    from rasteret_pipelines.collections.sources import (
        SOURCES,
        DataSource,
        DataSources,
        NdviBands,
        get_source,
        register_source,
        stac_url_env_var,
        unregister_source,
    )

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "build": [
            "BuildReport",
            "FailedAsset",
            "GeoreferenceNote",
            "MonthReport",
            "build_collection",
            "collection_name",
        ],
        "query": ["Collection", "list_collections", "load_collection"],
        "search": ["SearchSpec"],
        "cloudmask": ["CloudMask", "MaskedBits", "MaskedClasses"],
        "sources": [
            "DataSource",
            "DataSources",
            "NdviBands",
            "SOURCES",
            "get_source",
            "register_source",
            "stac_url_env_var",
            "unregister_source",
        ],
    },
)
