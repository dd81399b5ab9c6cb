"""Block decoding: TIFF compression codes to imagecodecs decoders, then predictors.

Byte codecs (Deflate, LZW, PackBits, ZSTD, LZMA, none) decompress to the raw sample stream,
which is reshaped and un-predicted here; image codecs (JPEG, WebP, LERC, JPEG 2000) return
pixels directly. imagecodecs releases the GIL, so blocks decode in parallel on a thread pool.

Every block is held to its header: each decoder writes into a buffer of one block (byte
codecs: one block + 1 byte, a full buffer meaning "long"; image codecs: an array of the block's
shape, which imagecodecs checks against the stream's own size before decoding, and for JPEG
2000 the codestream's SIZ is checked first). A block that decodes short, long or to another
shape raises :class:`~rasteret_pipelines.errors.BlockDecodeError` naming the href and block; one
that would decode beyond a block raises :class:`~rasteret_pipelines.errors.DecodedSizeError`
without that memory ever being allocated. FillOrder=2 bytes are bit-reversed first (as libtiff
does, except for JPEG) and 8-bit CMYK is converted to RGBA as libtiff's RGBA interface does.
A JPEG block whose marker structure is damaged (libjpeg only warns, and each build recovers its
own way) is a :class:`~rasteret_pipelines.errors.BlockDecodeError` too.
"""

from __future__ import annotations

import math
import re
import struct
import threading
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import imagecodecs
import numpy as np

from rasteret_pipelines.errors import BlockDecodeError, DecodedSizeError, UnsupportedTiffError

if TYPE_CHECKING:
    from rasteret_pipelines.cog.header import ImageLevel


class _TooLong(Exception):
    """A decoder produced (or would produce) more bytes than the bound it was given."""


def _bounded(decoder, data: bytes, limit: int, full: str | None = None, out: np.ndarray | None = None):
    """``decoder(data)`` into a buffer of ``limit + 1`` bytes, never more.

    The decoders stop at the buffer's end (a full buffer means the block decodes long) or
    raise an error whose message contains ``full``: both become :class:`_TooLong`. They
    return the view of the buffer they filled (faster than a bytes ``out=`` of that size).
    ``out``: a recycled uint8 buffer to decode into (used when it has ``limit + 1`` bytes).
    """
    if out is None or out.nbytes != limit + 1:
        out = np.empty(limit + 1, dtype=np.uint8)
    try:
        return decoder(data, out=out)
    except Exception as exc:
        if full is not None and full in str(exc):
            raise _TooLong from exc
        raise


def _none(data: bytes, limit: int, out=None) -> bytes:
    return data


def _deflate(data: bytes, limit: int, out=None):
    # Streams libdeflate refuses (no trailing checksum, which it may also report as "no
    # space left" after reading past the end) go through zlib.decompressobj, bounded too.
    try:
        return _bounded(imagecodecs.deflate_decode, data, limit, out=out)
    except imagecodecs.DeflateError:
        pass
    out = zlib.decompressobj().decompress(data, limit + 1)
    if len(out) > limit:
        raise _TooLong
    return out


def _zstd(data: bytes, limit: int, out=None):
    # Never the frame's declared content size: that is how a ZSTD bomb allocates.
    return _bounded(imagecodecs.zstd_decode, data, limit, "too small", out)


def _lzw(data: bytes, limit: int, out=None):
    return _bounded(imagecodecs.lzw_decode, data, limit, out=out)


def _packbits(data: bytes, limit: int, out=None):
    return _bounded(imagecodecs.packbits_decode, data, limit, "TOO_SMALL", out)


def _lzma(data: bytes, limit: int, out=None):
    return _bounded(imagecodecs.lzma_decode, data, limit, out=out)


BYTE_CODECS: dict[int, tuple[str, Callable[..., bytes], object]] = {
    1: ("none", _none, None),
    5: ("LZW", _lzw, imagecodecs.LZW),
    8: ("Deflate", _deflate, imagecodecs.DEFLATE),
    32946: ("Deflate", _deflate, imagecodecs.DEFLATE),
    32773: ("PackBits", _packbits, imagecodecs.PACKBITS),
    50000: ("ZSTD", _zstd, imagecodecs.ZSTD),
    34925: ("LZMA", _lzma, imagecodecs.LZMA),
}
"""Compression code -> (name, decompress(data, limit, out=None), imagecodecs codec).

Each decompressor returns at most ``limit + 1`` bytes (or raises ``_TooLong``) whatever the
input claims, so a decompression bomb costs at most one block of memory. ``out`` is a recycled
buffer of ``limit + 1`` bytes to decompress into (see :class:`BlockBuffers`)."""

IMAGE_CODECS: dict[int, tuple[str, object]] = {
    7: ("JPEG", imagecodecs.JPEG8),
    50001: ("WebP", imagecodecs.WEBP),
    34887: ("LERC", imagecodecs.LERC),
    34712: ("JPEG 2000", imagecodecs.JPEG2K),
}
"""Compression code -> (name, imagecodecs codec) for codecs that decode to pixels."""

_KNOWN_UNSUPPORTED = {
    2: "CCITT RLE",
    3: "CCITT Group 3",
    4: "CCITT Group 4",
    6: "old-style JPEG",
    32809: "ThunderScan",
    34676: "SGI LogLuv",
    34933: "PNG",
    34927: "JPEG XL (draft)",
    50002: "JPEG XL",
}

PHOTOMETRIC_RGB = 2
PHOTOMETRIC_SEPARATED = 5
PHOTOMETRIC_YCBCR = 6


def codec_name(compression: int) -> str:
    """Human name of a TIFF compression code."""
    if compression in BYTE_CODECS:
        return BYTE_CODECS[compression][0]
    if compression in IMAGE_CODECS:
        return IMAGE_CODECS[compression][0]
    return _KNOWN_UNSUPPORTED.get(compression, f"compression {compression}")


def check_codec_supported(href: str, compression: int) -> None:
    """Raise :class:`UnsupportedTiffError` unless blocks of ``compression`` can be decoded."""
    entry = BYTE_CODECS.get(compression) or (
        (IMAGE_CODECS[compression][0], None, IMAGE_CODECS[compression][1]) if compression in IMAGE_CODECS else None
    )
    if entry is None:
        raise UnsupportedTiffError(href, f"{codec_name(compression)} (TIFF compression {compression}) is not supported")
    codec = entry[2]
    if codec is not None and not getattr(codec, "available", True):
        raise UnsupportedTiffError(href, f"{entry[0]} decoding is not available in this imagecodecs build")


MAX_STORED_RATIO = 8
"""A stored block may hold at most this many times its decoded size (plus 1 MiB): no codec
expands real data that much, so a larger byte count is refused before it is fetched."""


def block_rows(level: ImageLevel, index: int | None) -> int:
    """Rows block ``index`` must decode to: the tile height, or fewer for a stripped file's
    last strip (which may also be stored full height)."""
    if level.tiled or index is None:
        return level.tile_height
    row = (index % level.tiles_per_plane) // level.tiles_across
    return min(level.tile_height, level.height - row * level.tile_height)


def block_nbytes(level: ImageLevel) -> int:
    """Decoded bytes of one full block: the bound every codec is held to."""
    samples = level.samples_per_pixel if level.planar == 1 else 1
    return level.tile_height * level.tile_width * samples * np.dtype(level.dtype).itemsize


class BlockBuffers:
    """Decompression buffers recycled within one batch of reads.

    Every decoded block of a byte codec needs a block-sized buffer. Allocating a fresh one per
    block makes the process fault in new pages for every block (a Sentinel-2 tile is 2 MiB
    decoded, and a batch decodes hundreds); handing a finished block's buffer to the next
    block keeps the pages the batch already touched. The batch calls :meth:`give` only once
    nothing holds the block any longer (its windows are copied out). Thread-safe: blocks
    decode on a thread pool.
    """

    def __init__(self) -> None:
        self._free: dict[int, list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        """A uint8 buffer of ``nbytes`` bytes: a recycled one, else a new one."""
        with self._lock:
            free = self._free.get(nbytes)
            if free:
                return free.pop()
        return np.empty(nbytes, dtype=np.uint8)

    def take_for(self, level: ImageLevel) -> np.ndarray | None:
        """The buffer a block of ``level`` decompresses into (see :func:`decode_block`), or None
        where its codec decodes without one (image codecs, uncompressed blocks)."""
        if level.compression == 1 or level.compression not in BYTE_CODECS:
            return None
        return self.take(block_nbytes(level) + 1)

    def give(self, buffer: np.ndarray | None) -> None:
        """Return ``buffer`` for reuse (None: nothing to return)."""
        if buffer is not None:
            with self._lock:
                self._free.setdefault(buffer.nbytes, []).append(buffer)


def max_stored_bytes(level: ImageLevel) -> int:
    """Largest plausible stored (compressed) size of one block of ``level``."""
    return block_nbytes(level) * MAX_STORED_RATIO + (1 << 20)


def decode_block(
    level: ImageLevel,
    byte_order: str,
    data: bytes,
    href: str,
    index: int | None = None,
    overview: int = 0,
    out: np.ndarray | None = None,
    rows_needed: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode one stored block (tile or strip), held to the shape the header gives it.

    Args:
        level: The image level the block belongs to.
        byte_order: ``"<"`` or ``">"``, the file's byte order.
        data: The block's compressed bytes, exactly as stored.
        href: Object name, for error messages.
        index: The block's index in the level's offset arrays (for the expected row count of
            a stripped file's last strip, and for error messages).
        overview: The level's overview number, for error messages.
        out: A uint8 buffer of ``block_nbytes(level) + 1`` bytes (from :class:`BlockBuffers`)
            that a byte codec decompresses into; the array returned may then share its memory,
            so the buffer must not be reused while that array is.
        rows_needed: ``(start, stop)``: only these rows of the block will be read. A
            horizontal-differencing predictor (2, integers) is then undone on those rows alone
            (each row is differenced on its own, so the others need not be), and the rows
            outside hold their differences, not pixels. The decompression itself is whole.

    Returns:
        An array of shape (samples, rows, tile_width) in native byte order, where samples is
        the level's band count (chunky) or 1 (planar), and rows is the tile height (or the
        rows left for the last strip of a stripped TIFF). Every element comes from the block
        (within ``rows_needed`` when given).

    Raises:
        DecodedSizeError: the block would decode to more bytes than one block (a bomb); the
            output is never allocated beyond one block.
        BlockDecodeError: the codec fails, or the block decodes short or to the wrong shape.
    """
    samples = level.samples_per_pixel if level.planar == 1 else 1
    rows = block_rows(level, index)
    name = codec_name(level.compression)
    if level.fill_order == 2 and level.compression != 7:
        data = imagecodecs.bitorder_decode(bytes(data))  # libtiff reverses bits (not for JPEG)
    try:
        if level.compression in IMAGE_CODECS:
            arr = _decode_image(level, data, rows, samples)
        else:
            arr = _decode_bytes(level, byte_order, data, samples, rows, out, rows_needed)
    except _TooLong as exc:
        raise DecodedSizeError(
            href,
            f"{name} data decodes to more than the {block_nbytes(level)} bytes of a "
            f"{level.tile_width}x{level.tile_height} block",
            block=index,
            overview=overview,
        ) from exc
    except _ShapeError as exc:
        raise BlockDecodeError(href, f"{name} {exc}", block=index, overview=overview) from exc
    except Exception as exc:  # imagecodecs raises its own error types per codec
        raise BlockDecodeError(href, f"cannot decode {name} data: {exc}", block=index, overview=overview) from exc
    if arr.ndim == 2:
        arr = arr[:, :, np.newaxis]
    if arr.shape != (rows, level.tile_width, samples):
        raise BlockDecodeError(
            href,
            f"{name} data decoded to shape {arr.shape}, expected ({rows}, {level.tile_width}, {samples})",
            block=index,
            overview=overview,
        )
    if converts_cmyk(level):
        arr = cmyk_to_rgba(arr)
    return arr.transpose(2, 0, 1)


class _ShapeError(Exception):
    """The block decodes short or to another shape than the header's."""


def converts_cmyk(level: ImageLevel) -> bool:
    """True for the CMYK layout GDAL reads as RGBA (libtiff's RGBA interface): 8-bit, 4
    samples, pixel interleaved. Other bit depths GDAL returns as stored, and so does this."""
    return (
        level.photometric == PHOTOMETRIC_SEPARATED
        and level.bits_per_sample == 8
        and level.samples_per_pixel == 4
        and level.planar == 1
    )


def cmyk_to_rgba(cmyk: np.ndarray) -> np.ndarray:
    """8-bit CMYK to RGBA exactly as libtiff's RGBA interface (and so GDAL) converts it."""
    k = 255 - cmyk[..., 3].astype(np.uint32)
    out = np.empty(cmyk.shape, dtype=np.uint8)
    for i in range(3):
        out[..., i] = k * (255 - cmyk[..., i].astype(np.uint32)) // 255
    out[..., 3] = 255
    return out


def _image_out(level: ImageLevel, rows: int, samples: int) -> np.ndarray:
    shape = (rows, level.tile_width) if samples == 1 else (rows, level.tile_width, samples)
    return np.empty(shape, dtype=np.dtype(level.dtype))


def _decode_image(level: ImageLevel, data: bytes, rows: int, samples: int) -> np.ndarray:
    """Decode an image codec's block straight into a block-sized array.

    Each decoder reads the image size from the stream's own header and refuses an ``out``
    array of another shape before decoding anything, so a stream claiming a huge image (a
    bomb) or another shape costs nothing. A stripped file's last strip may decode to the rows
    left or to a full strip.
    """
    heights = [rows] if rows == level.tile_height else [rows, level.tile_height]
    for i, height in enumerate(heights):
        out = _image_out(level, height, samples)
        try:
            return _decode_image_into(level, data, out)
        except ValueError as exc:
            if "out.shape" not in str(exc):
                raise
            if i < len(heights) - 1:
                continue
            claimed = _SHAPE_IN_MESSAGE.search(str(exc))
            if claimed is not None:
                dims = [int(v) for v in claimed.group(1).split(",") if v.strip()]
                if math.prod(dims) * out.itemsize > block_nbytes(level):
                    raise _TooLong from exc  # the stream claims a larger image: a bomb
            raise _ShapeError(f"data does not fit the block ({exc})") from exc
    raise AssertionError("unreachable")


_SHAPE_IN_MESSAGE = re.compile(r"\bshape=\(([\d, ]+)\)\s*$")
"""imagecodecs' ``invalid out.shape=(...), shape=(...)``: the second is the stream's."""


def _decode_image_into(level: ImageLevel, data: bytes, out: np.ndarray) -> np.ndarray:
    code = level.compression
    if code == 7:
        return _decode_jpeg_into(level, data, out)
    if code == 50001:
        return imagecodecs.webp_decode(data, hasalpha=out.ndim == 3 and out.shape[2] == 4, out=out)
    if code == 34887:
        params = level.lerc_parameters or ()
        extra = params[1] if len(params) > 1 else 0
        # The LERC blob itself is never much larger than the pixels it encodes.
        limit = 2 * out.nbytes + 65536
        if extra == 1:
            data = _deflate(data, limit)
        elif extra == 2:
            data = _zstd(data, limit)
        if len(data) > limit:
            raise _TooLong
        arr = imagecodecs.lerc_decode(data, out=out)
        return arr[0] if isinstance(arr, tuple) else arr
    if code == 34712:
        # OpenJPEG decodes the whole image before imagecodecs compares it with ``out``: check
        # the size the codestream declares (SIZ marker) first.
        _check_j2k_size(data, out)
        return imagecodecs.jpeg2k_decode(data, out=out)
    raise ValueError(f"compression {code} is not an image codec")


class _DamagedJpeg(Exception):
    """A JPEG stream whose marker structure is broken: decoders recover from it differently."""


_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_SEQUENTIAL_SOF = frozenset({0xC0, 0xC1})
"""Baseline and extended sequential Huffman frames: one scan per component set, then EOI."""
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


class _JpegFrame(NamedTuple):
    sof_at: int
    """Offset of the SOF marker (0xFF) in the block's bytes."""
    height: int
    width: int
    max_v: int
    """Largest vertical sampling factor: an MCU is ``8 * max_v`` rows high."""


def _jpeg_tables_defined(tables: bytes | None) -> set[tuple[int, int]]:
    """(class, id) of the Huffman tables the JPEGTables stream defines (none when unreadable)."""
    defined: set[tuple[int, int]] = set()
    if not tables or tables[:2] != b"\xff\xd8":
        return defined
    at, end = 2, len(tables)
    while at + 4 <= end and tables[at] == 0xFF:
        marker = tables[at + 1]
        if marker == 0xD9:
            break
        (length,) = struct.unpack(">H", tables[at + 2 : at + 4])
        if marker == 0xC4:
            _huffman_ids(tables[at + 4 : at + 2 + length], defined)
        at += 2 + length
    return defined


def _huffman_ids(body: bytes, into: set[tuple[int, int]]) -> None:
    at = 0
    while at + 17 <= len(body):
        into.add((body[at] >> 4, body[at] & 0x0F))
        at += 17 + sum(body[at + 1 : at + 17])


def check_jpeg(data: bytes, tables: bytes | None = None) -> _JpegFrame:
    """Walk a JPEG block's markers and refuse a damaged stream (:class:`_DamagedJpeg`).

    libjpeg only warns about a broken marker structure ("N extraneous bytes before marker",
    a premature end of the file, restart markers out of order, a marker inside a sequential
    scan, a Huffman table the scan names but nothing defines) and then recovers from it, each
    libjpeg build its own way: GDAL's pixels for such a block cannot be reproduced, so it is
    refused. Stuffed bytes, fill bytes and data after EOI are valid and accepted.
    """
    data = bytes(data)
    end = len(data)
    if data[:2] != b"\xff\xd8":
        raise _DamagedJpeg("no SOI marker at its start")
    defined = _jpeg_tables_defined(tables)
    frame: _JpegFrame | None = None
    sequential = False
    at = 2
    while True:
        if at >= end:
            raise _DamagedJpeg("the stream ends before its EOI marker")
        if data[at] != 0xFF:
            nxt = data.find(b"\xff", at)
            skipped = (nxt if nxt >= 0 else end) - at
            raise _DamagedJpeg(f"{skipped} extraneous bytes at byte {at} where a marker belongs")
        while at < end and data[at] == 0xFF:
            at += 1  # fill bytes before a marker
        if at >= end:
            raise _DamagedJpeg("the stream ends before its EOI marker")
        marker = data[at]
        at += 1
        if marker == 0xD9:
            break
        if marker in _STANDALONE or marker in (0x00, 0xD8):
            raise _DamagedJpeg(f"marker 0xFF{marker:02X} at byte {at - 2} out of place")
        if at + 2 > end:
            raise _DamagedJpeg("the stream ends inside a marker segment")
        (length,) = struct.unpack(">H", data[at : at + 2])
        if length < 2 or at + length > end:
            raise _DamagedJpeg(f"marker 0xFF{marker:02X} at byte {at - 2} claims {length} bytes")
        body = data[at + 2 : at + length]
        seg_start = at - 2
        at += length
        if marker in _SOF_MARKERS:
            if frame is not None or len(body) < 6:
                raise _DamagedJpeg(f"a second or short frame header at byte {seg_start}")
            height, width = struct.unpack(">HH", body[1:5])
            count = body[5]
            if len(body) < 6 + 3 * count:
                raise _DamagedJpeg(f"frame header at byte {seg_start} is short")
            max_v = max((body[6 + 3 * i + 1] & 0x0F for i in range(count)), default=1) or 1
            frame = _JpegFrame(seg_start, height, width, max_v)
            sequential = marker in _SEQUENTIAL_SOF
        elif marker == 0xC4:
            _huffman_ids(body, defined)
        elif marker == 0xDA:
            if frame is None:
                raise _DamagedJpeg(f"scan at byte {seg_start} before any frame header")
            if sequential:
                count = body[0] if body else 0
                if len(body) < 4 + 2 * count:
                    raise _DamagedJpeg(f"scan header at byte {seg_start} is short")
                for i in range(count):
                    selectors = body[2 + 2 * i]
                    for table in ((0, selectors >> 4), (1, selectors & 0x0F)):
                        if table not in defined:
                            raise _DamagedJpeg(f"the scan uses Huffman table {table} that nothing defines")
            at = _skip_entropy_data(data, at)
            if sequential and at < end:
                nxt = data[at + 1] if at + 1 < end else None
                if nxt not in (0xD9, 0xDA, 0xC4, 0xDD, 0xFE, 0xDB, *range(0xE0, 0xF0)):
                    raise _DamagedJpeg(f"marker 0xFF{nxt or 0:02X} at byte {at} inside the scan")
    if frame is None:
        raise _DamagedJpeg("no frame header (SOF marker)")
    return frame


def _skip_entropy_data(data: bytes, at: int) -> int:
    """Offset of the first marker after a scan's entropy-coded data (restarts checked)."""
    end = len(data)
    expected_rst = 0
    while True:
        at = data.find(b"\xff", at)
        if at < 0 or at + 1 >= end:
            raise _DamagedJpeg("the stream ends inside its entropy-coded data (no EOI)")
        nxt = data[at + 1]
        if nxt == 0x00:
            at += 2
        elif 0xD0 <= nxt <= 0xD7:
            if nxt - 0xD0 != expected_rst:
                raise _DamagedJpeg(f"restart marker RST{nxt - 0xD0} at byte {at} where RST{expected_rst} belongs")
            expected_rst = (expected_rst + 1) % 8
            at += 2
        elif nxt == 0xFF:
            at += 1  # fill byte: the marker follows
        else:
            return at


def _decode_jpeg_into(level: ImageLevel, data: bytes, out: np.ndarray) -> np.ndarray:
    """Decode one JPEG block into ``out``, as libtiff decodes it.

    Vertically subsampled chroma (YCbCr 4:2:0) in a stripped file's last strip, stored shorter
    than RowsPerStrip and not a whole number of MCUs high, is decoded as libtiff decodes it:
    as if the frame were as high as the strip could be (RowsPerStrip, at most whole MCUs), so
    the MCU's stored chroma rows, not the last row repeated, feed the upsampling of its bottom
    rows; then cropped. Every other block decodes at its own frame height.
    """
    frame = check_jpeg(data, level.jpeg_tables)
    colorspace = outcolorspace = None
    if level.photometric == PHOTOMETRIC_YCBCR:
        colorspace, outcolorspace = "YCBCR", "RGB"
    elif level.samples_per_pixel == 3 and level.planar == 1:
        colorspace = outcolorspace = "RGB"
    elif level.samples_per_pixel == 4 and level.planar == 1:
        # libtiff writes 4 components (RGBA) untransformed, which libjpeg reads as CMYK:
        # keep the four channels as stored.
        colorspace = outcolorspace = "CMYK"
    mcu = 8 * frame.max_v
    rows = out.shape[0]
    if frame.max_v > 1 and frame.height == rows < level.tile_height and rows % mcu:
        padded_rows = min(level.tile_height, -(-rows // mcu) * mcu)
        patched = bytearray(data)
        patched[frame.sof_at + 5 : frame.sof_at + 7] = struct.pack(">H", padded_rows)
        padded = np.empty((padded_rows, *out.shape[1:]), dtype=out.dtype)
        imagecodecs.jpeg8_decode(
            bytes(patched),
            tables=level.jpeg_tables,
            colorspace=colorspace,
            outcolorspace=outcolorspace,
            out=padded,
        )
        out[...] = padded[:rows]
        return out
    return imagecodecs.jpeg8_decode(
        data,
        tables=level.jpeg_tables,
        colorspace=colorspace,
        outcolorspace=outcolorspace,
        out=out,
    )


def _check_j2k_size(data: bytes, out: np.ndarray) -> None:
    """Refuse a JPEG 2000 stream whose SIZ marker declares another image than ``out``."""
    at = bytes(data[:65536]).find(b"\xff\x4f\xff\x51")  # SOC then SIZ, in a J2K or JP2 stream
    if at < 0 or len(data) < at + 42:
        raise ValueError("no JPEG 2000 codestream header (SOC/SIZ) found")
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">4I", data[at + 8 : at + 24])
    (components,) = struct.unpack(">H", data[at + 40 : at + 42])
    width, height = xsiz - xosiz, ysiz - yosiz
    if width <= 0 or height <= 0 or components == 0:
        raise ValueError(f"JPEG 2000 SIZ declares a {width}x{height}x{components} image")
    channels = out.shape[2] if out.ndim == 3 else 1
    if (height, width, components) != (out.shape[0], out.shape[1], channels):
        shape = (height, width) if components == 1 else (height, width, components)
        raise ValueError(f"invalid out.shape={out.shape}, shape={shape}")


def _decode_bytes(
    level: ImageLevel,
    byte_order: str,
    data: bytes,
    samples: int,
    rows: int,
    out: np.ndarray | None = None,
    rows_needed: tuple[int, int] | None = None,
) -> np.ndarray:
    file_dtype = np.dtype(level.dtype).newbyteorder(byte_order)
    width = level.tile_width
    row_bytes = width * samples * file_dtype.itemsize
    full = level.tile_height * row_bytes
    raw = BYTE_CODECS[level.compression][1](data, full, out)
    if len(raw) > full:
        raise _TooLong
    if len(raw) < rows * row_bytes:
        raise _ShapeError(
            f"data decoded to {len(raw)} bytes, short of the {rows * row_bytes} bytes of {rows} rows of {width} pixels"
        )
    if rows == level.tile_height and len(raw) != full:
        raise _ShapeError(f"data decoded to {len(raw)} bytes, not the {full} bytes of a block")
    arr = np.frombuffer(raw, dtype=file_dtype, count=rows * width * samples).reshape(rows, width, samples)
    if level.predictor == 2:
        if file_dtype.kind == "f":  # horizontal differencing on the integer words (libtiff)
            as_int = arr.view(np.dtype(f"u{file_dtype.itemsize}").newbyteorder(byte_order))
            arr = imagecodecs.delta_decode(as_int.astype(as_int.dtype.newbyteorder("=")), axis=-2)
            return arr.view(np.dtype(level.dtype))
        arr = arr.astype(file_dtype.newbyteorder("="), copy=False)
        if rows_needed is not None and arr.flags.writeable:
            # Rows are differenced independently: undo it where the caller reads, in place.
            part = arr[max(rows_needed[0], 0) : min(rows_needed[1], rows)]
            if part.size:
                imagecodecs.delta_decode(part, axis=-2, out=part)
            return arr
        # In place when the decompressor's buffer is ours: no second block-sized array.
        return imagecodecs.delta_decode(arr, axis=-2, out=arr if arr.flags.writeable else None)
    if level.predictor == 3:
        return imagecodecs.floatpred_decode(arr, axis=-2).astype(np.dtype(level.dtype), copy=False)
    return arr.astype(file_dtype.newbyteorder("="), copy=False)
