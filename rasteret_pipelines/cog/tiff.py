"""Pure TIFF / BigTIFF structure parsing over fetched byte ranges.

Nothing here does I/O. :func:`parse_ifds` walks the IFD chain using whatever bytes have been
fetched so far (a :class:`ByteRanges`) and reports the byte ranges it still needs; the caller
fetches them and parses again. For a GDAL-written COG the first read covers everything, so the
header costs one request.

Every count and offset read from the file is checked before anything is allocated from it, so a
hostile or broken file raises :class:`~rasteret_pipelines.errors.TiffFormatError` instead of
exhausting memory. SubIFDs of the first image (where some writers put overviews) are followed
too; a chain that loops back keeps the images read before the loop, as GDAL does.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from dataclasses import dataclass, field

import numpy as np

from rasteret_pipelines.errors import NotATiffError, TiffFormatError

# Tags this engine reads (all others are skipped without fetching their values).
NEW_SUBFILE_TYPE = 254
IMAGE_WIDTH = 256
IMAGE_LENGTH = 257
BITS_PER_SAMPLE = 258
COMPRESSION = 259
PHOTOMETRIC = 262
FILL_ORDER = 266
STRIP_OFFSETS = 273
SAMPLES_PER_PIXEL = 277
ROWS_PER_STRIP = 278
STRIP_BYTE_COUNTS = 279
PLANAR_CONFIGURATION = 284
PREDICTOR = 317
TILE_WIDTH = 322
TILE_LENGTH = 323
TILE_OFFSETS = 324
TILE_BYTE_COUNTS = 325
SUB_IFDS = 330
INK_SET = 332
EXTRA_SAMPLES = 338
SAMPLE_FORMAT = 339
JPEG_TABLES = 347
YCBCR_SUBSAMPLING = 530
MODEL_PIXEL_SCALE = 33550
MODEL_TIEPOINT = 33922
MODEL_TRANSFORMATION = 34264
GEO_KEY_DIRECTORY = 34735
GEO_DOUBLE_PARAMS = 34736
GEO_ASCII_PARAMS = 34737
GDAL_METADATA = 42112
GDAL_NODATA = 42113
LERC_PARAMETERS = 50674

WANTED_TAGS = frozenset(
    {
        NEW_SUBFILE_TYPE,
        IMAGE_WIDTH,
        IMAGE_LENGTH,
        BITS_PER_SAMPLE,
        COMPRESSION,
        PHOTOMETRIC,
        STRIP_OFFSETS,
        SAMPLES_PER_PIXEL,
        ROWS_PER_STRIP,
        STRIP_BYTE_COUNTS,
        PLANAR_CONFIGURATION,
        PREDICTOR,
        TILE_WIDTH,
        TILE_LENGTH,
        TILE_OFFSETS,
        TILE_BYTE_COUNTS,
        EXTRA_SAMPLES,
        SAMPLE_FORMAT,
        JPEG_TABLES,
        YCBCR_SUBSAMPLING,
        MODEL_PIXEL_SCALE,
        MODEL_TIEPOINT,
        MODEL_TRANSFORMATION,
        GEO_KEY_DIRECTORY,
        GEO_DOUBLE_PARAMS,
        GEO_ASCII_PARAMS,
        GDAL_METADATA,
        GDAL_NODATA,
        LERC_PARAMETERS,
        FILL_ORDER,
        SUB_IFDS,
        INK_SET,
    }
)
ARRAY_TAGS = frozenset({STRIP_OFFSETS, STRIP_BYTE_COUNTS, TILE_OFFSETS, TILE_BYTE_COUNTS})
"""Tags whose values may be large arrays (one value per block)."""
TEXT_TAGS = frozenset({JPEG_TABLES, GEO_ASCII_PARAMS, GDAL_METADATA, GDAL_NODATA})
"""Tags whose values may be long blobs or strings."""

# TIFF field type -> (bytes per value, struct code). RATIONAL types are read as pairs.
_FIELD_TYPES: dict[int, tuple[int, str]] = {
    1: (1, "B"),  # BYTE
    2: (1, "s"),  # ASCII
    3: (2, "H"),  # SHORT
    4: (4, "I"),  # LONG
    5: (8, "I"),  # RATIONAL (two LONGs)
    6: (1, "b"),  # SBYTE
    7: (1, "B"),  # UNDEFINED
    8: (2, "h"),  # SSHORT
    9: (4, "i"),  # SLONG
    10: (8, "i"),  # SRATIONAL (two SLONGs)
    11: (4, "f"),  # FLOAT
    12: (8, "d"),  # DOUBLE
    13: (4, "I"),  # IFD
    16: (8, "Q"),  # LONG8
    17: (8, "q"),  # SLONG8
    18: (8, "Q"),  # IFD8
}

MAX_IFDS = 256
"""IFDs followed in one chain before the file is declared broken (GDAL COGs have < 30)."""
MAX_TAGS_PER_IFD = 4096
"""Entries allowed in one IFD; real files have a few dozen."""
MAX_TAG_BYTES = 256 * 1024 * 1024
"""Largest single tag value accepted (a tile-offset array of 32 M tiles)."""
MAX_SMALL_TAG_BYTES = 1024 * 1024
"""Largest value accepted for any other wanted tag (GeoKeys, tiepoints, bit depths...)."""
MAX_SUB_IFDS = 64
"""SubIFDs followed from the first image (overviews and masks some writers put there)."""


class ByteRanges:
    """The byte ranges of one object fetched so far, for the parser to read from."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._chunks: list[bytes] = []

    def add(self, start: int, data: bytes) -> None:
        """Record ``data`` as the bytes of the object starting at ``start``."""
        i = bisect_right(self._starts, start)
        self._starts.insert(i, start)
        self._chunks.insert(i, bytes(data))

    def get(self, start: int, length: int) -> bytes | None:
        """The ``length`` bytes at ``start`` if one fetched chunk covers them, else None."""
        i = bisect_right(self._starts, start) - 1
        # A later-added chunk may start earlier and still cover: scan back a little.
        while i >= 0:
            cstart = self._starts[i]
            chunk = self._chunks[i]
            if cstart <= start and start + length <= cstart + len(chunk):
                return chunk[start - cstart : start - cstart + length]
            i -= 1
        return None

    @property
    def extent(self) -> int:
        """One past the last byte held in the chunk that starts at 0 (0 when none)."""
        if self._starts and self._starts[0] == 0:
            return len(self._chunks[0])
        return 0


@dataclass
class RawIfd:
    """The wanted tags of one IFD, decoded to Python values (tuples, bytes or str)."""

    offset: int
    tags: dict[int, object] = field(default_factory=dict)

    def get(self, tag: int, default=None):
        return self.tags.get(tag, default)

    def first(self, tag: int, default=None):
        """The tag's first value (strings and blobs whole), or ``default`` when absent."""
        value = self.tags.get(tag)
        if value is None:
            return default
        if isinstance(value, (tuple, list, np.ndarray)):
            return value[0] if len(value) else default
        return value


@dataclass
class ParsedTiff:
    """Outcome of one parsing pass: the IFDs complete so far and the byte ranges still needed."""

    byte_order: str
    bigtiff: bool
    ifds: list[RawIfd]
    missing: list[tuple[int, int]]
    header_end: int
    """One past the last byte of any IFD or wanted tag value: the header's size."""
    subifds: list[RawIfd] = field(default_factory=list)
    """IFDs reached through the first image's SubIFDs tag (overviews, masks)."""
    loop_at: int | None = None
    """Offset at which the IFD chain looped back; the images before it are kept (as GDAL)."""


def parse_signature(href: str, head: bytes) -> tuple[str, bool, int]:
    """Byte order (``"<"``/``">"``), BigTIFF flag and first IFD offset from the file's start."""
    if len(head) < 8:
        raise NotATiffError(href, f"object is {len(head)} bytes long, too short for a TIFF")
    if head[:2] == b"II":
        bo = "<"
    elif head[:2] == b"MM":
        bo = ">"
    else:
        raise NotATiffError(href, f"not a TIFF: starts with {head[:4]!r}")
    version = struct.unpack(bo + "H", head[2:4])[0]
    if version == 42:
        return bo, False, struct.unpack(bo + "I", head[4:8])[0]
    if version == 43:
        if len(head) < 16:
            raise TiffFormatError(href, "truncated BigTIFF header")
        bytesize, zero, first = struct.unpack(bo + "HHQ", head[4:16])
        if bytesize != 8 or zero != 0:
            raise TiffFormatError(href, f"bad BigTIFF offset size {bytesize}")
        return bo, True, first
    raise NotATiffError(href, f"not a TIFF: version {version} (expected 42 or 43)")


def parse_ifds(href: str, data: ByteRanges, size: int | None) -> ParsedTiff:
    """Walk the IFD chain over the bytes fetched so far.

    Args:
        href: Object name, for error messages.
        data: Bytes fetched so far; must include the first 16 bytes.
        size: Object size in bytes when known; offsets past it are errors.

    Returns:
        The IFDs parsed completely, and the ranges (start, end exclusive) still missing. When
        ``missing`` is empty the chain is complete.
    """
    head = data.get(0, 16) or data.get(0, 8)
    if head is None:
        raise TiffFormatError(href, "header bytes not available")
    bo, big, first_offset = parse_signature(href, head)
    count_fmt, count_size = ("Q", 8) if big else ("H", 2)
    entry_size = 20 if big else 12
    inline_size = 8 if big else 4
    off_fmt = "Q" if big else "I"

    ifds: list[RawIfd] = []
    subifds: list[RawIfd] = []
    missing: list[tuple[int, int]] = []
    header_end = 16 if big else 8
    seen: set[int] = set()
    loop_at: int | None = None

    def check_range(start: int, length: int, what: str) -> None:
        if start < 0 or length < 0 or (size is not None and start + length > size):
            raise TiffFormatError(href, f"{what} at bytes {start}-{start + length} lies outside the {size}-byte object")

    def parse_one(offset: int) -> tuple[RawIfd | None, int]:
        """One IFD at ``offset`` and the next IFD's offset; None when its bytes are missing."""
        nonlocal header_end
        check_range(offset, count_size, "IFD")
        raw = data.get(offset, count_size)
        if raw is None:
            missing.append((offset, offset + count_size + MAX_TAGS_PER_IFD // 64 * entry_size))
            return None, 0
        (n,) = struct.unpack(bo + count_fmt, raw)
        if n == 0 or n > MAX_TAGS_PER_IFD:
            raise TiffFormatError(href, f"IFD at {offset} claims {n} entries")
        body_len = n * entry_size + inline_size
        check_range(offset + count_size, body_len, "IFD entries")
        body = data.get(offset + count_size, body_len)
        if body is None:
            missing.append((offset, offset + count_size + body_len))
            return None, 0
        header_end = max(header_end, offset + count_size + body_len)
        ifd = RawIfd(offset=offset)
        for i in range(n):
            entry = body[i * entry_size : (i + 1) * entry_size]
            if big:
                tag, ftype, count = struct.unpack(bo + "HHQ", entry[:12])
                value_field = entry[12:20]
            else:
                tag, ftype, count = struct.unpack(bo + "HHI", entry[:8])
                value_field = entry[8:12]
            if tag not in WANTED_TAGS or ftype not in _FIELD_TYPES:
                continue
            width, code = _FIELD_TYPES[ftype]
            nbytes = width * count
            limit = MAX_TAG_BYTES if tag in ARRAY_TAGS or tag in TEXT_TAGS else MAX_SMALL_TAG_BYTES
            if nbytes > limit:
                raise TiffFormatError(href, f"tag {tag} claims {count} values ({nbytes} bytes)")
            if nbytes <= inline_size:
                raw_value = value_field[:nbytes]
            else:
                (value_offset,) = struct.unpack(bo + off_fmt, value_field)
                check_range(value_offset, nbytes, f"tag {tag} value")
                raw_value = data.get(value_offset, nbytes)
                header_end = max(header_end, value_offset + nbytes)
                if raw_value is None:
                    missing.append((value_offset, value_offset + nbytes))
                    continue
            ifd.tags[tag] = _decode_value(bo, ftype, code, count, raw_value)
        (next_offset,) = struct.unpack(bo + off_fmt, body[n * entry_size :])
        return ifd, next_offset

    def walk(offset: int, into: list[RawIfd]) -> None:
        nonlocal loop_at
        if offset in seen and into is subifds:
            return  # listed in SubIFDs and also chained from the previous SubIFD (tifffile)
        while offset:
            if offset in seen:
                if not ifds:
                    raise TiffFormatError(href, f"IFD chain loops back to offset {offset}")
                loop_at = offset  # GDAL keeps the images read before the loop
                return
            if len(seen) >= MAX_IFDS:
                raise TiffFormatError(href, f"more than {MAX_IFDS} IFDs in the chain")
            seen.add(offset)
            ifd, offset = parse_one(offset)
            if ifd is None:
                return
            into.append(ifd)

    walk(first_offset, ifds)
    if ifds and not missing:
        sub = ifds[0].get(SUB_IFDS)
        if sub is not None:
            values = sub if isinstance(sub, (tuple, np.ndarray)) else (sub,)
            if not all(isinstance(v, (int, np.integer)) and v >= 0 for v in values):
                raise TiffFormatError(href, f"SubIFDs (tag {SUB_IFDS}) holds non-offset values")
            offsets = [int(v) for v in values]
            if len(offsets) > MAX_SUB_IFDS:
                raise TiffFormatError(href, f"{len(offsets)} SubIFDs in the first image")
            for sub_offset in offsets:
                walk(sub_offset, subifds)
    return ParsedTiff(bo, big, ifds, missing, header_end, subifds, loop_at)


def _decode_value(bo: str, ftype: int, code: str, count: int, raw: bytes):
    if ftype == 2:  # ASCII: NUL-terminated, maybe several strings
        return raw.split(b"\x00", 1)[0].decode("latin-1")
    if ftype == 7:
        return bytes(raw)  # UNDEFINED: opaque blobs such as JPEGTables
    if ftype in (5, 10):
        pairs = struct.unpack(f"{bo}{2 * count}{code}", raw)
        return tuple(pairs[i] / pairs[i + 1] if pairs[i + 1] else 0.0 for i in range(0, len(pairs), 2))
    if count > 64 and code in "HIQ":
        # Tile offsets and byte counts: decoded in bulk by numpy.
        return np.frombuffer(raw, dtype=np.dtype(bo + code)).astype(np.uint64)
    if count > 64:
        return tuple(np.frombuffer(raw, dtype=np.dtype(bo + code)).tolist())
    return struct.unpack(f"{bo}{count}{code}", raw)
