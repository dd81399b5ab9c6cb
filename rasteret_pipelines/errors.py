"""Every error rasteret-pipelines raises on purpose, under one base class.

Each class is named for what failed. Messages name the object at fault (href, band, date,
geometry, source) and never carry credentials.

One rule for the second base (docs/errors.md): an error the caller can cause with an argument or
an input (a value, a file, a collection, a STAC item, the bytes of a COG) is also a
:class:`ValueError`; an I/O failure (network, storage, a server that is down) is also an
:class:`OSError`. The family classes (``CogError``, ``CollectionError``, ``ReadError``,
``ProductError``) are never raised themselves.
"""

from __future__ import annotations

from rasteret_pipelines.redaction import redact


class RasteretError(Exception):
    """Base class of every error raised on purpose by rasteret-pipelines.

    Text arguments are passed through :func:`~rasteret_pipelines.redaction.redact`: a presigned
    URL named in a message keeps its path but not its signature or token.
    """

    def __init__(self, *args):
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


# --- COG engine -------------------------------------------------------------------------------


class CogError(RasteretError):
    """A Cloud-Optimized GeoTIFF could not be read; ``href`` names the object."""

    def __init__(self, href: str, message: str):
        self.href = redact(href) if isinstance(href, str) else href
        super().__init__(f"{href}: {message}")


class NotATiffError(CogError, ValueError):
    """The object does not start with a TIFF or BigTIFF signature."""


class TiffFormatError(CogError, ValueError):
    """The TIFF structure is broken: truncated header, bad offsets, absurd tag counts."""


class BlockDecodeError(TiffFormatError):
    """A block (tile or strip) does not decode, or decodes short, long or to the wrong shape.

    ``block`` is the block's index in the level's offset arrays, ``overview`` its level (0 full
    resolution). No pixels of such a block are ever returned.
    """

    def __init__(self, href: str, message: str, *, block: int | None = None, overview: int = 0):
        self.block = block
        self.overview = overview
        where = "" if block is None else f"block {block}{f' of overview {overview}' if overview else ''}: "
        super().__init__(href, where + message)


class DecodedSizeError(BlockDecodeError):
    """A block would decode to more than its header allows (a decompression bomb); refused
    without allocating the oversized output."""


class UnsupportedTiffError(CogError, ValueError):
    """A valid TIFF uses a feature this engine does not read (codec, layout, bit depth)."""


class CachedHeaderError(CogError, ValueError):
    """A cached header (``CogHeader.from_dict``) is of another format version or malformed:
    rebuild the collection."""


class CogNotFoundError(CogError, FileNotFoundError):
    """The object does not exist (HTTP 404, missing S3 key, missing local file)."""


class FetchError(CogError, OSError):
    """A byte range could not be fetched, after the configured retries."""


class StaleHeaderError(CogError, OSError):
    """The object changed (size or ETag) since its header was cached: re-index it."""


class UnsafeHrefError(CogError, ValueError):
    """An href the href policy refuses: a local path or ``file://`` where only ``http(s)://``
    and ``s3://`` are allowed (hrefs from a remote STAC API), or another URL scheme."""


class ReaderArgumentError(RasteretError, TypeError, ValueError):
    """Transport arguments that contradict each other (``fetcher=`` with another ``reader=``)."""


class StoragePathError(RasteretError, ValueError):
    """A path built below a storage root would leave it (``..``, an absolute part, NUL)."""


class S3ConfigError(RasteretError, ValueError):
    """The AWS configuration of ``s3://`` reads and writes is unusable (``AWS_PROFILE`` names no profile)."""


class WindowError(RasteretError, ValueError):
    """A requested window or overview level is not valid for the header."""


class GeoreferenceWarning(UserWarning):
    """A file's georeferencing is not reproduced exactly as GDAL reports it; the message says why.

    Emitted instead of a silently different CRS: a geocentric CRS, ground control points (CRS
    left unset), GeoKeys of the wrong type (ignored, as GDAL ignores them). Also emitted with
    GDAL's local (engineering) CRS, which places nothing on the Earth.
    """


# --- Collections ------------------------------------------------------------------------------


class CollectionError(RasteretError):
    """A collection could not be built, found or queried."""


class UnknownSourceError(CollectionError, ValueError):
    """The data source name is not in the registry; the message lists the valid names."""


class SourceDefinitionError(CollectionError, ValueError):
    """A data source definition is incomplete or contradicts itself (NDVI bands, cloud-mask band
    or reflectance properties it does not have), or clashes with a registered source (an id or
    alias already taken); the message names the source and the field."""


class UnknownBandError(CollectionError, ValueError):
    """A band name is not known for the source (or not in the collection)."""


class MissingAssetError(UnknownBandError):
    """The collection's items have no asset for a requested band (the source defines it, the
    provider's items lack it): nothing to fetch and nothing a rebuild would retry.

    ``band`` is the name asked for, ``asset_key`` its asset key, ``collection`` the collection's
    name and ``available`` the bands whose items do have the asset.
    """

    def __init__(self, message: str, *, band: str = "", asset_key: str = "", collection: str = "", available=()):
        self.band = band
        self.asset_key = asset_key
        self.collection = collection
        self.available = list(available)
        super().__init__(message)


class InconsistentCollectionError(CollectionError, ValueError):
    """A collection's content contradicts itself or the request: month files that disagree on a
    column type, items that cannot be stored together, a collection of another source."""


class InvalidSearchError(CollectionError, ValueError):
    """A date range, bbox or geometry given for a search is not valid."""


class StacApiError(CollectionError, OSError):
    """The STAC API could not be reached or answered with an error, after retries."""


class CollectionNotFoundError(CollectionError, ValueError):
    """No collection of that name in the workspace."""


class EmptySearchError(CollectionError, ValueError):
    """A new collection's STAC search found no item: nothing was created."""


class OutdatedCollectionError(CollectionError, ValueError):
    """Month files written in a layout this version does not read; the message says how to rebuild."""


class InvalidCollectionNameError(CollectionError, ValueError):
    """A collection name is not one safe folder name (empty, too long, control characters,
    a path separator or ``..``): collections stay inside their workspace."""


# --- Reading ----------------------------------------------------------------------------------


class ReadError(RasteretError):
    """Geometries could not be read from a collection."""


class GeoreferenceError(ReadError, ValueError):
    """A scene to be read has no CRS (its GeoKeys define none the engine can build)."""


class InvalidGeometryError(ReadError, ValueError):
    """A geometry is empty, invalid or in an unknown CRS; the message names its id."""


class NoScenesError(ReadError, ValueError):
    """No scene of the collection covers the geometries in the date range and filters; the
    message gives the collection's extent (bbox, months) and the geometries' bounds."""


class DateRangeError(ReadError, ValueError):
    """The requested date range lies outside the collection's."""


class InvalidReadArgumentError(ReadError, ValueError):
    """A read argument (``values`` mode, resolution, ...) is not one of its accepted values."""


class MemoryLimitError(ReadError, MemoryError, ValueError):
    """A read would need more memory than its limit; the message names the estimate and limit."""

    def __init__(self, message: str, estimate: int, limit: int):
        self.estimate = estimate
        self.limit = limit
        super().__init__(message)


# --- Products ---------------------------------------------------------------------------------


class ProductError(RasteretError):
    """A product (index, GeoTIFF export) could not be computed or written."""


class ProductInputError(ProductError, ValueError):
    """The input of a product is not usable: missing variable, wrong shape, bad ids or times."""


class ProductWriteError(ProductError, OSError):
    """A product's output could not be written (the storage refused or failed the write)."""


class ReflectanceRequiredError(ProductInputError):
    """The index needs physical reflectance, but the Dataset holds raw or native values."""


# --- Dagster project (rasteret_pipelines.defs) ------------------------------------------------


class SettingsError(RasteretError, ValueError):
    """An environment variable of the Dagster project has an unusable value."""


class StorageConfigError(RasteretError, OSError):
    """The storage location is unusable: wrong kind of path, no credentials, no bucket access."""


class LocalServerDownError(RasteretError, ConnectionError):
    """COG hrefs point at a server on this machine (127.0.0.1) that is not running; not retried."""


class UnsafePartitionKeyError(RasteretError, ValueError):
    """A partition key (AOI id, month) or a path built from it could leave the storage folder."""


class MissingPartitionError(RasteretError, FileNotFoundError):
    """An input partition was never materialised (its file is not in the storage)."""


class AoiFileError(RasteretError, ValueError):
    """The AOI file cannot be read or one of its features is not a usable area of interest."""


class AoiNotInFileError(RasteretError, ValueError):
    """A partition's AOI id is no longer in the AOI file."""


class AoiNotIndexedError(RasteretError, ValueError):
    """The collection month was built for an area that does not contain the AOI."""


# --- data cubes (rasteret_pipelines.reading.cube) -----------------------------------------------


class CubeGridError(InvalidReadArgumentError):
    """A cube's grid cannot be made: no area, no resolution, or an unusable ``like``, CRS or resolution."""


class CubeChunksError(InvalidReadArgumentError):
    """``chunks`` names an unknown dimension or a size that is not a positive whole number."""


class CubeUserColumnsError(InvalidReadArgumentError):
    """``id_column`` or ``keep`` given to a cube read, which has no ``geometry`` dimension to carry them."""


class GroupbyError(InvalidReadArgumentError):
    """``groupby`` is not ``time``, ``solar_day``, ``month`` or a property the collection holds."""


class DaskMissingError(InvalidReadArgumentError, ImportError):
    """A lazy read (``chunks=``) needs dask: ``pip install 'rasteret-pipelines[dask]'``, or drop
    ``chunks=`` (an argument error, and an ImportError for code that catches those)."""
