"""``ReadOptions``: how a read turns tiles into values, as one value instead of nine keywords.

:func:`~rasteret_pipelines.reading.read_geometries` and the :class:`~rasteret_pipelines.api.Rasteret`
reads take ``options=ReadOptions(...)``, or the same names as keywords (as they always did)::

    opts = ReadOptions(values="reflectance", cloud_mask=True, all_touched=True)
    ds = read_geometries(collection, aois, ["red", "nir"], options=opts)
    ds = read_geometries(collection, aois, ["red", "nir"], values="reflectance", cloud_mask=True, all_touched=True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rasteret_pipelines.collections.search import with_keywords
from rasteret_pipelines.errors import InvalidReadArgumentError

if TYPE_CHECKING:
    from rasteret_pipelines.cog import ByteReader, FetchConfig

__all__ = ["ReadOptions"]


@dataclass(frozen=True)
class ReadOptions:
    """How a read fetches, masks, warps and combines pixels (what, not where or when)."""

    values: str = "float"
    """``"float"`` (file values as float32, NaN where masked), ``"native"`` (the file's dtype,
    masked pixels set to nodata, or 0 when none is set), or ``"reflectance"`` (float32 physical
    reflectance with the source's scale and offset)."""
    cloud_mask: bool = False
    """Also read the source's quality band and mask cloudy pixels."""
    all_touched: bool = False
    """Include every pixel a geometry touches, not only pixel centres inside."""
    resampling: object = None
    """A ``rasterio.enums.Resampling`` (or its name) used where a band is warped; default nearest."""
    crs: object = None
    """Put every geometry on a grid in this CRS instead of its first scene's."""
    resolution: float | None = None
    """Pixel size of that grid in ``crs`` units (default: the finest requested band's)."""
    mosaic: object = "first"
    """How same-date scenes combine: ``"first"``, ``"last"`` or a
    :class:`~rasteret_pipelines.reading.mosaic.MosaicMethod` subclass."""
    fetch_config: FetchConfig | None = None
    """Transport settings (concurrency, retries, S3 options)."""
    reader: ByteReader | None = None
    """Where the tiles' bytes come from; None: the default aiohttp/local reader."""

    @classmethod
    def resolve(cls, options: ReadOptions | None, keywords: Mapping, what: str = "read_geometries") -> ReadOptions:
        """``options`` (defaults when None) with the option ``keywords`` of a call set.

        Raises:
            InvalidReadArgumentError: a keyword that is no read option, or one ``options``
                already sets to another value.
        """
        if options is not None and not isinstance(options, cls):
            raise InvalidReadArgumentError(f"{what}: options must be a ReadOptions, got {type(options).__name__}")
        return with_keywords(options if options is not None else cls(), keywords, InvalidReadArgumentError, what)

    def keywords(self) -> dict:
        """The options that differ from the defaults, as keywords of a read function."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not f.default and getattr(self, f.name) != f.default
        }
