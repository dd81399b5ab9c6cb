"""Block decoding: TIFF compression codes to imagecodecs decoders, then predictors.

Byte codecs (Deflate, LZW, PackBits, ZSTD, LZMA, none) decompress to the raw sample stream,
which is reshaped and un-predicted here; image codecs (JPEG, WebP, LERC, JPEG 2000) return
pixels directly. imagecodecs releases the GIL, so blocks decode in parallel on a thread pool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import imagecodecs
import numpy as np

from rasteret_pipelines.errors import TiffFormatError, UnsupportedTiffError

if TYPE_CHECKING:
    from rasteret_pipelines.cog.header import ImageLevel


def _none(data: bytes, nbytes: int) -> bytes:
    return data


def _deflate(data: bytes, nbytes: int) -> bytes:
    # libdeflate needs the output size; zlib copes when a short strip is smaller than a block.
    try:
        return imagecodecs.deflate_decode(data, out=nbytes)
    except Exception:
        return imagecodecs.zlib_decode(data)


def _zstd(data: bytes, nbytes: int) -> bytes:
    return imagecodecs.zstd_decode(data)


def _lzw(data: bytes, nbytes: int) -> bytes:
    return imagecodecs.lzw_decode(data)


def _packbits(data: bytes, nbytes: int) -> bytes:
    return imagecodecs.packbits_decode(data)


def _lzma(data: bytes, nbytes: int) -> bytes:
    return imagecodecs.lzma_decode(data)


BYTE_CODECS: dict[int, tuple[str, Callable[[bytes, int], bytes], object]] = {
    1: ("none", _none, None),
    5: ("LZW", _lzw, imagecodecs.LZW),
    8: ("Deflate", _deflate, imagecodecs.DEFLATE),
    32946: ("Deflate", _deflate, imagecodecs.DEFLATE),
    32773: ("PackBits", _packbits, imagecodecs.PACKBITS),
    50000: ("ZSTD", _zstd, imagecodecs.ZSTD),
    34925: ("LZMA", _lzma, imagecodecs.LZMA),
}
"""Compression code -> (name, decompress(data, expected bytes), imagecodecs codec)."""

IMAGE_CODECS: dict[int, tuple[str, object]] = {
    7: ("JPEG", imagecodecs.JPEG8),
    50001: ("WebP", imagecodecs.WEBP),
    34887: ("LERC", imagecodecs.LERC),
    34712: ("JPEG 2000", imagecodecs.JPEG2K),
}
"""Compression code -> (name, imagecodecs codec) for codecs that decode to pixels."""

_KNOWN_UNSUPPORTED = {
    2: "CCITT RLE", 3: "CCITT Group 3", 4: "CCITT Group 4", 6: "old-style JPEG",
    32809: "ThunderScan", 34676: "SGI LogLuv", 34933: "PNG", 34927: "JPEG XL (draft)",
    50002: "JPEG XL",
}

PHOTOMETRIC_RGB = 2
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
        (IMAGE_CODECS[compression][0], None, IMAGE_CODECS[compression][1])
        if compression in IMAGE_CODECS
        else None
    )
    if entry is None:
        raise UnsupportedTiffError(
            href, f"{codec_name(compression)} (TIFF compression {compression}) is not supported"
        )
    codec = entry[2]
    if codec is not None and not getattr(codec, "available", True):
        raise UnsupportedTiffError(
            href, f"{entry[0]} decoding is not available in this imagecodecs build"
        )


def decode_block(level: ImageLevel, byte_order: str, data: bytes, href: str) -> np.ndarray:
    """Decode one stored block (tile or strip).

    Args:
        level: The image level the block belongs to.
        byte_order: ``"<"`` or ``">"``, the file's byte order.
        data: The block's compressed bytes, exactly as stored.
        href: Object name, for error messages.

    Returns:
        An array of shape (samples, rows, tile_width) in native byte order, where samples is
        the level's band count (chunky) or 1 (planar), and rows is the tile height (or fewer
        for the last strip of a stripped TIFF).
    """
    samples = level.samples_per_pixel if level.planar == 1 else 1
    width = level.tile_width
    try:
        if level.compression in IMAGE_CODECS:
            arr = _decode_image(level, data)
        else:
            arr = _decode_bytes(level, byte_order, data, samples)
    except Exception as exc:  # imagecodecs raises its own error types per codec
        raise TiffFormatError(
            href, f"cannot decode a {codec_name(level.compression)} block: {exc}"
        ) from exc
    if arr.ndim == 2:
        arr = arr[:, :, np.newaxis]
    if arr.shape[1] != width or arr.shape[2] != samples or arr.shape[0] > level.tile_height:
        raise TiffFormatError(
            href,
            f"a {codec_name(level.compression)} block decoded to shape {arr.shape}, "
            f"expected ({level.tile_height}, {width}, {samples})",
        )
    return arr.transpose(2, 0, 1)


def _decode_image(level: ImageLevel, data: bytes) -> np.ndarray:
    code = level.compression
    if code == 7:
        colorspace = outcolorspace = None
        if level.photometric == PHOTOMETRIC_YCBCR:
            colorspace, outcolorspace = "YCBCR", "RGB"
        elif level.photometric == PHOTOMETRIC_RGB and level.samples_per_pixel >= 3:
            colorspace = outcolorspace = "RGB"
        return imagecodecs.jpeg8_decode(
            data, tables=level.jpeg_tables, colorspace=colorspace, outcolorspace=outcolorspace
        )
    if code == 50001:
        return imagecodecs.webp_decode(data)
    if code == 34887:
        params = level.lerc_parameters or ()
        extra = params[1] if len(params) > 1 else 0
        if extra == 1:
            data = imagecodecs.zlib_decode(data)
        elif extra == 2:
            data = imagecodecs.zstd_decode(data)
        arr = imagecodecs.lerc_decode(data)
        if isinstance(arr, tuple):
            arr = arr[0]
        return np.asarray(arr, dtype=np.dtype(level.dtype))
    if code == 34712:
        return imagecodecs.jpeg2k_decode(data)
    raise ValueError(f"compression {code} is not an image codec")


def _decode_bytes(level: ImageLevel, byte_order: str, data: bytes, samples: int) -> np.ndarray:
    file_dtype = np.dtype(level.dtype).newbyteorder(byte_order)
    width = level.tile_width
    row_items = width * samples
    nbytes = level.tile_height * row_items * file_dtype.itemsize
    raw = BYTE_CODECS[level.compression][1](data, nbytes)
    raw = memoryview(raw).cast("B") if not isinstance(raw, bytes) else raw
    rows = min(len(raw) // (row_items * file_dtype.itemsize), level.tile_height)
    if rows == 0:
        raise ValueError(f"block decoded to {len(raw)} bytes, less than one row")
    arr = np.frombuffer(raw, dtype=file_dtype, count=rows * row_items).reshape(rows, width, samples)
    if level.predictor == 2:
        if file_dtype.kind == "f":  # horizontal differencing on the integer words (libtiff)
            as_int = arr.view(np.dtype(f"u{file_dtype.itemsize}").newbyteorder(byte_order))
            arr = imagecodecs.delta_decode(as_int.astype(as_int.dtype.newbyteorder("=")), axis=-2)
            return arr.view(np.dtype(level.dtype))
        arr = arr.astype(file_dtype.newbyteorder("="), copy=False)
        return imagecodecs.delta_decode(arr, axis=-2)
    if level.predictor == 3:
        return imagecodecs.floatpred_decode(arr, axis=-2).astype(np.dtype(level.dtype), copy=False)
    return arr.astype(file_dtype.newbyteorder("="), copy=False)
