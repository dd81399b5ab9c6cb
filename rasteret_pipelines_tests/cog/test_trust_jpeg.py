"""JPEG blocks GDAL reads without an error: YCbCr 4:2:0 strips, and damaged tiles.

* YCbCr JPEG in strips whose height is not a multiple of the 16-row MCU (a short last
  strip): libtiff decodes the bottom rows with the MCU's stored chroma rows.
  The oracle for YCbCr JPEG is libtiff's own decode (``imagecodecs.tiff_decode``, libtiff with
  libjpeg-turbo), exactly, as in ``test_oracle.py``: GDAL's bundled libjpeg 9 upsamples chroma
  its own (valid) way. rasterio guards the oracle: libtiff's and GDAL's decodes agree on average.
* A tile whose JPEG marker structure is damaged: GDAL decodes it with warnings, and every
  libjpeg build recovers its own way, so the engine refuses that tile with a
  ``BlockDecodeError`` naming the href and block; every other tile still equals rasterio. A
  tile whose entropy-coded data is damaged but whose structure is intact decodes like GDAL.
"""

from __future__ import annotations

import struct
import warnings

import imagecodecs
import numpy as np
import pytest
import rasterio
import tifffile
from rasterio.windows import Window

from rasteret_pipelines.cog import read_header, read_window
from rasteret_pipelines.errors import BlockDecodeError
from rasteret_pipelines_tests.cog.handmade import block_tiff
from rasteret_pipelines_tests.cog_factory import write_cog


def colour_field(height: int, width: int, seed: int = 1) -> np.ndarray:
    """(3, H, W) uint8: colour gradients plus noise, so chroma varies from row to row."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    out = np.empty((3, height, width), np.uint8)
    for b in range(3):
        value = 120 + 80 * np.sin(x / (7.0 + b)) + 60 * np.cos(y / (11.0 - b))
        out[b] = np.clip(value + rng.normal(0, 20, (height, width)), 0, 255)
    return out


def libtiff_decode(path) -> np.ndarray:
    return np.moveaxis(imagecodecs.tiff_decode(path.read_bytes()), -1, 0)


def rio_read(path, **kwargs) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path) as src:
            return src.read(**kwargs)


# -- YCbCr JPEG strips ---------------------------------------------------------------------


def gdal_ycbcr_strips(path, height: int, rows_per_strip: int):
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=77,
        height=height,
        count=3,
        dtype="uint8",
        compress="JPEG",
        photometric="YCBCR",
        tiled=False,
        blockysize=rows_per_strip,
    ) as dst:
        dst.write(colour_field(height, 77))
    return path


def tifffile_ycbcr_strips(path, height: int, rows_per_strip: int):
    tifffile.imwrite(
        path,
        colour_field(height, 77).transpose(1, 2, 0),
        photometric="ycbcr",
        compression="jpeg",
        rowsperstrip=rows_per_strip,
        subsampling=(2, 2),
    )
    return path


def handmade_ycbcr_strips(path, height: int, rows_per_strip: int):
    """Strips of RowsPerStrip rows, each a JPEG of its own (libjpeg-turbo, 4:2:0): RowsPerStrip
    need not be a multiple of 16 here, as GDAL's and tifffile's writers make it."""
    image = colour_field(height, 77).transpose(1, 2, 0)
    strips = [
        imagecodecs.jpeg8_encode(
            np.ascontiguousarray(image[r : r + rows_per_strip]),
            level=90,
            colorspace="RGB",
            outcolorspace="YCBCR",
            subsampling="420",
        )
        for r in range(0, height, rows_per_strip)
    ]
    return block_tiff(
        path,
        strips,
        width=77,
        height=height,
        tile=None,
        rows_per_strip=rows_per_strip,
        samples=3,
        compression=7,
        photometric=6,
        extra=[(530, 3, [2, 2]), (258, 3, [8, 8, 8]), (284, 3, [1])],
    )


STRIPS = {
    # (writer, height, RowsPerStrip): the last strip holds fewer rows than the MCU's 16
    "gdal-150-rps16": (gdal_ycbcr_strips, 150, 16),
    "gdal-150-rps32": (gdal_ycbcr_strips, 150, 32),
    "gdal-146-rps16": (gdal_ycbcr_strips, 146, 16),
    "gdal-158-rps16": (gdal_ycbcr_strips, 158, 16),
    "gdal-158-rps48": (gdal_ycbcr_strips, 158, 48),
    "gdal-151-rps16": (gdal_ycbcr_strips, 151, 16),  # odd last strip: no chroma row to miss
    "tifffile-150-rps16": (tifffile_ycbcr_strips, 150, 16),
    "tifffile-140-rps16": (tifffile_ycbcr_strips, 140, 16),
    "handmade-60-rps8": (handmade_ycbcr_strips, 60, 8),  # full strips half an MCU high
    "handmade-61-rps24": (handmade_ycbcr_strips, 61, 24),
    "handmade-64-rps40": (handmade_ycbcr_strips, 64, 40),
    "handmade-37-rps6": (handmade_ycbcr_strips, 37, 6),
}


@pytest.mark.parametrize("case", sorted(STRIPS))
def test_ycbcr_jpeg_strips_equal_libtiffs_decode(tmp_path, case):
    """Before: the bottom row of a strip not a multiple of 16 rows high differed (up to 6
    levels from libtiff, and up to 26 from GDAL)."""
    writer, height, rps = STRIPS[case]
    path = writer(tmp_path / f"{case}.tif", height, rps)
    with rasterio.open(path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("COMPRESSION") == "YCbCr JPEG"
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].rowsperstrip == rps and not tif.pages[0].is_tiled
    header = read_header(str(path))
    assert (header.levels[0].tiled, header.levels[0].tile_height) == (False, rps)
    reference = libtiff_decode(path)
    gdal = rio_read(path)
    # The oracle's guard: libtiff and GDAL decode the same file alike, up to upsampling noise.
    assert np.abs(reference.astype(np.int16) - gdal).mean() <= 10
    np.testing.assert_array_equal(read_window(header, (0, 0, 77, height)), reference)
    # Windows ending inside, and straddling, the last strip; and one over the image's edge.
    last = (height - 1) // rps * rps
    for window in [(5, last - 3, 40, height - last + 3), (0, height - 1, 77, 1)]:
        col, row, w, h = window
        np.testing.assert_array_equal(read_window(header, window), reference[:, row : row + h, col : col + w])
    edge = read_window(header, (60, height - 4, 30, 10))
    expected = np.zeros((3, 10, 30), np.uint8)
    expected[:, :4, :17] = reference[:, height - 4 :, 60:]
    np.testing.assert_array_equal(edge, expected)


# -- damaged JPEG tiles ------------------------------------------------------------------------


def jpeg_cog(tmp_path, photometric: str | None):
    options = {"photometric": photometric} if photometric else {}
    return write_cog(
        tmp_path / f"jpeg-{photometric or 'ycbcr'}.tif",
        compress="JPEG",
        dtype="uint8",
        count=3,
        width=600,
        height=500,
        blocksize=128,
        **options,
    )


def tile_span(path, index: int) -> tuple[int, int]:
    header = read_header(str(path))
    level = header.levels[0]
    return int(level.tile_offsets[index]), int(level.tile_byte_counts[index])


def damaged_copy(path, out, index: int, how: str):
    """A copy of ``path`` with tile ``index`` of the full-resolution level damaged."""
    data = bytearray(path.read_bytes())
    offset, count = tile_span(path, index)
    tile = bytes(data[offset : offset + count])
    if how == "bytes-after-a-table":
        # 16 zero bytes where the marker after the tile's first Huffman table belongs:
        # "Corrupt JPEG data: N extraneous bytes before marker".
        dht = tile.index(b"\xff\xc4")
        (length,) = struct.unpack(">H", tile[dht + 2 : dht + 4])
        at = offset + dht + 2 + length
        data[at : at + 16] = bytes(16)
    elif how == "truncated":
        # The last third of the tile (and its EOI) overwritten: "Premature end of JPEG file".
        cut = offset + 2 * count // 3
        data[cut : offset + count] = bytes(offset + count - cut)
    elif how == "flipped-entropy-bits":
        # Bits flipped inside the entropy-coded data, never making or breaking a 0xFF byte.
        sos = tile.index(b"\xff\xda")
        rng = np.random.default_rng(index)
        for at in rng.integers(sos + 40, count - 40, 6):
            value = data[offset + at] ^ 0x04
            if data[offset + at] != 0xFF and value != 0xFF and data[offset + at - 1] != 0xFF:
                data[offset + at] = value
    else:
        raise KeyError(how)
    out.write_bytes(bytes(data))
    return out


INDEX = 17  # row 3, column 2 of the 5 x 4 full-resolution tiles
TILE_WINDOW = (256 + 10, 384 + 10, 50, 50)  # inside tile 17
OTHER_WINDOWS = [(0, 0, 300, 250), (400, 0, 200, 300), (0, 380, 250, 120)]  # never tile 17


@pytest.mark.parametrize("photometric", ["RGB", None], ids=["rgb", "ycbcr"])
@pytest.mark.parametrize("how", ["bytes-after-a-table", "truncated"])
def test_a_jpeg_tile_with_a_damaged_structure_is_refused_by_name(tmp_path, photometric, how):
    """Before: pixels GDAL does not give (up to 239 levels from libtiff's decode)."""
    cog = jpeg_cog(tmp_path, photometric)
    path = damaged_copy(cog, tmp_path / "damaged.tif", INDEX, how)
    rio_read(path)  # GDAL decodes the whole image, with warnings only
    header = read_header(str(path))
    with pytest.raises(BlockDecodeError, match=r"damaged\.tif: block 17: .*JPEG") as info:
        read_window(header, TILE_WINDOW)
    assert info.value.block == INDEX and info.value.href == str(path)
    oracle = libtiff_decode(path) if photometric is None else rio_read(path)
    for col, row, w, h in OTHER_WINDOWS:
        np.testing.assert_array_equal(read_window(header, (col, row, w, h)), oracle[:, row : row + h, col : col + w])
    # The overviews are intact: read like GDAL (RGB) or libtiff (YCbCr), damaged level aside.
    level = header.levels[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, overview_level=0) as src:
            overview = src.read()
    if photometric is None:
        assert (
            np.abs(overview.astype(np.int16) - read_window(header, (0, 0, level.width, level.height), 1)).mean() <= 10
        )
    else:
        np.testing.assert_array_equal(read_window(header, (0, 0, level.width, level.height), 1), overview)


def test_a_jpeg_tile_with_damaged_entropy_data_reads_like_gdal(tmp_path):
    cog = jpeg_cog(tmp_path, "RGB")
    path = damaged_copy(cog, tmp_path / "flipped.tif", INDEX, "flipped-entropy-bits")
    assert path.read_bytes() != cog.read_bytes()
    expected = rio_read(path)
    assert not np.array_equal(expected, rio_read(cog))  # the damage shows in GDAL's pixels
    header = read_header(str(path))
    np.testing.assert_array_equal(read_window(header, (0, 0, 600, 500)), expected)
    with rasterio.open(path) as src:
        window = Window(*TILE_WINDOW)
        np.testing.assert_array_equal(read_window(header, TILE_WINDOW), src.read(window=window))
