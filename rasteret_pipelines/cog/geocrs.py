"""CRS from GeoTIFF GeoKeys, built the way GDAL builds it.

GDAL reads GeoKeys in two steps, and so does this module:

1. *Normalisation* (libgeotiff ``GTIFGetDefn``): codes imply other codes through the EPSG
   registry (projected CRS -> conversion, geographic CRS, units; geographic CRS -> datum, prime
   meridian, angular unit; datum -> ellipsoid), and every key present in the file overrides
   what was implied. Projection parameters are gathered per method into seven slots, angles in
   degrees and lengths in metres.
2. *Assembly* (GDAL ``GTIFGetOGISDefnAsOSR``): a CRS that is nothing but a registry code is
   taken from the registry (with an overridden linear unit applied); anything else is assembled
   from the normalised pieces as a GDAL-flavoured WKT1 string, which PROJ (through pyproj)
   parses exactly as it parses GDAL's own.

The registry is PROJ's database, through pyproj: no hand-written EPSG tables. What is written
by hand is GeoTIFF's own vocabulary (GeoKey ids, the ``ProjCoordTransGeoKey`` method codes and
their parameter keys), which no library exposes.

GDAL's special cases are followed too: a dynamic geographic CRS (EPSG:4326 among them) comes
from the registry whatever the keys override; TOWGS84 is dropped on a datum the registry knows;
GeoTIFF 1.1 vertical keys give a compound CRS, with a hand-built vertical part when they name
no registry vertical CRS (1.0 ones are dropped, as GDAL's driver does);
ESRI names are renamed to their EPSG names (so an ArcGIS "Web Mercator Auxiliary Sphere" reads
as the Pseudo-Mercator); keys of the wrong type are ignored.

Keys that place nothing on the Earth (a model type that is neither projected, geographic nor
geocentric, or a projected CRS without a projection method GeoTIFF defines) give GDAL's local
(engineering) CRS, ``LOCAL_CS`` in the keys' linear unit, with a note in ``problem`` (the
caller warns: no geometry can be located in such a CRS). Where GDAL's answer is not reproduced
(a geocentric CRS), :func:`crs_from_geokeys` says why in ``problem``, and the caller warns: never
a silently different CRS. Keys of the wrong type are reported the same way, with
the CRS GDAL builds without them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

USER_DEFINED = 32767
KEY_DIRECTORY_VERSION = 0
"""Pseudo key under which :func:`~rasteret_pipelines.cog.geo.parse_geokeys` stores the
directory header (KeyDirectoryVersion, KeyRevision, MinorRevision)."""
UNREADABLE_DIRECTORY = -1
"""Pseudo key under which :func:`~rasteret_pipelines.cog.geo.parse_geokeys` stores why
libgeotiff refuses the whole directory (a key it cannot read): GDAL then has no CRS."""

# GeoKey ids (GeoTIFF 1.0 / 1.1).
GT_MODEL_TYPE = 1024
GT_CITATION = 1026
GEOGRAPHIC_TYPE = 2048
GEOG_CITATION = 2049
GEOG_GEODETIC_DATUM = 2050
GEOG_PRIME_MERIDIAN = 2051
GEOG_LINEAR_UNITS = 2052
GEOG_ANGULAR_UNITS = 2054
GEOG_ANGULAR_UNIT_SIZE = 2055
GEOG_ELLIPSOID = 2056
GEOG_SEMI_MAJOR_AXIS = 2057
GEOG_SEMI_MINOR_AXIS = 2058
GEOG_INV_FLATTENING = 2059
GEOG_PRIME_MERIDIAN_LONG = 2061
GEOG_TOWGS84 = 2062
PROJECTED_CS_TYPE = 3072
PCS_CITATION = 3073
PROJECTION = 3074
PROJ_COORD_TRANS = 3075
PROJ_LINEAR_UNITS = 3076
PROJ_LINEAR_UNIT_SIZE = 3077
PROJ_STD_PARALLEL1 = 3078
PROJ_STD_PARALLEL2 = 3079
PROJ_NAT_ORIGIN_LONG = 3080
PROJ_NAT_ORIGIN_LAT = 3081
PROJ_FALSE_EASTING = 3082
PROJ_FALSE_NORTHING = 3083
PROJ_FALSE_ORIGIN_LONG = 3084
PROJ_FALSE_ORIGIN_LAT = 3085
PROJ_FALSE_ORIGIN_EASTING = 3086
PROJ_FALSE_ORIGIN_NORTHING = 3087
PROJ_CENTER_LONG = 3088
PROJ_CENTER_LAT = 3089
PROJ_CENTER_EASTING = 3090
PROJ_CENTER_NORTHING = 3091
PROJ_SCALE_AT_NAT_ORIGIN = 3092
PROJ_SCALE_AT_CENTER = 3093
PROJ_AZIMUTH_ANGLE = 3094
PROJ_STRAIGHT_VERT_POLE_LONG = 3095
PROJ_RECTIFIED_GRID_ANGLE = 3096
VERTICAL_CS_TYPE = 4096
VERTICAL_CITATION = 4097
VERTICAL_DATUM = 4098
VERTICAL_UNITS = 4099

MODEL_PROJECTED = 1
MODEL_GEOGRAPHIC = 2
MODEL_GEOCENTRIC = 3

# ProjCoordTransGeoKey values (GeoTIFF "CT_" codes).
CT_TRANSVERSE_MERCATOR = 1
CT_OBLIQUE_MERCATOR = 3
CT_OBLIQUE_MERCATOR_LABORDE = 4
CT_MERCATOR = 7
CT_LCC_2SP = 8
CT_LCC_1SP = 9
CT_LAEA = 10
CT_ALBERS = 11
CT_AZIMUTHAL_EQUIDISTANT = 12
CT_EQUIDISTANT_CONIC = 13
CT_STEREOGRAPHIC = 14
CT_POLAR_STEREOGRAPHIC = 15
CT_OBLIQUE_STEREOGRAPHIC = 16
CT_EQUIRECTANGULAR = 17
CT_CASSINI_SOLDNER = 18
CT_GNOMONIC = 19
CT_MILLER = 20
CT_ORTHOGRAPHIC = 21
CT_POLYCONIC = 22
CT_ROBINSON = 23
CT_SINUSOIDAL = 24
CT_VAN_DER_GRINTEN = 25
CT_NZMG = 26
CT_TM_SOUTH_ORIENTED = 27
CT_CYLINDRICAL_EQUAL_AREA = 28
CT_HOTINE_AZIMUTH_CENTER = 9815

# How libgeotiff's GTIFFetchProjParms fills the seven parameter slots from the keys: per method,
# per slot, the keys tried in order (first present wins), the GeoKey the slot stands for, and
# the default. Slot meaning: 0-3 angles, 4 scale, 5 false easting, 6 false northing.
_LONG = (PROJ_NAT_ORIGIN_LONG, PROJ_FALSE_ORIGIN_LONG, PROJ_CENTER_LONG)
_LAT = (PROJ_NAT_ORIGIN_LAT, PROJ_FALSE_ORIGIN_LAT, PROJ_CENTER_LAT)
_SCALE_NAT = (PROJ_SCALE_AT_NAT_ORIGIN,)
_SCALE_ANY = (PROJ_SCALE_AT_NAT_ORIGIN, PROJ_SCALE_AT_CENTER)
# The slot specs several methods share, named once.
_ORIGIN = ((0, _LAT, 0.0), (1, _LONG, 0.0))
_ORIGIN_SCALE = (*_ORIGIN, (4, _SCALE_ANY, 1.0))
_ORIGIN_SKEW = (
    *_ORIGIN,
    (2, (PROJ_AZIMUTH_ANGLE,), 0.0),
    (3, (PROJ_RECTIFIED_GRID_ANGLE,), 90.0),
    (4, _SCALE_ANY, 1.0),
)
_MERIDIAN = ((1, _LONG, 0.0),)
_CONIC = ((0, (PROJ_STD_PARALLEL1,), 0.0), (1, (PROJ_STD_PARALLEL2,), 0.0), (2, _LAT, 0.0), (3, _LONG, 0.0))

# slot spec: (slot index, keys tried, default)
_PARAM_SLOTS: dict[int, tuple] = {
    CT_STEREOGRAPHIC: (*_ORIGIN, (4, _SCALE_NAT, 1.0)),
    CT_LCC_1SP: _ORIGIN_SCALE,
    CT_OBLIQUE_STEREOGRAPHIC: _ORIGIN_SCALE,
    CT_TRANSVERSE_MERCATOR: _ORIGIN_SCALE,
    CT_TM_SOUTH_ORIENTED: _ORIGIN_SCALE,
    CT_OBLIQUE_MERCATOR: _ORIGIN_SKEW,
    CT_HOTINE_AZIMUTH_CENTER: _ORIGIN_SKEW,
    CT_OBLIQUE_MERCATOR_LABORDE: (*_ORIGIN, (2, (PROJ_AZIMUTH_ANGLE,), 0.0), (4, _SCALE_ANY, 1.0)),
    CT_CASSINI_SOLDNER: _ORIGIN_SCALE,
    CT_POLYCONIC: _ORIGIN_SCALE,
    CT_AZIMUTHAL_EQUIDISTANT: _ORIGIN,
    CT_MILLER: _ORIGIN,
    CT_GNOMONIC: _ORIGIN,
    CT_LAEA: _ORIGIN,
    CT_ORTHOGRAPHIC: _ORIGIN,
    CT_NZMG: _ORIGIN,
    CT_EQUIRECTANGULAR: (*_ORIGIN, (2, (PROJ_STD_PARALLEL1,), 0.0)),
    CT_ROBINSON: _MERIDIAN,
    CT_SINUSOIDAL: _MERIDIAN,
    CT_VAN_DER_GRINTEN: _MERIDIAN,
    CT_POLAR_STEREOGRAPHIC: (
        (0, _LAT, 0.0),
        (1, (PROJ_STRAIGHT_VERT_POLE_LONG, PROJ_NAT_ORIGIN_LONG, PROJ_FALSE_ORIGIN_LONG, PROJ_CENTER_LONG), 0.0),
        (4, _SCALE_ANY, 1.0),
    ),
    CT_LCC_2SP: (*_ORIGIN, (2, (PROJ_STD_PARALLEL1,), 0.0), (3, (PROJ_STD_PARALLEL2,), 0.0)),
    CT_ALBERS: _CONIC,
    CT_EQUIDISTANT_CONIC: _CONIC,
    CT_CYLINDRICAL_EQUAL_AREA: ((0, (PROJ_STD_PARALLEL1,), 0.0), (1, _LONG, 0.0)),
}

# GDAL's OGRSpatialReference setter per method: WKT1 PROJECTION name and (WKT1 parameter name,
# slot) pairs, in GDAL's order. Slots 5 and 6 are always false easting / northing. The
# parameter lists several setters share are named once.
_FE_FN = (("false_easting", 5), ("false_northing", 6))
_AT_ORIGIN = (("latitude_of_origin", 0), ("central_meridian", 1), *_FE_FN)
_AT_ORIGIN_SCALED = (("latitude_of_origin", 0), ("central_meridian", 1), ("scale_factor", 4), *_FE_FN)
_AT_CENTER = (("latitude_of_center", 0), ("longitude_of_center", 1), *_FE_FN)
_SKEWED = (
    ("latitude_of_center", 0),
    ("longitude_of_center", 1),
    ("azimuth", 2),
    ("rectified_grid_angle", 3),
    ("scale_factor", 4),
    *_FE_FN,
)
_CONIC_AT_CENTER = (
    ("standard_parallel_1", 0),
    ("standard_parallel_2", 1),
    ("latitude_of_center", 2),
    ("longitude_of_center", 3),
    *_FE_FN,
)
_WKT1: dict[int, tuple[str, tuple[tuple[str, int], ...]]] = {
    CT_TRANSVERSE_MERCATOR: ("Transverse_Mercator", _AT_ORIGIN_SCALED),
    CT_TM_SOUTH_ORIENTED: ("Transverse_Mercator_South_Orientated", _AT_ORIGIN_SCALED),
    CT_OBLIQUE_STEREOGRAPHIC: ("Oblique_Stereographic", _AT_ORIGIN_SCALED),
    CT_STEREOGRAPHIC: ("Stereographic", _AT_ORIGIN_SCALED),
    CT_OBLIQUE_MERCATOR: ("Hotine_Oblique_Mercator", _SKEWED),
    CT_HOTINE_AZIMUTH_CENTER: ("Hotine_Oblique_Mercator_Azimuth_Center", _SKEWED),
    CT_OBLIQUE_MERCATOR_LABORDE: (
        "Laborde_Oblique_Mercator",
        (("latitude_of_center", 0), ("longitude_of_center", 1), ("azimuth", 2), ("scale_factor", 4), *_FE_FN),
    ),
    CT_EQUIDISTANT_CONIC: ("Equidistant_Conic", _CONIC_AT_CENTER),
    CT_CASSINI_SOLDNER: ("Cassini_Soldner", _AT_ORIGIN),
    CT_POLYCONIC: ("Polyconic", _AT_ORIGIN),
    CT_AZIMUTHAL_EQUIDISTANT: ("Azimuthal_Equidistant", _AT_CENTER),
    CT_MILLER: ("Miller_Cylindrical", (("longitude_of_center", 1), *_FE_FN)),
    CT_EQUIRECTANGULAR: (
        "Equirectangular",
        (("latitude_of_origin", 0), ("central_meridian", 1), ("standard_parallel_1", 2), *_FE_FN),
    ),
    CT_GNOMONIC: ("Gnomonic", _AT_ORIGIN),
    CT_LAEA: ("Lambert_Azimuthal_Equal_Area", _AT_CENTER),
    CT_ORTHOGRAPHIC: ("Orthographic", _AT_ORIGIN),
    CT_ROBINSON: ("Robinson", (("longitude_of_center", 1), *_FE_FN)),
    CT_SINUSOIDAL: ("Sinusoidal", (("longitude_of_center", 1), *_FE_FN)),
    CT_VAN_DER_GRINTEN: ("VanDerGrinten", (("central_meridian", 1), *_FE_FN)),
    CT_POLAR_STEREOGRAPHIC: ("Polar_Stereographic", _AT_ORIGIN_SCALED),
    CT_LCC_2SP: (
        "Lambert_Conformal_Conic_2SP",
        (("standard_parallel_1", 2), ("standard_parallel_2", 3), ("latitude_of_origin", 0), ("central_meridian", 1))
        + _FE_FN,
    ),
    CT_LCC_1SP: ("Lambert_Conformal_Conic_1SP", _AT_ORIGIN_SCALED),
    CT_ALBERS: ("Albers_Conic_Equal_Area", _CONIC_AT_CENTER),
    CT_NZMG: ("New_Zealand_Map_Grid", _AT_ORIGIN),
    CT_CYLINDRICAL_EQUAL_AREA: (
        "Cylindrical_Equal_Area",
        (("standard_parallel_1", 0), ("central_meridian", 1), *_FE_FN),
    ),
}
_MERCATOR_1SP = ("Mercator_1SP", _AT_ORIGIN_SCALED)
_MERCATOR_2SP = (
    "Mercator_2SP",
    (("standard_parallel_1", 2), ("latitude_of_origin", 0), ("central_meridian", 1)) + _FE_FN,
)
_GOOGLE_MERCATOR_NAME = "Google Maps Global Mercator"
_GOOGLE_MERCATOR_PROJ4 = (
    "+proj=merc +a=6378137 +b=6378137 +lat_ts=0.0 +lon_0=0.0 +x_0=0.0 +y_0=0 +k=1.0 "
    "+units=m +nadgrids=@null +wktext  +no_defs"
)

# EPSG conversion method code -> GeoTIFF CT code (libgeotiff EPSGProjMethodToCTProjMethod), and
# the EPSG parameter codes that fill each slot (libgeotiff SetGTParmIds).
_EPSG_METHOD_TO_CT: dict[int, int] = {
    9801: CT_LCC_1SP,
    9802: CT_LCC_2SP,
    9803: CT_LCC_2SP,
    9804: CT_MERCATOR,
    9805: -CT_MERCATOR,
    9841: CT_MERCATOR,
    1024: CT_MERCATOR,
    9806: CT_CASSINI_SOLDNER,
    9807: CT_TRANSVERSE_MERCATOR,
    9808: CT_TM_SOUTH_ORIENTED,
    9809: CT_OBLIQUE_STEREOGRAPHIC,
    9810: CT_POLAR_STEREOGRAPHIC,
    9829: CT_POLAR_STEREOGRAPHIC,
    9811: CT_NZMG,
    9812: CT_OBLIQUE_MERCATOR,
    9813: CT_OBLIQUE_MERCATOR_LABORDE,
    9815: CT_HOTINE_AZIMUTH_CENTER,
    9818: CT_POLYCONIC,
    9820: CT_LAEA,
    1027: CT_LAEA,
    9822: CT_ALBERS,
    9834: CT_CYLINDRICAL_EQUAL_AREA,
    9835: CT_CYLINDRICAL_EQUAL_AREA,
    1028: CT_EQUIRECTANGULAR,
    1029: CT_EQUIRECTANGULAR,
    9823: CT_EQUIRECTANGULAR,
    9840: CT_ORTHOGRAPHIC,
}
_E = (8806, 8816, 8826)  # false easting, easting at projection centre, easting at false origin
_N = (8807, 8817, 8827)
_AT_NATURAL_ORIGIN = ((8801,), (8802,), (), (), (8805,), _E, _N)  # latitude, longitude, scale at natural origin
_AT_NATURAL_ORIGIN_UNSCALED = ((8801,), (8802,), (), (), (), _E, _N)
_AT_PROJECTION_CENTRE = ((8811,), (8812,), (8813,), (8814,), (8815,), _E, _N)  # and azimuth, skew angle
_EPSG_SLOT_PARAMS: dict[int, tuple] = {
    CT_TRANSVERSE_MERCATOR: _AT_NATURAL_ORIGIN,
    CT_TM_SOUTH_ORIENTED: _AT_NATURAL_ORIGIN,
    CT_LCC_1SP: _AT_NATURAL_ORIGIN,
    CT_OBLIQUE_STEREOGRAPHIC: _AT_NATURAL_ORIGIN,
    CT_MERCATOR: _AT_NATURAL_ORIGIN,
    -CT_MERCATOR: ((8801,), (8802,), (8823,), (), (), _E, _N),
    CT_CASSINI_SOLDNER: _AT_NATURAL_ORIGIN,
    CT_POLYCONIC: _AT_NATURAL_ORIGIN,
    CT_NZMG: _AT_NATURAL_ORIGIN_UNSCALED,
    CT_LAEA: _AT_NATURAL_ORIGIN_UNSCALED,
    CT_ORTHOGRAPHIC: _AT_NATURAL_ORIGIN_UNSCALED,
    CT_OBLIQUE_MERCATOR: _AT_PROJECTION_CENTRE,
    CT_HOTINE_AZIMUTH_CENTER: _AT_PROJECTION_CENTRE,
    CT_OBLIQUE_MERCATOR_LABORDE: ((8811,), (8812,), (8813,), (), (8815,), _E, _N),
    CT_LCC_2SP: ((8821,), (8822,), (8823,), (8824,), (), _E, _N),
    CT_ALBERS: ((8823,), (8824,), (8821,), (8822,), (), _E, _N),
    CT_POLAR_STEREOGRAPHIC: ((8801, 8832), (8802, 8833), (), (), (8805,), _E, _N),
    CT_CYLINDRICAL_EQUAL_AREA: ((8823,), (8802,), (), (), (), _E, _N),
    CT_EQUIRECTANGULAR: ((8801,), (8802,), (8823,), (), (), _E, _N),
}
_SLOT_DEFAULT = {4: 1.0}


@dataclass
class _Defn:
    """libgeotiff's GTIFDefn: the normalised coordinate system definition."""

    model: int = USER_DEFINED
    pcs: int = USER_DEFINED
    gcs: int = USER_DEFINED
    uom_length: int = USER_DEFINED
    uom_length_m: float = 1.0
    uom_angle: int = USER_DEFINED
    uom_angle_deg: float = 1.0
    datum: int = USER_DEFINED
    ellipsoid: int = USER_DEFINED
    semi_major: float = 0.0
    semi_minor: float = 0.0
    pm: int = USER_DEFINED
    pm_long_deg: float = 0.0
    towgs84: tuple[float, ...] = ()
    proj_code: int = USER_DEFINED
    projection: int = USER_DEFINED  # EPSG method code of the conversion
    ct: int = USER_DEFINED
    params: list[float] = field(default_factory=lambda: [0.0] * 7)
    param_set: list[bool] = field(default_factory=lambda: [False] * 7)
    ellipsoid_from_registry: tuple | None = None  # (name, a, b) for ensembles without a code


class GeoKeyCrsProblem(Exception):
    """Internal: the CRS GDAL would build cannot be reproduced; the message says why."""


class _NoProjection(GeoKeyCrsProblem):
    """Internal: a projected CRS whose projection method GeoTIFF does not define; GDAL then
    reports a local CRS (``LOCAL_CS``) in the linear unit of the keys."""


# --- registry look-ups (PROJ database through pyproj) -----------------------------------------


def _id_code(obj) -> int | None:
    try:
        ident = obj.to_json_dict().get("id")
    except Exception:
        return None
    if isinstance(ident, dict) and ident.get("authority") == "EPSG":
        try:
            return int(ident["code"])
        except (TypeError, ValueError):
            return None
    return None


@lru_cache(maxsize=1024)
def _registry(kind: str, code: int):
    """The registry's object of ``kind`` (a ``pyproj.crs`` class name: ``CRS``, ``Datum``,
    ``Ellipsoid``, ``PrimeMeridian``, ``CoordinateOperation``) for EPSG ``code``, or None when
    the registry has none."""
    import pyproj.crs

    try:
        return getattr(pyproj.crs, kind).from_epsg(code)
    except Exception:
        return None


def _registry_crs(code: int):
    return _registry("CRS", code)


@lru_cache(maxsize=256)
def _pcs_info(code: int):
    """(name, conversion code, linear unit code, geographic CRS code) or None."""
    crs = _registry_crs(code)
    if crs is None or not crs.is_projected or crs.is_compound:
        return None
    conv = _id_code(crs.coordinate_operation) if crs.coordinate_operation else None
    unit = crs.axis_info[0].unit_code if crs.axis_info else None
    geog = _id_code(crs.geodetic_crs) if crs.geodetic_crs else None
    return (
        crs.name,
        conv if conv is not None else USER_DEFINED,
        int(unit) if unit and unit.isdigit() else USER_DEFINED,
        geog if geog is not None else USER_DEFINED,
    )


_WELL_KNOWN_GCS = {4267: (6267, "NAD27"), 4269: (6269, "NAD83"), 4326: (6326, "WGS 84"), 4322: (6322, "WGS 72")}


@lru_cache(maxsize=256)
def _gcs_info(code: int):
    """(name, datum code, prime meridian code, angular unit code) or None."""
    if code in _WELL_KNOWN_GCS:
        datum, name = _WELL_KNOWN_GCS[code]
        return name, datum, 8901, 9108
    crs = _registry_crs(code)
    if crs is None or crs.datum is None or not (crs.is_geographic or crs.is_geocentric):
        return None
    datum = _id_code(crs.datum)
    if datum is None:
        return None
    pm = _id_code(crs.prime_meridian) if crs.prime_meridian is not None else None
    unit = crs.axis_info[0].unit_code if crs.axis_info else None
    return (
        crs.name,
        datum,
        pm if pm is not None else 8901,
        int(unit) if unit and unit.isdigit() else USER_DEFINED,
    )


@lru_cache(maxsize=256)
def _datum_info(code: int):
    """(name, ellipsoid code or USER_DEFINED, (ellipsoid name, a, b) or None) or None."""
    datum = _registry("Datum", code)
    if datum is None:
        return None
    ell = datum.ellipsoid
    if ell is not None:
        code_ = _id_code(ell)
        return (
            datum.name,
            code_ if code_ is not None else USER_DEFINED,
            (ell.name, ell.semi_major_metre, ell.semi_minor_metre),
        )
    j = datum.to_json_dict().get("ellipsoid")  # datum ensembles
    if not isinstance(j, dict):
        return datum.name, USER_DEFINED, None
    a = float(j["semi_major_axis"])
    if "inverse_flattening" in j:
        rf = float(j["inverse_flattening"])
        b = a * (1 - 1 / rf) if rf else a
    else:
        b = float(j.get("semi_minor_axis", a))
    ident = j.get("id") or {}
    return datum.name, int(ident.get("code", USER_DEFINED)), (j.get("name", "unknown"), a, b)


@lru_cache(maxsize=256)
def _ellipsoid_info(code: int):
    """(name, semi-major m, semi-minor m, inverse flattening or 0) or None."""
    ell = _registry("Ellipsoid", code)
    if ell is None:
        return None
    return ell.name, ell.semi_major_metre, ell.semi_minor_metre, ell.inverse_flattening or 0.0


@lru_cache(maxsize=64)
def _pm_info(code: int):
    """(name, longitude in degrees) or None."""
    if code == 8901:
        return "Greenwich", 0.0
    pm = _registry("PrimeMeridian", code)
    if pm is None:
        return None
    return pm.name, math.degrees(pm.longitude * pm.unit_conversion_factor)


@lru_cache(maxsize=4)
def _units(category: str) -> dict[int, tuple[str, float]]:
    from pyproj.database import get_units_map

    out = {}
    for unit in get_units_map(auth_name="EPSG", category=category).values():
        try:
            out[int(unit.code)] = (unit.name, float(unit.conv_factor))
        except (TypeError, ValueError):
            continue
    return out


def _length_unit(code: int):
    """(name, metres per unit) or None (libgeotiff GTIFGetUOMLengthInfo)."""
    if code == 9001:
        return "metre", 1.0
    if code == 9002:
        return "foot", 0.3048
    if code == 9003:
        return "US survey foot", 12.0 / 39.37
    info = _units("linear").get(code)
    return info if info and info[1] > 0 else None


def _angle_unit(code: int):
    """(name, degrees per unit) or None (libgeotiff GTIFGetUOMAngleInfo)."""
    fixed = {
        9101: ("radian", 180.0 / math.pi),
        9102: ("degree", 1.0),
        9103: ("arc-minute", 1 / 60.0),
        9104: ("arc-second", 1 / 3600.0),
        9105: ("grad", 180.0 / 200.0),
        9106: ("gon", 180.0 / 200.0),
        9109: ("microradian", 180.0 / (math.pi * 1e6)),
    }
    if code in fixed:
        return fixed[code]
    if code in (9107, 9108, 9110, 9122):  # DMS representations of degrees
        return "degree", 1.0
    info = _units("angular").get(code)
    if info and info[1] > 0:
        return info[0], math.degrees(info[1])
    return None


# --- step 1: normalisation (GTIFGetDefn) ------------------------------------------------------


def _short(keys: dict, key: int) -> int | None:
    value = keys.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _double(keys: dict, key: int) -> float | None:
    value = keys.get(key)
    if isinstance(value, float):
        return value
    if isinstance(value, tuple) and value and all(isinstance(v, float) for v in value):
        return value[0]
    return None


def _angle_to_degrees(value: float, unit: int) -> float:
    if unit == 9110:  # sexagesimal DDD.MMSSsss
        sign = -1.0 if value < 0 else 1.0
        text = f"{abs(value):.7f}"
        whole, _, frac = text.partition(".")
        minutes = int(frac[0:2] or 0)
        seconds = float(frac[2:4] + "." + frac[4:]) if len(frac) > 2 else 0.0
        return sign * (int(whole) + minutes / 60.0 + seconds / 3600.0)
    if unit == USER_DEFINED:
        return value
    info = _angle_unit(unit)
    return value * info[1] if info else value


def _key_or(keys: dict, key: int, implied: int) -> int:
    """The code a key gives, or the ``implied`` one when the file has no such key: every key
    present overrides what the registry implied (GTIFGetDefn)."""
    code = _short(keys, key)
    return implied if code is None else code


def _normalise(keys: dict) -> _Defn:
    d = _Defn()
    d.model = _key_or(keys, GT_MODEL_TYPE, d.model)
    d.uom_length = _key_or(keys, GEOG_LINEAR_UNITS, d.uom_length)

    d.pcs = _key_or(keys, PROJECTED_CS_TYPE, d.pcs)
    if d.pcs != USER_DEFINED:
        info = _pcs_info(d.pcs)
        if info is not None:
            _, d.proj_code, d.uom_length, d.gcs = info
    if d.proj_code == USER_DEFINED:
        d.proj_code = _key_or(keys, PROJECTION, d.proj_code)
    if d.proj_code != USER_DEFINED:
        _projection_from_registry(d)

    d.gcs = _key_or(keys, GEOGRAPHIC_TYPE, d.gcs)
    if d.gcs < 1 or d.gcs >= USER_DEFINED:
        d.gcs = USER_DEFINED
    if d.gcs != USER_DEFINED:
        info = _gcs_info(d.gcs)
        if info is not None:
            _, d.datum, d.pm, d.uom_angle = info

    d.uom_angle = _key_or(keys, GEOG_ANGULAR_UNITS, d.uom_angle)
    if d.uom_angle != USER_DEFINED:
        info = _angle_unit(d.uom_angle)
        if info is not None:
            d.uom_angle_deg = info[1]

    d.datum = _key_or(keys, GEOG_GEODETIC_DATUM, d.datum)
    if d.datum != USER_DEFINED:
        info = _datum_info(d.datum)
        if info is not None:
            d.ellipsoid = info[1]
            if info[1] == USER_DEFINED and info[2] is not None:
                d.ellipsoid_from_registry = info[2]
                d.semi_major, d.semi_minor = info[2][1], info[2][2]

    ellipsoid = _short(keys, GEOG_ELLIPSOID)
    if ellipsoid is not None:
        d.ellipsoid = ellipsoid
        d.ellipsoid_from_registry = None
    if d.ellipsoid != USER_DEFINED:
        info = _ellipsoid_info(d.ellipsoid)
        if info is not None:
            d.semi_major, d.semi_minor = info[1], info[2]

    semi_major = _double(keys, GEOG_SEMI_MAJOR_AXIS)
    if semi_major is not None:
        d.semi_major = semi_major
    semi_minor = _double(keys, GEOG_SEMI_MINOR_AXIS)
    if semi_minor is not None:
        d.semi_minor = semi_minor
    inv_f = _double(keys, GEOG_INV_FLATTENING)
    if inv_f is not None:
        d.semi_minor = d.semi_major * (1 - 1.0 / inv_f) if inv_f != 0.0 else d.semi_major

    d.pm = _key_or(keys, GEOG_PRIME_MERIDIAN, d.pm)
    if d.pm != USER_DEFINED:
        info = _pm_info(d.pm)
        if info is not None:
            d.pm_long_deg = info[1]
    else:
        long_ = _double(keys, GEOG_PRIME_MERIDIAN_LONG)
        d.pm_long_deg = _angle_to_degrees(long_ or 0.0, d.uom_angle)

    towgs84 = keys.get(GEOG_TOWGS84)
    if isinstance(towgs84, float):
        towgs84 = (towgs84,)
    if isinstance(towgs84, tuple) and towgs84 and all(isinstance(v, float) for v in towgs84):
        d.towgs84 = tuple(towgs84[:7])

    d.uom_length = _key_or(keys, PROJ_LINEAR_UNITS, d.uom_length)
    if d.uom_length != USER_DEFINED:
        info = _length_unit(d.uom_length)
        if info is not None:
            d.uom_length_m = info[1]
    else:
        size = _double(keys, PROJ_LINEAR_UNIT_SIZE)
        if size is not None:
            d.uom_length_m = size

    ct = _short(keys, PROJ_COORD_TRANS)
    if ct is not None:
        d.ct = ct
        _projection_from_keys(keys, d)
    return d


def _projection_from_registry(d: _Defn) -> None:
    """GTIFGetProjTRFInfo: method and slot parameters of an EPSG conversion code."""
    conv = _registry("CoordinateOperation", d.proj_code)
    try:
        j = conv.to_json_dict()
        method = int(j["method"]["id"]["code"])
    except Exception:
        return
    if j.get("type") != "Conversion":  # a transformation code is not a projection
        return
    d.projection = method
    ct = _EPSG_METHOD_TO_CT.get(method, USER_DEFINED)
    d.ct = abs(ct) if ct != USER_DEFINED else USER_DEFINED
    slots = _EPSG_SLOT_PARAMS.get(ct)
    values: dict[int, float] = {}
    for p in j.get("parameters", ()):
        try:
            pcode = int(p["id"]["code"])
            values[pcode] = _param_to_normal(p)
        except (KeyError, TypeError, ValueError):
            continue
    d.params = [_SLOT_DEFAULT.get(i, 0.0) for i in range(7)]
    d.param_set = [False] * 7
    if ct in (CT_OBLIQUE_MERCATOR, CT_HOTINE_AZIMUTH_CENTER):
        d.params[3] = 90.0  # angle from rectified to skew grid, when the conversion has none
    for i, codes in enumerate(slots or ()):
        found = next((values[c] for c in codes if c in values), None)
        if found is not None:
            d.params[i], d.param_set[i] = found, True


def _param_to_normal(p: dict) -> float:
    """A PROJJSON parameter value in degrees (angles), metres (lengths), or unitless."""
    value = float(p["value"])
    unit = p.get("unit")
    if not isinstance(unit, dict):  # "degree", "metre", "unity": already normal
        return value
    factor = float(unit.get("conversion_factor", 1.0))
    if unit.get("type") == "AngularUnit":
        return math.degrees(value * factor)
    return value * factor


def _projection_from_keys(keys: dict, d: _Defn) -> None:
    """GTIFFetchProjParms: method parameters from the Proj*GeoKeys, normalised."""

    def first(candidates):
        for k in candidates:
            v = _double(keys, k)
            if v is not None:
                return v
        return None

    fe = first((PROJ_FALSE_EASTING, PROJ_CENTER_EASTING, PROJ_FALSE_ORIGIN_EASTING))
    fn = first((PROJ_FALSE_NORTHING, PROJ_CENTER_NORTHING, PROJ_FALSE_ORIGIN_NORTHING))
    d.params = [0.0] * 7
    d.param_set = [False] * 7
    if d.ct == CT_MERCATOR:
        lat, lon = first(_LAT), first(_LONG)
        sp1 = _double(keys, PROJ_STD_PARALLEL1)
        scale = _double(keys, PROJ_SCALE_AT_NAT_ORIGIN)
        if scale is None and sp1 is None:
            scale = 1.0
        d.params[0], d.params[1] = lat or 0.0, lon or 0.0
        d.param_set[0] = d.param_set[1] = True
        if sp1 is not None:
            d.params[2], d.param_set[2] = sp1, True
        if scale is not None:
            d.params[4], d.param_set[4] = scale, True
    elif d.ct in _PARAM_SLOTS:
        for slot, candidates, default in _PARAM_SLOTS[d.ct]:
            value = first(candidates)
            d.params[slot] = default if value is None else value
            d.param_set[slot] = True
    else:
        return
    d.params[5], d.params[6] = fe or 0.0, fn or 0.0
    d.param_set[5] = d.param_set[6] = True
    for i in (5, 6):
        if d.uom_length_m not in (0.0, 1.0):
            d.params[i] *= d.uom_length_m
    if d.uom_angle_deg not in (0.0, 1.0):
        for i in range(4):
            d.params[i] *= d.uom_angle_deg


# --- step 2: assembly (GTIFGetOGISDefnAsOSR) --------------------------------------------------


@dataclass(frozen=True)
class GeoKeyCrs:
    """The CRS GDAL reports for a set of GeoKeys, or why it cannot be reproduced."""

    crs: str | None
    """``"EPSG:<code>"`` when the CRS is exactly a registry entry, else WKT2; None if no CRS."""
    problem: str | None = None
    """Why GDAL's CRS is not reproduced (``crs`` is then None), or which keys were ignored as
    GDAL ignores them (``crs`` is then GDAL's)."""


def crs_from_geokeys(keys: dict[int, object]) -> GeoKeyCrs:
    """The CRS GDAL builds from these GeoKeys (see the module docstring).

    Results are cached by key set: the scenes of a collection share a handful of CRSs.
    """
    # The value types are part of the key: 4326 and 4326.0 are equal in Python but not to GDAL.
    try:
        frozen = tuple(sorted((k, type(v).__name__, v) for k, v in keys.items()))
        hash(frozen)
    except TypeError:
        return _crs_from_geokeys(keys)
    return _cached_crs_from_geokeys(frozen)


@lru_cache(maxsize=256)
def _cached_crs_from_geokeys(frozen: tuple) -> GeoKeyCrs:
    return _crs_from_geokeys({k: v for k, _, v in frozen})


def _crs_from_geokeys(keys: dict[int, object]) -> GeoKeyCrs:
    if UNREADABLE_DIRECTORY in keys:
        return GeoKeyCrs(None, str(keys[UNREADABLE_DIRECTORY]))
    if not any(k != KEY_DIRECTORY_VERSION for k in keys):
        return GeoKeyCrs(None)
    try:
        crs, warning = _assemble(keys)
    except GeoKeyCrsProblem as exc:
        return GeoKeyCrs(None, str(exc))
    except Exception as exc:  # noqa: BLE001 - malformed keys must not abort a header read
        return GeoKeyCrs(None, f"GeoKeys could not be interpreted ({type(exc).__name__}: {exc})")
    if crs is None:
        return GeoKeyCrs(None)
    return GeoKeyCrs(_compact(crs), warning)


def _compact(crs) -> str:
    """``EPSG:<code>`` when the CRS carries that code and equals the registry entry."""
    code = _id_code(crs)
    if code is not None:
        reference = _registry_crs(code)
        if reference is not None and crs.equals(reference):
            return f"EPSG:{code}"
    return crs.to_wkt()


def _has(keys: dict, key: int) -> bool:
    return key in keys


def _assemble(keys: dict):
    """(CRS or None, warning or None); raises GeoKeyCrsProblem when no CRS can be given."""
    from pyproj import CRS

    # Keys of the wrong type are ignored, as libgeotiff ignores them (with a warning here).
    wrong = [key for key in _SHORT_KEYS if key in keys and _short(keys, key) is None]
    ignored = f"GeoKeys {wrong} have values of the wrong type and are ignored, as GDAL ignores them" if wrong else None

    d = _normalise(keys)
    if d.model == USER_DEFINED and d.pcs != USER_DEFINED:
        d.model = MODEL_PROJECTED

    if d.model not in (MODEL_PROJECTED, MODEL_GEOGRAPHIC, MODEL_GEOCENTRIC):
        citation = keys.get(PCS_CITATION)
        if isinstance(citation, str) and citation.startswith("ESRI PE String = "):
            return _from_esri_pe(citation), None
        return _local_cs(keys, d), _join(ignored, LOCAL_CS_NOTE)
    if d.model == MODEL_GEOCENTRIC:
        raise GeoKeyCrsProblem("geocentric CRS (GTModelTypeGeoKey 3) is not supported")

    vertical = _vertical_keys(keys)
    warning = ignored

    # A projected CRS given by nothing but its code: the registry entry (GDAL's
    # "import PROJCS from ProjectedCSTypeGeoKey if we have essentially only it"), with the
    # linear unit of ProjLinearUnitsGeoKey, and any GeogTOWGS84GeoKey dropped.
    crs = None
    if (
        d.model == MODEL_PROJECTED
        and d.pcs != USER_DEFINED
        and not any(
            _has(keys, k) for k in (PROJECTION, PROJ_COORD_TRANS, GEOGRAPHIC_TYPE, GEOG_GEODETIC_DATUM, GEOG_ELLIPSOID)
        )
    ):
        registry = _registry_crs(d.pcs)
        if registry is not None and registry.is_projected:
            crs = _with_linear_unit(registry, d)
        elif registry is not None and registry.is_geographic:
            crs = registry

    geog3d = _geographic_3d(keys, d)
    if crs is None and geog3d is not None and d.model == MODEL_GEOGRAPHIC:
        return geog3d, None
    if geog3d is not None:
        vertical = None
        if crs is not None:  # registry projected CRS: GDAL makes it 3D on the 3D base
            crs = crs.to_3d()

    if crs is None:
        name = _projcs_name(keys, d).lower() if d.model == MODEL_PROJECTED else ""
        if name == "wgs_1984_web_mercator":
            # GDAL reads the name it writes for ESRI:102113 (the old ESRI Web Mercator) back so.
            return CRS.from_user_input("ESRI:102113"), warning
        if name == _GOOGLE_MERCATOR_NAME.lower():
            # ... and GDAL's own EPSG:900913: the Pseudo-Mercator under Google's name.
            j = CRS.from_epsg(3857).to_json_dict()
            j.pop("id", None)
            j["name"] = _GOOGLE_MERCATOR_NAME
            return CRS.from_json_dict(j), warning
        geogcs = _geogcs_wkt(keys, d)
        try:
            wkt = geogcs if d.model == MODEL_GEOGRAPHIC else _projcs_wkt(keys, d, geogcs)
        except _NoProjection:
            return _local_cs(keys, d, projected=True), _join(warning, LOCAL_CS_NOTE)
        try:
            crs = CRS.from_wkt(wkt)
        except Exception as exc:
            raise GeoKeyCrsProblem(f"PROJ cannot build the CRS from the GeoKeys: {exc}") from None
        if geog3d is not None and crs.is_projected:
            # GDAL's CopyGeogCSFrom: the geographic 3D CRS becomes the base; the projected
            # coordinate system stays 2D.
            j = crs.to_json_dict()
            j["base_crs"] = geog3d.to_json_dict()
            crs = CRS.from_json_dict(j)
        if d.model == MODEL_GEOGRAPHIC and d.gcs != USER_DEFINED:
            registry = _registry_crs(d.gcs)
            if registry is not None and _is_dynamic(registry):
                # GDAL takes a dynamic geographic CRS (EPSG:4326 among them) from the registry.
                crs = registry
        if vertical is None:
            crs = _strip_towgs84_if_known_datum(crs)

    if vertical is not None and _geotiff_1_1(keys):
        crs = _compound(keys, crs, vertical)
    return crs, warning


def _compound(keys: dict, horizontal, vertical: tuple[int, int, int]):
    """GeoTIFF 1.1 vertical keys: GDAL's compound CRS (or the horizontal CRS when it has none).

    A registry vertical CRS code is used as is; with no code (or 32767) GDAL builds the vertical
    part by hand from the vertical datum and units keys and the VerticalCitationGeoKey name.
    """
    from pyproj import CRS
    from pyproj.crs import CompoundCRS

    cs_type, datum, units = vertical
    citation = keys.get(VERTICAL_CITATION)
    name = ""
    if isinstance(citation, str):
        name = citation
        if name.lower().startswith("vcs name = "):
            name = name[len("VCS Name = ") :].split("|", 1)[0]
    if 0 < cs_type < USER_DEFINED:
        vertical_crs = _registry_crs(cs_type)
        if vertical_crs is None or not vertical_crs.is_vertical:
            return horizontal  # GDAL cannot build the compound CRS either
    else:
        datum_name, datum_id = "unknown", ""
        if 0 < datum < USER_DEFINED:
            registered = _registry("Datum", datum)
            if registered is not None:
                datum_name = registered.name
            datum_id = f',AUTHORITY["EPSG","{datum}"]'
        unit = 'UNIT["metre",1,AUTHORITY["EPSG","9001"]]'
        info = _length_unit(units) if 0 < units < USER_DEFINED and units != 9001 else None
        if info is not None:
            unit = f'UNIT[{_q(info[0])},{_num(info[1])},AUTHORITY["EPSG","{units}"]]'
        vertical_crs = CRS.from_wkt(
            f'VERT_CS[{_q(name)},VERT_DATUM[{_q(datum_name)},2005{datum_id}],{unit},AXIS["Up",UP]]'
        )
    return CompoundCRS(
        name=f"{horizontal.name} + {vertical_crs.name or 'unknown'}", components=[horizontal, vertical_crs]
    )


_SHORT_KEYS = (
    GT_MODEL_TYPE,
    GEOGRAPHIC_TYPE,
    PROJECTED_CS_TYPE,
    PROJ_COORD_TRANS,
    PROJ_LINEAR_UNITS,
    GEOG_GEODETIC_DATUM,
    GEOG_ELLIPSOID,
    GEOG_PRIME_MERIDIAN,
    GEOG_ANGULAR_UNITS,
    PROJECTION,
    GEOG_LINEAR_UNITS,
    VERTICAL_CS_TYPE,
    VERTICAL_DATUM,
    VERTICAL_UNITS,
)


def _vertical_keys(keys: dict):
    """(VerticalCSType, VerticalDatum, VerticalUnits) when any is set and usable, else None."""
    values = tuple(_short(keys, k) or 0 for k in (VERTICAL_CS_TYPE, VERTICAL_DATUM, VERTICAL_UNITS))
    if not any(values) or any(v > USER_DEFINED for v in values):
        return None
    return values


def _geotiff_1_1(keys: dict) -> bool:
    version = keys.get(KEY_DIRECTORY_VERSION)
    return isinstance(version, tuple) and len(version) == 3 and tuple(version[:3]) >= (1, 1, 1)


def _strip_towgs84_if_known_datum(crs):
    """GDAL's StripTOWGS84IfKnownDatum: a TOWGS84 on a datum the registry knows is dropped."""
    if not crs.is_bound:
        return crs
    base = crs.source_crs
    if _id_code(base) is not None:
        return base
    datum = base.datum
    if datum is None:
        return crs
    if _id_code(datum) is not None:
        return base
    if datum.name.lower() in ("unknown", "unnamed") or not _datum_name_known(datum.name):
        return crs
    return base


@lru_cache(maxsize=128)
def _datum_name_known(name: str) -> bool:
    """The registry knows a datum of this name (GDAL's proj_create_from_name check)."""
    from pyproj.crs import Datum

    try:
        Datum.from_name(name)
    except Exception:
        return False
    return True


def _geographic_3d(keys: dict, d: _Defn):
    """GDAL's reconstruction of a geographic 3D CRS from the geographic and vertical codes."""
    if d.gcs == USER_DEFINED:
        return None
    code = _short(keys, VERTICAL_CS_TYPE) or 0
    if _short(keys, VERTICAL_DATUM) == 6030 and d.gcs == 4326:
        code = 4979
    if not 0 < code < USER_DEFINED:
        return None
    geog, vert = _registry_crs(d.gcs), _registry_crs(code)
    if geog is None or vert is None or not geog.is_geographic or not vert.is_geographic:
        return None
    if len(geog.axis_info) != 2 or len(vert.axis_info) != 3:
        return None
    if geog.datum is None or vert.datum is None:
        return None
    same = _id_code(geog.datum) is not None and _id_code(geog.datum) == _id_code(vert.datum)
    return vert if same else None


def _is_dynamic(crs) -> bool:
    """GDAL's IsDynamic: a dynamic datum, EPSG:6326, or an ensemble of dynamic frames."""
    try:
        datum = crs.datum.to_json_dict()
    except Exception:
        return False
    if datum.get("type") == "DynamicGeodeticReferenceFrame":
        return True
    if datum.get("type") == "DatumEnsemble":
        members = datum.get("members") or []
        try:
            first = _registry("Datum", members[0]["id"]["code"])
        except (IndexError, KeyError, TypeError):
            return False
        return first is not None and first.to_json_dict().get("type") == "DynamicGeodeticReferenceFrame"
    return _id_code(crs.datum) == 6326


def _with_linear_unit(registry, d: _Defn):
    """The registry CRS with GeoTIFF's linear unit when it differs (GDAL's #6210)."""
    from pyproj import CRS

    current = registry.axis_info[0].unit_conversion_factor if registry.axis_info else 1.0
    if abs(d.uom_length_m - current) <= 1e-15 * d.uom_length_m:
        return registry
    info = _length_unit(d.uom_length) if d.uom_length != USER_DEFINED else None
    name = info[0] if info else "unknown"
    unit: dict = {"type": "LinearUnit", "name": name, "conversion_factor": d.uom_length_m}
    if info is not None:
        unit["id"] = {"authority": "EPSG", "code": d.uom_length}
    j = registry.to_json_dict()
    j.pop("id", None)
    for axis in j["coordinate_system"]["axis"]:
        axis["unit"] = unit
    return CRS.from_json_dict(j)


def _from_esri_pe(citation: str):
    from pyproj import CRS

    text = citation.split("ESRI PE String = ", 1)[1]
    try:
        return CRS.from_wkt(text)
    except Exception as exc:
        raise GeoKeyCrsProblem(f"the ESRI PE String citation is not valid WKT: {exc}") from None


def _q(text: str) -> str:
    return '"' + str(text).replace('"', "'") + '"'


def _num(value: float) -> str:
    return repr(float(value))


def _citation_names(text: str) -> dict[str, str]:
    """Names from a GDAL/ESRI-style GeogCitation ("GCS Name = x|Datum = y|...")."""
    names: dict[str, str] = {}
    if "=" not in text:
        return {"gcs": text}
    separator = "\n" if text.startswith("IMAGINE GeoTIFF Support") else "|"
    for part in text.split(separator):
        if "=" not in part:
            continue
        label, _, value = part.partition("=")
        label, value = label.strip().lower(), value.strip()
        if not value:
            continue
        key = {"gcs name": "gcs", "datum": "datum", "ellipsoid": "ellipsoid", "primem": "pm", "aunits": "aunits"}.get(
            label
        )
        if key:
            names[key] = value
    return names


def _geogcs_wkt(keys: dict, d: _Defn) -> str:
    geog_name = datum_name = pm_name = sph_name = ang_name = None
    inv_f = 0.0
    gcs_info = _gcs_info(d.gcs) if d.gcs != USER_DEFINED else None
    if gcs_info is not None:
        geog_name = gcs_info[0]
    elif isinstance(keys.get(GEOG_CITATION), str):
        cit = _citation_names(keys[GEOG_CITATION])
        geog_name, datum_name = cit.get("gcs"), cit.get("datum")
        pm_name, sph_name, ang_name = cit.get("pm"), cit.get("ellipsoid"), cit.get("aunits")

    if datum_name is None and d.datum != USER_DEFINED:
        info = _datum_info(d.datum)
        datum_name = info[0] if info else None
        if datum_name is not None and datum_name.endswith(" ensemble"):
            datum_name = datum_name[: -len(" ensemble")]
    if sph_name is None:
        if d.ellipsoid != USER_DEFINED:
            info = _ellipsoid_info(d.ellipsoid)
            sph_name = info[0] if info else None
        elif d.ellipsoid_from_registry is not None:
            sph_name = d.ellipsoid_from_registry[0]
    else:
        inv = _double(keys, GEOG_INV_FLATTENING)
        inv_f = 0.0 if inv is None or math.isinf(inv) else inv
        major = _double(keys, GEOG_SEMI_MAJOR_AXIS)
        if major is not None:
            d.semi_major = major
    if pm_name is None:
        info = _pm_info(d.pm) if d.pm != USER_DEFINED else None
        pm_name = info[0] if info else None
    else:
        long_ = _double(keys, GEOG_PRIME_MERIDIAN_LONG)
        if long_ is not None:
            d.pm_long_deg = long_
    if ang_name is None:
        info = _angle_unit(d.uom_angle) if d.uom_angle != USER_DEFINED else None
        ang_name = info[0] if info else "unknown"
    else:
        size = _double(keys, GEOG_ANGULAR_UNIT_SIZE)
        if size is not None:
            d.uom_angle_deg = size / (math.pi / 180.0)
    if d.uom_angle_deg == 0:
        d.uom_angle_deg = 1.0

    semi_major = d.semi_major
    if semi_major == 0.0:
        sph_name, semi_major, inv_f = "unretrievable - using WGS84", 6378137.0, 298.257223563
    elif inv_f == 0.0 and not (0.99999999999999999 <= d.semi_minor / d.semi_major <= 1.00000000000000001):
        inv_f = d.semi_major / (d.semi_major - d.semi_minor)
        if abs(semi_major - 6378137.0) < 1e-10 and abs(inv_f - 298.257223563) < 1e-10:
            inv_f = 298.257223563
    if not geog_name:
        geog_name = datum_name or "unknown"

    gcs_valid = d.gcs != USER_DEFINED and _registry_crs(d.gcs) is not None
    datum_parts = [
        _q(datum_name or "unnamed"),
        "SPHEROID["
        + ",".join(
            [_q(sph_name or "unnamed"), _num(semi_major), _num(inv_f)]
            + ([f'AUTHORITY["EPSG","{d.ellipsoid}"]'] if d.ellipsoid != USER_DEFINED else [])
        )
        + "]",
    ]
    if d.towgs84:
        values = list(d.towgs84) + [0.0] * (7 - len(d.towgs84))
        datum_parts.append("TOWGS84[" + ",".join(_num(v) for v in values) + "]")
    if d.datum != USER_DEFINED:
        datum_parts.append(f'AUTHORITY["EPSG","{d.datum}"]')
    pm_name = pm_name or ("Greenwich" if d.pm_long_deg == 0 else "unnamed")
    parts = [
        _q(geog_name),
        "DATUM[" + ",".join(datum_parts) + "]",
        f"PRIMEM[{_q(pm_name)},{_num(d.pm_long_deg)}]",
        f"UNIT[{_q(ang_name)},{_num(d.uom_angle_deg * math.pi / 180.0)}]",
        'AXIS["Latitude",NORTH]',
        'AXIS["Longitude",EAST]',
    ]
    if gcs_valid:
        parts.append(f'AUTHORITY["EPSG","{d.gcs}"]')
    return "GEOGCS[" + ",".join(parts) + "]"


def _projcs_name(keys: dict, d: _Defn) -> str:
    """The PROJCS name GDAL gives: the registry name, else the PCS or GT citation."""
    if d.pcs != USER_DEFINED:
        info = _pcs_info(d.pcs)
        return info[0] if info is not None else "unnamed"
    for key in (PCS_CITATION, GT_CITATION):
        citation = keys.get(key)
        if isinstance(citation, str) and citation and not citation.startswith("LUnits = "):
            name = citation.split("|")[0]
            return name[len("PCS Name = ") :] if name.startswith("PCS Name = ") else name
    return "unnamed"


@lru_cache(maxsize=128)
def _official_projected_name(name: str) -> str | None:
    """The EPSG name of a projected CRS known under ``name`` (an ESRI alias, say), or None.

    GDAL renames such CRSs (GTIFGetEPSGOfficialName); PROJ then reads, for instance, a Mercator
    named "WGS 84 / Pseudo-Mercator" as the Pseudo-Mercator it is.
    """
    from pyproj import CRS

    try:
        crs = CRS.from_user_input(name)
    except Exception:
        return None
    ident = crs.to_json_dict().get("id") or {}
    if not crs.is_projected or ident.get("authority") != "EPSG":
        return None
    return crs.name


LOCAL_CS_NOTE = (
    "a local (engineering) CRS, as GDAL reports (LOCAL_CS): it places nothing on the Earth, "
    "so no geometry can be located in it"
)
"""The warning that goes with a local CRS: the CRS is GDAL's, but unusable for placing."""


def _join(*notes: str | None) -> str | None:
    kept = [n for n in notes if n]
    return "; ".join(kept) if kept else None


def _linear_unit_wkt(d: _Defn) -> str:
    """WKT1 UNIT of the normalised linear unit: its registry name and code, else "unknown"."""
    if d.uom_length != USER_DEFINED and _length_unit(d.uom_length) is not None:
        unit_name = _length_unit(d.uom_length)[0]
        return f'UNIT[{_q(unit_name)},{_num(d.uom_length_m)},AUTHORITY["EPSG","{d.uom_length}"]]'
    return f'UNIT["unknown",{_num(d.uom_length_m)}]'


def _local_cs(keys: dict, d: _Defn, *, projected: bool = False):
    """The local (engineering) CRS GDAL reports for keys that place nothing on the Earth.

    GDAL (``GTIFGetOGISDefnAsOSR``) makes a ``LOCAL_CS`` with Easting/Northing axes when

    * the model type is neither projected, geographic nor geocentric: named by
      GTCitationGeoKey, else GeogCitationGeoKey, else "unnamed", in the keys' linear unit
      (``UNIT["unknown",1]`` when they give none);
    * a projected CRS has no projection method GeoTIFF defines (``projected``): named as its
      PROJCS would be, always in metres.
    """
    from pyproj import CRS

    if projected:
        name, unit = _projcs_name(keys, d), 'UNIT["metre",1,AUTHORITY["EPSG","9001"]]'
    else:
        name, unit = "unnamed", _linear_unit_wkt(d)
        for key in (GT_CITATION, GEOG_CITATION):
            value = keys.get(key)
            if isinstance(value, str):
                name = value
                break
    wkt = f'LOCAL_CS[{_q(name)},{unit},AXIS["Easting",EAST],AXIS["Northing",NORTH]]'
    try:
        return CRS.from_wkt(wkt)
    except Exception as exc:
        raise GeoKeyCrsProblem(f"PROJ cannot build the local CRS from the GeoKeys: {exc}") from None


def _projcs_wkt(keys: dict, d: _Defn, geogcs: str) -> str:
    name = _projcs_name(keys, d)
    if "_" in name:
        name = _official_projected_name(name) or name

    unit = _linear_unit_wkt(d)

    if d.ct == CT_MERCATOR:
        spec = _MERCATOR_2SP if d.param_set[2] else _MERCATOR_1SP
    elif d.ct in _WKT1:
        spec = _WKT1[d.ct]
    else:
        raise _NoProjection(
            f"projection method (ProjCoordTransGeoKey / conversion) {d.ct} is not one GeoTIFF "
            "defines: GDAL reports a local CRS"
        )
    method, params = spec
    body = [_q(name), geogcs, f"PROJECTION[{_q(method)}]"]
    for pname, slot in params:
        value = d.params[slot]
        if slot < 4:
            value = value / d.uom_angle_deg  # WKT1 angles are in the GEOGCS unit
        elif slot >= 5:
            value = value / d.uom_length_m if d.uom_length_m else value
        body.append(f"PARAMETER[{_q(pname)},{_num(value)}]")
    body.append(unit)
    if d.ct == CT_LAEA and d.params[1] == 0.0 and abs(abs(d.params[0]) - 90.0) < 1e-10:
        # GDAL's SetLAEA gives polar aspects the EPSG polar axes.
        direction = "SOUTH" if d.params[0] > 0 else "NORTH"
        body.append(f'AXIS["Easting",{direction}],AXIS["Northing",{direction}]')
    if d.ct == CT_MERCATOR and d.projection in (1024, 9841):
        # GDAL's override for the Google / Pseudo-Mercator conversions.
        body.append(f'EXTENSION["PROJ4",{_q(_GOOGLE_MERCATOR_PROJ4)}]')
    if d.pcs != USER_DEFINED and _registry_crs(d.pcs) is not None:
        body.append(f'AUTHORITY["EPSG","{d.pcs}"]')
    return "PROJCS[" + ",".join(body) + "]"
