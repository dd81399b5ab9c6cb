"""The Arrow schema of a collection month: STAC-GeoParquet columns plus cached COG headers.

One row per STAC item: typed item properties, the geometry as WKB with GeoParquet 1.1 ``geo``
metadata and a ``bbox`` covering column, the full item as JSON (lossless), and per band
``<band>_href``, ``<band>_header`` (:meth:`CogHeader.to_dict` as an Arrow struct) and
``<band>_error`` (why the header could not be read, or null).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pyarrow as pa

from rasteret_pipelines.collections.sources import DataSource

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
    ]
)
"""A cached :class:`~rasteret_pipelines.cog.CogHeader` (its ``to_dict`` form) as stored."""

BBOX_TYPE = pa.struct(
    [("xmin", pa.float64()), ("ymin", pa.float64()), ("xmax", pa.float64()), ("ymax", pa.float64())]
)

COMMON_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("id", pa.string()),
    ("collection", pa.string()),
    ("datetime", pa.timestamp("us", tz="UTC")),
    ("geometry", pa.binary()),
    ("bbox", BBOX_TYPE),
    ("eo:cloud_cover", pa.float64()),
    ("platform", pa.string()),
    ("proj:epsg", pa.int32()),
    ("updated", pa.string()),
]

PROPERTY_TYPES: dict[str, pa.DataType] = {
    "mgrs:utm_zone": pa.int32(),
    "earthsearch:boa_offset_applied": pa.bool_(),
    "s2:nodata_pixel_percentage": pa.float64(),
    "landsat:cloud_cover_land": pa.float64(),
}
"""Source-specific properties that are not strings."""

ITEM_JSON = "stac_item"
"""Column holding the whole STAC item as JSON text."""


def band_columns(band: str) -> tuple[str, str, str]:
    """Names of the href, header and error columns of ``band`` (an asset key)."""
    return f"{band}_href", f"{band}_header", f"{band}_error"


def month_schema(source: DataSource, bands: Sequence[str]) -> pa.Schema:
    """The schema of every month file of a collection of ``source`` with ``bands``."""
    fields = [pa.field(name, dtype) for name, dtype in COMMON_COLUMNS]
    fields += [pa.field(p, PROPERTY_TYPES.get(p, pa.string())) for p in source.properties]
    fields.append(pa.field(ITEM_JSON, pa.string()))
    for band in bands:
        href, header, error = band_columns(band)
        fields += [pa.field(href, pa.string()), pa.field(header, HEADER_TYPE), pa.field(error, pa.string())]
    return pa.schema(fields)


def geo_metadata(geometry_types: Sequence[str], bbox: Sequence[float] | None) -> bytes:
    """GeoParquet 1.1 ``geo`` file metadata for the WKB ``geometry`` column (OGC:CRS84)."""
    column = {
        "encoding": "WKB",
        "geometry_types": sorted(set(geometry_types)),
        "covering": {
            "bbox": {
                "xmin": ["bbox", "xmin"],
                "ymin": ["bbox", "ymin"],
                "xmax": ["bbox", "xmax"],
                "ymax": ["bbox", "ymax"],
            }
        },
    }
    if bbox is not None:
        column["bbox"] = [float(v) for v in bbox]
    return json.dumps(
        {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}
    ).encode()
