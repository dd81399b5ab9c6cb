"""The parsed, cacheable header of a Cloud-Optimized GeoTIFF.

A :class:`CogHeader` holds everything needed to turn a pixel window into byte ranges and to
decode them: per resolution level the tile grid, tile offsets and byte counts, codec and layout,
plus georeferencing, nodata and scale/offset. ``to_dict``/``from_dict`` give a plain form (only
str, int, float, bool, None, lists and dicts with fixed keys) that survives JSON and Arrow
exactly; a collection stores it per band so later reads need no header request.
"""

from __future__ import annotations

import base64
import logging
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, fields

import numpy as np

from rasteret_pipelines.cog import geo, tiff
from rasteret_pipelines.cog.decode import check_codec_supported, codec_name, converts_cmyk
from rasteret_pipelines.cog.nodata import gdal_nodata
from rasteret_pipelines.errors import (
    CachedHeaderError,
    TiffFormatError,
    UnsupportedTiffError,
    WindowError,
)

log = logging.getLogger(__name__)

HEADER_FORMAT_VERSION = 3
"""Version of the ``to_dict`` layout; bumped whenever the stored form or its meaning changes.

2: the CRS built from GeoKeys as GDAL builds it (datum, prime meridian, units, TOWGS84, every
GeoTIFF projection method) and ``fill_order`` per level.
3: every level's IFD provenance (``ifd_index``, ``subifd``), the header's georeference
warnings, local CRSs as GDAL's ``LOCAL_CS`` and 8-bit signed CMYK as unsigned. A rebuild re-fetches the headers of older versions.
"""

MAX_DIMENSION = 1 << 24
"""Largest image or tile side accepted (16 M pixels); bigger values mean a broken file."""

_SAMPLE_FORMATS = {1: "uint", 2: "int", 3: "float"}
_DTYPES = {
    ("uint", 8): "uint8",
    ("uint", 16): "uint16",
    ("uint", 32): "uint32",
    ("uint", 64): "uint64",
    ("int", 8): "int8",
    ("int", 16): "int16",
    ("int", 32): "int32",
    ("int", 64): "int64",
    ("float", 16): "float16",
    ("float", 32): "float32",
    ("float", 64): "float64",
}

SUBFILE_REDUCED = 1
SUBFILE_MASK = 4


@dataclass(frozen=True, eq=False)
class ImageLevel:
    """One resolution level (full resolution, an overview, or an internal mask) of a COG."""

    width: int
    """Pixels across."""
    height: int
    """Pixels down."""
    tile_width: int
    """Block width; for a stripped TIFF the image width."""
    tile_height: int
    """Block height; for a stripped TIFF the rows per strip."""
    tiled: bool
    """False for a stripped (untiled) TIFF, whose last strip may be stored short."""
    samples_per_pixel: int
    """Bands stored in this level."""
    bits_per_sample: int
    """Bits of one sample (1 for masks)."""
    sample_format: int
    """TIFF SampleFormat: 1 unsigned, 2 signed, 3 float."""
    planar: int
    """1 chunky (pixel interleaved), 2 separate planes (band interleaved)."""
    compression: int
    """TIFF Compression code."""
    predictor: int
    """1 none, 2 horizontal differencing, 3 floating point."""
    photometric: int
    """TIFF PhotometricInterpretation (6 is YCbCr, 4 a transparency mask)."""
    subfile_type: int
    """NewSubfileType bits: 1 reduced resolution, 4 mask."""
    tile_offsets: np.ndarray
    """Byte offset of every block (uint64); 0 marks a sparse block."""
    tile_byte_counts: np.ndarray
    """Byte length of every block (uint64); 0 marks a sparse block."""
    jpeg_tables: bytes | None = None
    """JPEGTables (quantisation and Huffman tables shared by all JPEG blocks)."""
    lerc_parameters: tuple[int, ...] | None = None
    """LercParameters: (version, additional compression 0 none / 1 deflate / 2 zstd)."""
    extra_samples: tuple[int, ...] = ()
    """ExtraSamples (alpha) codes."""
    fill_order: int = 1
    """TIFF FillOrder: 2 means the bits of every stored byte are reversed (LSB first)."""
    ifd_index: int = 0
    """Where the level's IFD is in the file: its position in the main IFD chain (0 is the
    first image), or with :attr:`subifd` in the first image's SubIFDs (in the order they are
    listed and chained). GDAL numbers overviews in this file order; :class:`CogHeader` sorts
    them by size."""
    subifd: bool = False
    """The IFD hangs off the first image's SubIFDs tag rather than the main chain."""

    @property
    def dtype(self) -> str:
        """numpy dtype name of one sample (``"bool"`` for 1-bit masks).

        8-bit CMYK that GDAL converts to RGBA is ``"uint8"`` whatever its SampleFormat says:
        libtiff's RGBA interface reads the samples unsigned, and so does this engine.
        """
        if self.bits_per_sample == 1:
            return "bool"
        if converts_cmyk(self):
            return "uint8"
        kind = _SAMPLE_FORMATS.get(self.sample_format, "uint")
        return _DTYPES[(kind, self.bits_per_sample)]

    @property
    def tiles_across(self) -> int:
        return -(-self.width // self.tile_width)

    @property
    def tiles_down(self) -> int:
        return -(-self.height // self.tile_height)

    @property
    def tiles_per_plane(self) -> int:
        return self.tiles_across * self.tiles_down

    def tile_index(self, row: int, col: int, band: int = 0) -> int:
        """Index into the offset arrays of the block at (row, col) of ``band`` (planar only)."""
        plane = band if self.planar == 2 else 0
        return plane * self.tiles_per_plane + row * self.tiles_across + col

    def to_dict(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "tile_width": self.tile_width,
            "tile_height": self.tile_height,
            "tiled": self.tiled,
            "samples_per_pixel": self.samples_per_pixel,
            "bits_per_sample": self.bits_per_sample,
            "sample_format": self.sample_format,
            "planar": self.planar,
            "compression": self.compression,
            "predictor": self.predictor,
            "photometric": self.photometric,
            "subfile_type": self.subfile_type,
            "tile_offsets": self.tile_offsets.tolist(),
            "tile_byte_counts": self.tile_byte_counts.tolist(),
            "jpeg_tables": base64.b64encode(self.jpeg_tables).decode("ascii") if self.jpeg_tables is not None else None,
            "lerc_parameters": list(self.lerc_parameters) if self.lerc_parameters else None,
            "extra_samples": list(self.extra_samples),
            "fill_order": self.fill_order,
            "ifd_index": self.ifd_index,
            "subifd": self.subifd,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ImageLevel:
        return cls(
            width=int(d["width"]),
            height=int(d["height"]),
            tile_width=int(d["tile_width"]),
            tile_height=int(d["tile_height"]),
            tiled=bool(d["tiled"]),
            samples_per_pixel=int(d["samples_per_pixel"]),
            bits_per_sample=int(d["bits_per_sample"]),
            sample_format=int(d["sample_format"]),
            planar=int(d["planar"]),
            compression=int(d["compression"]),
            predictor=int(d["predictor"]),
            photometric=int(d["photometric"]),
            subfile_type=int(d["subfile_type"]),
            tile_offsets=np.asarray(d["tile_offsets"], dtype=np.uint64),
            tile_byte_counts=np.asarray(d["tile_byte_counts"], dtype=np.uint64),
            jpeg_tables=base64.b64decode(d["jpeg_tables"]) if d.get("jpeg_tables") else None,
            lerc_parameters=tuple(int(v) for v in d["lerc_parameters"]) if d.get("lerc_parameters") else None,
            extra_samples=tuple(int(v) for v in d.get("extra_samples") or ()),
            fill_order=int(d["fill_order"]),
            ifd_index=int(d["ifd_index"]),
            subifd=bool(d["subifd"]),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImageLevel):
            return NotImplemented
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray):
                if not np.array_equal(a, b):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class CogHeader:
    """Everything needed to read any window of one COG without touching its header again."""

    href: str
    """Where the object lives: ``http(s)://``, ``s3://`` or a local path."""
    levels: tuple[ImageLevel, ...]
    """``levels[0]`` is full resolution, ``levels[k]`` the k-th overview, sorted by size
    (largest first) whatever their order in the file; each level's ``ifd_index`` and
    ``subifd`` say where it is stored. (GDAL numbers overviews in file order: for a file that
    stores them out of size order, ``overview_level`` in rasterio follows
    :meth:`gdal_overview_order`.)"""
    masks: tuple[ImageLevel, ...] = ()
    """Internal transparency masks (GDAL ``.msk`` inside the file), full resolution first."""
    crs: str | None = None
    """``"EPSG:<code>"``, WKT for user-defined CRSs, or None when the file has none."""
    transform: tuple[float, float, float, float, float, float] = geo.IDENTITY
    """Affine (a, b, c, d, e, f) of the full-resolution grid, as rasterio reports it."""
    nodata_text: str | None = None
    """GDAL_NODATA exactly as written in the file (:attr:`nodata` is the number)."""
    scales: tuple[float, ...] = ()
    """Per-band scale from GDAL metadata (1.0 where unset)."""
    offsets: tuple[float, ...] = ()
    """Per-band offset from GDAL metadata (0.0 where unset)."""
    pixel_is_point: bool = False
    """The file says PixelIsPoint; :attr:`transform` already has GDAL's half-pixel shift."""
    byte_order: str = "<"
    """``"<"`` little-endian (II) or ``">"`` big-endian (MM)."""
    bigtiff: bool = False
    """True for BigTIFF (version 43)."""
    size: int | None = None
    """Object size in bytes at indexing time (used to detect a changed object)."""
    etag: str | None = None
    """ETag at indexing time (or None when the server gives none)."""
    last_modified: str | None = None
    """Last-Modified at indexing time (local files: modification time in ns)."""
    header_bytes: int = 0
    """Bytes from the start of the file that hold every IFD and tag array."""
    metadata: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    """Dataset-level GDAL metadata items as (name, value) pairs."""
    georeference_warnings: tuple[str, ...] = ()
    """The text of every :class:`~rasteret_pipelines.errors.GeoreferenceWarning` reading the
    header emitted (kept with the cached header, so a collection records them per band)."""

    # -- convenience -------------------------------------------------------------------------

    @property
    def width(self) -> int:
        return self.levels[0].width

    @property
    def height(self) -> int:
        return self.levels[0].height

    @property
    def count(self) -> int:
        """Number of bands."""
        return self.levels[0].samples_per_pixel

    @property
    def dtype(self) -> str:
        """numpy dtype name of the pixels."""
        return self.levels[0].dtype

    @property
    def overview_count(self) -> int:
        return len(self.levels) - 1

    @property
    def nodata(self) -> float | None:
        """The nodata value as rasterio reports it (NaN allowed), or None when there is none."""
        return parse_nodata(self.nodata_text, self.dtype)

    @property
    def fill_value(self):
        """Value for pixels outside the image or in sparse tiles: nodata, or 0 when unset."""
        value = self.nodata
        dtype = np.dtype(self.dtype)
        if value is None:
            return dtype.type(0)
        if dtype.kind in "iu":
            if math.isnan(value) or math.isinf(value):
                return dtype.type(0)
            info = np.iinfo(dtype)
            if not info.min <= value <= info.max:
                return dtype.type(0)
        return dtype.type(value)

    def level(self, overview: int) -> ImageLevel:
        """The image level for ``overview`` (0 full resolution), or :class:`WindowError`."""
        if not 0 <= overview < len(self.levels):
            raise WindowError(f"{self.href}: overview {overview} requested, the file has {self.overview_count}")
        return self.levels[overview]

    def gdal_overview_order(self) -> list[int]:
        """The engine's overview numbers (1, 2, ...) in GDAL's order, which is file order: the
        first image's SubIFDs (read with the first image), then the main chain.

        ``gdal_overview_order()[i]`` is the level rasterio opens with ``overview_level=i``.
        """
        return sorted(
            range(1, len(self.levels)),
            key=lambda k: (not self.levels[k].subifd, self.levels[k].ifd_index),
        )

    def level_transform(self, overview: int) -> tuple[float, float, float, float, float, float]:
        """Affine of the ``overview`` grid: the full-resolution one scaled by the size ratio."""
        lvl = self.level(overview)
        a, b, c, d, e, f = self.transform
        sx = self.width / lvl.width
        sy = self.height / lvl.height
        return (a * sx, b * sy, c, d * sx, e * sy, f)

    # -- plain form ----------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """Plain JSON/Arrow-friendly form; :meth:`from_dict` restores an equal header."""
        return {
            "format_version": HEADER_FORMAT_VERSION,
            "href": self.href,
            "levels": [lvl.to_dict() for lvl in self.levels],
            "masks": [lvl.to_dict() for lvl in self.masks],
            "crs": self.crs,
            "transform": list(self.transform),
            "nodata": self.nodata_text,
            "scales": list(self.scales),
            "offsets": list(self.offsets),
            "pixel_is_point": self.pixel_is_point,
            "byte_order": self.byte_order,
            "bigtiff": self.bigtiff,
            "size": self.size,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "header_bytes": self.header_bytes,
            "metadata": [[k, v] for k, v in self.metadata],
            "georeference_warnings": list(self.georeference_warnings),
        }

    @classmethod
    def from_dict(cls, d: dict) -> CogHeader:
        """Rebuild a header from :meth:`to_dict` output (a dict, or Arrow's row of it)."""
        version = d.get("format_version")
        href = str(d.get("href"))
        if version != HEADER_FORMAT_VERSION:
            raise CachedHeaderError(
                href,
                f"cached header has format version {version!r}, this library reads "
                f"{HEADER_FORMAT_VERSION}: rebuild the collection",
            )
        try:
            return cls._from_plain(d)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise CachedHeaderError(
                href, f"cached header is malformed ({type(exc).__name__}: {exc}): rebuild the collection"
            ) from exc

    @classmethod
    def _from_plain(cls, d: dict) -> CogHeader:
        return cls(
            href=d["href"],
            levels=tuple(ImageLevel.from_dict(x) for x in d["levels"]),
            masks=tuple(ImageLevel.from_dict(x) for x in d.get("masks") or ()),
            crs=d.get("crs"),
            transform=tuple(float(v) for v in d["transform"]),
            nodata_text=d.get("nodata"),
            scales=tuple(float(v) for v in d.get("scales") or ()),
            offsets=tuple(float(v) for v in d.get("offsets") or ()),
            pixel_is_point=bool(d.get("pixel_is_point")),
            byte_order=d.get("byte_order", "<"),
            bigtiff=bool(d.get("bigtiff")),
            size=d.get("size"),
            etag=d.get("etag"),
            last_modified=d.get("last_modified"),
            header_bytes=int(d.get("header_bytes") or 0),
            metadata=tuple((str(k), str(v)) for k, v in d.get("metadata") or ()),
            georeference_warnings=tuple(str(w) for w in d["georeference_warnings"] or ()),
        )


def parse_nodata(text: str | None, dtype: str = "float64") -> float | None:
    """GDAL_NODATA text to the number GDAL reports for a band of ``dtype`` (see cog.nodata)."""
    return gdal_nodata(text, dtype)


def build_header(
    href: str,
    parsed: tiff.ParsedTiff,
    *,
    size: int | None,
    etag: str | None,
    last_modified: str | None,
) -> CogHeader:
    """Turn a completely parsed IFD chain into a :class:`CogHeader`.

    Raises:
        TiffFormatError: required tags missing or inconsistent.
        UnsupportedTiffError: a codec, bit depth or layout this engine cannot decode.
    """
    if not parsed.ifds:
        raise TiffFormatError(href, "no image file directory")
    main_ifd = parsed.ifds[0]
    main = _level(href, main_ifd, mask=False, where=(0, False))
    levels = [main]
    masks: list[ImageLevel] = []
    if parsed.loop_at is not None:
        log.warning(
            "%s: the IFD chain loops back to offset %d; reading the %d image(s) before it",
            href,
            parsed.loop_at,
            len(parsed.ifds) + len(parsed.subifds),
        )
    # Overviews and masks follow the first image in the chain, or (some writers) hang off its
    # SubIFDs tag; either way they are sorted largest first, each keeping where it is stored.
    located = [(ifd, (i, False)) for i, ifd in enumerate(parsed.ifds)][1:] + [
        (ifd, (i, True)) for i, ifd in enumerate(parsed.subifds)
    ]
    for ifd, where in located:
        subfile = ifd.first(tiff.NEW_SUBFILE_TYPE, 0)
        subfile = _int_value(href, ifd, tiff.NEW_SUBFILE_TYPE, "NewSubfileType", subfile)
        if subfile & SUBFILE_MASK:  # GDAL goes by NewSubfileType alone, not Photometric 4
            masks.append(_level(href, ifd, mask=True, where=where))
        elif subfile & SUBFILE_REDUCED:
            lvl = _level(href, ifd, mask=False, where=where)
            if (
                lvl.samples_per_pixel == main.samples_per_pixel
                and lvl.width <= main.width
                and lvl.height <= main.height  # GDAL ignores "overviews" larger than the image
            ):
                if lvl.dtype != main.dtype:
                    raise UnsupportedTiffError(
                        href,
                        f"the overview in the IFD at {ifd.offset} holds {lvl.dtype} samples, "
                        f"the image {main.dtype}: GDAL lists it as an overview of another data "
                        "type, which this engine does not read",
                    )
                levels.append(lvl)
        # Other pages of a multi-page TIFF are not part of this raster (GDAL: subdatasets).
    # Sorted by size, ties in file order (the sort is stable).
    levels[1:] = sorted(levels[1:], key=lambda lvl: (-lvl.width, -lvl.height))
    masks.sort(key=lambda lvl: (-lvl.width, -lvl.height))

    geokeys = geo.parse_geokeys(
        main_ifd.get(tiff.GEO_KEY_DIRECTORY),
        main_ifd.get(tiff.GEO_DOUBLE_PARAMS),
        main_ifd.get(tiff.GEO_ASCII_PARAMS),
    )
    georef = geo.georeference(
        geokeys,
        main_ifd.get(tiff.MODEL_PIXEL_SCALE),
        main_ifd.get(tiff.MODEL_TIEPOINT),
        main_ifd.get(tiff.MODEL_TRANSFORMATION),
        href,
    )
    scales, offsets, metadata = _gdal_metadata(main_ifd.get(tiff.GDAL_METADATA), main.samples_per_pixel)
    nodata = main_ifd.get(tiff.GDAL_NODATA)
    return CogHeader(
        href=href,
        levels=tuple(levels),
        masks=tuple(masks),
        crs=georef.crs,
        transform=georef.transform,
        nodata_text=nodata.strip() if isinstance(nodata, str) else None,
        scales=scales,
        offsets=offsets,
        pixel_is_point=georef.pixel_is_point,
        byte_order=parsed.byte_order,
        bigtiff=parsed.bigtiff,
        size=size,
        etag=etag,
        last_modified=last_modified,
        header_bytes=parsed.header_end,
        metadata=metadata,
        georeference_warnings=georef.warnings,
    )


MAX_DECODED_BLOCK_BYTES = 1 << 30
"""Largest decoded block (tile or strip) accepted: 1 GiB."""

_PHOTOMETRIC_NAMES = {
    5: "CMYK (PhotometricInterpretation 5, Separated)",
    6: "YCbCr (PhotometricInterpretation 6)",
    8: "CIELab (PhotometricInterpretation 8)",
    9: "ICCLab (PhotometricInterpretation 9)",
    10: "ITULab (PhotometricInterpretation 10)",
    32844: "LogL (PhotometricInterpretation 32844)",
    32845: "LogLuv (PhotometricInterpretation 32845)",
}


def _int_value(href: str, ifd: tiff.RawIfd, tag: int, name: str, value) -> int:
    """One integer tag value, or :class:`TiffFormatError` naming the tag."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return int(value)  # written with a RATIONAL/FLOAT type: libtiff converts it too
    raise TiffFormatError(href, f"IFD at {ifd.offset}: {name} (tag {tag}) is {str(value)[:40]!r}, not an integer")


def _int_tuple(href: str, ifd: tiff.RawIfd, tag: int, name: str, default: tuple) -> tuple[int, ...]:
    value = ifd.get(tag)
    if value is None:
        return default
    if not isinstance(value, (tuple, list, np.ndarray)):
        value = (value,)
    return tuple(_int_value(href, ifd, tag, name, v) for v in value)


def _block_array(href: str, ifd: tiff.RawIfd, tag: int, name: str) -> np.ndarray | None:
    """Block offsets or byte counts as uint64, or :class:`TiffFormatError` naming the tag."""
    value = ifd.get(tag)
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return value.astype(np.uint64, copy=False).ravel()
    values = _int_tuple(href, ifd, tag, name, ())
    if any(v < 0 for v in values):
        raise TiffFormatError(href, f"IFD at {ifd.offset}: {name} (tag {tag}) holds negative values")
    return np.asarray(values, dtype=np.uint64)


def _level(href: str, ifd: tiff.RawIfd, *, mask: bool, where: tuple[int, bool] = (0, False)) -> ImageLevel:
    def num(tag: int, name: str, default: int | None = None) -> int:
        value = ifd.get(tag)
        if isinstance(value, (tuple, list, np.ndarray)) and len(value) != 1:
            # libtiff (and so GDAL) refuses a count other than 1 for these tags too
            raise TiffFormatError(href, f"IFD at {ifd.offset}: {name} (tag {tag}) has {len(value)} values, expected 1")
        value = ifd.first(tag)
        if value is None:
            if default is None:
                raise TiffFormatError(href, f"IFD at {ifd.offset} lacks {name} (tag {tag})")
            return default
        return _int_value(href, ifd, tag, name, value)

    width = num(tiff.IMAGE_WIDTH, "ImageWidth")
    height = num(tiff.IMAGE_LENGTH, "ImageLength")
    spp = num(tiff.SAMPLES_PER_PIXEL, "SamplesPerPixel", 1)
    bits_all = _int_tuple(href, ifd, tiff.BITS_PER_SAMPLE, "BitsPerSample", (1,)) or (1,)
    if len(set(bits_all)) != 1:
        raise UnsupportedTiffError(href, f"bands of different bit depths {bits_all}")
    bits = bits_all[0]
    fmt_all = _int_tuple(href, ifd, tiff.SAMPLE_FORMAT, "SampleFormat", (1,)) or (1,)
    sample_format = fmt_all[0]
    planar = num(tiff.PLANAR_CONFIGURATION, "PlanarConfiguration", 1)
    compression = num(tiff.COMPRESSION, "Compression", 1)
    predictor = num(tiff.PREDICTOR, "Predictor", 1)
    photometric = num(tiff.PHOTOMETRIC, "PhotometricInterpretation", 1)
    subfile = num(tiff.NEW_SUBFILE_TYPE, "NewSubfileType", 0)
    fill_order = num(tiff.FILL_ORDER, "FillOrder", 1)

    for name, value in (("width", width), ("height", height)):
        if not 0 < value <= MAX_DIMENSION:
            raise TiffFormatError(href, f"image {name} {value} is not plausible")
    if not 0 < spp <= 4096:
        raise TiffFormatError(href, f"SamplesPerPixel {spp} is not plausible")
    if planar not in (1, 2):
        raise TiffFormatError(href, f"PlanarConfiguration {planar} is not 1 or 2")
    if fill_order not in (1, 2):
        raise TiffFormatError(href, f"FillOrder {fill_order} is not 1 or 2")

    if tiff.TILE_WIDTH in ifd.tags:
        tiled = True
        tile_width = num(tiff.TILE_WIDTH, "TileWidth")
        tile_height = num(tiff.TILE_LENGTH, "TileLength")
        offsets = _block_array(href, ifd, tiff.TILE_OFFSETS, "TileOffsets")
        counts = _block_array(href, ifd, tiff.TILE_BYTE_COUNTS, "TileByteCounts")
        what = "TileOffsets/TileByteCounts"
    else:
        tiled = False
        tile_width = width
        tile_height = min(num(tiff.ROWS_PER_STRIP, "RowsPerStrip", height), height)
        offsets = _block_array(href, ifd, tiff.STRIP_OFFSETS, "StripOffsets")
        counts = _block_array(href, ifd, tiff.STRIP_BYTE_COUNTS, "StripByteCounts")
        what = "StripOffsets/StripByteCounts"
    for name, value in (("tile width", tile_width), ("tile height", tile_height)):
        if not 0 < value <= MAX_DIMENSION:
            raise TiffFormatError(href, f"{name} {value} is not plausible")
    if offsets is None or counts is None:
        raise TiffFormatError(href, f"IFD at {ifd.offset} lacks {what}")
    per_plane = (-(-width // tile_width)) * (-(-height // tile_height))
    expected = per_plane * (spp if planar == 2 else 1)
    if len(offsets) != expected or len(counts) != expected:
        raise TiffFormatError(
            href,
            f"IFD at {ifd.offset}: {what} hold {len(offsets)}/{len(counts)} entries, "
            f"the {width}x{height} image in {tile_width}x{tile_height} blocks needs {expected}",
        )

    level = ImageLevel(
        width=width,
        height=height,
        tile_width=tile_width,
        tile_height=tile_height,
        tiled=tiled,
        samples_per_pixel=spp,
        bits_per_sample=bits,
        sample_format=sample_format,
        planar=planar,
        compression=compression,
        predictor=predictor,
        photometric=photometric,
        subfile_type=subfile,
        tile_offsets=offsets,
        tile_byte_counts=counts,
        jpeg_tables=_as_bytes(ifd.get(tiff.JPEG_TABLES)),
        lerc_parameters=_int_tuple(href, ifd, tiff.LERC_PARAMETERS, "LercParameters", ()) or None,
        extra_samples=_int_tuple(href, ifd, tiff.EXTRA_SAMPLES, "ExtraSamples", ()),
        fill_order=fill_order,
        ifd_index=where[0],
        subifd=where[1],
    )
    if not mask:
        kind = _SAMPLE_FORMATS.get(sample_format)
        if kind is None or (kind, bits) not in _DTYPES:
            raise UnsupportedTiffError(href, f"{bits}-bit samples of SampleFormat {sample_format} are not supported")
        if predictor not in (1, 2, 3):
            raise UnsupportedTiffError(href, f"Predictor {predictor} is not supported")
        _check_photometric(href, ifd, level)
        block_bytes = tile_width * tile_height * (spp if planar == 1 else 1) * (bits // 8)
        if block_bytes > MAX_DECODED_BLOCK_BYTES:
            raise UnsupportedTiffError(
                href,
                f"{tile_width}x{tile_height} blocks of {block_bytes} bytes are larger than the "
                f"{MAX_DECODED_BLOCK_BYTES} bytes this engine decodes",
            )
    check_codec_supported(href, compression)
    return level


def _check_photometric(href: str, ifd: tiff.RawIfd, level: ImageLevel) -> None:
    """Refuse colour models whose stored values GDAL converts and this engine does not.

    GDAL reads 8-bit CMYK through libtiff's RGBA interface (RGBA out, converted in
    :func:`~rasteret_pipelines.cog.decode.cmyk_to_rgba` the same way) and YCbCr only as
    JPEG; CIELab and the Log models it also converts, with colour-science this engine does
    not reproduce: those are refused, naming the interpretation.
    """
    photometric = level.photometric
    if photometric not in _PHOTOMETRIC_NAMES:
        return
    name = _PHOTOMETRIC_NAMES[photometric]
    if photometric == 6:
        if level.compression != 7:
            raise UnsupportedTiffError(href, f"{name} without JPEG compression is not supported")
        return
    if photometric == 5:
        if level.bits_per_sample != 8:
            return  # GDAL returns the stored (separated) values: so does this engine
        inkset = ifd.first(tiff.INK_SET, 1)
        if converts_cmyk(level) and inkset == 1 and level.compression != 7:
            return  # converted to RGBA while decoding, as GDAL does
        raise UnsupportedTiffError(
            href,
            f"{name} with {level.samples_per_pixel} 8-bit samples, InkSet {inkset}, "
            f"PlanarConfiguration {level.planar} and {codec_name(level.compression)} is not "
            "supported (only 4 pixel-interleaved 8-bit CMYK samples, converted to RGBA)",
        )
    raise UnsupportedTiffError(href, f"{name} is not supported: GDAL converts it to RGB")


def _as_bytes(value) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("latin-1")
    if isinstance(value, (tuple, list, np.ndarray)):
        try:
            return bytes(int(v) & 0xFF for v in value)
        except (TypeError, ValueError, OverflowError):
            return None  # not a byte blob: JPEG decoding then fails with a typed error
    return None


def _gdal_metadata(xml_text, bands: int):
    scales = [1.0] * bands
    offsets = [0.0] * bands
    items: list[tuple[str, str]] = []
    if isinstance(xml_text, str) and xml_text.strip():
        try:
            root = ET.fromstring(xml_text)
        except ET.ParseError:
            root = None
        if root is not None:
            for item in root.iter("Item"):
                name = item.get("name", "")
                sample = item.get("sample")
                role = (item.get("role") or "").lower()
                text = (item.text or "").strip()
                if sample is not None:
                    try:
                        band = int(sample)
                    except ValueError:
                        continue
                    if 0 <= band < bands:
                        try:
                            if role == "scale" or name == "SCALE":
                                scales[band] = float(text)
                            elif role == "offset" or name == "OFFSET":
                                offsets[band] = float(text)
                        except ValueError:
                            pass
                elif not item.get("domain"):
                    items.append((name, text))
    return tuple(scales), tuple(offsets), tuple(items)


def validate_window(header: CogHeader, window, overview: int) -> tuple[int, int, int, int]:
    """Check ``window`` = (col_off, row_off, width, height) and return it as ints."""
    header.level(overview)
    try:
        col_off, row_off, width, height = (int(v) for v in window)
    except (TypeError, ValueError) as exc:
        raise WindowError(f"{header.href}: window must be (col_off, row_off, width, height), got {window!r}") from exc
    if width <= 0 or height <= 0:
        raise WindowError(f"{header.href}: window {window!r} has no pixels")
    if width * height > 1 << 31:
        raise WindowError(f"{header.href}: window {window!r} is larger than 2**31 pixels")
    return col_off, row_off, width, height
