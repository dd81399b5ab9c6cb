"""Blocks are held to the shape their header gives them: never uninitialised or guessed pixels.

A block that decodes short, long or to another shape is a :class:`BlockDecodeError` naming the
href and the block; one that would decode to more than a block (a decompression bomb) is a
:class:`DecodedSizeError`, raised without allocating the bomb (peak RSS measured); the same
window read twice is identical. rasterio is the oracle for the valid cases and for "GDAL
refuses this too" on short blocks.
"""

from __future__ import annotations

import contextlib
import struct
import zlib

import imagecodecs
import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from rasteret_pipelines.cog import read_header, read_window
from rasteret_pipelines.errors import BlockDecodeError, DecodedSizeError
from rasteret_pipelines_tests.cog.fuzzing import reset_peak_rss, status_mb
from rasteret_pipelines_tests.cog.handmade import LERC_PARAMETERS, block_tiff
from rasteret_pipelines_tests.cog_factory import write_cog

PIXELS = (np.arange(256 * 256, dtype=np.uint32) * 7 % 251).astype(np.uint8).reshape(256, 256)

BYTE_CODECS = {
    "none": (1, lambda b: b),
    "LZW": (5, imagecodecs.lzw_encode),
    "Deflate": (8, zlib.compress),
    "PackBits": (32773, imagecodecs.packbits_encode),
    "ZSTD": (50000, imagecodecs.zstd_encode),
    "LZMA": (34925, imagecodecs.lzma_encode),
}


# -- peak memory ---------------------------------------------------------------------------


@contextlib.contextmanager
def peak_rss_growth():
    """Yield a dict whose ``"mb"`` becomes the peak RSS growth (MB) inside the block.

    Resets the kernel's high-water mark first, so the figure is the peak of this block alone,
    native allocations of the codecs included.
    """
    if not reset_peak_rss():
        pytest.skip("cannot reset the RSS high-water mark here")
    result = {"mb": None}
    base = status_mb("VmRSS")
    yield result
    result["mb"] = status_mb("VmHWM") - base


# -- short, long, mis-shaped -----------------------------------------------------------------


@pytest.mark.parametrize("codec", list(BYTE_CODECS))
def test_a_valid_block_of_each_byte_codec_reads_like_rasterio(tmp_path, codec):
    code, encode = BYTE_CODECS[codec]
    path = block_tiff(tmp_path / "ok.tif", [encode(PIXELS.tobytes())], compression=code)
    with rasterio.open(path) as src:
        expected = src.read()
    np.testing.assert_array_equal(expected[0], PIXELS)
    np.testing.assert_array_equal(read_window(read_header(str(path)), (0, 0, 256, 256)), expected)


@pytest.mark.parametrize("codec", list(BYTE_CODECS))
def test_a_block_decoding_short_is_an_error_naming_href_and_block(tmp_path, codec):
    """Before: np.empty rows stayed uninitialised and two reads differed. rasterio raises too."""
    code, encode = BYTE_CODECS[codec]
    path = block_tiff(tmp_path / f"short_{codec}.tif", [encode(PIXELS.tobytes()[:40000])], compression=code)
    with pytest.raises(rasterio.errors.RasterioIOError), rasterio.open(path) as src:
        src.read()
    header = read_header(str(path))
    for _ in range(2):  # and again: never a different answer
        with pytest.raises(BlockDecodeError, match=rf"short_{codec}\.tif: block 0: .*short") as info:
            read_window(header, (0, 0, 256, 256))
        assert info.value.block == 0
        assert info.value.href == str(path)


@pytest.mark.parametrize("codec", list(BYTE_CODECS))
def test_a_block_decoding_long_is_an_error(tmp_path, codec):
    """GDAL silently drops the surplus; the data disagree with the header, so it is refused."""
    code, encode = BYTE_CODECS[codec]
    path = block_tiff(tmp_path / "long.tif", [encode(PIXELS.tobytes() + bytes(300))], compression=code)
    header = read_header(str(path))
    with pytest.raises(DecodedSizeError, match="long.tif: block 0: .*more than the 65536 bytes"):
        read_window(header, (0, 0, 256, 256))


def test_a_truncated_deflate_stream_is_an_error(tmp_path):
    data = zlib.compress(PIXELS.tobytes())
    path = block_tiff(tmp_path / "cut.tif", [data[: len(data) // 2]], compression=8)
    with pytest.raises(BlockDecodeError, match="cut.tif: block 0"):
        read_window(read_header(str(path)), (0, 0, 256, 256))


def test_a_deflate_stream_without_its_checksum_still_decodes_within_bounds(tmp_path):
    """libdeflate refuses it (reporting "insufficient space"); bounded zlib reads the pixels,
    and the same stream cut from a bomb is still refused."""
    path = block_tiff(tmp_path / "nock.tif", [zlib.compress(PIXELS.tobytes())[:-4]], compression=8)
    np.testing.assert_array_equal(read_window(read_header(str(path)), (0, 0, 256, 256))[0], PIXELS)
    bomb = block_tiff(tmp_path / "bomb.tif", [zlib.compress(bytes(32 << 20))[:-4]], compression=8)
    with pytest.raises(DecodedSizeError, match="bomb.tif: block 0"):
        read_window(read_header(str(bomb)), (0, 0, 256, 256))


def test_an_image_codec_block_of_another_shape_is_an_error(tmp_path):
    small = imagecodecs.jpeg8_encode(PIXELS[:128, :128])
    path = block_tiff(tmp_path / "jpeg.tif", [small], compression=7)
    with pytest.raises(BlockDecodeError, match="jpeg.tif: block 0: JPEG data does not fit"):
        read_window(read_header(str(path)), (0, 0, 256, 256))


def test_a_strip_of_the_wrong_length_in_a_stripped_file(tmp_path):
    """Three strips of 100 rows; the last holds the 56 rows left. Cut the middle one short."""
    strips = [PIXELS[0:100].tobytes(), PIXELS[100:200].tobytes(), PIXELS[200:].tobytes()]
    ok = block_tiff(tmp_path / "ok.tif", strips, tile=None, rows_per_strip=100)
    with rasterio.open(ok) as src:
        expected = src.read()
    np.testing.assert_array_equal(read_window(read_header(str(ok)), (0, 0, 256, 256)), expected)
    # A last strip stored full height (100 rows, as some writers do) is also read like GDAL.
    padded = block_tiff(
        tmp_path / "padded.tif", strips[:2] + [strips[2] + bytes(44 * 256)], tile=None, rows_per_strip=100
    )
    with rasterio.open(padded) as src:
        np.testing.assert_array_equal(src.read(), expected)
    np.testing.assert_array_equal(read_window(read_header(str(padded)), (0, 0, 256, 256)), expected)
    bad = block_tiff(tmp_path / "bad.tif", [strips[0], strips[1][:9000], strips[2]], tile=None, rows_per_strip=100)
    with pytest.raises(BlockDecodeError, match="bad.tif: block 1"):
        read_window(read_header(str(bad)), (0, 0, 256, 256))
    # Rows of the intact strips alone are still readable.
    np.testing.assert_array_equal(read_window(read_header(str(bad)), (0, 0, 256, 100)), expected[:, :100])


def test_a_jpeg_strip_of_fewer_rows_is_an_error_and_the_last_strip_may_be_short(tmp_path):
    """JPEG strips: the last one holds the rows left (valid, as libtiff writes it); a middle
    strip that decodes to fewer rows than RowsPerStrip is refused. (GDAL only warns "Improper
    JPEG strip/tile size" and returns rows that differ from one read to the next.)"""
    strips = [imagecodecs.jpeg8_encode(PIXELS[r : r + 100], level=95) for r in (0, 100, 200)]
    options = {"tile": None, "rows_per_strip": 100, "compression": 7}
    ok = block_tiff(tmp_path / "ok.tif", strips, **options)
    with rasterio.open(ok) as src:
        expected = src.read()
    np.testing.assert_array_equal(read_window(read_header(str(ok)), (0, 0, 256, 256)), expected)
    short = [strips[0], imagecodecs.jpeg8_encode(PIXELS[100:160], level=95), strips[2]]
    bad = block_tiff(tmp_path / "shortjpeg.tif", short, **options)
    header = read_header(str(bad))
    for _ in range(2):
        with pytest.raises(BlockDecodeError, match="shortjpeg.tif: block 1: JPEG data does not fit"):
            read_window(header, (0, 0, 256, 256))
    np.testing.assert_array_equal(read_window(header, (0, 0, 256, 100)), expected[:, :100])


def test_stored_byte_count_far_beyond_any_codec_is_refused_before_fetching(tmp_path):
    path = tmp_path / "huge.tif"
    block_tiff(path, [b"x" * 16], compression=8)
    # Patch TileByteCounts to 400 MB and make the file that large (sparse on disk).
    data = bytearray(path.read_bytes())
    n = struct.unpack("<H", data[8:10])[0]
    for i in range(n):
        at = 10 + 12 * i
        if struct.unpack("<H", data[at : at + 2])[0] == 325:
            data[at + 8 : at + 12] = struct.pack("<I", 400 << 20)
    path.write_bytes(bytes(data))
    with open(path, "r+b") as f:
        f.truncate(401 << 20)
    header = read_header(str(path))
    with peak_rss_growth() as peak:
        with pytest.raises(DecodedSizeError, match="huge.tif: block 0: 419430400 stored bytes"):
            read_window(header, (0, 0, 256, 256))
    assert peak["mb"] < 40


# -- decompression bombs ---------------------------------------------------------------------

BOMB_BYTES = 96 << 20
"""What each byte-codec bomb decodes to: 768 times the 128 KiB block it claims to be."""


def _bomb(codec: str) -> tuple[int, bytes, dict]:
    """(compression code, stored bytes, block_tiff options) of a bomb for a 256x256 uint16 tile."""
    zeros = bytes(BOMB_BYTES)  # calloc'd: costs no resident memory to create or compress
    tile16 = {"bits": 16}
    if codec == "Deflate":
        return 8, zlib.compress(zeros, 9), tile16
    if codec == "ZSTD":
        return 50000, imagecodecs.zstd_encode(zeros), tile16
    if codec == "LZW":
        return 5, imagecodecs.lzw_encode(zeros), tile16
    if codec == "PackBits":
        return 32773, b"\x81\x00" * (BOMB_BYTES // 128), tile16  # 128-byte runs, by hand
    if codec == "LZMA":
        return 34925, imagecodecs.lzma_encode(bytes(32 << 20)), tile16
    if codec == "LERC":  # an 8192^2 float32 image (256 MiB) in 100 bytes
        return (
            34887,
            imagecodecs.lerc_encode(np.zeros((8192, 8192), np.float32)),
            {
                "bits": 32,
                "sample_format": 3,
            },
        )
    if codec == "LERC+ZSTD":  # the zstd layer around a LERC blob bombs by itself
        return (
            34887,
            imagecodecs.zstd_encode(zeros),
            {
                "bits": 32,
                "sample_format": 3,
                "extra": [(LERC_PARAMETERS, 4, [4, 2])],
            },
        )
    if codec == "WebP":  # 8192^2 RGBA (256 MiB) in a few KB
        data = imagecodecs.webp_encode(np.zeros((8192, 8192, 4), np.uint8), lossless=True)
        return 50001, data, {"samples": 4, "photometric": 2, "extra": [(338, 3, [2])]}
    if codec == "JPEG":  # 8192^2 grey (64 MiB) in ~0.75 MB
        return 7, imagecodecs.jpeg8_encode(np.zeros((8192, 8192), np.uint8)), {}
    if codec == "JPEG 2000":  # a 256^2 codestream whose SIZ claims 30000^2
        data = bytearray(imagecodecs.jpeg2k_encode(np.zeros((256, 256), np.uint8)))
        ihdr = data.find(b"ihdr")
        data[ihdr + 4 : ihdr + 12] = struct.pack(">II", 30000, 30000)
        siz = data.find(b"\xff\x51")
        data[siz + 6 : siz + 14] = struct.pack(">II", 30000, 30000)
        data[siz + 22 : siz + 30] = struct.pack(">II", 30000, 30000)
        return 34712, bytes(data), {}
    raise KeyError(codec)


BOMBS = ["Deflate", "ZSTD", "LZW", "PackBits", "LZMA", "LERC", "LERC+ZSTD", "WebP", "JPEG", "JPEG 2000"]


@pytest.mark.parametrize("codec", BOMBS)
def test_a_decompression_bomb_is_refused_within_one_block_of_memory(tmp_path, codec):
    code, data, options = _bomb(codec)
    if codec == "JPEG 2000" and not imagecodecs.JPEG2K.available:
        pytest.skip("no JPEG 2000 in this imagecodecs build")
    path = block_tiff(tmp_path / "bomb.tif", [data], compression=code, **options)
    header = read_header(str(path))
    warm = block_tiff(tmp_path / "warm.tif", [PIXELS.tobytes()])  # thread pool, imports
    read_window(read_header(str(warm)), (0, 0, 256, 256))
    with peak_rss_growth() as peak:
        with pytest.raises(DecodedSizeError, match="bomb.tif: block 0: .*more than") as info:
            read_window(header, (0, 0, 256, 256))
    assert info.value.block == 0
    # The block is 64-256 KiB; the bomb decodes to 64 MiB - 3.4 GiB. Nothing near it is touched.
    assert peak["mb"] < 24, f"{codec} bomb raised peak RSS by {peak['mb']:.0f} MB"


# -- repeated reads --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"compress": "DEFLATE", "predictor": 2, "sparse": True, "nodata": 7},
        {"compress": "LZW", "tiled": False, "driver": "GTiff"},
        {"compress": "JPEG", "dtype": "uint8", "count": 3, "photometric": "RGB"},
        {"compress": "ZSTD", "interleave": "band", "count": 2, "mask": True},
    ],
    ids=["sparse-nodata", "strips", "jpeg-rgb", "planar-mask"],
)
def test_the_same_window_read_twice_is_identical_and_equal_to_rasterio(tmp_path, options):
    path = write_cog(tmp_path / "a.tif", **options)
    header = read_header(str(path))
    windows = [(-30, -20, 300, 200), (200, 150, 400, 300), (650, 500, 100, 100)]
    with rasterio.open(path) as src:
        for window in windows:
            first = read_window(header, window)
            second = read_window(header, window)
            np.testing.assert_array_equal(first, second)
            expected = src.read(window=Window(*window), boundless=True, fill_value=header.fill_value)
            np.testing.assert_array_equal(first, expected)


def test_every_untyped_exception_of_a_codec_becomes_a_block_error(tmp_path):
    """Junk in every codec: a typed error naming the block, never the codec's own exception."""
    for _codec, code in [
        ("LZW", 5),
        ("Deflate", 8),
        ("ZSTD", 50000),
        ("LZMA", 34925),
        ("LERC", 34887),
        ("WebP", 50001),
        ("JPEG", 7),
        ("JPEG 2000", 34712),
        ("PackBits", 32773),
    ]:
        path = block_tiff(tmp_path / f"junk{code}.tif", [bytes(range(256)) * 40], compression=code)
        with pytest.raises(BlockDecodeError, match=f"junk{code}.tif: block 0"):
            read_window(read_header(str(path)), (0, 0, 256, 256))
