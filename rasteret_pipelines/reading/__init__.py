"""Reading geometries from collections into xarray and GeoDataFrames, with zero header requests."""

from rasteret_pipelines.reading.geometries import normalize_geometries
from rasteret_pipelines.reading.model import geometry_dataset, stack_geometries
from rasteret_pipelines.reading.read import VALUE_MODES, read_geometries

__all__ = [
    "VALUE_MODES",
    "geometry_dataset",
    "normalize_geometries",
    "read_geometries",
    "stack_geometries",
]
