"""The nodata value of a band as GDAL (and so rasterio) reports it, from the GDAL_NODATA text.

GDAL parses the text with ``CPLAtofM`` (a leading-number parse: ``"5abc"`` is 5, ``"abc"`` is 0,
a comma is a decimal point, ``nan``/``inf`` are understood), rounds it to float32 for float32
bands (where a value near the float32 maximum becomes that maximum, and larger ones infinity),
reads only a leading integer for 64-bit integer bands, and rasterio reports no nodata for an
integer band whose value the band cannot hold (NaN, infinity, out of range).
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np

_FLT_MAX = float(np.finfo(np.float32).max)
_INTEGER = re.compile(r"\s*([+-]?\d+)")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_NAN_PREFIXES = ("nan", "1.#qnan", "-1.#qnan", "-1.#ind", "1.#snan", "-1.#snan")
_INF_PREFIXES = {"inf": math.inf, "+inf": math.inf, "-inf": -math.inf, "1.#inf": math.inf, "-1.#inf": -math.inf}


def cpl_atof(text: str) -> float:
    """GDAL's ``CPLAtofM``: the number at the start of ``text`` (0.0 when there is none)."""
    text = text.lstrip()
    lower = text.lower()
    if lower.startswith(_NAN_PREFIXES):
        return math.nan
    for prefix, value in _INF_PREFIXES.items():
        if lower.startswith(prefix):
            return value
    match = _NUMBER.match(text.replace(",", "."))
    if match is None:
        return 0.0
    return float(match.group(0))


def gdal_nodata(text: str | None, dtype: str) -> float | None:
    """The nodata value rasterio reports for a band of ``dtype`` whose GDAL_NODATA is ``text``."""
    if text is None or not text.strip():
        return None
    dt = np.dtype(dtype)
    if dt.kind in "iu" and dt.itemsize == 8:
        return _nodata_64bit(text, dt)
    value = cpl_atof(text)
    if dt == np.float32:
        if math.isfinite(value) and abs(value) > _FLT_MAX:
            # GDALAdjustNoDataCloseToFloatMax: a rounding of FLT_MAX is FLT_MAX.
            if abs(abs(value) - _FLT_MAX) / abs(value) < 1e-6:
                value = math.copysign(_FLT_MAX, value)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # overflow to inf, as GDAL casts
            return float(np.float32(value))
    if dt.kind in "iu":
        if not math.isfinite(value):
            return None
        info = np.iinfo(dt)
        if not info.min <= value <= info.max:
            return None
    return value


def _nodata_64bit(text: str, dt: np.dtype) -> float | None:
    """64-bit integer bands: GDAL reads the leading integer (strtoll / strtoull semantics)."""
    match = _INTEGER.match(text)
    value = int(match.group(1)) if match else 0
    info = np.iinfo(dt)
    if dt.kind == "u" and value < 0:
        value = max(value, -info.max) % (info.max + 1)  # strtoull negates modulo 2**64
    value = min(max(value, info.min), info.max)  # strtoll / strtoull saturate
    reported = float(value)
    # rasterio reports the value as a float, and none when that float leaves the dtype's range
    return reported if info.min <= reported <= info.max else None
