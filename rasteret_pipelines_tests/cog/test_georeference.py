"""CRSs written as explicit GeoKey parameters (no EPSG code), and nodata, equal what GDAL reads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from rasteret_pipelines.cog import read_header, read_window
from rasteret_pipelines_tests.cog.geotiff_keys import write_geotiff

CRSS = [
    "+proj=tmerc +lat_0=0 +lon_0=75.5 +k=0.9996 +x_0=500000 +y_0=0 +datum=WGS84",
    "+proj=tmerc +lat_0=0 +lon_0=75.5 +k=0.9996 +x_0=500000 +y_0=0 +ellps=WGS84",
    "+proj=lcc +lat_1=10 +lat_2=20 +lat_0=15 +lon_0=80 +x_0=0 +y_0=0 +datum=WGS84",
    "+proj=aea +lat_1=10 +lat_2=20 +lat_0=15 +lon_0=80 +ellps=GRS80",
    "+proj=laea +lat_0=52 +lon_0=10 +x_0=4321000 +y_0=3210000 +ellps=GRS80",
    "+proj=merc +lon_0=10 +k=1 +x_0=0 +y_0=0 +datum=WGS84",
    "+proj=stere +lat_0=90 +lat_ts=70 +lon_0=-45 +k=1 +x_0=0 +y_0=0 +datum=WGS84",
    "+proj=stere +lat_0=-90 +lat_ts=-71 +lon_0=0 +k=1 +x_0=0 +y_0=0 +datum=WGS84",
    "EPSG:3035",
    "EPSG:4326",
    "EPSG:32643",
]


@pytest.mark.parametrize("crs", CRSS)
def test_crs_equals_gdal(tmp_path, crs):
    path = tmp_path / "crs.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=8,
        height=8,
        count=1,
        dtype="uint8",
        crs=crs,
        transform=from_origin(1000, 2000, 10, 10),
    ) as dst:
        dst.write(np.ones((1, 8, 8), "uint8"))
    header = read_header(str(path))
    with rasterio.open(path) as src:
        assert header.crs is not None
        assert CRS.from_user_input(header.crs) == src.crs
        assert header.transform == tuple(src.transform)[:6]


# --- nodata as GDAL reports it ------------------------------------------------------------------

NODATA_TEXTS = [
    "0",
    "-9999",
    "nan",
    "NaN",
    "-nan",
    "inf",
    "-inf",
    "0.1",
    "1e40",
    "-1e40",
    "3.4028235e38",
    "-3.4028234663852886e+38",
    "1e-50",
    " 5 ",
    "5.5",
    "-1",
    "300",
    "65535",
    "-32768",
    "2.5e9",
    "abc",
    "5abc",
    "1,5",
    "0x10",
    "+5",
    ".5",
    "1e308",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "-129",
]
NODATA_DTYPES = ["uint8", "int8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]


@pytest.mark.parametrize("dtype", NODATA_DTYPES)
@pytest.mark.parametrize("text", NODATA_TEXTS)
def test_nodata_equals_gdal(tmp_path, dtype, text):
    path = write_geotiff(tmp_path / "nodata.tif", {1024: 2, 2048: 4326}, nodata=text, dtype=dtype)
    header = read_header(str(path))
    with rasterio.open(path) as src:
        expected = src.nodata
    if expected is None:
        assert header.nodata is None
    elif math.isnan(expected):
        assert header.nodata is not None and math.isnan(header.nodata)
    else:
        assert header.nodata == expected  # exact: float32 values rounded as GDAL rounds them
    assert header.nodata_text == text.strip()  # the cached header keeps the file's text
    fill = header.fill_value
    assert fill.dtype == np.dtype(dtype)
    if expected is not None and not math.isnan(expected):
        assert fill == np.array(expected).astype(dtype)


@pytest.mark.parametrize("nodata", [0.1, -3.4028234663852886e38, 1e-3, -9999.0])
def test_float32_nodata_written_by_gdal(tmp_path, nodata):
    path = tmp_path / "f32.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=8,
        height=8,
        count=1,
        dtype="float32",
        crs="EPSG:4326",
        transform=from_origin(0, 1, 0.1, 0.1),
        nodata=nodata,
    ) as dst:
        dst.write(np.full((1, 8, 8), nodata, "float32"))
    header = read_header(str(path))
    with rasterio.open(path) as src:
        assert header.nodata == src.nodata
        # the pixels equal the nodata value, so masking by it finds them all
        assert (src.read(1) == np.float32(header.nodata)).all()
        assert (src.read(1) == header.nodata).all()


def test_float32_nodata_masks_the_same_pixels_as_rasterio(tmp_path):
    """A float32 nodata like 0.1 must match the stored pixels once rounded as GDAL rounds it."""
    path = tmp_path / "f32_mask.tif"
    data = np.arange(64, dtype="float32").reshape(1, 8, 8) / 10
    data[0, :3] = 0.1
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=8,
        height=8,
        count=1,
        dtype="float32",
        crs="EPSG:4326",
        transform=from_origin(0, 1, 0.1, 0.1),
        nodata=0.1,
        tiled=True,
        blockxsize=16,
        blockysize=16,
    ) as dst:
        dst.write(data)
    header = read_header(str(path))
    pixels = read_window(header, (0, 0, 8, 8))
    with rasterio.open(path) as src:
        expected_mask = src.read(1, masked=True).mask
    assert ((pixels[0] == header.nodata) == expected_mask).all()
    assert expected_mask.sum() == 24
