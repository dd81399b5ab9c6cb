"""Geometry inputs (shapely, GeoSeries, GeoDataFrame) to validated (id, EPSG:4326 geometry) pairs."""

from __future__ import annotations

import sys
from collections.abc import Iterable

import numpy as np
import shapely

from rasteret_pipelines.errors import InvalidGeometryError


def normalize_geometries(geometries, crs=None, id_column: str = "id") -> list[tuple[object, shapely.Geometry]]:
    """``[(id, geometry in EPSG:4326)]`` from any accepted input.

    Args:
        geometries: A shapely geometry, a sequence of them, a GeoSeries or a GeoDataFrame.
            Ids come from a GeoDataFrame's ``id_column`` when it has one, else from the
            GeoSeries/GeoDataFrame index, otherwise 1..n: an AOI file read with GeoPandas
            keeps the ids the pipeline gives its fields.
        crs: CRS of plain shapely input (default EPSG:4326); GeoPandas input uses its own.
        id_column: The GeoDataFrame column holding the ids (default ``"id"``).

    Raises:
        InvalidGeometryError: empty input, an empty or invalid geometry (named by id), a
            GeoPandas object without a CRS, or coordinates that are not degrees.
    """
    if _is_geopandas(geometries):
        return _from_geopandas(geometries, id_column)
    if isinstance(geometries, shapely.Geometry):
        geometries = [geometries]
    elif not isinstance(geometries, Iterable) or isinstance(geometries, (str, bytes)):
        raise InvalidGeometryError(
            f"geometries must be shapely geometries, a GeoSeries or a GeoDataFrame, got {type(geometries).__name__}"
        )
    geoms = list(geometries)
    for i, g in enumerate(geoms, start=1):
        if not isinstance(g, shapely.Geometry):
            raise InvalidGeometryError(f"geometry {i} is a {type(g).__name__}, not a shapely geometry")
    if not geoms:
        raise InvalidGeometryError("no geometries given")
    pairs = list(zip(range(1, len(geoms) + 1), geoms))
    _check_shapes(pairs)
    if crs is not None:
        from rasteret_pipelines.reading.plan import crs_key, reproject_geometry, same_crs

        key = crs_key(crs)
        if not same_crs(key, "EPSG:4326"):
            pairs = [(gid, reproject_geometry(g, key, "EPSG:4326")) for gid, g in pairs]
    _check_degrees(pairs)
    return pairs


def union_of(pairs: list[tuple[object, shapely.Geometry]]) -> shapely.Geometry:
    """The union of :func:`normalize_geometries`' geometries (valid, checked there). Many that
    mostly do not meet (fields, groups of fields) go through shapely's disjoint-subset union,
    which unions only the ones that meet: the same geometry as ``union_all``. One geometry is
    its own union (a group's area of thousands of parts would otherwise be re-noded)."""
    if len(pairs) == 1:
        return pairs[0][1]
    return shapely.disjoint_subset_union_all([g for _, g in pairs])


def _is_geopandas(obj) -> bool:
    # A GeoPandas object can only exist once geopandas is imported: no import for other input.
    if "geopandas" not in sys.modules:
        return False
    import geopandas as gpd

    return isinstance(obj, (gpd.GeoDataFrame, gpd.GeoSeries))


def _from_geopandas(geometries, id_column: str = "id") -> list[tuple[object, shapely.Geometry]]:
    import geopandas as gpd

    series = geometries.geometry if isinstance(geometries, gpd.GeoDataFrame) else geometries
    if isinstance(geometries, gpd.GeoDataFrame) and id_column in geometries.columns and id_column != series.name:
        series = series.set_axis(geometries[id_column].to_numpy())
    if len(series) == 0:
        raise InvalidGeometryError("no geometries given")
    if series.crs is None:
        raise InvalidGeometryError("the geometries have no CRS: set one (e.g. gdf.set_crs('EPSG:4326'))")
    if not series.index.is_unique:
        dupes = sorted({str(i) for i in series.index[series.index.duplicated()]})
        raise InvalidGeometryError(f"geometry ids are not unique: {', '.join(dupes)}")
    _check_shapes(list(series.items()))
    pairs = [(_plain(gid), geom) for gid, geom in series.to_crs("EPSG:4326").items()]
    _check_degrees(pairs)
    return pairs


def _check_shapes(pairs) -> None:
    for gid, geom in pairs:
        if geom is None or geom.is_empty:
            raise InvalidGeometryError(f"geometry {gid} is empty")
        if not np.isfinite(shapely.get_coordinates(geom)).all():
            raise InvalidGeometryError(f"geometry {gid} has NaN or infinite coordinates")
        if not geom.is_valid:
            raise InvalidGeometryError(f"geometry {gid} is invalid: {shapely.is_valid_reason(geom)}")
        if geom.geom_type not in ("Polygon", "MultiPolygon"):
            raise InvalidGeometryError(f"geometry {gid} is a {geom.geom_type}; areas (polygons) are needed")


def _check_degrees(pairs) -> None:
    for gid, geom in pairs:
        minx, miny, maxx, maxy = geom.bounds
        if not (-180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90):
            raise InvalidGeometryError(
                f"geometry {gid} has bounds {geom.bounds} outside longitude/latitude; is its CRS right?"
            )


def _plain(value):
    """numpy scalars to Python ones, so ids print and serialise cleanly."""
    return value.item() if hasattr(value, "item") else value
