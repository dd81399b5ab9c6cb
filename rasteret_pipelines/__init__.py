"""rasteret-pipelines: header-cached COG reads and Dagster pipelines for satellite imagery.

``from rasteret_pipelines import Rasteret, DataSources, save_per_geometry`` gives the original
library's high-level API; the parts live in :mod:`~rasteret_pipelines.cog`,
:mod:`~rasteret_pipelines.collections`, :mod:`~rasteret_pipelines.reading` and
:mod:`~rasteret_pipelines.products`. Names are imported lazily so that the command line and
the COG engine start without loading xarray and GeoPandas.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "Rasteret": "rasteret_pipelines.api",
    "DataSources": "rasteret_pipelines.collections.sources",
    "save_per_geometry": "rasteret_pipelines.products",
    "compute_ndvi": "rasteret_pipelines.products",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rasteret_pipelines' has no attribute {name!r}")
