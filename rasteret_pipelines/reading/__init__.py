"""Reading geometries from collections into xarray and GeoDataFrames, with zero header requests.

Modules, in the order a read runs: :mod:`.plan` (selection and planning), :mod:`.mask`
(geometry masks by rasterio's rule), :mod:`.fetch` (one batch of range requests),
:mod:`.assemble` (masking, values and mosaics into the output), :mod:`.mosaic` (how same-date
scenes combine), :mod:`.model` (the Dataset layout), :mod:`.gdf` (the GeoDataFrame view).
:mod:`.read` ties them together in :func:`read_geometries`, whose options
(values, masks, grid, mosaic, transport) are one :class:`ReadOptions` (:mod:`.options`);
:func:`read_cube` (:mod:`.cube`) takes the same with its grouping and chunks as one
:class:`CubeOptions`.

Names are imported on first use, so ``import rasteret_pipelines.reading`` loads neither
xarray nor the COG engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

if TYPE_CHECKING:
    from rasteret_pipelines.reading.cube import read_cube
    from rasteret_pipelines.reading.geometries import normalize_geometries
    from rasteret_pipelines.reading.mask import geometry_mask
    from rasteret_pipelines.reading.model import geometry_dataset, stack_geometries
    from rasteret_pipelines.reading.mosaic import FirstValid, LastValid, MosaicMethod
    from rasteret_pipelines.reading.options import CubeOptions, ReadOptions
    from rasteret_pipelines.reading.read import VALUE_MODES, read_geometries
    from rasteret_pipelines.reading.zonal import sample_points, zonal_stats

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "read": ["VALUE_MODES", "read_geometries"],
        "mosaic": ["FirstValid", "LastValid", "MosaicMethod"],
        "options": ["CubeOptions", "ReadOptions"],
        "model": ["geometry_dataset", "stack_geometries"],
        "mask": ["geometry_mask"],
        "geometries": ["normalize_geometries"],
        "zonal": ["sample_points", "zonal_stats"],
        "cube": ["read_cube"],
    },
)
