"""``ReadOptions`` and ``CubeOptions``: how a read turns tiles into values, as one value instead of keywords.

:func:`~rasteret_pipelines.reading.read_geometries` and the :class:`~rasteret_pipelines.api.Rasteret`
reads take ``options=ReadOptions(...)``, or the same names as keywords (as they always did)::

    opts = ReadOptions(values="reflectance", cloud_mask=True, all_touched=True)
    ds = read_geometries(collection, aois, ["red", "nir"], options=opts)
    ds = read_geometries(collection, aois, ["red", "nir"], values="reflectance", cloud_mask=True, all_touched=True)

The data cube (:func:`~rasteret_pipelines.reading.cube.read_cube`, ``get_xarray(bbox=...)``)
takes ``options=CubeOptions(...)`` the same way: the same options, with the cube's grid, time
steps and laziness (``groupby``, ``chunks``) beside them. Where the cube lies (``bbox``,
``geopolygon``, ``like``, ``geometries``) and which scenes it reads (``date_range``,
``cloud_cover_lt``, ``filters``) stay arguments of the call, so one ``CubeOptions`` serves many
areas and seasons::

    opts = CubeOptions(crs="EPSG:32643", resolution=20, groupby="month", mosaic="median")
    ds = read_cube(collection, ["red", "nir"], bbox=bbox, options=opts)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from rasteret_pipelines.collections.search import with_keywords
from rasteret_pipelines.errors import GroupbyError, InvalidReadArgumentError

if TYPE_CHECKING:
    from rasteret_pipelines.cog import ByteReader, FetchConfig

__all__ = ["ReadOptions", "CubeOptions", "RESAMPLINGS", "GROUPINGS", "CUBE_VALUE_MODES"]

RESAMPLINGS = ("nearest", "bilinear", "cubic", "average")
"""The cube's resampling kernels (what ``rasterio.warp.reproject`` does as GDAL's warper does)."""
GROUPINGS = ("solar_day", "time", "month")
"""The cube's time-step rules; any other ``groupby`` names a STAC property."""
CUBE_VALUE_MODES = ("float", "native", "reflectance")
"""The cube's ``values``, as a per-geometry read's."""


@dataclass(frozen=True)
class _Options:
    """The options a per-geometry read and a cube share, and how a call's keywords join them."""

    _read: ClassVar[str] = "read"
    """The function whose options these are, for messages."""

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
    def resolve(cls, options, keywords: Mapping, what: str | None = None):
        """``options`` (defaults when None) with the option ``keywords`` of a call set.

        Raises:
            InvalidReadArgumentError: ``options`` of another type, a keyword that is no option,
                or one ``options`` already sets to another value.
        """
        what = what or cls._read
        if options is not None and not isinstance(options, cls):
            options = cls._from_other(options, what)
        return with_keywords(options if options is not None else cls(), keywords, InvalidReadArgumentError, what)

    @classmethod
    def _from_other(cls, options, what: str):
        raise InvalidReadArgumentError(f"{what}: options must be a {cls.__name__}, got {type(options).__name__}")

    def keywords(self) -> dict:
        """The options that differ from the defaults, as keywords of a read function."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not f.default and getattr(self, f.name) != f.default
        }


@dataclass(frozen=True)
class ReadOptions(_Options):
    """How a read fetches, masks, warps and combines pixels (what, not where or when)."""

    _read: ClassVar[str] = "read_geometries"


@dataclass(frozen=True)
class CubeOptions(_Options):
    """How a data cube is gridded, grouped in time, composited, valued and read (what, not
    where or when): :class:`ReadOptions`' options, and ``groupby`` and ``chunks``.

    Checked when made: a value no cube takes is a typed error before any read is planned.
    """

    _read: ClassVar[str] = "read_cube"

    resampling: str = "nearest"
    """One of :data:`RESAMPLINGS`: how a band is warped onto the cube's grid, and which
    overview GDAL's rule picks for it."""
    groupby: str = "solar_day"
    """``"solar_day"`` (odc-stac's rule), ``"time"``, ``"month"`` or a STAC property name."""
    chunks: dict | str | None = None
    """``{"time": t, "y": n, "x": n}`` (or ``"auto"``) for a dask-backed Dataset; None reads now."""

    def __post_init__(self):
        if self.values not in CUBE_VALUE_MODES:
            raise InvalidReadArgumentError(f"values must be one of {CUBE_VALUE_MODES}, got {self.values!r}")
        if self.resampling not in RESAMPLINGS:
            raise InvalidReadArgumentError(f"resampling must be one of {RESAMPLINGS}, got {self.resampling!r}")
        if not isinstance(self.groupby, str) or not self.groupby:
            raise GroupbyError(f"groupby must be one of {GROUPINGS} or a property name, got {self.groupby!r}")
        from rasteret_pipelines.reading.mosaic import mosaic_method

        mosaic_method(self.mosaic)  # InvalidReadArgumentError naming it

    @classmethod
    def _from_other(cls, options, what: str):
        """A :class:`ReadOptions` is a cube's options too: the cube takes all of its options."""
        if isinstance(options, ReadOptions):
            return cls(**options.keywords())
        return super()._from_other(options, what)
