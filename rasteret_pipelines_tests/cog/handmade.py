"""Hand-built TIFFs with exactly the blocks and tags a test needs (no GDAL in the way).

:func:`block_tiff` writes a little-endian classic TIFF whose blocks are the bytes given, so a
test can store a truncated, overlong, mis-shaped or bomb block under an otherwise valid header.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

_TYPES = {
    1: "B",
    2: "s",
    3: "H",
    4: "I",
    5: "I",
    6: "b",
    7: "B",
    8: "h",
    9: "i",
    10: "i",
    11: "f",
    12: "d",
    16: "Q",
    17: "q",
}

IMAGE_WIDTH, IMAGE_LENGTH, BITS_PER_SAMPLE, COMPRESSION, PHOTOMETRIC = 256, 257, 258, 259, 262
STRIP_OFFSETS, SAMPLES_PER_PIXEL, ROWS_PER_STRIP, STRIP_BYTE_COUNTS = 273, 277, 278, 279
PLANAR, TILE_WIDTH, TILE_LENGTH, TILE_OFFSETS, TILE_BYTE_COUNTS = 284, 322, 323, 324, 325
SAMPLE_FORMAT, LERC_PARAMETERS = 339, 50674


def tiff_bytes(entries: Sequence[tuple[int, int, Sequence | bytes]], blocks: Sequence[bytes]) -> bytes:
    """A classic little-endian TIFF with one IFD of ``entries`` (tag, type, values) and blocks.

    The values of ``TILE_OFFSETS``/``STRIP_OFFSETS`` are filled in with the blocks' offsets;
    pass any placeholder list of the right length.
    """
    entries = sorted(entries, key=lambda e: e[0])
    n = len(entries)
    ifd_size = 2 + 12 * n + 4
    data_start = 8 + ifd_size
    out_of_line = bytearray()
    packed = []
    # First pass: sizes of out-of-line values, to know where the blocks start.
    sizes = []
    for _tag, ftype, values in entries:
        raw = _pack(ftype, values)
        sizes.append(len(raw))
    extra = sum(s + (s & 1) for s in sizes if s > 4)
    block_start = data_start + extra
    offsets, pos = [], block_start
    for block in blocks:
        offsets.append(pos)
        pos += len(block)
    for tag, ftype, values in entries:
        if tag in (TILE_OFFSETS, STRIP_OFFSETS) and ftype in (3, 4, 16) and len(values) == len(blocks):
            values = offsets
        raw = _pack(ftype, values)
        if len(raw) <= 4:
            packed.append(struct.pack("<HHI", tag, ftype, _count(ftype, values)) + raw.ljust(4, b"\0"))
        else:
            where = data_start + len(out_of_line)
            out_of_line += raw + (b"\0" if len(raw) & 1 else b"")
            packed.append(struct.pack("<HHII", tag, ftype, _count(ftype, values), where))
    ifd = struct.pack("<H", n) + b"".join(packed) + struct.pack("<I", 0)
    body = b"II*\0" + struct.pack("<I", 8) + ifd + bytes(out_of_line)
    assert len(body) == block_start
    return body + b"".join(blocks)


def _count(ftype: int, values) -> int:
    if isinstance(values, str):
        return len(values) + 1
    return len(values) // 2 if ftype in (5, 10) else len(values)


def _pack(ftype: int, values) -> bytes:
    if ftype == 2:
        return values.encode("latin-1") + b"\0" if isinstance(values, str) else bytes(values)
    if ftype in (1, 7) and isinstance(values, (bytes, bytearray)):
        return bytes(values)
    return struct.pack(f"<{len(values)}{_TYPES[ftype]}", *values)


def block_tiff(
    path: Path,
    blocks: Sequence[bytes],
    *,
    width: int = 256,
    height: int = 256,
    tile: tuple[int, int] | None = (256, 256),
    rows_per_strip: int | None = None,
    bits: int = 8,
    samples: int = 1,
    sample_format: int = 1,
    compression: int = 1,
    photometric: int = 1,
    extra: Sequence[tuple[int, int, Sequence | bytes]] = (),
) -> Path:
    """Write a one-IFD TIFF holding ``blocks`` as its tiles (or strips when ``tile`` is None)."""
    entries = [
        (IMAGE_WIDTH, 4, [width]),
        (IMAGE_LENGTH, 4, [height]),
        (BITS_PER_SAMPLE, 3, [bits] * samples),
        (COMPRESSION, 3, [compression]),
        (PHOTOMETRIC, 3, [photometric]),
        (SAMPLES_PER_PIXEL, 3, [samples]),
        (SAMPLE_FORMAT, 3, [sample_format] * samples),
    ]
    counts = [len(b) for b in blocks]
    if tile is not None:
        entries += [
            (TILE_WIDTH, 3, [tile[0]]),
            (TILE_LENGTH, 3, [tile[1]]),
            (TILE_OFFSETS, 4, [0] * len(blocks)),
            (TILE_BYTE_COUNTS, 4, counts),
        ]
    else:
        entries += [
            (ROWS_PER_STRIP, 4, [rows_per_strip or height]),
            (STRIP_OFFSETS, 4, [0] * len(blocks)),
            (STRIP_BYTE_COUNTS, 4, counts),
        ]
    tags = {e[0] for e in extra}
    entries = [e for e in entries if e[0] not in tags] + list(extra)
    path.write_bytes(tiff_bytes(entries, blocks))
    return path
