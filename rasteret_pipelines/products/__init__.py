"""Products made from a read: spectral indices and per-geometry Cloud-Optimized GeoTIFFs.

::

    from rasteret_pipelines.products import ndvi_dataset, save_per_geometry

    ndvi = ndvi_dataset(ds, red="red", nir="nir")          # ds read with values="reflectance"
    paths = save_per_geometry(ndvi, "s3://bucket/ndvi")    # {geometry_id: [s3://.../ndvi_YYYYMMDD.tif]}
"""

from __future__ import annotations

from rasteret_pipelines.products.geotiff import COG_OPTIONS, save_per_geometry, write_cog
from rasteret_pipelines.products.ndvi import NDVI_NAME, compute_ndvi, ndvi_dataset

__all__ = [
    "COG_OPTIONS",
    "NDVI_NAME",
    "compute_ndvi",
    "ndvi_dataset",
    "save_per_geometry",
    "write_cog",
]
