"""Colour models, bit order, alpha, SubIFD overviews and IFD loops, against rasterio (GDAL).

Files are written with tifffile (CMYK, CIELab, SubIFDs), GDAL (4-band JPEG and WebP) or by
hand (FillOrder=2, whose bit-reversed blocks no writer here produces); rasterio reads each one
as the oracle. Where GDAL converts colours with colour science this engine does not reproduce
(CIELab...), the file is refused with an UnsupportedTiffError naming the interpretation.
"""

from __future__ import annotations

import struct
import warnings
import zlib

import imagecodecs
import numpy as np
import pytest
import rasterio
import tifffile

from rasteret_pipelines.cog import read_header, read_window
from rasteret_pipelines.errors import UnsupportedTiffError
from rasteret_pipelines_tests.cog.handmade import block_tiff
from rasteret_pipelines_tests.cog_factory import write_cog

RNG = np.random.default_rng(10)


def rio_read(path, overview: int = 0) -> np.ndarray:
    kwargs = {"overview_level": overview - 1} if overview else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, **kwargs) as src:
            return src.read()


def ours(path, overview: int = 0) -> np.ndarray:
    header = read_header(str(path))
    level = header.levels[overview]
    return read_window(header, (0, 0, level.width, level.height), overview)


# -- CMYK and other colour models -------------------------------------------------------------


@pytest.mark.parametrize("compression", [None, "zlib", "lzw"])
def test_8bit_cmyk_is_converted_to_rgba_like_gdal(tmp_path, compression):
    cmyk = RNG.integers(0, 256, (300, 200, 4), dtype=np.uint8)
    path = tmp_path / "cmyk.tif"
    tifffile.imwrite(path, cmyk, photometric="separated", tile=(64, 64), compression=compression)
    expected = rio_read(path)
    assert expected.shape == (4, 300, 200)
    assert not np.array_equal(expected, cmyk.transpose(2, 0, 1))  # GDAL does convert
    np.testing.assert_array_equal(ours(path), expected)
    # A window over the edge: converted pixels inside, the fill value (0) outside, as GDAL.
    header = read_header(str(path))
    with rasterio.open(path) as src:
        boundless = src.read(window=rasterio.windows.Window(150, 250, 100, 100), boundless=True)
    np.testing.assert_array_equal(read_window(header, (150, 250, 100, 100)), boundless)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_8bit_cmyk_with_signed_sample_format_is_read_unsigned_and_converted_like_gdal(tmp_path, compression):
    """SampleFormat=2 on 8-bit CMYK: GDAL reads the samples as uint8 and converts them to
    RGBA as any 8-bit CMYK. Before: int8 values."""
    cmyk = RNG.integers(-128, 128, (90, 70, 4), dtype=np.int8)
    path = tmp_path / "cmyk_int8.tif"
    tifffile.imwrite(path, cmyk, photometric="separated", tile=(32, 32), compression=compression)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].sampleformat == 2  # the file does say signed
    with rasterio.open(path) as src:
        assert src.dtypes == ("uint8",) * 4
    expected = rio_read(path)
    assert not np.array_equal(expected, cmyk.view(np.uint8).transpose(2, 0, 1))  # converted
    header = read_header(str(path))
    assert header.dtype == "uint8"
    np.testing.assert_array_equal(ours(path), expected)
    with rasterio.open(path) as src:
        boundless = src.read(window=rasterio.windows.Window(50, 60, 40, 40), boundless=True)
    np.testing.assert_array_equal(read_window(header, (50, 60, 40, 40)), boundless)


def test_16bit_cmyk_is_returned_as_stored_like_gdal(tmp_path):
    cmyk = RNG.integers(0, 60000, (120, 90, 4), dtype=np.uint16)
    path = tmp_path / "cmyk16.tif"
    tifffile.imwrite(path, cmyk, photometric="separated", tile=(32, 32))
    expected = rio_read(path)
    np.testing.assert_array_equal(expected, cmyk.transpose(2, 0, 1))
    np.testing.assert_array_equal(ours(path), expected)


def test_band_interleaved_8bit_cmyk_is_refused_by_name(tmp_path):
    cmyk = RNG.integers(0, 256, (4, 64, 64), dtype=np.uint8)
    path = tmp_path / "cmyk_planar.tif"
    tifffile.imwrite(path, cmyk, photometric="separated", planarconfig="separate", tile=(32, 32))
    with pytest.raises(UnsupportedTiffError, match=r"cmyk_planar.tif: CMYK \(PhotometricInterpretation 5"):
        read_header(str(path))


def test_cielab_is_refused_naming_the_interpretation(tmp_path):
    lab = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = tmp_path / "lab.tif"
    tifffile.imwrite(path, lab, photometric="cielab", tile=(32, 32))
    assert rio_read(path).shape[0] == 4  # GDAL converts to RGBA: a raw read would be wrong
    with pytest.raises(UnsupportedTiffError, match=r"lab.tif: CIELab \(PhotometricInterpretation 8\)"):
        read_header(str(path))


@pytest.mark.parametrize(
    "photometric,compression,name",
    [(9, 1, "ICCLab"), (10, 1, "ITULab"), (6, 1, "YCbCr"), (6, 8, "YCbCr"), (32844, 1, "LogL")],
)
def test_other_converted_models_are_refused_by_name(tmp_path, photometric, compression, name):
    raw = bytes(64 * 64 * 3)
    data = zlib.compress(raw) if compression == 8 else raw
    path = block_tiff(
        tmp_path / "model.tif",
        [data],
        width=64,
        height=64,
        tile=(64, 64),
        samples=3,
        photometric=photometric,
        compression=compression,
    )
    with pytest.raises(UnsupportedTiffError, match=f"model.tif: {name}"):
        read_header(str(path))


# -- FillOrder -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code,encode",
    [
        (1, bytes),
        (5, imagecodecs.lzw_encode),
        (8, zlib.compress),
        (32773, imagecodecs.packbits_encode),
        (50000, imagecodecs.zstd_encode),
        (34925, imagecodecs.lzma_encode),
    ],
    ids=["none", "LZW", "Deflate", "PackBits", "ZSTD", "LZMA"],
)
def test_fill_order_2_is_honoured_like_libtiff(tmp_path, code, encode):
    pixels = RNG.integers(0, 250, (256, 256), dtype=np.uint8)
    stored = imagecodecs.bitorder_decode(encode(pixels.tobytes()))  # LSB-first bytes
    path = block_tiff(tmp_path / "fill.tif", [stored], compression=code, extra=[(266, 3, [2])])
    expected = rio_read(path)
    np.testing.assert_array_equal(expected[0], pixels)
    np.testing.assert_array_equal(ours(path), expected)
    header = read_header(str(path))
    assert header.levels[0].fill_order == 2
    from rasteret_pipelines.cog import CogHeader

    assert CogHeader.from_dict(header.to_dict()).levels[0].fill_order == 2


# -- alpha -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"compress": "JPEG", "photometric": "RGB"},
        {"compress": "WEBP"},
        {"compress": "WEBP", "webp_lossless": True},
    ],
    ids=["jpeg-rgba", "webp-rgba", "webp-lossless-rgba"],
)
def test_four_band_jpeg_and_webp_with_alpha_read_like_gdal(tmp_path, options):
    path = write_cog(tmp_path / "rgba.tif", dtype="uint8", count=4, driver="GTiff", **options)
    header = read_header(str(path))
    assert header.count == 4
    for k in range(header.overview_count + 1):
        np.testing.assert_array_equal(ours(path, k), rio_read(path, k))


# -- SubIFD overviews and IFD loops ------------------------------------------------------------


def test_subifd_overviews_are_read_like_gdal(tmp_path):
    image = RNG.integers(0, 5000, (512, 768), dtype=np.uint16)
    path = tmp_path / "subifd.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, tile=(128, 128), subifds=2, compression="zlib")
        tw.write(image[::2, ::2], tile=(128, 128), subfiletype=1, compression="zlib")
        tw.write(image[::4, ::4], tile=(128, 128), subfiletype=1, compression="zlib")
    with rasterio.open(path) as src:
        assert src.overviews(1) == [2, 4]
    header = read_header(str(path))
    assert [(lvl.width, lvl.height) for lvl in header.levels] == [(768, 512), (384, 256), (192, 128)]
    for k in range(3):
        np.testing.assert_array_equal(ours(path, k), rio_read(path, k))


def _ifd_offsets(data: bytes) -> list[tuple[int, int]]:
    """(IFD offset, position of its next-IFD pointer) along a classic little-endian chain."""
    out, offset = [], struct.unpack("<I", data[4:8])[0]
    while offset:
        (n,) = struct.unpack("<H", data[offset : offset + 2])
        pointer = offset + 2 + 12 * n
        out.append((offset, pointer))
        (offset,) = struct.unpack("<I", data[pointer : pointer + 4])
    return out


def test_an_ifd_loop_after_the_images_keeps_them_like_gdal(tmp_path, caplog):
    path = write_cog(tmp_path / "loop.tif", compress="DEFLATE", width=900, height=700)
    data = bytearray(path.read_bytes())
    chain = _ifd_offsets(bytes(data))
    assert len(chain) >= 3
    last_pointer = chain[-1][1]
    data[last_pointer : last_pointer + 4] = struct.pack("<I", chain[1][0])  # back to overview 1
    path.write_bytes(bytes(data))
    with rasterio.open(path) as src:
        overviews = src.overviews(1)
    header = read_header(str(path))
    assert header.overview_count == len(overviews) == len(chain) - 1
    assert "loops back" in caplog.text
    for k in range(header.overview_count + 1):
        np.testing.assert_array_equal(ours(path, k), rio_read(path, k))
