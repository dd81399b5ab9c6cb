"""Reading geometries from collections into xarray and GeoDataFrames, with zero header requests.

Modules, in the order a read runs: :mod:`.plan` (selection and planning), :mod:`.mask`
(geometry masks by rasterio's rule), :mod:`.fetch` (one batch of range requests),
:mod:`.assemble` (masking, values and mosaics into the output), :mod:`.mosaic` (how same-date
scenes combine), :mod:`.model` (the Dataset layout), :mod:`.gdf` (the GeoDataFrame view).
:mod:`.read` ties them together in :func:`read_geometries`.

Names are imported on first use, so ``import rasteret_pipelines.reading`` loads neither
xarray nor the COG engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rasteret_pipelines.reading.geometries import normalize_geometries
    from rasteret_pipelines.reading.mask import geometry_mask
    from rasteret_pipelines.reading.model import geometry_dataset, stack_geometries
    from rasteret_pipelines.reading.mosaic import FirstValid, LastValid, MosaicMethod
    from rasteret_pipelines.reading.read import VALUE_MODES, read_geometries

_LAZY = {
    "VALUE_MODES": "rasteret_pipelines.reading.read",
    "FirstValid": "rasteret_pipelines.reading.mosaic",
    "LastValid": "rasteret_pipelines.reading.mosaic",
    "MosaicMethod": "rasteret_pipelines.reading.mosaic",
    "geometry_dataset": "rasteret_pipelines.reading.model",
    "geometry_mask": "rasteret_pipelines.reading.mask",
    "normalize_geometries": "rasteret_pipelines.reading.geometries",
    "read_geometries": "rasteret_pipelines.reading.read",
    "stack_geometries": "rasteret_pipelines.reading.model",
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
