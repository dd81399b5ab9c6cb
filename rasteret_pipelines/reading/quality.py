"""Cloud and quality masks from the providers' own quality bands."""

from __future__ import annotations

import numpy as np

SCL_MASKED_CLASSES = (0, 1, 3, 8, 9, 10)
"""Sentinel-2 SCL: no data, saturated/defective, cloud shadow, cloud medium/high, cirrus."""

QA_PIXEL_MASKED_BITS = (0, 1, 2, 3, 4)
"""Landsat C2 QA_PIXEL bits: fill, dilated cloud, cirrus, cloud, cloud shadow."""


def clear_pixels(quality_band: str, values: np.ndarray) -> np.ndarray:
    """True where the provider's quality band says the pixel is clear.

    Args:
        quality_band: Asset key of the quality band (``scl`` or ``qa_pixel``).
        values: The band's raw values.
    """
    if quality_band == "scl":
        return ~np.isin(values, SCL_MASKED_CLASSES)
    if quality_band == "qa_pixel":
        bits = np.uint32(sum(1 << b for b in QA_PIXEL_MASKED_BITS))
        return (values.astype(np.uint32) & bits) == 0
    raise ValueError(f"no cloud-mask rule for quality band {quality_band!r}")
