"""Small real COGs written with GDAL (through rasterio) for request-count, fault and S3 tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio.windows
from rasterio.transform import from_origin

from rasteret_pipelines.products.geotiff import write_cog
from rasteret_pipelines_demo.demo_data import write_sparse_cog

S2_TRANSFORM = from_origin(699960, 1500000, 10, 10)  # MGRS 43PGQ, the quick start's tile


def field(height: int, width: int, bands: int, dtype: str, seed: int) -> np.ndarray:
    """Smooth gradients plus noise: compresses like imagery, differs in every pixel."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    out = np.empty((bands, height, width), dtype=dtype)
    for b in range(bands):
        base = 1000 + 800 * np.sin(x / 97.0 + b) + 600 * np.cos(y / 131.0 - b)
        out[b] = np.clip(base + rng.normal(0, 40, (height, width)), 1, 250 if dtype == "uint8" else 9000)
    return out


def s2_cog(
    path: Path,
    *,
    width: int = 2100,
    height: int = 1900,
    dtype: str = "uint16",
    blocksize: int = 512,
    seed: int = 1,
) -> Path:
    """A GDAL COG (Deflate, predictor 2, overviews, nodata 0) of :func:`field` on the Sentinel-2
    43PGQ grid, written by the library's :func:`~rasteret_pipelines.products.geotiff.write_cog`.
    (Other layouts, e.g. band interleave: :func:`rasteret_pipelines_tests.cog_factory.write_cog`.)"""
    write_cog(
        field(height, width, 1, dtype, seed)[0],
        path,
        "EPSG:32643",
        S2_TRANSFORM,
        dtype=None,
        nodata=0,
        blocksize=blocksize,
        overview_resampling="CUBIC",
    )  # GDAL's default for such data
    return path


def write_sparse_scene(path: Path, *, size: int = 10980, blocksize: int = 1024) -> Path:
    """A full-size Sentinel-2 10 m grid COG with overviews, mostly sparse (small on disk)."""
    block = field(blocksize, blocksize, 1, "uint16", 3)
    window = rasterio.windows.Window(2 * blocksize, 3 * blocksize, blocksize, blocksize)
    origin = (S2_TRANSFORM.c, S2_TRANSFORM.f)
    return write_sparse_cog(
        path, block, window, size=size, crs="EPSG:32643", origin=origin, pixel=S2_TRANSFORM.a, block=blocksize
    )
