"""Cloud-mask rules: which pixels a provider's quality band calls clear.

A :class:`~rasteret_pipelines.collections.sources.DataSource` owns one rule, naming its quality
band (an asset key) and the values or bits that mark a pixel unusable; the reading layer only
calls :meth:`CloudMask.clear` on that band's raw values. Two kinds cover the providers:

* :class:`MaskedClasses`: a classification band (one class per value, such as Sentinel-2 SCL).
* :class:`MaskedBits`: a bit-packed quality band (flags per bit, such as Landsat QA_PIXEL).

numpy is imported when a mask is computed, so defining sources stays free of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from rasteret_pipelines.errors import SourceDefinitionError


@dataclass(frozen=True)
class CloudMask:
    """A rule over one quality band; subclasses say which values are clear."""

    band: str
    """Asset key of the quality band."""

    def __post_init__(self) -> None:
        if not isinstance(self.band, str) or not self.band:
            raise SourceDefinitionError(f"a cloud-mask rule needs the quality band's asset key, got {self.band!r}")

    def clear(self, values):
        """Boolean array, True where ``values`` (the band's raw values) are a clear pixel."""
        raise NotImplementedError


@dataclass(frozen=True)
class MaskedClasses(CloudMask):
    """Clear unless the pixel's class is one of ``classes``."""

    classes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.classes or not all(isinstance(c, int) and c >= 0 for c in self.classes):
            raise SourceDefinitionError(
                f"cloud mask of band {self.band!r}: classes must be non-negative integers, got {self.classes!r}"
            )
        object.__setattr__(self, "classes", tuple(self.classes))

    def clear(self, values):
        import numpy as np

        return ~np.isin(values, self.classes)


@dataclass(frozen=True)
class MaskedBits(CloudMask):
    """Clear unless one of ``bits`` (0 = least significant) is set."""

    bits: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.bits or not all(isinstance(b, int) and 0 <= b < 32 for b in self.bits):
            raise SourceDefinitionError(
                f"cloud mask of band {self.band!r}: bits must be integers in 0..31, got {self.bits!r}"
            )
        object.__setattr__(self, "bits", tuple(self.bits))

    @property
    def bitmask(self) -> int:
        """The masked bits as one integer."""
        return sum(1 << b for b in set(self.bits))

    def clear(self, values):
        import numpy as np

        return (values.astype(np.uint32) & np.uint32(self.bitmask)) == 0
