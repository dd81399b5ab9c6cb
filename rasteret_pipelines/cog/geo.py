"""Georeferencing from GeoTIFF tags: CRS from GeoKeys, affine transform from the model tags.

Follows GDAL's reading rules, so that results equal what rasterio reports for the same file:
PixelIsPoint rasters have their origin shifted by half a pixel, and a raster without
georeferencing gets the identity transform.
"""

from __future__ import annotations

from dataclasses import dataclass

# GeoKey ids.
GT_MODEL_TYPE = 1024
GT_RASTER_TYPE = 1025
GEOGRAPHIC_TYPE = 2048
GEOG_GEODETIC_DATUM = 2050
GEOG_ELLIPSOID = 2056
GEOG_SEMI_MAJOR_AXIS = 2057
GEOG_SEMI_MINOR_AXIS = 2058
GEOG_INV_FLATTENING = 2059
PROJECTED_CS_TYPE = 3072
PROJECTION = 3074
PROJ_COORD_TRANS = 3075
PROJ_LINEAR_UNITS = 3076

USER_DEFINED = 32767
RASTER_PIXEL_IS_POINT = 2

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass(frozen=True)
class Georeference:
    """CRS, full-resolution transform and raster type read from one IFD's GeoTIFF tags."""

    crs: str | None
    """``"EPSG:<code>"``, a WKT string for user-defined CRSs, or None when the file has none."""
    transform: tuple[float, float, float, float, float, float]
    """Affine coefficients (a, b, c, d, e, f) of the full-resolution grid, GDAL's convention."""
    pixel_is_point: bool
    """True when GTRasterTypeGeoKey says PixelIsPoint (the transform is already shifted)."""


def parse_geokeys(directory, doubles, ascii_params) -> dict[int, object]:
    """GeoKeyDirectory (tag 34735) and its parameter tags as ``{key id: value}``."""
    keys: dict[int, object] = {}
    if directory is None or len(directory) < 4:
        return keys
    directory = [int(v) for v in directory]
    n = directory[3]
    for i in range(n):
        base = 4 + 4 * i
        if base + 4 > len(directory):
            break
        key, location, count, value = directory[base : base + 4]
        if location == 0:
            keys[key] = value
        elif location == 34736 and doubles is not None:
            vals = tuple(doubles[value : value + count])
            keys[key] = vals[0] if count == 1 and vals else vals
        elif location == 34737 and ascii_params is not None:
            keys[key] = ascii_params[value : value + count].rstrip("|\x00")
        elif location == 34735:
            keys[key] = tuple(directory[value : value + count])
    return keys


def georeference(
    geokeys: dict[int, object],
    pixel_scale,
    tiepoint,
    model_transformation,
) -> Georeference:
    """Build the CRS and GDAL-convention transform of the full-resolution image."""
    pixel_is_point = geokeys.get(GT_RASTER_TYPE) == RASTER_PIXEL_IS_POINT
    transform = _transform(pixel_scale, tiepoint, model_transformation)
    if transform is not None and pixel_is_point:
        a, b, c, d, e, f = transform
        transform = (a, b, c - 0.5 * a - 0.5 * b, d, e, f - 0.5 * d - 0.5 * e)
    return Georeference(
        crs=_crs(geokeys),
        transform=transform if transform is not None else IDENTITY,
        pixel_is_point=pixel_is_point,
    )


def _transform(pixel_scale, tiepoint, model_transformation):
    if model_transformation is not None and len(model_transformation) >= 16:
        m = [float(v) for v in model_transformation]
        return (m[0], m[1], m[3], m[4], m[5], m[7])
    if pixel_scale is not None and tiepoint is not None and len(tiepoint) == 6 and len(pixel_scale) >= 2:
        sx, sy = float(pixel_scale[0]), float(pixel_scale[1])
        i, j, _, x, y, _ = (float(v) for v in tiepoint)
        return (sx, 0.0, x - i * sx, 0.0, -sy, y + j * sy)
    return None


def _crs(geokeys: dict[int, object]) -> str | None:
    projected = geokeys.get(PROJECTED_CS_TYPE)
    if isinstance(projected, int) and 0 < projected < USER_DEFINED:
        return f"EPSG:{projected}"
    if projected == USER_DEFINED:
        return _user_defined_projected(geokeys)
    geographic = geokeys.get(GEOGRAPHIC_TYPE)
    if isinstance(geographic, int) and 0 < geographic < USER_DEFINED:
        return f"EPSG:{geographic}"
    if geographic == USER_DEFINED:
        geodetic = _user_defined_geographic(geokeys)
        return geodetic.to_wkt() if geodetic is not None else None
    return None


def _user_defined_geographic(geokeys: dict[int, object]):
    """A geographic CRS from the datum or ellipsoid keys, as GDAL builds it."""
    from pyproj import CRS
    from pyproj.crs import GeographicCRS
    from pyproj.crs.datum import CustomDatum, CustomEllipsoid, Ellipsoid

    geographic = geokeys.get(GEOGRAPHIC_TYPE)
    if isinstance(geographic, int) and 0 < geographic < USER_DEFINED:
        return CRS.from_epsg(geographic)
    datum = geokeys.get(GEOG_GEODETIC_DATUM)
    if isinstance(datum, int) and 0 < datum < USER_DEFINED:
        try:
            return GeographicCRS(datum=f"urn:ogc:def:datum:EPSG::{datum}")
        except Exception:
            pass
    ellipsoid = geokeys.get(GEOG_ELLIPSOID)
    if isinstance(ellipsoid, int) and 0 < ellipsoid < USER_DEFINED:
        return _on_ellipsoid(Ellipsoid.from_epsg(ellipsoid))
    semi_major = geokeys.get(GEOG_SEMI_MAJOR_AXIS)
    if isinstance(semi_major, float):
        inv_f = geokeys.get(GEOG_INV_FLATTENING)
        semi_minor = geokeys.get(GEOG_SEMI_MINOR_AXIS)
        ell = CustomEllipsoid(
            semi_major_axis=semi_major,
            inverse_flattening=inv_f if isinstance(inv_f, float) else None,
            semi_minor_axis=semi_minor if isinstance(semi_minor, float) else None,
        )
        return _on_ellipsoid(ell)
    return None


def _on_ellipsoid(ellipsoid):
    """A geographic CRS on an unnamed datum, named the way GDAL names it."""
    from pyproj.crs import GeographicCRS
    from pyproj.crs.datum import CustomDatum

    name = ellipsoid.name
    return GeographicCRS(
        name=f"Unknown datum based upon the {name} ellipsoid",
        datum=CustomDatum(name=f"Not specified (based on {name} spheroid)", ellipsoid=ellipsoid),
    )


# ProjCoordTransGeoKey code -> (PROJ name, {PROJ parameter: GeoKey id}).
_COORD_TRANSFORMS: dict[int, tuple[str, dict[str, int]]] = {
    1: ("tmerc", {"lat_0": 3081, "lon_0": 3080, "k_0": 3092, "x_0": 3082, "y_0": 3083}),
    7: ("merc", {"lon_0": 3080, "k_0": 3092, "x_0": 3082, "y_0": 3083}),
    8: ("lcc", {"lat_1": 3078, "lat_2": 3079, "lat_0": 3085, "lon_0": 3084, "x_0": 3086, "y_0": 3087}),
    9: ("lcc", {"lat_1": 3081, "lat_0": 3081, "lon_0": 3080, "k_0": 3092, "x_0": 3082, "y_0": 3083}),
    10: ("laea", {"lat_0": 3089, "lon_0": 3088, "x_0": 3082, "y_0": 3083}),
    11: ("aea", {"lat_1": 3078, "lat_2": 3079, "lat_0": 3081, "lon_0": 3080, "x_0": 3082, "y_0": 3083}),
    15: ("stere", {"lat_ts": 3081, "lon_0": 3095, "k_0": 3092, "x_0": 3082, "y_0": 3083}),
}
_LINEAR_UNITS = {9001: "m", 9002: "ft", 9003: "us-ft"}


def _user_defined_projected(geokeys: dict[int, object]) -> str | None:
    """A projected CRS from an EPSG conversion code or explicit projection parameters."""
    from pyproj import CRS
    from pyproj.crs import CoordinateOperation, ProjectedCRS

    geodetic = _user_defined_geographic(geokeys)
    if geodetic is None:
        return None
    projection = geokeys.get(PROJECTION)
    if isinstance(projection, int) and 0 < projection < USER_DEFINED:
        try:
            conversion = CoordinateOperation.from_epsg(projection)
            return ProjectedCRS(conversion=conversion, geodetic_crs=geodetic, name="unnamed").to_wkt()
        except Exception:
            return None
    method = _COORD_TRANSFORMS.get(geokeys.get(PROJ_COORD_TRANS))
    units = _LINEAR_UNITS.get(geokeys.get(PROJ_LINEAR_UNITS, 9001))
    if method is None or units is None:
        return None
    name, params = method
    parts = [f"+proj={name}"]
    for proj_name, key in params.items():
        value = geokeys.get(key)
        if isinstance(value, (int, float)):
            parts.append(f"+{proj_name}={float(value)!r}")
    if name == "stere":  # polar: the pole is on the side of the latitude of true scale
        parts.append("+lat_0=90" if float(geokeys.get(3081, 90.0)) >= 0 else "+lat_0=-90")
    if geokeys.get(GEOGRAPHIC_TYPE) == 4326 or geokeys.get(GEOG_GEODETIC_DATUM) == 6326:
        parts.append("+datum=WGS84")
    else:
        ellipsoid = geodetic.ellipsoid
        parts.append(f"+a={ellipsoid.semi_major_metre!r}")
        if ellipsoid.inverse_flattening:
            parts.append(f"+rf={ellipsoid.inverse_flattening!r}")
        else:
            parts.append(f"+b={ellipsoid.semi_minor_metre!r}")
    parts += [f"+units={units}", "+no_defs", "+type=crs"]
    try:
        return CRS.from_proj4(" ".join(parts)).to_wkt()
    except Exception:
        return None
