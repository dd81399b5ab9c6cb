"""The GDAL-free COG engine against rasterio/GDAL as the oracle.

Every matrix case (a COG written by ``cog_factory.write_cog``) and every real fixture TIFF is
read twice: by the engine from the file's bytes through a :class:`MemoryReader`
(``read_header(href, reader=...)``: the parser and decoders need bytes, not a server), and by
rasterio from the local file. Batches across many files run end to end over HTTP through the
session range server. Header fields must
equal rasterio's, and pixels must be *identical* (``np.testing.assert_array_equal``) for a set
of windows on every level: the full image, an interior block, a window straddling a tile edge,
the bottom-right edge, a single pixel, corners partly outside the image and windows entirely
outside it.

Oracle, per window ``(col_off, row_off, width, height)`` on level ``k``:

* ``rasterio.open(path, overview_level=k - 1)`` (``k >= 1``) or ``rasterio.open(path)``
  (``k = 0``), ``.read(window=..., boundless=True)``;
* for windows entirely inside the image, ``boundless=False`` as well;
* for windows partly or entirely outside, a second, independent oracle: an array of nodata
  (0 when none) with rasterio's clipped read pasted in.

Documented exceptions, where rasterio is not a bit-exact oracle for reasons outside the engine
(all keep exact assertions, against another reference):

* YCbCr (chroma-subsampled) JPEG: chroma upsampling is not specified by the JPEG standard.
  GDAL's bundled libjpeg 9 upsamples with scaled DCTs, libjpeg-turbo (imagecodecs) with a
  triangular filter; they differ by a few grey levels on smooth images and by up to ~120 at
  sharp colour edges. For these files the in-image pixels must equal libtiff's own decode
  (``imagecodecs.tiff_decode``: libtiff + libjpeg-turbo, a TIFF stack independent of the
  engine's); libtiff's and GDAL's decodes must agree on average (a guard on the oracle).
* Rotated geotransforms: rasterio's ``boundless=True`` read goes through a VRT that misplaces
  the data when the transform has rotation terms, so only the clipped-read oracle is used.
* Files without a geotransform (no ModelTiepoint+ModelPixelScale / ModelTransformation):
  rasterio 1.4.4 returns uninitialised memory as the transform of their overview levels (and
  sometimes of the full level), which also corrupts its ``boundless=True`` reads. Expected
  transforms are GDAL's rule (identity, scaled by the size ratio on overviews) and pixels use
  the clipped-read oracle. Detected with a tiny TIFF tag parser, independent of the engine.

Half-float TIFFs (16-bit IEEE): GDAL < 3.11 has no Float16 type and exposes them as float32
(``NBITS=16``); the engine may report ``float16`` (the file's type) or ``float32``. Values are
compared exactly after casting to float32 (lossless).

Header mismatches are collected and reported together per file.
"""

from __future__ import annotations

import json
import math
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from rasteret_pipelines.cog import (
    CogHeader,
    MemoryReader,
    read_header,
    read_headers,
    read_window,
    read_windows,
)
from rasteret_pipelines.errors import UnsupportedTiffError, WindowError
from rasteret_pipelines_demo import RangeServer
from rasteret_pipelines_tests.cog_factory import GDAL_VERSION, supports_float16, write_cog
from rasteret_pipelines_tests.conftest import TIFF_DIR, fixture_tiffs

# --- the matrix ---------------------------------------------------------------------------------

SIZES = {256: (700, 530), 512: (1100, 900), 1024: (1500, 1300)}  # never multiples of the tile


@dataclass(frozen=True)
class Case:
    """One generated file: ``id`` (also its file name) and ``write_cog`` keyword arguments."""

    id: str
    kwargs: dict[str, Any] = field(hash=False)
    skip: str | None = None

    def param(self):
        marks = [pytest.mark.skip(reason=self.skip)] if self.skip else []
        return pytest.param(self, id=self.id, marks=marks)


def _case(id: str, *, skip: str | None = None, **kwargs: Any) -> Case:
    block = kwargs.get("blocksize", 256)
    if isinstance(block, int) and "width" not in kwargs:
        kwargs["width"], kwargs["height"] = SIZES.get(block, (700, 530))
    return Case(id, kwargs, skip)


INTS = ["uint8", "uint16", "uint32", "int8", "int16", "int32"]
FLOATS = ["float32", "float64"]
RGB = {"dtype": "uint8", "count": 3}
RGBA = {"dtype": "uint8", "count": 4}
SMALL = {"width": 520, "height": 300, "blocksize": 128}  # for slow encoders (WEBP lossless)
CUSTOM_TMERC = "+proj=tmerc +lat_0=0 +lon_0=75.5 +k=0.9996 +x_0=500000 +y_0=0 +ellps=WGS84 +units=m +no_defs"

MATRIX: list[Case] = [
    # codec x dtype x predictor (tiles 256, 700x530, 2 overviews)
    _case("none-uint8", dtype="uint8", compress="NONE"),
    _case("none-float64", dtype="float64", compress="NONE"),
    *[_case(f"deflate-{dt}", dtype=dt, compress="DEFLATE") for dt in INTS + FLOATS],
    *[_case(f"deflate-{dt}-p2", dtype=dt, compress="DEFLATE", predictor=2) for dt in INTS + FLOATS],
    *[_case(f"deflate-{dt}-p3", dtype=dt, compress="DEFLATE", predictor=3) for dt in FLOATS],
    _case("lzw-uint16-p2", dtype="uint16", compress="LZW", predictor=2),
    _case("lzw-int16", dtype="int16", compress="LZW"),
    _case("lzw-float32-p3", dtype="float32", compress="LZW", predictor=3),
    _case("lzw-rgb", **RGB, compress="LZW"),
    _case("lzw-rgb-p2", **RGB, compress="LZW", predictor=2),
    _case("zstd-uint16-p2", dtype="uint16", compress="ZSTD", predictor=2),
    _case("zstd-uint32-p2", dtype="uint32", compress="ZSTD", predictor=2),
    _case("zstd-int8", dtype="int8", compress="ZSTD"),
    _case("zstd-float64-p3", dtype="float64", compress="ZSTD", predictor=3),
    _case("lzma-uint16", dtype="uint16", compress="LZMA"),
    _case("lzma-float32", dtype="float32", compress="LZMA"),  # GDAL writes no predictor with LZMA
    _case("lzma-rgb", **RGB, compress="LZMA"),
    _case("packbits-uint8", dtype="uint8", compress="PACKBITS"),
    _case("packbits-int16", dtype="int16", compress="PACKBITS"),
    _case("jpeg-gray", dtype="uint8", compress="JPEG"),
    _case("jpeg-rgb-ycbcr-cog", **RGB, compress="JPEG"),  # the COG driver's default: YCbCr 4:2:0
    _case("jpeg-rgb-photometric-rgb", **RGB, compress="JPEG", photometric="RGB"),
    _case("jpeg-rgb-photometric-ycbcr", **RGB, compress="JPEG", photometric="YCBCR", jpeg_quality=90),
    _case("webp-rgb-lossless", **RGB, **SMALL, compress="WEBP", quality=100),
    _case("webp-rgba-lossless", **RGBA, **SMALL, compress="WEBP", quality=100),
    _case("webp-rgb-lossy", **RGB, **SMALL, compress="WEBP", quality=80),
    _case("webp-rgb-lossless-gtiff", **RGB, **SMALL, compress="WEBP", driver="GTiff", webp_lossless=True),
    _case("lerc-float32", dtype="float32", compress="LERC", max_z_error=0),
    _case("lerc-uint16", dtype="uint16", compress="LERC", max_z_error=0),
    _case("lerc-int8", dtype="int8", compress="LERC", max_z_error=0),
    _case("lerc_deflate-float64", dtype="float64", compress="LERC_DEFLATE", max_z_error=0),
    _case("lerc_zstd-int16", dtype="int16", compress="LERC_ZSTD", max_z_error=0),
    _case("lerc_zstd-rgb", **RGB, compress="LERC_ZSTD", max_z_error=0),
    _case("lerc_zstd-float32-nodata", dtype="float32", compress="LERC_ZSTD", max_z_error=0, nodata=-9999.0),
    _case(
        "jpeg2000",
        skip=f"GDAL {GDAL_VERSION}'s GTiff driver cannot write JPEG2000-compressed TIFF "
        "(COMPRESS=JPEG2000 is not among its creation options)",
    ),
    _case(
        "deflate-float16-native",
        dtype="float16",
        skip=None if supports_float16() else f"GDAL {GDAL_VERSION} has no Float16 type (needs >= 3.11)",
    ),
    _case("deflate-halffloat-nbits16", dtype="float32", nbits=16, driver="GTiff"),
    _case("deflate-halffloat-nbits16-p3", dtype="float32", nbits=16, predictor=3, driver="GTiff"),
    # tile sizes and shapes
    _case("deflate-uint16-p2-t512", dtype="uint16", predictor=2, blocksize=512),
    _case("zstd-rgb-t512", **RGB, compress="ZSTD", blocksize=512),
    _case("deflate-float32-p3-t1024", dtype="float32", predictor=3, blocksize=1024),
    _case("lzw-int16-t1024", dtype="int16", compress="LZW", blocksize=1024),
    _case("deflate-uint16-t512x256", dtype="uint16", blocksize=(512, 256), width=1100, height=900),
    _case("deflate-uint16-smaller-than-tile", dtype="uint16", width=100, height=77),
    _case("deflate-uint16-no-overviews", dtype="uint16", overviews=False),
    # interleave and band counts
    _case("deflate-uint16-3band-pixel-p2", dtype="uint16", count=3, predictor=2),
    _case("deflate-uint16-3band-band", dtype="uint16", count=3, interleave="band"),
    _case("lzw-rgba-band-p2", **RGBA, compress="LZW", predictor=2, interleave="band"),
    _case("deflate-float32-4band-pixel-p3", dtype="float32", count=4, predictor=3),
    _case("deflate-float64-2band-pixel-p2", dtype="float64", count=2, predictor=2),
    _case("zstd-int16-2band-pixel-p2", dtype="int16", count=2, compress="ZSTD", predictor=2),
    _case("deflate-int32-5band-band-p2", dtype="int32", count=5, interleave="band", predictor=2),
    # BigTIFF and big-endian
    _case("deflate-uint16-bigtiff", dtype="uint16", bigtiff=True),
    _case("zstd-float32-p3-bigtiff-be", dtype="float32", compress="ZSTD", predictor=3, bigtiff=True, endian="big"),
    _case("none-int32-be", dtype="int32", compress="NONE", endian="big"),
    _case("deflate-uint16-p2-be", dtype="uint16", predictor=2, endian="big"),
    _case("lzw-float32-p3-be", dtype="float32", compress="LZW", predictor=3, endian="big"),
    _case("zstd-float64-be", dtype="float64", compress="ZSTD", endian="big"),
    _case("deflate-float64-p3-be", dtype="float64", predictor=3, endian="big"),
    _case("deflate-int16-3band-band-p2-be", dtype="int16", count=3, interleave="band", predictor=2, endian="big"),
    _case("deflate-uint16-3band-pixel-p2-be", dtype="uint16", count=3, predictor=2, endian="big"),
    _case("none-rgb-be", **RGB, compress="NONE", endian="big"),
    _case("packbits-int16-be", dtype="int16", compress="PACKBITS", endian="big"),
    _case(
        "lerc-float32-be",
        dtype="float32",
        compress="LERC",
        max_z_error=0,
        endian="big",
        skip="GDAL writes big-endian LERC by LERC-encoding byte-swapped words and does not "
        "round-trip it (GDAL 3.10 reads back 1501 of 371000 pixels as 6.9e-41): no oracle",
    ),
    _case("jpeg-rgb-ycbcr-be", **RGB, compress="JPEG", photometric="YCBCR", endian="big"),
    _case("deflate-halffloat-nbits16-be", dtype="float32", nbits=16, endian="big"),
    # nodata
    _case("nodata-uint16-0", dtype="uint16", nodata=0),
    _case("nodata-int16-neg", dtype="int16", nodata=-9999, predictor=2),
    _case("nodata-uint8-255", dtype="uint8", nodata=255),
    _case("nodata-float32-nan", dtype="float32", nodata=float("nan"), predictor=3),
    _case("nodata-float32-neg", dtype="float32", nodata=-9999.0),
    _case("nodata-float64-big", dtype="float64", nodata=-1e30, predictor=3),
    # internal masks (values are not changed by the mask)
    _case("mask-rgb", **RGB, mask=True),
    _case("mask-uint16-be", dtype="uint16", mask=True, endian="big"),
    _case("mask-float32-p3", dtype="float32", mask=True, predictor=3),
    _case("mask-rgb-jpeg-ycbcr", **RGB, compress="JPEG", mask=True),
    # sparse (omitted) tiles
    _case("sparse-uint16-nodata0", dtype="uint16", nodata=0, sparse=True, width=1100, height=900),
    _case("sparse-uint8-no-nodata", dtype="uint8", sparse=True, width=1100, height=900),
    _case(
        "sparse-float32-nodata-neg-band",
        dtype="float32",
        count=2,
        nodata=-9999.0,
        sparse=True,
        interleave="band",
        width=1100,
        height=900,
    ),
    _case("sparse-float32-nan", dtype="float32", nodata=float("nan"), sparse=True, width=1100, height=900),
    _case("sparse-int16-nodata-be", dtype="int16", nodata=-1, sparse=True, endian="big", width=1100, height=900),
    # georeferencing
    _case("pixel-is-point", dtype="uint16", pixel_is_point=True),
    _case("pixel-is-point-gtiff-be", dtype="int16", pixel_is_point=True, endian="big"),
    _case("crs-4326", dtype="uint16", crs="EPSG:4326", transform=Affine(0.0003, 0, 77.125, 0, -0.0003, 28.75)),
    _case("crs-3857", dtype="uint16", crs="EPSG:3857", transform=Affine(30, 0, 8580000, 0, -30, 3350000)),
    _case("crs-custom-tmerc", dtype="uint16", crs=CUSTOM_TMERC),
    _case("crs-none", dtype="uint16", crs=None),
    _case("crs-none-no-transform", dtype="uint16", crs=None, transform=Affine.identity()),
    _case("rotated-transform", dtype="uint16", transform=Affine(10, 2, 400000, 1.5, -10, 2900000)),
    _case("scale-offset", dtype="int16", count=2, scales=[0.0001, 0.01], offsets=[-0.1, 273.15], nodata=-32768),
    # strips (the engine reads strips too)
    _case("strips-deflate-uint16-p2", dtype="uint16", predictor=2, tiled=False, blocksize=37),
    _case("strips-lzw-rgb-band", **RGB, compress="LZW", tiled=False, blocksize=64, interleave="band"),
    _case("strips-none-float32-be", dtype="float32", compress="NONE", tiled=False, blocksize=16, endian="big"),
]

assert len({c.id for c in MATRIX}) == len(MATRIX), "duplicate case ids"
MATRIX_PARAMS = [c.param() for c in MATRIX]
ROTATED = {"rotated-transform"}

FIXTURES = [p.as_posix() for p in fixture_tiffs()]

# Fixtures the engine is allowed to refuse, with the reason. Each must raise exactly
# UnsupportedTiffError (from read_header or read_window); any other outcome fails. Empty:
# the engine is meant to read every fixture, strips included.
FIXTURE_UNSUPPORTED: dict[str, str] = {}

MAX_FULL_PIXELS = 2048 * 2048  # bigger levels (sparse.tiff: 20480^2) get no "full" window
MAX_SIDE = 1024  # interior windows are capped to this size


class MatrixFiles:
    """Writes each matrix case once per session (lazily, so ``-k`` selections stay fast)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._paths: dict[str, Path] = {}

    def path(self, case: Case) -> Path:
        if case.id not in self._paths:
            self._paths[case.id] = write_cog(self.directory / f"{case.id}.tif", **case.kwargs)
        return self._paths[case.id]


@pytest.fixture(scope="session")
def matrix(cog_dir: Path) -> MatrixFiles:
    return MatrixFiles(cog_dir / "oracle")


# --- oracle helpers -----------------------------------------------------------------------------


def open_level(path: Path, k: int) -> rasterio.DatasetReader:
    """rasterio dataset of level ``k`` (0: full resolution, k: the k-th overview)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        return rasterio.open(path, overview_level=k - 1) if k else rasterio.open(path)


def is_half_float(src: rasterio.DatasetReader) -> bool:
    return src.dtypes[0] == "float32" and src.tags(1, ns="IMAGE_STRUCTURE").get("NBITS") == "16"


def is_ycbcr_jpeg(src: rasterio.DatasetReader) -> bool:
    return src.tags(ns="IMAGE_STRUCTURE").get("COMPRESSION") == "YCbCr JPEG"


def has_internal_mask(src: rasterio.DatasetReader) -> bool:
    flags = src.mask_flag_enums[0]
    return rasterio.enums.MaskFlags.per_dataset in flags and rasterio.enums.MaskFlags.alpha not in flags


def level_windows(width: int, height: int, tile_w: int, tile_h: int) -> dict[str, tuple[int, int, int, int]]:
    """Named windows ``(col_off, row_off, width, height)`` for one level."""
    wins: dict[str, tuple[int, int, int, int]] = {}
    if width * height <= MAX_FULL_PIXELS:
        wins["full"] = (0, 0, width, height)
    wins["interior"] = (width // 4, height // 4, max(1, min(width // 3, MAX_SIDE)), max(1, min(height // 3, MAX_SIDE)))
    if tile_w < width or tile_h < height:  # straddles the first tile (or strip) boundary
        x0, y0 = max(0, min(tile_w, width) - 5), max(0, min(tile_h, height) - 7)
        wins["tile-edge"] = (x0, y0, min(13, width - x0), min(17, height - y0))
    wins["bottom-right"] = (max(0, width - 37), max(0, height - 29), min(37, width), min(29, height))
    wins["last-pixel"] = (width - 1, height - 1, 1, 1)
    wins["corner-top-left-outside"] = (-10, -7, 40, 30)
    wins["corner-bottom-right-outside"] = (width - 20, height - 15, 50, 40)
    wins["outside-after"] = (width + 5, height + 10, 16, 8)
    wins["outside-before"] = (-50, -40, 20, 10)
    return wins


def is_inside(win: tuple[int, int, int, int], width: int, height: int) -> bool:
    x, y, w, h = win
    return x >= 0 and y >= 0 and x + w <= width and y + h <= height


def fill_value(src: rasterio.DatasetReader) -> float:
    return 0 if src.nodata is None else src.nodata


def padded_read(src: rasterio.DatasetReader, win, inside_pixels=None) -> np.ndarray:
    """Independent boundless oracle: nodata (or 0) everywhere, rasterio's clipped read pasted in.

    ``inside_pixels``: an alternative full-level array (bands, H, W) to take pixels from.
    """
    x, y, w, h = win
    out = np.full((src.count, h, w), fill_value(src), dtype=src.dtypes[0])
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, src.width), min(y + h, src.height)
    if x1 > x0 and y1 > y0:
        if inside_pixels is None:
            part = src.read(window=Window(x0, y0, x1 - x0, y1 - y0))
        else:
            part = inside_pixels[:, y0:y1, x0:x1]
        out[:, y0 - y : y1 - y, x0 - x : x1 - x] = part
    return out


def tiff_ifds(data: bytes) -> list[dict[int, int]]:
    """Main IFD chain of a TIFF: per IFD, tag -> first value if inline and integer, else -1.

    A deliberately tiny parser (classic and BigTIFF, both byte orders), independent of the
    engine, to find mask IFDs and the georeferencing tags rasterio cannot be trusted about.
    """
    order = {b"II": "<", b"MM": ">"}[data[:2]]
    big = struct.unpack_from(order + "H", data, 2)[0] == 43
    unpack = lambda fmt, off: struct.unpack_from(order + fmt, data, off)[0]  # noqa: E731
    offset = unpack("Q", 8) if big else unpack("I", 4)
    ifds = []
    while offset and len(ifds) < 1000:
        count = unpack("Q", offset) if big else unpack("H", offset)
        entry0, size = offset + (8 if big else 2), (20 if big else 12)
        tags = {}
        for i in range(count):
            e = entry0 + i * size
            tag, typ = unpack("H", e), unpack("H", e + 2)
            n = unpack("Q", e + 4) if big else unpack("I", e + 4)
            value_at = e + (12 if big else 8)
            tags[tag] = {3: unpack("H", value_at), 4: unpack("I", value_at)}.get(typ, -1) if n == 1 else -1
        ifds.append(tags)
        next_at = entry0 + count * size
        offset = unpack("Q", next_at) if big else unpack("I", next_at)
    return ifds


def image_ifds(data: bytes) -> list[int]:
    """Indices of the image IFDs (not masks: NewSubfileType bit 4) in the main IFD chain."""
    return [i for i, tags in enumerate(tiff_ifds(data)) if not tags.get(254, 0) & 4]


def has_geotransform(path: Path) -> bool:
    """Whether GDAL finds a geotransform: ModelTransformation, or ModelTiepoint + PixelScale.

    Without one, GDAL's transform is the identity (overviews: scaled by the size ratio), but
    rasterio 1.4.4 sometimes returns uninitialised memory for it (always for overview levels),
    which also corrupts its ``boundless=True`` reads.
    """
    tags = tiff_ifds(path.read_bytes())[0]
    return 34264 in tags or (33922 in tags and 33550 in tags)


def libtiff_level(path: Path, k: int, src: rasterio.DatasetReader) -> np.ndarray:
    """Level ``k`` decoded by libtiff (imagecodecs), as (bands, H, W): the YCbCr JPEG oracle."""
    data = path.read_bytes()
    arr = imagecodecs.tiff_decode(data, index=image_ifds(data)[k])
    arr = arr[np.newaxis] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    assert arr.shape == (src.count, src.height, src.width), (arr.shape, src.shape)
    return arr


def assert_same_pixels(actual: np.ndarray, expected: np.ndarray, half_float: bool, msg: str) -> None:
    assert actual.shape == expected.shape, f"{msg}: shape {actual.shape} != {expected.shape}"
    if half_float:
        assert actual.dtype in (np.float16, np.float32), f"{msg}: dtype {actual.dtype}"
        actual = actual.astype(np.float32)
    else:
        assert actual.dtype == expected.dtype, f"{msg}: dtype {actual.dtype} != {expected.dtype}"
    np.testing.assert_array_equal(actual, expected, err_msg=msg)


# --- header checks ------------------------------------------------------------------------------


def assert_transform_close(actual, expected, msg: str) -> None:
    actual = tuple(actual)
    assert len(actual) == 6, f"{msg}: transform must be a 6-tuple, got {actual!r}"
    np.testing.assert_allclose(actual, tuple(expected)[:6], rtol=1e-9, atol=1e-12, err_msg=msg)


class SoftChecks:
    """Collects every failed header check, so one report lists all mismatches of a file."""

    def __init__(self, name: str):
        self.name = name
        self.failures: list[str] = []

    def __call__(self, label: str, check) -> None:
        try:
            result = check()
        except AssertionError as exc:
            self.failures.append(f"{label}: {str(exc).strip()}")
        except Exception as exc:  # e.g. a TypeError from a wrongly typed field
            self.failures.append(f"{label}: {type(exc).__name__}: {exc}")
        else:
            if result is False:
                self.failures.append(label)

    def finish(self) -> None:
        if self.failures:
            pytest.fail(f"{self.name}: {len(self.failures)} header mismatch(es):\n  - " + "\n  - ".join(self.failures))


def _nodata_matches(actual, expected) -> bool:
    if expected is None:
        return actual is None
    if not isinstance(actual, (int, float)) or isinstance(actual, bool):
        raise AssertionError(f"nodata must be a float or None, got {type(actual).__name__} {actual!r}")
    if math.isnan(expected):
        return math.isnan(actual)
    return float(actual) == expected


def _crs_matches(actual, expected) -> bool:
    if expected is None:
        return actual is None
    if actual is None:
        raise AssertionError(f"no crs, rasterio has {expected.to_string()[:120]}")
    return CRS.from_user_input(actual) == expected


def check_header(h: CogHeader, path: Path, etag: str) -> None:
    """``h`` against rasterio's view of ``path``; ``etag``: what the store says the file's is."""
    check = SoftChecks(path.name)
    georeferenced = has_geotransform(path)
    with open_level(path, 0) as src:
        check(
            f"size {(h.width, h.height, h.count)} == rasterio {(src.width, src.height, src.count)}",
            lambda: (h.width, h.height, h.count) == (src.width, src.height, src.count),
        )
        if is_half_float(src):
            check(f"dtype {h.dtype!r} in float16/float32 (half-float file)", lambda: h.dtype in ("float16", "float32"))
        else:
            check(f"dtype {h.dtype!r} == {src.dtypes[0]!r}", lambda: h.dtype == src.dtypes[0])
        base = src.transform if georeferenced else Affine.identity()
        base_size = (src.width, src.height)
        check("transform", lambda: assert_transform_close(h.transform, base, "transform"))
        check(f"crs {str(h.crs)[:80]!r} == rasterio {src.crs}", lambda: _crs_matches(h.crs, src.crs))
        check(f"nodata {h.nodata!r} == rasterio {src.nodata!r}", lambda: _nodata_matches(h.nodata, src.nodata))
        check(
            f"scales {h.scales} == {src.scales}",
            lambda: np.testing.assert_allclose(h.scales, src.scales, rtol=1e-12) or len(h.scales) == src.count,
        )
        check(
            f"offsets {h.offsets} == {src.offsets}",
            lambda: np.testing.assert_allclose(h.offsets, src.offsets, rtol=1e-12) or len(h.offsets) == src.count,
        )
        n_overviews = len(src.overviews(1))
        tiled = bool(src.profile.get("tiled"))
    check(
        f"overview_count {h.overview_count} == rasterio {n_overviews} == len(levels) - 1 ({len(h.levels) - 1})",
        lambda: h.overview_count == n_overviews == len(h.levels) - 1,
    )
    for k, level in enumerate(h.levels[: n_overviews + 1]):
        with open_level(path, k) as src:
            check(
                f"level {k} size {(level.width, level.height)} == {(src.width, src.height)}",
                lambda: (level.width, level.height) == (src.width, src.height),
            )
            if tiled:
                tile_h, tile_w = src.block_shapes[0]
                check(
                    f"level {k} tile {(level.tile_width, level.tile_height)} == {(tile_w, tile_h)}",
                    lambda: (level.tile_width, level.tile_height) == (tile_w, tile_h),
                )
            if georeferenced:
                expected = src.transform
            else:  # GDAL's rule for overviews: base transform scaled by the size ratio
                expected = base @ Affine.scale(base_size[0] / src.width, base_size[1] / src.height)
            check(
                f"level_transform({k})",
                lambda: assert_transform_close(h.level_transform(k), expected, f"level_transform({k})"),
            )
    check(f"size {h.size} == file size", lambda: h.size == path.stat().st_size)
    check(f"etag {h.etag!r} == server's {etag}", lambda: h.etag in (etag, etag.strip('"')))
    check.finish()


def check_header_roundtrip(h: CogHeader) -> None:
    d = h.to_dict()
    assert CogHeader.from_dict(d) == h
    text = json.dumps(d)
    assert CogHeader.from_dict(json.loads(text)) == h


# --- pixel checks -------------------------------------------------------------------------------


def check_pixels(h: CogHeader, path: Path, reader: MemoryReader, *, rotated: bool = False) -> None:
    name = path.name
    trust_boundless = has_geotransform(path) and not rotated
    for k in range(len(h.levels)):
        with open_level(path, k) as src:
            tile_h, tile_w = src.block_shapes[0]
            wins = level_windows(src.width, src.height, tile_w, tile_h)
            half = is_half_float(src)
            ycbcr = is_ycbcr_jpeg(src)
            reference = libtiff_level(path, k, src) if ycbcr else None
            if reference is not None:  # the two decoders must agree up to upsampling noise
                noise = np.abs(reference.astype(np.int16) - src.read().astype(np.int16)).mean()
                assert noise <= 10, f"{name} level {k}: libtiff and GDAL decodes differ by {noise:.2f}"
            names = list(wins)
            # one window through read_window, the others as one read_windows batch
            got = {names[0]: read_window(h, wins[names[0]], overview=k, reader=reader)}
            batch = read_windows([(h, wins[n]) for n in names[1:]], overview=k, reader=reader)
            assert len(batch) == len(names) - 1
            got.update(zip(names[1:], batch))
            for wname, win in wins.items():
                msg = f"{name} level {k} window {wname} {win}"
                actual = got[wname]
                if ycbcr:
                    check_ycbcr_window(actual, src, win, reference, msg)
                    continue
                padded = padded_read(src, win)
                assert_same_pixels(actual, padded, half, msg + " [clipped read + fill]")
                if trust_boundless:
                    boundless = src.read(window=Window(*win), boundless=True)
                    assert_same_pixels(actual, boundless, half, msg + " [boundless=True]")
                if is_inside(win, src.width, src.height):
                    clipped = src.read(window=Window(*win))
                    assert_same_pixels(actual, clipped, half, msg + " [boundless=False]")


def check_ycbcr_window(actual, src, win, reference, msg) -> None:
    expected = padded_read(src, win, inside_pixels=reference)
    assert_same_pixels(actual, expected, False, msg + " [libtiff decode + fill]")


# --- tests: matrix ------------------------------------------------------------------------------


def in_memory(path: Path) -> tuple[str, MemoryReader]:
    """An href for ``path`` and a :class:`MemoryReader` holding its bytes under it."""
    href = f"https://cogs.example.test/{path.parent.name}/{path.name}"
    return href, MemoryReader({href: path.read_bytes()})


@pytest.mark.parametrize("case", MATRIX_PARAMS)
def test_matrix_header(case: Case, matrix: MatrixFiles):
    path = matrix.path(case)
    href, reader = in_memory(path)
    h = read_header(href, reader=reader)
    check_header(h, path, reader.etag_for(href))


@pytest.mark.parametrize("case", MATRIX_PARAMS)
def test_matrix_header_roundtrip(case: Case, matrix: MatrixFiles):
    href, reader = in_memory(matrix.path(case))
    h = read_header(href, reader=reader)
    check_header_roundtrip(h)


@pytest.mark.parametrize("case", MATRIX_PARAMS)
def test_matrix_pixels(case: Case, matrix: MatrixFiles):
    path = matrix.path(case)
    href, reader = in_memory(path)
    h = read_header(href, reader=reader)
    check_pixels(h, path, reader, rotated=case.id in ROTATED)


# --- tests: real fixture TIFFs ------------------------------------------------------------------


def _read_fixture_header(relpath: str, href: str, reader: MemoryReader) -> CogHeader | None:
    """read_header, or None when the fixture is listed as legitimately unsupported."""
    if relpath in FIXTURE_UNSUPPORTED:
        with pytest.raises(UnsupportedTiffError):
            h = read_header(href, reader=reader)
            read_window(h, (0, 0, 1, 1), reader=reader)
        return None
    return read_header(href, reader=reader)


@pytest.mark.parametrize("relpath", FIXTURES)
def test_fixture_header(relpath: str):
    path = TIFF_DIR / relpath
    href, reader = in_memory(path)
    h = _read_fixture_header(relpath, href, reader)
    if h is not None:
        check_header(h, path, reader.etag_for(href))
        check_header_roundtrip(h)


@pytest.mark.parametrize("relpath", FIXTURES)
def test_fixture_pixels(relpath: str):
    path = TIFF_DIR / relpath
    href, reader = in_memory(path)
    h = _read_fixture_header(relpath, href, reader)
    if h is not None:
        check_pixels(h, path, reader)


def test_fixture_list_is_complete():
    """The fixture TIFFs are found (guards against a broken data directory)."""
    assert len(FIXTURES) >= 25
    names = {Path(f).name for f in FIXTURES}
    assert {"cog.tif", "sparse.tiff", "be_cog.tiff", "BigTIFFMotorola.tif"} <= names


# --- tests: batches and cached headers ----------------------------------------------------------

BATCH_CASES = [c for c in MATRIX if c.skip is None][::7]


def test_read_headers_batch_equals_single(matrix: MatrixFiles, range_server: RangeServer, served_tiff_dir: Path):
    """End to end over HTTP: a batch of headers equals single reads, with the server's versions."""
    paths = [matrix.path(c) for c in BATCH_CASES]
    paths += [served_tiff_dir / f for f in FIXTURES if f not in FIXTURE_UNSUPPORTED][::3]
    urls = [range_server.url_for(p) for p in paths]
    batch = read_headers(urls)
    assert len(batch) == len(urls)
    for url, path, h in zip(urls, paths, batch):
        assert h == read_header(url), url
        etag = range_server.etag_for(path)
        assert h.etag in (etag, etag.strip('"')) and h.size == path.stat().st_size, url


def test_read_windows_across_files(matrix: MatrixFiles, range_server: RangeServer):
    """End to end over HTTP: one batch mixing files, dtypes and windows; results come back in
    request order."""
    requests, expected = [], []
    for i, case in enumerate(BATCH_CASES):
        path = matrix.path(case)
        h = read_header(range_server.url_for(path))
        with open_level(path, 0) as src:
            if is_ycbcr_jpeg(src):
                continue
            win = (i * 13 % max(1, src.width - 64) - 8, i * 29 % max(1, src.height - 48), 80, 60)
            requests.append((h, win))
            expected.append((src.read(window=Window(*win), boundless=True), is_half_float(src), path.name))
    requests.append(requests[0])  # the same window twice in one batch
    expected.append(expected[0])
    got = read_windows(requests)
    assert len(got) == len(requests)
    for arr, (exp, half, name) in zip(got, expected):
        assert_same_pixels(arr, exp, half, name)


@pytest.mark.parametrize(
    "case_id", ["deflate-uint16-p2", "nodata-float32-nan", "mask-rgb", "sparse-uint16-nodata0", "pixel-is-point"]
)
def test_cached_header_reads_same_pixels(case_id: str, matrix: MatrixFiles):
    """A header restored from JSON reads exactly what the fresh header reads."""
    (case,) = [c for c in MATRIX if c.id == case_id]
    href, reader = in_memory(matrix.path(case))
    h = read_header(href, reader=reader)
    cached = CogHeader.from_dict(json.loads(json.dumps(h.to_dict())))
    for k in range(len(h.levels)):
        lvl = h.levels[k]
        win = (-3, 5, lvl.width // 2 + 7, lvl.height // 2)
        np.testing.assert_array_equal(
            read_window(cached, win, overview=k, reader=reader),
            read_window(h, win, overview=k, reader=reader),
        )


def test_invalid_overview_is_a_window_error(matrix: MatrixFiles):
    (case,) = [c for c in MATRIX if c.id == "deflate-uint16"]
    href, reader = in_memory(matrix.path(case))
    h = read_header(href, reader=reader)
    with pytest.raises(WindowError):
        read_window(h, (0, 0, 10, 10), overview=h.overview_count + 1, reader=reader)
    with pytest.raises(WindowError):
        read_window(h, (0, 0, 10, 10), overview=-1, reader=reader)
