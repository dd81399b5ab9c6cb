"""The CRS read from GeoKeys equals what GDAL (rasterio) reports for the same file.

Three sources of files, rasterio reading each of them as the oracle:

* the libgeotiff GeoKey test files (``data/tiff/libgeotiff``): every projection method GeoTIFF
  defines, datums, prime meridians, linear and angular units, TOWGS84;
* files GDAL writes for a spread of CRSs (EPSG codes, ESRI codes, PROJ strings, the ESRI_PE key
  flavour, GeoTIFF 1.0 and 1.1 with vertical CRSs);
* files with hand-written GeoKeys (``geotiff_keys.write_geotiff``), for the key combinations other
  producers write: a datum key on a user-defined geographic CRS, an ellipsoid overriding
  EPSG:4326, a TOWGS84 on a user-defined datum, Mercator 2SP, a ProjectionGeoKey, keys of the
  wrong type, several tiepoints.

Equality is pyproj's ``CRS.equals`` (PROJ's "equivalent" comparison), and the datum, ellipsoid,
prime meridian and axis units are compared one by one as well. Where this engine does not
reproduce GDAL's CRS it must leave the CRS unset *and* emit a ``GeoreferenceWarning``.
"""

from __future__ import annotations

import json
import math
import random
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import CRS
from rasterio.control import GroundControlPoint
from rasterio.transform import from_origin

from rasteret_pipelines.cog import read_header
from rasteret_pipelines.cog.header import CogHeader
from rasteret_pipelines.errors import GeoreferenceWarning
from rasteret_pipelines_tests.cog.geotiff_keys import write_geotiff
from rasteret_pipelines_tests.conftest import committed_fixtures

LIBGEOTIFF = Path(__file__).resolve().parents[1] / "data" / "tiff" / "libgeotiff"
LIBGEOTIFF_FILES = [p for p in committed_fixtures("tiff/libgeotiff") if p.suffix == ".tif"]


def _read(path: Path):
    """(our header, our GeoreferenceWarnings, rasterio's CRS, rasterio's transform)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        header = read_header(str(path))
    ours = [w.message for w in caught if isinstance(w.message, GeoreferenceWarning)]
    with rasterio.open(path) as src:
        return header, ours, src.crs, tuple(src.transform)[:6]


def assert_same_crs(ours: str | None, gdal) -> None:
    """``ours`` (our header's CRS text) is GDAL's CRS: equal, component by component."""
    assert gdal is not None and ours is not None
    expected = CRS.from_wkt(gdal.to_wkt(version="WKT2_2019"))
    got = CRS.from_user_input(ours)
    assert got.equals(expected), f"\nours: {got.to_wkt()}\ngdal: {expected.to_wkt()}"
    if expected.is_bound:
        assert got.is_bound, "GDAL keeps a TOWGS84 that was dropped"
        assert [p.value for p in got.coordinate_operation.params] == pytest.approx(
            [p.value for p in expected.coordinate_operation.params]
        )
    else:
        assert not got.is_bound, "a TOWGS84 GDAL drops was kept"
    e_geod, g_geod = expected.geodetic_crs, got.geodetic_crs
    if e_geod is not None:
        assert g_geod is not None
        assert g_geod.datum == e_geod.datum or _datum_name(g_geod) == _datum_name(e_geod)
        assert g_geod.ellipsoid.semi_major_metre == pytest.approx(e_geod.ellipsoid.semi_major_metre, rel=1e-12)
        assert g_geod.ellipsoid.semi_minor_metre == pytest.approx(e_geod.ellipsoid.semi_minor_metre, rel=1e-12)
        pm_e, pm_g = e_geod.prime_meridian, g_geod.prime_meridian
        assert pm_g.longitude * pm_g.unit_conversion_factor == pytest.approx(
            pm_e.longitude * pm_e.unit_conversion_factor, abs=1e-12
        )
    for axis_e, axis_g in zip(expected.axis_info, got.axis_info, strict=True):
        assert axis_g.unit_conversion_factor == pytest.approx(axis_e.unit_conversion_factor)
        assert axis_g.direction == axis_e.direction


def _datum_name(crs) -> str:
    name = crs.datum.name.lower().removesuffix(" ensemble")
    return re.sub(r"[^a-z0-9]", "", name)


# --- libgeotiff test files ---------------------------------------------------------------------


def test_all_libgeotiff_files_are_present():
    assert len(LIBGEOTIFF_FILES) == 48
    assert (LIBGEOTIFF / "LICENSE").exists()


@pytest.mark.parametrize("path", LIBGEOTIFF_FILES, ids=lambda p: p.stem)
def test_libgeotiff_crs_equals_gdal(path):
    header, ours, gdal_crs, gdal_transform = _read(path)
    assert not ours, ours
    assert_same_crs(header.crs, gdal_crs)
    assert header.transform == pytest.approx(gdal_transform)


# --- files GDAL writes -------------------------------------------------------------------------

GDAL_WRITTEN = [
    *(
        f"EPSG:{code}"
        for code in (
            4326,
            4269,
            4267,
            4258,
            4807,
            4230,
            27700,
            2154,
            3857,
            3395,
            32631,
            26711,
            2056,
            3031,
            3413,
            6933,
            3410,
            5070,
            7844,
            4979,
            2193,
            27200,
            21781,
            29873,
            3376,
            27572,
            2046,
            28191,
            29101,
            5588,
            6808,
            8065,
            8441,
            4087,
            3035,
            32064,
            2263,
            3978,
            3577,
            31467,
            22275,
        )
    ),
    "ESRI:102100",
    "ESRI:54009",
    "ESRI:102003",
    "+proj=tmerc +lat_0=0 +lon_0=9 +k=0.9996 +x_0=500000 +y_0=0 +ellps=intl +towgs84=-87,-98,-121,0,0,0,0 +units=m",
    "+proj=longlat +ellps=intl +towgs84=-87,-98,-121,0,0,0,0",
    "+proj=longlat +ellps=clrk80 +pm=paris",
    "+proj=longlat +a=6378000 +rf=298 +pm=10",
    "+proj=longlat +R=6371000",
    "+proj=merc +lat_ts=33 +lon_0=10 +datum=WGS84",
    "+proj=merc +lon_0=10 +k=0.9 +datum=WGS84",
    "+proj=merc +a=6378137 +b=6378137 +lat_ts=0 +lon_0=0 +x_0=0 +y_0=0 +k=1 +units=m +nadgrids=@null +wktext +no_defs",
    "+proj=eqc +lat_ts=30 +lon_0=0 +datum=WGS84",
    "+proj=cea +lat_ts=30 +lon_0=0 +ellps=GRS80",
    "+proj=poly +lat_0=0 +lon_0=-54 +ellps=aust_SA",
    "+proj=cass +lat_0=31 +lon_0=35 +x_0=170251 +y_0=126867 +a=6378300.789 +b=6356566.435",
    "+proj=nzmg +lat_0=-41 +lon_0=173 +x_0=2510000 +y_0=6023150 +ellps=intl",
    "+proj=omerc +lat_0=4 +lonc=102.25 +alpha=323.0257905 +k=0.99984 +x_0=804670 +y_0=0 "
    "+no_uoff +gamma=323.1301023611111 +ellps=evrst69",
    "+proj=omerc +lat_0=46.5 +lonc=-122 +alpha=35 +k=1 +x_0=0 +y_0=0 +gamma=35 +ellps=GRS80",
    "+proj=stere +lat_0=40 +lon_0=10 +k=0.99 +x_0=0 +y_0=0 +datum=WGS84",
    "+proj=sterea +lat_0=46.5 +lon_0=-66.5 +k=0.999912 +x_0=300000 +y_0=800000 +ellps=GRS80",
    "+proj=tmerc +lat_0=0 +lon_0=21 +k=1 +x_0=0 +y_0=0 +axis=wsu +ellps=WGS84",
    "+proj=aeqd +lat_0=40 +lon_0=-100 +datum=WGS84",
    "+proj=gnom +lat_0=40 +lon_0=-100 +datum=WGS84",
    "+proj=mill +lon_0=0 +datum=WGS84",
    "+proj=ortho +lat_0=40 +lon_0=-100 +datum=WGS84",
    "+proj=robin +lon_0=0 +datum=WGS84",
    "+proj=sinu +lon_0=0 +datum=WGS84",
    "+proj=vandg +lon_0=0 +R=6371000",
    "+proj=moll +lon_0=0 +datum=WGS84",
    "+proj=eqdc +lat_1=20 +lat_2=60 +lat_0=40 +lon_0=-96 +datum=NAD83",
    "+proj=laea +lat_0=90 +lon_0=0 +R=6371228",
    "+proj=laea +lat_0=-90 +lon_0=0 +datum=WGS84",
    "+proj=lcc +lat_1=33 +lat_2=45 +lat_0=39 +lon_0=-96 +x_0=0 +y_0=0 +datum=NAD27 +units=us-ft",
    "+proj=lcc +lat_1=33 +lat_2=45 +lat_0=39 +lon_0=-96 +x_0=0 +y_0=0 +datum=NAD83 +units=ft",
    "+proj=utm +zone=33 +ellps=GRS80 +units=km",
    "+proj=tmerc +lat_0=0 +lon_0=3 +k=0.9996 +x_0=500000 +y_0=0 +ellps=clrk80 +pm=paris +towgs84=1,2,3,0,0,0,0",
    "+proj=stere +lat_0=90 +lat_ts=70 +lon_0=-45 +datum=WGS84",
    "+proj=stere +lat_0=-90 +k=0.97 +lon_0=0 +datum=WGS84",
    "+proj=geos +h=35785831 +lon_0=0 +datum=WGS84",
]
GDAL_FLAVOURS = [
    *(
        (crs, {"GEOTIFF_KEYS_FLAVOR": "ESRI_PE"})
        for crs in (
            "EPSG:3857",
            "ESRI:102100",
            "EPSG:4326",
            "EPSG:27572",
            "+proj=moll +lon_0=0 +datum=WGS84",
            "+proj=longlat +ellps=clrk80 +pm=paris",
        )
    ),
    *(
        (crs, {"GEOTIFF_VERSION": version})
        for crs in (
            "EPSG:32631+5773",
            "EPSG:4326+5773",
            "EPSG:4979",
            "EPSG:7415",
            "EPSG:27572",
        )
        for version in ("1.0", "1.1")
    ),
]


def _gdal_file(tmp_path: Path, crs: str, **options) -> Path:
    path = tmp_path / "gdal.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=4,
        height=4,
        count=1,
        dtype="uint8",
        crs=crs,
        transform=from_origin(1000, 2000, 10, 10),
        **options,
    ) as dst:
        dst.write(np.ones((1, 4, 4), "uint8"))
    assert not Path(f"{path}.aux.xml").exists(), "GDAL kept the CRS outside the GeoKeys"
    return path


@pytest.mark.parametrize("crs", GDAL_WRITTEN)
def test_gdal_written_crs_equals_gdal(tmp_path, crs):
    header, ours, gdal_crs, _ = _read(_gdal_file(tmp_path, crs))
    assert not ours, ours
    assert_same_crs(header.crs, gdal_crs)


@pytest.mark.parametrize(("crs", "options"), GDAL_FLAVOURS, ids=lambda v: str(v))
def test_gdal_key_flavours_equal_gdal(tmp_path, crs, options):
    header, ours, gdal_crs, _ = _read(_gdal_file(tmp_path, crs, **options))
    assert not ours, ours
    assert_same_crs(header.crs, gdal_crs)


# --- hand-written GeoKeys ----------------------------------------------------------------------

TM = {3080: 9.0, 3081: 0.0, 3082: 500000.0, 3083: 0.0, 3092: 0.9996}
ESRI_WEB_MERCATOR = (
    'ESRI PE String = PROJCS["WGS_1984_Web_Mercator_Auxiliary_Sphere",GEOGCS["GCS_WGS_1984",'
    'DATUM["D_WGS_1984",SPHEROID["WGS_1984",6378137.0,298.257223563]],PRIMEM["Greenwich",0.0],'
    'UNIT["Degree",0.0174532925199433]],PROJECTION["Mercator_Auxiliary_Sphere"],'
    'PARAMETER["False_Easting",0.0],PARAMETER["False_Northing",0.0],'
    'PARAMETER["Central_Meridian",0.0],PARAMETER["Standard_Parallel_1",0.0],'
    'PARAMETER["Auxiliary_Sphere_Type",0.0],UNIT["Meter",1.0]]'
)
TOWGS84 = (-87.0, -98.0, -121.0)
MERCATOR_KEYS = {
    1024: 1,
    3072: 32767,
    3074: 32767,
    3075: 7,
    2048: 4326,
    3078: 0.0,
    3080: 0.0,
    3082: 0.0,
    3083: 0.0,
    3076: 9001,
}

HAND_EQUAL = {
    # datum kept when the geographic CRS is user-defined
    "datum_key_wgs84": {1024: 2, 2048: 32767, 2050: 6326},
    "datum_key_nad27": {1024: 2, 2048: 32767, 2050: 6267},
    "datum_key_projected": {1024: 1, 3072: 32767, 3074: 32767, 3075: 1, 2048: 32767, 2050: 6230, **TM},
    # ellipsoid / angular-unit overrides of EPSG:4326: GDAL takes the registry's dynamic CRS
    "ellipsoid_axes_over_4326": {1024: 2, 2048: 4326, 2057: 6378000.0, 2059: 298.0},
    "ellipsoid_code_over_4326": {1024: 2, 2048: 4326, 2056: 7022},
    "grads_over_4326": {1024: 2, 2048: 4326, 2054: 9105},
    # ... but a static datum keeps the overridden ellipsoid
    "ellipsoid_over_4230": {1024: 2, 2048: 4230, 2057: 6378000.0, 2059: 298.0},
    "ellipsoid_over_4326_projected": {
        1024: 1,
        3072: 32767,
        3074: 32767,
        3075: 1,
        2048: 4326,
        2057: 6378000.0,
        2059: 298.0,
        **TM,
    },
    # prime meridians
    "prime_meridian_code": {1024: 2, 2048: 32767, 2050: 6807, 2051: 8903},
    "prime_meridian_longitude": {1024: 2, 2048: 32767, 2056: 7011, 2061: 2.33722917},
    "grads_4807": {1024: 2, 2048: 4807},
    "tm_in_grads": {
        1024: 1,
        3072: 32767,
        3074: 32767,
        3075: 1,
        2048: 4807,
        3080: 0.0,
        3081: 55.0,
        3092: 0.9996,
        3082: 500000.0,
    },
    # linear units
    "pcs_in_feet": {1024: 1, 3072: 32631, 3076: 9002},
    "pcs_in_km": {1024: 1, 3072: 32631, 3076: 9036},
    "pcs_unit_size": {1024: 1, 3072: 32631, 3076: 32767, 3077: 2.0},
    "tm_in_us_feet": {1024: 1, 3072: 32767, 3074: 32767, 3075: 1, 2048: 4267, 3076: 9003, **TM},
    "projection_code_in_us_feet": {1024: 1, 3072: 32767, 3074: 16031, 2048: 4267, 3076: 9003},
    # TOWGS84
    "towgs84_user_datum_projected": {
        1024: 1,
        3072: 32767,
        3074: 32767,
        3075: 1,
        2048: 32767,
        2056: 7022,
        2062: TOWGS84,
        **TM,
    },
    "towgs84_7_params": {
        1024: 1,
        3072: 32767,
        3074: 32767,
        3075: 1,
        2048: 32767,
        2056: 7022,
        2062: (-87.0, -98.0, -121.0, 0.1, 0.2, 0.3, 1.5),
        **TM,
    },
    "towgs84_user_datum_geographic": {1024: 2, 2048: 32767, 2056: 7022, 2062: TOWGS84},
    "towgs84_known_datum_dropped": {1024: 2, 2048: 32767, 2050: 6230, 2062: TOWGS84},
    "towgs84_4230_dropped": {1024: 2, 2048: 4230, 2062: TOWGS84},
    "towgs84_pcs_only_dropped": {1024: 1, 3072: 32631, 2062: (1.0, 2.0, 3.0)},
    # Mercator
    "mercator_2sp": {1024: 1, 3072: 32767, 3074: 32767, 3075: 7, 2048: 4326, 3078: 33.0, 3080: 10.0},
    "mercator_1sp": {1024: 1, 3072: 32767, 3074: 32767, 3075: 7, 2048: 4326, 3092: 0.9, 3080: 10.0},
    "mercator_2sp_and_scale": {
        1024: 1,
        3072: 32767,
        3074: 32767,
        3075: 7,
        2048: 4326,
        3078: 33.0,
        3092: 0.9,
        3080: 10.0,
    },
    "pseudo_mercator_conversion_3856": {1024: 1, 3072: 32767, 3074: 3856, 2048: 4326},
    "esri_web_mercator_with_keys": {
        1024: 1,
        3072: 32767,
        3073: ESRI_WEB_MERCATOR,
        3074: 32767,
        3075: 7,
        2048: 4326,
        3080: 0.0,
    },
    "esri_pe_string_no_model": {3073: ESRI_WEB_MERCATOR},
    # ESRI / ArcGIS names: GDAL renames to the EPSG name, and PROJ reads a Mercator named
    # "WGS 84 / Pseudo-Mercator" as the Pseudo-Mercator (the Auxiliary Sphere)
    "arcgis_web_mercator_aux_sphere_gt": {
        **MERCATOR_KEYS,
        1026: "WGS_1984_Web_Mercator_Auxiliary_Sphere",
        2049: "GCS_WGS_1984",
    },
    "arcgis_web_mercator_aux_sphere_pcs": {**MERCATOR_KEYS, 3073: "WGS_1984_Web_Mercator_Auxiliary_Sphere"},
    "esri_102113_name": {**MERCATOR_KEYS, 1026: "WGS_1984_Web_Mercator"},
    "google_maps_global_mercator": {**MERCATOR_KEYS, 1026: "Google Maps Global Mercator"},
    "esri_utm_name": {1024: 1, 3072: 32767, 1026: "WGS_1984_UTM_Zone_32N", 3074: 32767, 3075: 1, 2048: 4326, **TM},
    "esri_state_plane_citation": {
        1024: 1,
        3072: 32767,
        1026: "PCS Name = NAD_1983_StatePlane_California_VI_FIPS_0406_Feet",
        3074: 32767,
        3075: 8,
        2048: 4269,
        3076: 9003,
        3078: 32.7833333333333,
        3079: 33.8833333333333,
        3084: -116.25,
        3085: 32.1666666666667,
        3086: 6561666.667,
        3087: 1640416.667,
    },
    "esri_datum_names": {
        1024: 1,
        3072: 32767,
        3074: 32767,
        3075: 1,
        1026: "ETRS_1989_UTM_Zone_32N",
        2048: 32767,
        2049: "GCS Name = GCS_ETRS_1989|Datum = D_ETRS_1989|Ellipsoid = GRS_1980|Primem = Greenwich",
        2057: 6378137.0,
        2059: 298.257222101,
        **TM,
    },
    "esri_pe_string_in_gt_citation": {1024: 1, 3072: 32767, 1026: ESRI_WEB_MERCATOR, 3074: 32767, 3075: 7, 2048: 4326},
    # user-defined projected CRSs stay projected
    "projection_code_16031": {1024: 1, 3072: 32767, 3074: 16031, 2048: 4326},
    "pcs_plus_gcs": {1024: 1, 3072: 32631, 2048: 4326},
    "pcs_plus_other_gcs": {1024: 1, 3072: 32631, 2048: 4230},
    "pcs_without_model_type": {3072: 32631},
    "pcs_key_holding_geographic_code": {1024: 1, 3072: 4326},
    # ellipsoids and citations
    "sphere": {1024: 2, 2048: 32767, 2057: 6371000.0, 2058: 6371000.0},
    "semi_minor_axis": {1024: 2, 2048: 32767, 2057: 6378137.0, 2058: 6356752.314245},
    "no_ellipsoid": {1024: 2, 2048: 32767},
    "unknown_gcs_code": {1024: 2, 2048: 12345},
    "gcs_citation_names": {
        1024: 2,
        2048: 32767,
        2056: 7019,
        2049: ("GCS Name = My GCS|Datum = North American Datum 1983|Ellipsoid = GRS 1980|Primem = Greenwich"),
    },
    "imagine_citation": {
        1024: 1,
        3072: 32767,
        3074: 32767,
        3075: 1,
        2048: 32767,
        2056: 7008,
        1026: "IMAGINE GeoTIFF Support\nProjection Name = UTM\nUnits = meters",
        2049: "IMAGINE GeoTIFF Support\nEllipsoid = Clarke 1866\nDatum = NAD27 (CONUS)",
        **TM,
    },
    # vertical keys (GeoTIFF 1.1: compound CRSs)
    "compound_geotiff_1_1": {1024: 2, 2048: 4326, 4096: 5773, 4099: 9001},
    "compound_projected": {1024: 1, 3072: 26915, 4096: 5703},
    "compound_hand_built_units": {1024: 2, 2048: 4230, 4099: 9001},
    "compound_hand_built_towgs84": {1024: 2, 2048: 4230, 2062: TOWGS84, 4099: 9001},
    "compound_hand_built_datum_feet": {1024: 2, 2048: 4269, 4098: 5103, 4099: 9002},
    "compound_hand_built_citation": {
        1024: 2,
        2048: 4269,
        4096: 32767,
        4097: "VCS Name = my height|",
        4098: 5103,
        4099: 9003,
    },
    "compound_projected_hand_built": {1024: 1, 3072: 26915, 4099: 9002},
    "vertical_code_not_vertical": {1024: 2, 2048: 4269, 4096: 4326},
    "vertical_private_code": {1024: 2, 2048: 4269, 4096: 40000},
    "geographic_3d_from_vertical": {1024: 2, 2048: 4326, 4096: 4979},
    "geographic_3d_from_6030": {1024: 2, 2048: 4326, 4098: 6030},
    "projected_on_geographic_3d": {1024: 1, 3072: 32631, 2048: 4326, 4096: 4979},
    "projected_3d_from_code": {1024: 1, 3072: 32631, 4096: 4979},
    # angular units and parameters of every GeoTIFF method
    "sexagesimal_units": {1024: 2, 2048: 32767, 2050: 6230, 2054: 9110},
    "sexagesimal_prime_meridian": {1024: 2, 2048: 32767, 2056: 7022, 2054: 9110, 2061: 2.2014025},
    "radian_parameters": {
        1024: 1,
        3072: 32767,
        3074: 32767,
        3075: 1,
        2048: 32767,
        2050: 6230,
        2054: 9101,
        3080: 0.15707963267948966,
        3081: 0.0,
        3082: 500000.0,
        3083: 0.0,
        3092: 0.9996,
    },
    "polar_stereographic_variant_a": {
        1024: 1,
        3072: 32767,
        3074: 32767,
        3075: 15,
        2048: 4326,
        3081: 90.0,
        3095: -45.0,
        3092: 0.994,
        3082: 2e6,
        3083: 2e6,
    },
    "polar_stereographic_variant_b": {1024: 1, 3072: 32767, 3074: 32767, 3075: 15, 2048: 4326, 3081: 70.0, 3095: -45.0},
    "hotine_variant_a": {
        1024: 1,
        3072: 32767,
        3074: 32767,
        3075: 3,
        2048: 4326,
        3088: 10.0,
        3089: 45.0,
        3094: 30.0,
        3093: 0.9996,
    },
    "lcc_2sp_false_origin": {
        1024: 1,
        3072: 32767,
        3074: 32767,
        3075: 8,
        2048: 4269,
        3078: 33.0,
        3079: 45.0,
        3084: -96.0,
        3085: 23.0,
    },
    "albers_natural_origin_keys": {
        1024: 1,
        3072: 32767,
        3074: 32767,
        3075: 11,
        2048: 4269,
        3078: 29.5,
        3079: 45.5,
        3080: -96.0,
        3081: 23.0,
    },
    "equirectangular": {1024: 1, 3072: 32767, 3074: 32767, 3075: 17, 2048: 4326, 3078: 30.0, 3088: 10.0},
    "azimuthal_equidistant": {1024: 1, 3072: 32767, 3074: 32767, 3075: 12, 2048: 4326, 3088: 10.0, 3089: 50.0},
    "equidistant_conic": {
        1024: 1,
        3072: 32767,
        3074: 32767,
        3075: 13,
        2048: 4326,
        3078: 20.0,
        3079: 60.0,
        3088: 10.0,
        3089: 40.0,
    },
    "gnomonic": {1024: 1, 3072: 32767, 3074: 32767, 3075: 19, 2048: 4326, 3088: 10.0, 3089: 50.0},
    "miller": {1024: 1, 3072: 32767, 3074: 32767, 3075: 20, 2048: 4326, 3088: 10.0},
    "robinson": {1024: 1, 3072: 32767, 3074: 32767, 3075: 23, 2048: 4326, 3088: 10.0},
    "sinusoidal": {1024: 1, 3072: 32767, 3074: 32767, 3075: 24, 2048: 4326, 3088: 10.0},
    "van_der_grinten": {1024: 1, 3072: 32767, 3074: 32767, 3075: 25, 2048: 4326, 3080: 10.0},
    "stereographic": {1024: 1, 3072: 32767, 3074: 32767, 3075: 14, 2048: 4326, 3088: 10.0, 3089: 50.0, 3092: 0.9},
    "projection_code_laborde": {1024: 1, 3072: 32767, 3074: 19911, 2048: 4297},
    "projection_code_hotine_b": {1024: 1, 3072: 32767, 3074: 19985, 2048: 4326},
}

GEOTIFF_1_0 = {
    # GeoTIFF 1.0: GDAL's driver reports the horizontal CRS only (TOWGS84 kept, as GDAL keeps it)
    "vertical_code": {1024: 2, 2048: 4326, 4096: 5773},
    "vertical_units": {1024: 2, 2048: 4230, 2062: TOWGS84, 4099: 9001},
    "projected_vertical": {1024: 1, 3072: 26915, 4096: 5703},
}


@pytest.mark.parametrize("name", sorted(GEOTIFF_1_0))
def test_geotiff_1_0_vertical_keys_equal_gdal(tmp_path, name):
    path = write_geotiff(tmp_path / f"{name}.tif", GEOTIFF_1_0[name], version=(1, 1, 0))
    header, ours, gdal_crs, _ = _read(path)
    assert not ours, ours
    assert_same_crs(header.crs, gdal_crs)


@pytest.mark.parametrize("name", sorted(HAND_EQUAL))
def test_hand_written_geokeys_equal_gdal(tmp_path, name):
    header, ours, gdal_crs, _ = _read(write_geotiff(tmp_path / f"{name}.tif", HAND_EQUAL[name]))
    assert not ours, ours
    assert_same_crs(header.crs, gdal_crs)


def test_projected_user_defined_crs_is_projected(tmp_path):
    header, *_ = _read(
        write_geotiff(tmp_path / "tm.tif", {1024: 1, 3072: 32767, 3074: 32767, 3075: 1, 2048: 4326, **TM})
    )
    crs = CRS.from_user_input(header.crs)
    assert crs.is_projected and crs.equals(CRS.from_epsg(32632))


def test_key_of_the_wrong_type_is_ignored_like_gdal_with_a_warning(tmp_path):
    header, ours, gdal_crs, _ = _read(
        write_geotiff(tmp_path / "f.tif", {1024: 2, 2048: 4326.0}, key_types={2048: 34736})
    )
    assert_same_crs(header.crs, gdal_crs)
    assert len(ours) == 1 and "2048" in str(ours[0]) and "wrong type" in str(ours[0])


HAND_REFUSED = {
    "geocentric": ({1024: 3, 2048: 4326}, "geocentric"),
}

LOCAL = {
    # Model types that place nothing on the Earth: GDAL's LOCAL_CS in the keys' linear unit.
    "cartesian_metre": {1024: 32767, 1026: "Cartesian (Meter)", 3076: 9001},
    "user_defined_model_foot": {1024: 32767, 3076: 9002},
    "model_type_0_us_foot": {1024: 0, 3076: 9003},
    "model_type_99": {1024: 99, 2048: 4326},
    "no_model_type": {2048: 4326},
    "geog_citation_named": {1024: 32767, 2049: "Site grid", 3076: 9001},
    "geog_linear_units": {1024: 32767, 2052: 9002},
    "user_defined_unit": {1024: 32767, 3076: 32767, 3077: 2.5},
    # Projected CRSs without a projection method GeoTIFF defines: LOCAL_CS, in metres.
    "unmapped_method_alaska": {1024: 1, 3072: 32767, 3074: 32767, 3075: 2, 2048: 4326, **TM},
    "unknown_method_code": {1024: 1, 3072: 32767, 3074: 32767, 3075: 99, 2048: 4326, **TM},
    "projected_without_method": {1024: 1, 3072: 32767, 2048: 4326},
    "unknown_pcs_code_in_feet": {1024: 1, 3072: 12345, 3076: 9002},
    "projected_gt_citation": {1024: 1, 3072: 32767, 2048: 4326, 1026: "Plant grid"},
    "projected_pcs_citation": {1024: 1, 3072: 32767, 3074: 32767, 3075: 2, 2048: 4326, 3073: "Mine grid"},
    "model_type_only": {1024: 1},
}


@pytest.mark.parametrize("name", sorted(LOCAL))
def test_local_engineering_crs_equals_gdal_local_cs(tmp_path, name):
    """Before: None where GDAL reports LOCAL_CS[...]. The CRS is GDAL's; a warning still says
    that it places nothing on the Earth (geometry reads cannot use it)."""
    header, ours, gdal_crs, _ = _read(write_geotiff(tmp_path / f"{name}.tif", LOCAL[name]))
    assert len(ours) == 1 and "local (engineering) CRS" in str(ours[0]), ours
    assert "CRS left unset" not in str(ours[0]) and f"{name}.tif" in str(ours[0])
    assert header.georeference_warnings == (str(ours[0]),)
    assert gdal_crs is not None and gdal_crs.to_wkt().startswith("LOCAL_CS[")
    # name, unit (name, size, code) and axes: GDAL's WKT1 text exactly
    assert CRS.from_user_input(header.crs).to_wkt(version="WKT1_GDAL") == gdal_crs.to_wkt()
    assert_same_crs(header.crs, gdal_crs)


@pytest.mark.parametrize("name", sorted(HAND_REFUSED))
def test_crs_gdal_builds_but_we_cannot_is_none_with_a_warning(tmp_path, name):
    keys, reason = HAND_REFUSED[name]
    header, ours, gdal_crs, _ = _read(write_geotiff(tmp_path / f"{name}.tif", keys))
    assert gdal_crs is not None  # GDAL reports a local, engineering or geocentric CRS
    assert not gdal_crs.is_projected and not gdal_crs.is_geographic
    assert header.crs is None
    assert len(ours) == 1 and reason in str(ours[0]) and str(tmp_path) in str(ours[0])


def test_no_geokeys_no_crs_no_warning(tmp_path):
    header, ours, gdal_crs, _ = _read(write_geotiff(tmp_path / "plain.tif", {}))
    assert gdal_crs is None and header.crs is None and not ours


# --- ground control points -----------------------------------------------------------------------


TIEPOINTS = [(0, 0, 0, 10.0, 50.0, 0), (4, 0, 0, 10.4, 50.0, 0), (0, 4, 0, 10.0, 49.6, 0)]
MATRIX = [0.1, 0, 0, 10, 0, -0.1, 0, 50, 0, 0, 0, 0, 0, 0, 0, 1]
MODEL_TAGS = {
    # name: (write_geotiff arguments, GDAL sees ground control points)
    "scale_and_one_tiepoint": ({"pixel_scale": (0.1, 0.1, 0)}, False),
    "scale_and_three_tiepoints": ({"pixel_scale": (0.1, 0.1, 0), "tiepoints": TIEPOINTS}, False),
    "scale_only": ({"pixel_scale": (0.1, 0.1, 0), "tiepoints": []}, False),
    "matrix": ({"pixel_scale": None, "tiepoints": [], "transformation": MATRIX}, False),
    "matrix_and_tiepoints": ({"pixel_scale": None, "tiepoints": TIEPOINTS, "transformation": MATRIX}, False),
    "scale_wins_over_matrix": (
        {"pixel_scale": (0.2, 0.2, 0), "tiepoints": TIEPOINTS[:1], "transformation": MATRIX},
        False,
    ),
    "one_tiepoint_no_scale": ({"pixel_scale": None, "tiepoints": TIEPOINTS[:1]}, True),
    "three_tiepoints_no_scale": ({"pixel_scale": None, "tiepoints": TIEPOINTS}, True),
    "zero_scale": ({"pixel_scale": (0.0, 0.0, 0), "tiepoints": TIEPOINTS}, True),
}


@pytest.mark.parametrize("point", [False, True], ids=["area", "point"])
@pytest.mark.parametrize("name", sorted(MODEL_TAGS))
def test_model_tags_read_in_gdal_order(tmp_path, name, point):
    kwargs, gcps = MODEL_TAGS[name]
    keys = {1024: 2, 1025: 2 if point else 1, 2048: 4326}
    path = write_geotiff(tmp_path / f"{name}.tif", keys, **kwargs)
    header, ours, gdal_crs, gdal_transform = _read(path)
    with rasterio.open(path) as src:
        assert (len(src.gcps[0]) > 0) == gcps
    assert header.transform == pytest.approx(gdal_transform)
    if gcps:  # GDAL has no dataset CRS for a GCP file: neither do we, and we say why
        assert gdal_crs is None and header.crs is None
        assert len(ours) == 1 and "ground control point" in str(ours[0])
    else:
        assert_same_crs(header.crs, gdal_crs)
        assert not ours


def test_gdal_written_gcps_give_no_crs(tmp_path):
    path = tmp_path / "gcps.tif"
    gcps = [GroundControlPoint(row=r, col=c, x=10 + c / 10, y=50 - r / 10) for r, c in ((0, 0), (0, 4), (4, 0), (4, 4))]
    with rasterio.open(
        path, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8", gcps=gcps, crs="EPSG:4326"
    ) as dst:
        dst.write(np.ones((1, 4, 4), "uint8"))
    header, ours, gdal_crs, _ = _read(path)
    assert gdal_crs is None and header.crs is None and ours


# --- the cached header keeps the CRS exactly -----------------------------------------------------


@pytest.mark.parametrize("path", LIBGEOTIFF_FILES, ids=lambda p: p.stem)
def test_crs_survives_the_cached_header_round_trip(path):
    """The collection caches ``to_dict`` (as JSON / Arrow): the CRS text comes back unchanged."""
    header = read_header(str(path))
    again = CogHeader.from_dict(json.loads(json.dumps(header.to_dict())))
    assert again.crs == header.crs
    assert again == header
    with rasterio.open(path) as src:
        assert_same_crs(again.crs, src.crs)


def test_registry_crs_is_stored_as_its_code():
    assert read_header(str(LIBGEOTIFF / "byte.tif")).crs == "EPSG:26711"
    assert read_header(str(LIBGEOTIFF / "pixel_is_point_wgs84.tif")).crs == "EPSG:4326"
    bound = read_header(str(LIBGEOTIFF / "epsg_27563_allgeokeys.tif")).crs
    assert bound.startswith("BOUNDCRS[")


def test_keys_equal_in_python_but_of_different_types_are_not_confused(tmp_path):
    """4326 (SHORT) and 4326.0 (DOUBLE) compare equal in Python; GDAL reads only the first."""
    good, ours_good, gdal_good, _ = _read(write_geotiff(tmp_path / "a.tif", {1024: 2, 2048: 4326}))
    bad, ours_bad, gdal_bad, _ = _read(
        write_geotiff(tmp_path / "b.tif", {1024: 2, 2048: 4326.0}, key_types={2048: 34736})
    )
    good2, ours_good2, _, _ = _read(write_geotiff(tmp_path / "c.tif", {1024: 2, 2048: 4326}))
    assert good.crs == good2.crs == "EPSG:4326" and not ours_good and not ours_good2
    assert_same_crs(bad.crs, gdal_bad)
    assert ours_bad
    assert not CRS.from_user_input(bad.crs).equals(CRS.from_epsg(4326))


# --- malformed keys never raise ------------------------------------------------------------------

_FUZZ_KEYS = [
    1024,
    1025,
    1026,
    2048,
    2049,
    2050,
    2051,
    2052,
    2054,
    2055,
    2056,
    2057,
    2058,
    2059,
    2061,
    2062,
    3072,
    3073,
    3074,
    3075,
    3076,
    3077,
    3078,
    3080,
    3081,
    3082,
    3083,
    3085,
    3088,
    3089,
    3092,
    3094,
    3095,
    3096,
    4096,
    4098,
    4099,
]
_FUZZ_VALUES = [
    0,
    1,
    2,
    3,
    32767,
    65535,
    4326,
    4230,
    4807,
    6326,
    7022,
    8903,
    9001,
    9105,
    9110,
    12345,
    3857,
    32631,
    27563,
    3856,
    16031,
    1.5,
    -1e308,
    math.nan,
    math.inf,
    0.0,
    90.0,
    6378137.0,
    "x",
    "ESRI PE String = garbage",
    "GCS Name = a|Datum = b",
    (1.0, 2.0),
    (math.nan,) * 7,
    (),
]


def test_malformed_geokeys_give_a_crs_or_a_reason_never_an_exception():
    from rasteret_pipelines.cog import geo
    from rasteret_pipelines.cog.geocrs import crs_from_geokeys

    rng = random.Random(20261201)
    for _ in range(400):
        keys = {0: (1, 1, rng.choice([0, 1]))}
        for _ in range(rng.randint(0, 12)):
            keys[rng.choice(_FUZZ_KEYS)] = rng.choice(_FUZZ_VALUES)
        result = crs_from_geokeys(keys)
        if result.crs is not None:
            CRS.from_user_input(result.crs)
        elif set(keys) != {0}:  # some key beyond the header: no CRS needs a reason
            assert isinstance(result.problem, str) and result.problem, keys
        else:  # the header alone: no CRS, nothing to explain
            assert result.problem is None
    for _ in range(400):
        directory = [
            rng.choice([1, 0, 4, 65535, -1, 2.5, 34736, 34737, 34735, 1024, 2048, 3072])
            for _ in range(rng.randint(0, 24))
        ]
        doubles = rng.choice([None, (1.0, 2.0), "abc", (1,), ()])
        ascii_params = rng.choice([None, "abc|def|", (1.0, 2.0), b"xx", ""])
        keys = geo.parse_geokeys(directory, doubles, ascii_params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GeoreferenceWarning)
            geo.georeference(keys, None, None, None)


def test_warnings_name_the_object_without_a_presigned_query():
    from rasteret_pipelines.cog import geo

    href = "https://bucket.s3.amazonaws.com/a/b.tif?X-Amz-Signature=deadbeef&X-Amz-Security-Token=t"
    with pytest.warns(GeoreferenceWarning) as caught:
        geo.georeference({0: (1, 1, 0), 1024: 3, 2048: 4326}, (1.0, 1.0, 0.0), (0, 0, 0, 0.0, 0.0, 0), None, href)
    message = str(caught[0].message)
    assert "https://bucket.s3.amazonaws.com/a/b.tif" in message
    assert "deadbeef" not in message and "Security-Token" not in message
