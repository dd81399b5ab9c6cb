"""Broken, hostile and unsupported files raise typed errors naming the href, with bounded memory."""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest
import rasterio

from rasteret_pipelines.cog import read_header, read_window
from rasteret_pipelines.cog import tiff as tifftags
from rasteret_pipelines.errors import (
    CogNotFoundError,
    NotATiffError,
    TiffFormatError,
    UnsupportedTiffError,
    WindowError,
)


def classic_tiff(entries: list[tuple[int, int, int, bytes]], extra: bytes = b"") -> bytes:
    """A little-endian classic TIFF with one IFD at offset 8 holding ``entries``.

    Each entry is (tag, type, count, 4-byte value field); ``extra`` is appended after the IFD.
    """
    ifd = struct.pack("<H", len(entries))
    for tag, ftype, count, value in sorted(entries):
        ifd += struct.pack("<HHI", tag, ftype, count) + value.ljust(4, b"\0")
    ifd += struct.pack("<I", 0)
    return b"II*\0" + struct.pack("<I", 8) + ifd + extra


def short(v: int) -> bytes:
    return struct.pack("<H", v)


def long(v: int) -> bytes:
    return struct.pack("<I", v)


def base_entries(width=16, height=16, offset=1000, count=256) -> list:
    return [
        (tifftags.IMAGE_WIDTH, 3, 1, short(width)),
        (tifftags.IMAGE_LENGTH, 3, 1, short(height)),
        (tifftags.BITS_PER_SAMPLE, 3, 1, short(8)),
        (tifftags.COMPRESSION, 3, 1, short(1)),
        (tifftags.PHOTOMETRIC, 3, 1, short(1)),
        (tifftags.TILE_WIDTH, 3, 1, short(16)),
        (tifftags.TILE_LENGTH, 3, 1, short(16)),
        (tifftags.TILE_OFFSETS, 4, 1, long(offset)),
        (tifftags.TILE_BYTE_COUNTS, 4, 1, long(count)),
    ]


def test_a_valid_minimal_tiff_reads(tmp_path):
    """The hand-built file is valid: rasterio reads it, and so does the engine, identically."""
    pixels = np.arange(256, dtype=np.uint8)
    body = classic_tiff(base_entries(offset=1000))
    path = tmp_path / "ok.tif"
    path.write_bytes(body.ljust(1000, b"\0") + pixels.tobytes())
    header = read_header(str(path))
    with rasterio.open(path) as src:
        expected = src.read()
    np.testing.assert_array_equal(read_window(header, (0, 0, 16, 16)), expected)


def test_html_page_is_not_a_tiff(tmp_path):
    path = tmp_path / "page.tif"
    path.write_bytes(b"<html><body>Access denied</body></html>")
    with pytest.raises(NotATiffError, match="page.tif"):
        read_header(str(path))


def test_empty_object_is_not_a_tiff(tmp_path):
    path = tmp_path / "empty.tif"
    path.write_bytes(b"")
    with pytest.raises(NotATiffError, match="empty.tif"):
        read_header(str(path))


def test_truncated_header(tmp_path):
    body = classic_tiff(base_entries())
    path = tmp_path / "cut.tif"
    path.write_bytes(body[:40])
    with pytest.raises(TiffFormatError, match="cut.tif"):
        read_header(str(path))


def test_absurd_tag_count_fails_without_allocating(tmp_path):
    """A tile-offset array claiming 2**31 LONG8 values is refused before any allocation."""
    entries = [e for e in base_entries() if e[0] != tifftags.TILE_OFFSETS]
    entries.append((tifftags.TILE_OFFSETS, 4, 0x7FFFFFFF, long(200)))
    path = tmp_path / "absurd.tif"
    path.write_bytes(classic_tiff(entries).ljust(400, b"\0"))
    tracemalloc.start()
    try:
        with pytest.raises(TiffFormatError, match="absurd.tif"):
            read_header(str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 1024 * 1024


def test_absurd_ifd_entry_count(tmp_path):
    body = b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", 60000)
    path = tmp_path / "entries.tif"
    path.write_bytes(body.ljust(2000, b"\0"))
    with pytest.raises(TiffFormatError, match="entries"):
        read_header(str(path))


def test_ifd_chain_loop_keeps_the_first_image_like_gdal(tmp_path):
    pixels = np.arange(256, dtype=np.uint8)
    body = bytearray(classic_tiff(base_entries(offset=1000)))
    # Point the next-IFD offset back at the first IFD.
    n = struct.unpack("<H", body[8:10])[0]
    body[10 + 12 * n : 14 + 12 * n] = struct.pack("<I", 8)
    path = tmp_path / "loop.tif"
    path.write_bytes(bytes(body).ljust(1000, b"\0") + pixels.tobytes())
    header = read_header(str(path))
    with rasterio.open(path) as src:
        expected = src.read()
    assert header.overview_count == 0
    np.testing.assert_array_equal(read_window(header, (0, 0, 16, 16)), expected)


def test_ifd_loop_after_an_ifd_without_an_image_is_an_error(tmp_path):
    # One IFD (no image tags) whose next-IFD offset points back at itself.
    body = b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", 1) + struct.pack("<HHI", 999, 3, 1) + bytes(4)
    body += struct.pack("<I", 8)
    path = tmp_path / "selfloop.tif"
    path.write_bytes(body.ljust(200, b"\0"))
    with pytest.raises(TiffFormatError, match="selfloop.tif"):
        read_header(str(path))


def test_offsets_past_end_of_object(tmp_path):
    path = tmp_path / "short.tif"
    path.write_bytes(classic_tiff(base_entries(offset=10_000_000)).ljust(600, b"\0"))
    header = read_header(str(path))
    with pytest.raises(TiffFormatError, match="short.tif"):
        read_window(header, (0, 0, 16, 16))


def test_wrong_number_of_tile_offsets(tmp_path):
    entries = [e for e in base_entries(width=40) if e[0] != tifftags.IMAGE_WIDTH]
    entries.append((tifftags.IMAGE_WIDTH, 3, 1, short(40)))  # 3 tiles across, 1 offset
    path = tmp_path / "count.tif"
    path.write_bytes(classic_tiff(entries).ljust(2000, b"\0"))
    with pytest.raises(TiffFormatError, match="needs 3"):
        read_header(str(path))


@pytest.mark.parametrize("code,name", [(6, "old-style JPEG"), (3, "CCITT"), (34933, "PNG"), (61234, "61234")])
def test_unsupported_codec_is_named(tmp_path, code, name):
    entries = [e for e in base_entries() if e[0] != tifftags.COMPRESSION]
    entries.append((tifftags.COMPRESSION, 3, 1, short(code)))
    path = tmp_path / f"codec{code}.tif"
    path.write_bytes(classic_tiff(entries).ljust(1300, b"\0"))
    with pytest.raises(UnsupportedTiffError, match=name) as info:
        read_header(str(path))
    assert f"codec{code}.tif" in str(info.value)


def test_unsupported_bit_depth(tmp_path):
    entries = [e for e in base_entries() if e[0] != tifftags.BITS_PER_SAMPLE]
    entries.append((tifftags.BITS_PER_SAMPLE, 3, 1, short(12)))
    path = tmp_path / "bits12.tif"
    path.write_bytes(classic_tiff(entries).ljust(1300, b"\0"))
    with pytest.raises(UnsupportedTiffError, match="12-bit"):
        read_header(str(path))


def test_corrupt_block_raises_named_error(tmp_path):
    entries = [e for e in base_entries() if e[0] != tifftags.COMPRESSION]
    entries.append((tifftags.COMPRESSION, 3, 1, short(8)))  # Deflate, but the bytes are junk
    path = tmp_path / "junk.tif"
    path.write_bytes(classic_tiff(entries).ljust(1000, b"\0") + b"\x13" * 256)
    header = read_header(str(path))
    with pytest.raises(TiffFormatError, match="junk.tif.*Deflate"):
        read_window(header, (0, 0, 16, 16))


def test_missing_file(tmp_path):
    with pytest.raises(CogNotFoundError) as info:
        read_header(str(tmp_path / "nope.tif"))
    assert isinstance(info.value, FileNotFoundError)


def test_bad_windows_and_overviews(tmp_path):
    path = tmp_path / "ok.tif"
    path.write_bytes(classic_tiff(base_entries(offset=1000)).ljust(1000, b"\0") + bytes(256))
    header = read_header(str(path))
    with pytest.raises(WindowError):
        read_window(header, (0, 0, 0, 5))
    with pytest.raises(WindowError, match="overview 1"):
        read_window(header, (0, 0, 5, 5), overview=1)
    with pytest.raises(WindowError):
        read_window(header, (0, 0, 5))
