"""The layout of a collection month: STAC-GeoParquet 1.0 plus the cached COG headers.

A month file is what the ``stac-geoparquet`` library writes for the month's STAC items (one row
per item): ``type``, ``stac_version``, ``stac_extensions``, ``id``, ``geometry`` (WKB, GeoParquet
1.1 ``geo`` metadata with a ``bbox`` covering column), ``bbox``, ``collection``, ``links``,
``assets``, and every item property as its own column (``datetime``, ``created``, ``updated``
as UTC timestamps). So DuckDB, geopandas, ``stac_geoparquet.arrow.stac_table_to_items``, rustac
and the like read it as STAC.

Three extra columns per indexed band (asset key) hold what rasteret-pipelines adds:
``<band>_href`` (the href read, null when the item has no such asset), ``<band>_header``
(:meth:`CogHeader.to_dict` as an Arrow struct, null when not read) and ``<band>_error`` (why
not). :func:`stac_view` drops them (and the ``month`` partition column) for a pure STAC table.

Files written before this layout (the whole item as JSON in ``stac_item``) are *outdated*:
:func:`is_outdated` spots them; rebuilding a month rewrites it, reusing its cached headers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import pyarrow as pa

log = logging.getLogger(__name__)

# stac-geoparquet 0.8 logs ``logger.debug(batch.schema, batch)`` (a format string with no
# placeholder), which fails to format whenever DEBUG logging is on: a "--- Logging error ---"
# in a script, a raised TypeError under pytest's log capture. Its INFO lines are CPU/RSS
# profiling noise. Keep that one logger at WARNING.
logging.getLogger("stac_geoparquet.arrow._api").setLevel(logging.WARNING)

LEVEL_TYPE = pa.struct(
    [
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("tile_width", pa.int32()),
        ("tile_height", pa.int32()),
        ("tiled", pa.bool_()),
        ("samples_per_pixel", pa.int32()),
        ("bits_per_sample", pa.int32()),
        ("sample_format", pa.int32()),
        ("planar", pa.int32()),
        ("compression", pa.int32()),
        ("predictor", pa.int32()),
        ("photometric", pa.int32()),
        ("subfile_type", pa.int32()),
        ("tile_offsets", pa.list_(pa.uint64())),
        ("tile_byte_counts", pa.list_(pa.uint64())),
        ("jpeg_tables", pa.string()),
        ("lerc_parameters", pa.list_(pa.int64())),
        ("extra_samples", pa.list_(pa.int64())),
        ("fill_order", pa.int32()),
        ("ifd_index", pa.int32()),
        ("subifd", pa.bool_()),
    ]
)
"""One :class:`~rasteret_pipelines.cog.ImageLevel` as stored."""

HEADER_TYPE = pa.struct(
    [
        ("format_version", pa.int32()),
        ("href", pa.string()),
        ("levels", pa.list_(LEVEL_TYPE)),
        ("masks", pa.list_(LEVEL_TYPE)),
        ("crs", pa.string()),
        ("transform", pa.list_(pa.float64())),
        ("nodata", pa.string()),
        ("scales", pa.list_(pa.float64())),
        ("offsets", pa.list_(pa.float64())),
        ("pixel_is_point", pa.bool_()),
        ("byte_order", pa.string()),
        ("bigtiff", pa.bool_()),
        ("size", pa.int64()),
        ("etag", pa.string()),
        ("last_modified", pa.string()),
        ("header_bytes", pa.int64()),
        ("metadata", pa.list_(pa.list_(pa.string()))),
        ("georeference_warnings", pa.list_(pa.string())),
    ]
)
"""A cached :class:`~rasteret_pipelines.cog.CogHeader` (its ``to_dict`` form) as stored."""


BBOX_TYPE = pa.struct([("xmin", pa.float64()), ("ymin", pa.float64()), ("xmax", pa.float64()), ("ymax", pa.float64())])
TIMESTAMP = pa.timestamp("us", tz="UTC")

STAC_TOP_LEVEL = (
    "type",
    "stac_version",
    "stac_extensions",
    "id",
    "geometry",
    "bbox",
    "collection",
    "links",
    "assets",
)
"""Item keys stored as columns of their own; every other column is an item property."""

PROPERTY_TYPES: dict[str, pa.DataType] = {
    "datetime": TIMESTAMP,
    "created": TIMESTAMP,
    "updated": TIMESTAMP,
    "eo:cloud_cover": pa.float64(),
    "platform": pa.string(),
    "proj:epsg": pa.int64(),
}
"""Common STAC properties with a fixed type in every month of every source (others keep the
type stac-geoparquet infers, unless the source types them, see :func:`property_types`), so
months unify and the filters of :meth:`Collection.to_table` always find them."""


def property_types(source=None) -> dict[str, pa.DataType]:
    """The fixed property types of a collection of ``source`` (a DataSource; None: common only):
    :data:`PROPERTY_TYPES` plus the source's typed properties."""
    out = dict(PROPERTY_TYPES)
    if source is not None:
        out.update({name: pa.type_for_alias(type_name) for name, type_name in source.properties.items()})
    return out


EMPTY_MONTH_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("type", pa.string()),
    ("stac_version", pa.string()),
    ("stac_extensions", pa.list_(pa.string())),
    ("id", pa.string()),
    ("geometry", pa.binary()),
    ("bbox", BBOX_TYPE),
    ("collection", pa.string()),
    ("links", pa.list_(pa.struct([("rel", pa.string()), ("type", pa.string()), ("href", pa.string())]))),
]
"""Columns of a month without items (``assets`` has no fields then, and Parquet cannot store that)."""

LEGACY_ITEM_JSON = "stac_item"
"""Column of the outdated layout that held the whole item as JSON text."""

BAND_SUFFIXES = ("_href", "_header", "_error")


def band_columns(band: str) -> tuple[str, str, str]:
    """Names of the href, header and error columns of ``band`` (an asset key)."""
    return f"{band}_href", f"{band}_header", f"{band}_error"


def missing_asset_error(band: str) -> str:
    """The ``<band>_error`` text of an item that has no asset for ``band`` (nothing to retry)."""
    return f"item has no {band!r} asset"


def is_missing_asset(error: str | None, band: str) -> bool:
    """Whether a ``<band>_error`` value records a missing asset rather than a failed header read."""
    return error == missing_asset_error(band)


def header_bands(arrow_schema: pa.Schema) -> list[str]:
    """Bands with a cached-header column in ``arrow_schema`` (recognised by its type)."""
    out = []
    for f in arrow_schema:
        if f.name.endswith("_header") and pa.types.is_struct(f.type) and f.type.equals(HEADER_TYPE):
            out.append(f.name[: -len("_header")])
    return out


def extra_columns(arrow_schema: pa.Schema) -> list[str]:
    """The columns of ``arrow_schema`` that are not STAC: band columns and ``month``."""
    names = set(arrow_schema.names)
    out = [c for b in header_bands(arrow_schema) for c in band_columns(b) if c in names]
    return out + (["month"] if "month" in names else [])


def stac_view(table: pa.Table) -> pa.Table:
    """``table`` without the extra columns: what ``stac_table_to_items`` turns into items."""
    return table.drop_columns(extra_columns(table.schema))


def is_outdated(arrow_schema: pa.Schema) -> bool:
    """True for a month file of the layout before STAC-GeoParquet (item JSON in ``stac_item``)."""
    return LEGACY_ITEM_JSON in arrow_schema.names or "stac_version" not in arrow_schema.names


def items_table(items: Sequence[Mapping], source=None) -> pa.Table:
    """The STAC-GeoParquet table of ``items`` (checked, non-empty), typed per :func:`property_types`
    of ``source`` (None: the common properties only).

    Raises:
        ValueError / pyarrow.ArrowException: the items cannot be stored in one table.
    """
    from stac_geoparquet.arrow import parse_stac_items_to_arrow

    table = parse_stac_items_to_arrow(list(items), schema="FullFile").read_all()
    for name, dtype in property_types(source).items():
        if name not in table.column_names:
            continue
        i = table.schema.get_field_index(name)
        field = table.schema.field(i)
        if field.type.equals(dtype):
            continue
        try:
            table = table.set_column(i, field.with_type(dtype), table.column(i).cast(dtype))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            log.warning("property %s stays %s (not castable to %s: %s)", name, field.type, dtype, exc)
    return table


def empty_month_table(source=None) -> pa.Table:
    """A month without items: the STAC columns and the typed properties, no rows."""
    return pa.schema(guaranteed_fields(source)).empty_table()


def with_band_columns(table: pa.Table, bands: Sequence[str], values: Mapping[str, Sequence]) -> pa.Table:
    """``table`` plus the href, header and error columns of ``bands``.

    ``values[column]`` holds one value per row of ``table`` for every band column.
    """
    for band in bands:
        for column, dtype in zip(band_columns(band), (pa.string(), HEADER_TYPE, pa.string())):
            table = table.append_column(
                pa.field(column, dtype), pa.array(values.get(column, [None] * table.num_rows), dtype)
            )
    return table


def guaranteed_fields(source=None) -> list[pa.Field]:
    """Columns every collection dataset of ``source`` offers, null where a month has none (for filters)."""
    return [pa.field(n, t) for n, t in EMPTY_MONTH_COLUMNS + list(property_types(source).items())]
