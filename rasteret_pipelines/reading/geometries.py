"""Geometry inputs (shapely, GeoSeries, GeoDataFrame) to validated (id, EPSG:4326 geometry) pairs."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import shapely

from rasteret_pipelines.errors import InvalidGeometryError


def normalize_geometries(geometries, crs=None) -> list[tuple[object, shapely.Geometry]]:
    """``[(id, geometry in EPSG:4326)]`` from any accepted input.

    Args:
        geometries: A shapely geometry, a sequence of them, a GeoSeries or a GeoDataFrame.
            Ids come from the GeoSeries/GeoDataFrame index, otherwise 1..n.
        crs: CRS of plain shapely input (default EPSG:4326); GeoPandas input uses its own.

    Raises:
        InvalidGeometryError: empty input, an empty or invalid geometry (named by id), a
            GeoPandas object without a CRS, or coordinates that are not degrees.
    """
    import geopandas as gpd

    if isinstance(geometries, gpd.GeoDataFrame):
        series = geometries.geometry
    elif isinstance(geometries, gpd.GeoSeries):
        series = geometries
    else:
        if isinstance(geometries, shapely.Geometry):
            geometries = [geometries]
        elif not isinstance(geometries, Iterable):
            raise InvalidGeometryError(f"geometries must be shapely geometries, a GeoSeries or a GeoDataFrame, got {type(geometries).__name__}")
        geoms = list(geometries)
        for i, g in enumerate(geoms, start=1):
            if not isinstance(g, shapely.Geometry):
                raise InvalidGeometryError(f"geometry {i} is a {type(g).__name__}, not a shapely geometry")
        series = gpd.GeoSeries(geoms, index=range(1, len(geoms) + 1), crs=crs or "EPSG:4326")
    if len(series) == 0:
        raise InvalidGeometryError("no geometries given")
    if series.crs is None:
        raise InvalidGeometryError("the geometries have no CRS: set one (e.g. gdf.set_crs('EPSG:4326'))")
    if not series.index.is_unique:
        dupes = sorted({str(i) for i in series.index[series.index.duplicated()]})
        raise InvalidGeometryError(f"geometry ids are not unique: {', '.join(dupes)}")
    for gid, geom in series.items():
        if geom is None or geom.is_empty:
            raise InvalidGeometryError(f"geometry {gid} is empty")
        if not np.isfinite(shapely.get_coordinates(geom)).all():
            raise InvalidGeometryError(f"geometry {gid} has NaN or infinite coordinates")
        if not geom.is_valid:
            raise InvalidGeometryError(f"geometry {gid} is invalid: {shapely.is_valid_reason(geom)}")
        if geom.geom_type not in ("Polygon", "MultiPolygon"):
            raise InvalidGeometryError(f"geometry {gid} is a {geom.geom_type}; areas (polygons) are needed")
    wgs84 = series.to_crs("EPSG:4326")
    for gid, geom in wgs84.items():
        minx, miny, maxx, maxy = geom.bounds
        if not (-180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90):
            raise InvalidGeometryError(
                f"geometry {gid} has bounds {geom.bounds} outside longitude/latitude; "
                "is its CRS right?"
            )
    return [(_plain(gid), geom) for gid, geom in wgs84.items()]


def _plain(value):
    """numpy scalars to Python ones, so ids print and serialise cleanly."""
    return value.item() if hasattr(value, "item") else value
