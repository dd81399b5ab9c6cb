"""Products made from a read: spectral indices and per-geometry Cloud-Optimized GeoTIFFs.

::

    from rasteret_pipelines.products import ndvi_dataset, save_per_geometry

    ndvi = ndvi_dataset(ds, red="red", nir="nir")          # ds read with values="reflectance"
    paths = save_per_geometry(ndvi, "s3://bucket/ndvi")    # {geometry_id: [s3://.../ndvi_YYYYMMDD.tif]}

Names are imported on first use: rasterio and xarray load with the function that needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

if TYPE_CHECKING:
    from rasteret_pipelines.products.geotiff import COG_OPTIONS, save_per_geometry, write_cog
    from rasteret_pipelines.products.ndvi import NDVI_NAME, compute_ndvi, ndvi_dataset

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "geotiff": ["COG_OPTIONS", "save_per_geometry", "write_cog"],
        "ndvi": ["NDVI_NAME", "compute_ndvi", "ndvi_dataset"],
    },
)
