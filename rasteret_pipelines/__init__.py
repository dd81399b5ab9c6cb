"""rasteret-pipelines: header-cached COG reads and Dagster pipelines for satellite imagery.

``from rasteret_pipelines import Rasteret, DataSources, save_per_geometry`` gives the original
library's high-level API; the parts live in :mod:`~rasteret_pipelines.cog`,
:mod:`~rasteret_pipelines.collections`, :mod:`~rasteret_pipelines.reading` and
:mod:`~rasteret_pipelines.products`. Names are imported lazily (``lazy_loader``), here and in
every subpackage, so that this import takes a fraction of a second and loads none of
pyarrow, aiohttp, xarray, GeoPandas, rasterio or Dagster: each loads with the first call
that needs it (``rasteret_pipelines_tests/test_imports.py`` keeps it so).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

__version__ = "0.1.0"

if TYPE_CHECKING:
    from rasteret_pipelines.api import Rasteret
    from rasteret_pipelines.collections.sources import DataSources
    from rasteret_pipelines.products import compute_ndvi, save_per_geometry

__getattr__, __dir__, _lazy_names = lazy_loader.attach(
    __name__,
    submod_attrs={
        "api": ["Rasteret"],
        "collections.sources": ["DataSources"],
        "products": ["compute_ndvi", "save_per_geometry"],
    },
)
__all__ = ["__version__", *_lazy_names]
