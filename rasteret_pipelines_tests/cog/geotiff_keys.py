"""Write tiny GeoTIFFs with exactly the GeoKeys and model tags a test asks for.

GDAL writes GeoKeys its own way, so files written through rasterio cannot show how a reader
copes with keys other producers write (a datum key on a user-defined geographic CRS, an
ellipsoid overriding EPSG:4326, several tiepoints, keys of the wrong type). This writer lays out
a classic little-endian TIFF by hand: one uncompressed strip, the model tags, the GeoKey
directory with its double and ASCII parameter tags, and GDAL_NODATA. GDAL (rasterio) reading
the same file is the oracle.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

_SHORT, _LONG, _ASCII, _DOUBLE = 3, 4, 2, 12
_SAMPLE_FORMAT = {"u": 1, "i": 2, "f": 3}


def write_geotiff(
    path: Path,
    geokeys: dict[int, object] | None = None,
    *,
    pixel_scale: tuple[float, float, float] | None = (10.0, 10.0, 0.0),
    tiepoints: list[tuple[float, ...]] | None = None,
    transformation: list[float] | None = None,
    nodata: str | None = None,
    dtype: str = "uint8",
    size: int = 4,
    key_types: dict[int, int] | None = None,
    version: tuple[int, int, int] = (1, 1, 1),
) -> Path:
    """Write ``path`` and return it.

    ``geokeys`` maps a key id to an int (stored inline as SHORT), a float or tuple of floats
    (GeoDoubleParams) or a str (GeoAsciiParams, "|" appended). ``key_types`` forces the
    storage tag of a key (34736 to store an integer code as a double, for instance).
    ``version`` is the directory header: (1, 1, 1) GeoTIFF 1.1, (1, 1, 0) GeoTIFF 1.0.
    """
    geokeys = geokeys or {}
    key_types = key_types or {}
    dt = np.dtype(dtype).newbyteorder("<")
    data = np.arange(size * size, dtype=np.int64).reshape(size, size).astype(dt)
    pixels = data.tobytes()

    directory: list[int] = [*version, len(geokeys)]
    doubles: list[float] = []
    ascii_params = ""
    for key in sorted(geokeys):
        value = geokeys[key]
        where = key_types.get(key)
        if isinstance(value, str) and where is None:
            text = value + "|"
            directory += [key, 34737, len(text), len(ascii_params)]
            ascii_params += text
        elif isinstance(value, (float, tuple)) or where == 34736:
            values = value if isinstance(value, tuple) else (value,)
            directory += [key, 34736, len(values), len(doubles)]
            doubles += [float(v) for v in values]
        else:
            directory += [key, 0, 1, int(value)]

    tags: list[tuple[int, int, list | bytes]] = [
        (256, _SHORT, [size]),
        (257, _SHORT, [size]),
        (258, _SHORT, [dt.itemsize * 8]),
        (259, _SHORT, [1]),
        (262, _SHORT, [1]),
        (273, _LONG, [0]),  # patched below
        (277, _SHORT, [1]),
        (278, _SHORT, [size]),
        (279, _LONG, [len(pixels)]),
        (284, _SHORT, [1]),
        (339, _SHORT, [_SAMPLE_FORMAT[dt.kind]]),
    ]
    if pixel_scale is not None:
        tags.append((33550, _DOUBLE, list(pixel_scale)))
    if tiepoints is None and transformation is None:
        tiepoints = [(0.0, 0.0, 0.0, 1000.0, 2000.0, 0.0)]
    if tiepoints:
        tags.append((33922, _DOUBLE, [v for tp in tiepoints for v in tp]))
    if transformation is not None:
        tags.append((34264, _DOUBLE, list(transformation)))
    if geokeys:
        tags.append((34735, _SHORT, directory))
        if doubles:
            tags.append((34736, _DOUBLE, doubles))
        if ascii_params:
            tags.append((34737, _ASCII, ascii_params.encode("ascii") + b"\0"))
    if nodata is not None:
        tags.append((42113, _ASCII, nodata.encode("ascii") + b"\0"))
    tags.sort(key=lambda t: t[0])

    ifd_offset = 8
    ifd_size = 2 + 12 * len(tags) + 4
    extra = bytearray()
    extra_base = ifd_offset + ifd_size
    entries = []
    for tag, ftype, values in tags:
        if ftype == _ASCII:
            raw, count = bytes(values), len(values)
        else:
            fmt = {_SHORT: "H", _LONG: "I", _DOUBLE: "d"}[ftype]
            raw, count = struct.pack(f"<{len(values)}{fmt}", *values), len(values)
        entries.append([tag, ftype, count, raw])
    for entry in entries:
        raw = entry[3]
        if len(raw) <= 4:
            entry.append(raw.ljust(4, b"\0"))
        else:
            if len(extra) % 2:
                extra += b"\0"
            entry.append(struct.pack("<I", extra_base + len(extra)))
            extra += raw
    pixel_offset = extra_base + len(extra)
    out = bytearray(b"II*\0" + struct.pack("<I", ifd_offset))
    out += struct.pack("<H", len(entries))
    for tag, ftype, count, _raw, field in entries:
        if tag == 273:
            field = struct.pack("<I", pixel_offset)
        out += struct.pack("<HHI", tag, ftype, count) + field
    out += struct.pack("<I", 0)
    out += extra
    out += pixels
    path = Path(path)
    path.write_bytes(bytes(out))
    return path
