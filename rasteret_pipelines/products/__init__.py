"""Products made from a read: spectral indices and per-geometry Cloud-Optimized GeoTIFFs.

::

    from rasteret_pipelines.products import ndvi_dataset, save_per_geometry

    ndvi = ndvi_dataset(ds, red="red", nir="nir")          # ds read with values="reflectance"
    paths = save_per_geometry(ndvi, "s3://bucket/ndvi")    # {geometry_id: [s3://.../ndvi_YYYYMMDD.tif]}

Names are imported on first use: rasterio and xarray load with the function that needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rasteret_pipelines.products.geotiff import COG_OPTIONS, save_per_geometry, write_cog
    from rasteret_pipelines.products.ndvi import NDVI_NAME, compute_ndvi, ndvi_dataset

_LAZY = {
    "COG_OPTIONS": "rasteret_pipelines.products.geotiff",
    "NDVI_NAME": "rasteret_pipelines.products.ndvi",
    "compute_ndvi": "rasteret_pipelines.products.ndvi",
    "ndvi_dataset": "rasteret_pipelines.products.ndvi",
    "save_per_geometry": "rasteret_pipelines.products.geotiff",
    "write_cog": "rasteret_pipelines.products.geotiff",
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
