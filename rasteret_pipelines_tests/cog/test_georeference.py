"""CRSs written as explicit GeoKey parameters (no EPSG code) equal what GDAL reads back."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from rasteret_pipelines.cog import read_header

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
        path, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8", crs=crs,
        transform=from_origin(1000, 2000, 10, 10),
    ) as dst:
        dst.write(np.ones((1, 8, 8), "uint8"))
    header = read_header(str(path))
    with rasterio.open(path) as src:
        assert header.crs is not None
        assert CRS.from_user_input(header.crs) == src.crs
        assert header.transform == tuple(src.transform)[:6]
