"""Per-pixel indices over band arrays (numpy only): shared by the reads' products and zonal statistics."""

from __future__ import annotations

import numpy as np

_CHUNK = 1 << 18
"""Pixels per step of :func:`ndvi_values`: float64 temporaries of 2 MB stay in cache instead of
allocating (and page-faulting) several full-size float64 arrays."""


def ndvi_values(red: np.ndarray, nir: np.ndarray, out_of_range: str = "nan") -> np.ndarray:
    """NDVI ``(nir - red) / (nir + red)`` of two reflectance arrays, as float32.

    Computed in float64 in cache-sized steps, then rounded once. NaN where an input is NaN or
    ``nir + red == 0``; outside ``[-1, 1]`` (negative reflectance): ``"nan"`` masks,
    ``"clip"`` clips, ``"keep"`` keeps the ratio.
    """
    red, nir = np.broadcast_arrays(np.asarray(red), np.asarray(nir))
    out = np.empty(red.shape, dtype=np.float32)
    r_flat, n_flat, o_flat = red.reshape(-1), nir.reshape(-1), out.reshape(-1)
    num = np.empty(min(_CHUNK, r_flat.size), dtype=np.float64)
    den = np.empty_like(num)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for start in range(0, r_flat.size, _CHUNK):
            stop = min(start + _CHUNK, r_flat.size)
            k = stop - start
            r = r_flat[start:stop].astype(np.float64, copy=False)
            n = n_flat[start:stop].astype(np.float64, copy=False)
            np.subtract(n, r, out=num[:k])
            np.add(n, r, out=den[:k])
            ratio = num[:k]
            zero = den[:k] == 0
            np.divide(ratio, den[:k], out=ratio)
            ratio[zero] = np.nan
            if out_of_range == "nan":
                ratio[np.abs(ratio) > 1.0] = np.nan
            elif out_of_range == "clip":
                np.clip(ratio, -1.0, 1.0, out=ratio)
            o_flat[start:stop] = ratio  # rounded once, float64 -> float32
    return out
