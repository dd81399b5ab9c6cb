"""Open, list and filter collections locally, with column projection and no network request.

Each month file is read with :mod:`pyarrow.parquet` (its footer parsed once per
:class:`Collection`), only the columns a caller asks for and those its filters need, and only
the months a date range touches; filters are evaluated with :mod:`pyarrow.compute`. Neither
:mod:`pyarrow.dataset` nor pandas is imported on this path, so a read's first requests are not
held up by them (xarray, which needs pandas, is imported while the tiles are in flight).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from rasteret_pipelines.cog import CogHeader
from rasteret_pipelines.collections import schema
from rasteret_pipelines.collections.build import MANIFEST, MONTH_FILE
from rasteret_pipelines.collections.names import check_collection_name
from rasteret_pipelines.collections.search import (
    check_bbox,
    check_cloud_cover,
    check_date_range,
    check_geometry,
)
from rasteret_pipelines.collections.sources import DataSource, get_source
from rasteret_pipelines.errors import (
    CollectionNotFoundError,
    InconsistentCollectionError,
    InvalidSearchError,
    OutdatedCollectionError,
    UnknownBandError,
)
from rasteret_pipelines.storage import Storage

if TYPE_CHECKING:
    import pyarrow.compute as pc


@dataclass(frozen=True)
class Collection:
    """A built collection: its manifest and its month files, read as one dataset."""

    name: str
    storage: Storage
    manifest: Mapping

    @property
    def source(self) -> DataSource:
        return get_source(self.manifest["data_source"])

    @property
    def bands(self) -> list[str]:
        """Asset keys whose headers the collection holds."""
        return list(self.manifest.get("bands") or [])

    @property
    def months(self) -> list[str]:
        return list((self.manifest.get("months") or {}).keys())

    @property
    def date_range(self) -> tuple[str, str]:
        start, end = self.manifest["date_range"]
        return start, end

    @property
    def allow_local_hrefs(self) -> bool:
        """Whether the collection was built from a local catalog whose hrefs may be local paths."""
        return bool(self.manifest.get("allow_local_hrefs", False))

    def __len__(self) -> int:
        return int(self.manifest.get("size", 0))

    @cached_property
    def files(self) -> list[str]:
        return [f for f in self.storage.list_files(self.name, suffix=MONTH_FILE)]

    @cached_property
    def _months(self) -> list[tuple[str, str, pq.FileMetaData, pa.Schema]]:
        """(month, path, footer, Arrow schema) of every month file, each footer read once.

        A month of Earth Search items has hundreds of Parquet leaf columns, so the footer is
        the larger part of what a projected read costs: it is parsed here, once per collection.

        Raises:
            OutdatedCollectionError: a month file predates the STAC-GeoParquet layout.
        """
        out = []
        for f in self.files:
            md = pq.read_metadata(f, filesystem=self.storage.arrow_fs)
            out.append((_month_of(f), f, md, md.schema.to_arrow_schema()))
        outdated = sorted(m for m, _, _, s in out if schema.is_outdated(s))
        if outdated:
            raise OutdatedCollectionError(
                f"collection {self.name!r} in {self.storage.uri} has months written by an older "
                f"rasteret-pipelines, before collections became STAC-GeoParquet: "
                f"{', '.join(outdated)}. Rebuild them (build_collection / create_collection over "
                f"those months, or rematerialise those partitions): the cached headers are reused, "
                f"so only the STAC search is repeated"
            )
        return out

    @cached_property
    def schema(self) -> pa.Schema:
        """The columns of all months together, with the ``month`` partition column.

        Month schemas are unified (a property one month lacks reads as null), and the typed
        properties of :func:`schema.property_types` are always present, so filters never miss
        a column.

        Raises:
            OutdatedCollectionError, InconsistentCollectionError: month files that cannot be read together.
        """
        months = self._months
        if not months:
            return pa.schema(schema.guaranteed_fields(self.source))
        schemas = [s.remove_metadata() for _, _, _, s in months]
        try:
            unified = pa.unify_schemas(schemas, promote_options="permissive")
        except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
            raise InconsistentCollectionError(
                f"the month files of collection {self.name!r} in {self.storage.uri} disagree on a "
                f"column type and cannot be read together: {exc}"
            ) from exc
        for f in schema.guaranteed_fields(self.source):
            if f.name not in unified.names:
                unified = unified.append(f)
        return unified.append(pa.field("month", pa.string()))

    @cached_property
    def dataset(self):
        """All months as one ``pyarrow.dataset.Dataset`` over :attr:`schema` (for callers that
        want Arrow's scanner; :meth:`to_table` does not use it, and imports neither it nor pandas)."""
        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        if not self._months:
            return ds.dataset(self.schema.empty_table())
        fmt = ds.ParquetFileFormat()
        fragments = [
            fmt.make_fragment(f, filesystem=self.storage.arrow_fs, partition_expression=pc.field("month") == month)
            for month, f, _, _ in self._months
        ]
        return ds.FileSystemDataset(fragments, schema=self.schema, format=fmt, filesystem=self.storage.arrow_fs)

    def resolve_band(self, name: str) -> str:
        """Asset key of ``name`` in this collection, or :class:`UnknownBandError`."""
        key = self.source.resolve_band(name)
        if key not in self.bands:
            raise UnknownBandError(
                f"band {name!r} ({key}) is not in collection {self.name!r}; it holds {', '.join(self.bands)}"
            )
        return key

    def _predicates(
        self, *, date_range=None, cloud_cover_lt=None, bbox=None, geometry=None, platform=None, properties=None
    ) -> list[tuple[str | tuple[str, str], str, object]]:
        """The filters as ``(column or (struct column, field), operator, value)`` triples."""
        preds: list = []
        if date_range is not None:
            start, end = check_date_range(date_range)
            preds.append(("month", ">=", f"{start:%Y-%m}"))
            preds.append(("month", "<=", f"{end:%Y-%m}"))
            lo = dt.datetime.combine(start, dt.time.min, dt.timezone.utc)
            hi = dt.datetime.combine(end + dt.timedelta(days=1), dt.time.min, dt.timezone.utc)
            preds.append(("datetime", ">=", lo))
            preds.append(("datetime", "<", hi))
        cloud_cover_lt = check_cloud_cover(cloud_cover_lt)
        if cloud_cover_lt is not None:
            preds.append(("eo:cloud_cover", "<", cloud_cover_lt))
        boxes = []
        if bbox is not None:
            boxes.append(check_bbox(bbox))
        if geometry is not None:
            boxes.append(check_geometry(geometry).bounds)
        for minx, miny, maxx, maxy in boxes:
            preds += [
                (("bbox", "xmin"), "<=", maxx),
                (("bbox", "xmax"), ">=", minx),
                (("bbox", "ymin"), "<=", maxy),
                (("bbox", "ymax"), ">=", miny),
            ]
        if platform is not None:
            values = platform.get("in") if isinstance(platform, Mapping) else platform
            values = [values] if isinstance(values, str) else list(values)
            preds.append(("platform", "in", values))
        for key, value in (properties or {}).items():
            if isinstance(value, (list, tuple, set)):
                preds.append((key, "in", list(value)))
            else:
                preds.append((key, "==", value))
        return preds

    def filter_expression(self, **filters) -> pc.Expression | None:
        """The filter of :meth:`to_table` (``date_range``, ``cloud_cover_lt``, ``bbox``,
        ``geometry``, ``platform``, ``properties``) as a ``pyarrow.compute.Expression`` over
        :attr:`schema` (for :attr:`dataset` scans; geometry: bbox overlap only)."""
        import pyarrow.compute as pc

        exprs = []
        for column, op, value in self._predicates(**filters):
            field = pc.field(*column) if isinstance(column, tuple) else pc.field(column)
            if isinstance(value, dt.datetime):
                value = pa.scalar(value, pa.timestamp("us", "UTC"))
            exprs.append(field.isin(value) if op == "in" else _OPS[op](field, value))
        if not exprs:
            return None
        out = exprs[0]
        for e in exprs[1:]:
            out = out & e
        return out

    def to_table(
        self,
        *,
        date_range=None,
        cloud_cover_lt: float | None = None,
        bbox=None,
        geometry=None,
        platform=None,
        properties: Mapping | None = None,
        columns: Sequence[str] | None = None,
        sort: bool = True,
    ) -> pa.Table:
        """Rows matching every filter, sorted by (datetime, id); exact geometry intersection.

        Args:
            date_range: ``(start, end)`` dates, inclusive.
            cloud_cover_lt: Keep ``eo:cloud_cover`` below this.
            bbox: ``(min lon, min lat, max lon, max lat)`` the item must overlap.
            geometry: Shapely geometry or GeoJSON the item footprint must intersect.
            platform: A platform, a list, or ``{"in": [...]}``.
            properties: ``{column: value or list of values}`` equality filters.
            columns: Columns to read (default: all). Only these (and the filters' columns) are
                decoded: pass them whenever a caller needs a few, since ``assets`` alone is
                hundreds of Parquet leaf columns for an Earth Search item (38 assets).
            sort: False leaves the rows in month-file order (for a caller that orders them
                itself; sorting takes every selected column, header structs included).

        Raises:
            InvalidSearchError: a filter or a column names a column the collection lacks.
        """
        wanted = list(columns) if columns is not None else None
        table = self._scan(
            self._predicates(
                date_range=date_range,
                cloud_cover_lt=cloud_cover_lt,
                bbox=bbox,
                geometry=geometry,
                platform=platform,
                properties=properties,
            ),
            None if wanted is None else wanted + [c for c in ("datetime", "id") if c not in wanted],
            geometry,
        )
        if sort and table.num_rows > 1:
            import pyarrow.compute as pc

            order = pc.sort_indices(table, sort_keys=[("datetime", "ascending"), ("id", "ascending")])
            table = table.take(order)
        return table.select(wanted) if wanted is not None else table

    def _scan(self, preds, columns: Sequence[str] | None, geometry=None) -> pa.Table:
        """Rows matching ``preds`` (and intersecting ``geometry``), months in file order, with
        ``columns`` (default all) typed as :attr:`schema`."""
        unified = self.schema
        wanted = list(columns) if columns is not None else [n for n in unified.names]
        pred_cols = {c[0] if isinstance(c, tuple) else c for c, _, _ in preds} - {"month"}
        missing = sorted((set(wanted) | pred_cols) - set(unified.names))
        if missing:
            raise InvalidSearchError(
                f"collection {self.name!r} has no column {', '.join(map(repr, missing))}; "
                f"its columns are {', '.join(n for n in unified.names)}"
            )
        need = list(dict.fromkeys(wanted + sorted(pred_cols) + (["geometry"] if geometry is not None else [])))
        target = pa.schema([unified.field(n) for n in need])
        lo = max((v for c, op, v in preds if c == "month" and op == ">="), default=None)
        hi = min((v for c, op, v in preds if c == "month" and op == "<="), default=None)
        tables = []
        for month, path, md, month_schema in self._months:
            if (lo is not None and month < lo) or (hi is not None and month > hi):
                continue
            present = set(month_schema.names)
            read = [n for n in need if n in present]
            with self.storage.arrow_fs.open_input_file(path) as fh:
                t = pq.ParquetFile(fh, metadata=md).read(columns=read, use_threads=False)
            tables.append(_conform(t, target, month))
        table = pa.concat_tables(tables) if tables else target.empty_table()
        row_preds = [p for p in preds if p[0] != "month"]  # exact already: one month per file
        if row_preds and table.num_rows:
            table = _rows(table, _row_mask(table, row_preds))
        if geometry is not None and table.num_rows:
            geom = check_geometry(geometry)
            footprints = shapely.from_wkb(table.column("geometry").to_pylist())
            table = _rows(table, shapely.intersects(footprints, geom))
        return table.select(wanted)

    def to_geodataframe(self, **filters):
        """:meth:`to_table` as a GeoDataFrame (EPSG:4326) without the header columns."""
        import geopandas as gpd

        table = self.to_table(**filters)
        headers = {schema.band_columns(b)[1] for b in schema.header_bands(table.schema)}
        df = table.select([c for c in table.column_names if c not in headers]).to_pandas()
        df["geometry"] = gpd.GeoSeries.from_wkb(df["geometry"], crs="EPSG:4326")
        return gpd.GeoDataFrame(df, geometry="geometry", crs="EPSG:4326")

    def stac_items(self, **filters) -> list[dict]:
        """The STAC items matching :meth:`to_table`'s filters, read back by ``stac-geoparquet``.

        The header columns are left out (:func:`schema.stac_view`); ``pystac.Item.from_dict``
        accepts every item.
        """
        from stac_geoparquet.arrow import stac_table_to_items

        filters.pop("columns", None)
        table = schema.stac_view(self.to_table(**filters))
        return list(stac_table_to_items(table)) if table.num_rows else []

    @staticmethod
    def headers(table: pa.Table, band: str) -> list[CogHeader | None]:
        """Cached headers of ``band`` (asset key) for every row of ``table`` (None if failed)."""
        column = schema.band_columns(band)[1]
        if column not in table.column_names:
            raise UnknownBandError(f"no header column for band {band!r}")
        return [CogHeader.from_dict(d) if d is not None else None for d in table.column(column).to_pylist()]


_OPS = {  # for pyarrow.compute.Expression fields
    "<": lambda a, v: a < v,
    "<=": lambda a, v: a <= v,
    ">": lambda a, v: a > v,
    ">=": lambda a, v: a >= v,
    "==": lambda a, v: a == v,
}


def _conform(table: pa.Table, target: pa.Schema, month: str) -> pa.Table:
    """One month's ``table`` as ``target``: ``month`` filled in, absent columns null, types
    promoted as :attr:`Collection.schema` unified them."""
    n = table.num_rows
    arrays = []
    for f in target:
        if f.name == "month":
            arrays.append(_string_column(month, n))
        elif f.name in table.column_names:
            column = table.column(f.name)
            arrays.append(column if column.type.equals(f.type) else column.cast(f.type))
        else:
            arrays.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(arrays, schema=target)


# The filters run on numpy views of the Arrow buffers and Python lists: converting Python values
# *to* Arrow (pa.array, pa.scalar, a compute kernel's scalar argument, ChunkedArray.to_numpy)
# makes pyarrow import pandas, which would then load before a read's first request.


def _row_mask(table: pa.Table, preds) -> np.ndarray:
    """Rows where every predicate holds; a null value fails its predicate (as in a dataset scan)."""
    mask = np.ones(table.num_rows, dtype=bool)
    for column, op, value in preds:
        if isinstance(column, tuple):
            values = pa.chunked_array(
                [c.field(column[1]) for c in table.column(column[0]).chunks],
                type=table.schema.field(column[0]).type.field(column[1]).type,
            )
        else:
            values = table.column(column)
        kind = values.type
        if op != "in" and (pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_timestamp(kind)):
            data, valid = _numeric(values)
            if isinstance(value, dt.datetime):
                value = _timestamp_value(value, kind)
            with np.errstate(invalid="ignore"):
                mask &= valid & _NUMPY_OPS[op](data, value)
        else:
            items = values.to_pylist()
            if op == "in":
                wanted = list(value)
                mask &= np.fromiter((v is not None and v in wanted for v in items), bool, len(items))
            else:
                compare = _NUMPY_OPS[op]
                mask &= np.fromiter((v is not None and bool(compare(v, value)) for v in items), bool, len(items))
    return mask


_NUMPY_OPS = {  # for pyarrow.compute.Expression fields
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
}


def _numeric(values: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(values, valid) of a numeric or timestamp column straight from its buffers (timestamps
    as their integer counts)."""
    kind = values.type
    if pa.types.is_timestamp(kind):
        dtype = np.dtype(np.int64)
    else:
        code = "f" if pa.types.is_floating(kind) else ("u" if pa.types.is_unsigned_integer(kind) else "i")
        dtype = np.dtype(f"{code}{kind.bit_width // 8}")
    datas, valids = [], []
    for chunk in values.chunks:
        n, off = len(chunk), chunk.offset
        bitmap, buf = chunk.buffers()[:2]
        datas.append(np.frombuffer(buf, dtype=dtype, count=n + off)[off:] if n else np.zeros(0, dtype))
        if bitmap is None or chunk.null_count == 0:
            valids.append(np.ones(n, bool))
        else:
            bits = np.unpackbits(np.frombuffer(bitmap, np.uint8), bitorder="little")
            valids.append(bits[off : off + n].astype(bool))
    if not datas:
        return np.zeros(0, dtype), np.zeros(0, bool)
    return np.concatenate(datas), np.concatenate(valids)


_UNIT = {"s": dt.timedelta(seconds=1), "ms": dt.timedelta(milliseconds=1), "us": dt.timedelta(microseconds=1)}


def _timestamp_value(when: dt.datetime, kind: pa.TimestampType) -> int:
    """``when`` (tz-aware) as an integer count of ``kind``'s unit since the epoch, UTC."""
    delta = when - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    if kind.unit == "ns":
        return (delta // dt.timedelta(microseconds=1)) * 1000
    return delta // _UNIT[kind.unit]


def _rows(table: pa.Table, mask: np.ndarray) -> pa.Table:
    """The rows of ``table`` where ``mask`` is true, as slices of its runs of true values
    (``Table.filter`` would import all of ``pyarrow.compute`` for a table of a few rows)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.all():
        return table
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.view(np.int8), [0]))))
    runs = [table.slice(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2])]
    return pa.concat_tables(runs) if runs else table.slice(0, 0)


def _string_column(value: str, n: int) -> pa.Array:
    """``n`` copies of ``value`` as an Arrow string array, built from its buffers."""
    data = value.encode()
    offsets = np.arange(n + 1, dtype=np.int32) * len(data)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data * n)])


def _month_of(path: str) -> str:
    """``YYYY-MM`` of ``.../month=YYYY-MM/items.parquet``."""
    return path.rsplit("/", 2)[-2].removeprefix("month=")


def load_collection(name: str, workspace) -> Collection:
    """Open collection ``name`` in ``workspace``.

    Raises:
        CollectionNotFoundError (a ``ValueError``): no such collection in the workspace.
        InvalidCollectionNameError (a ``ValueError``): ``name`` is not one folder name
            (``../x``, NUL, too long): nothing outside the workspace is opened.
    """
    check_collection_name(name)
    store = Storage.from_uri(workspace)
    if not store.exists(name, MANIFEST):
        available = [c["name"] for c in list_collections(workspace)]
        raise CollectionNotFoundError(
            f"no collection {name!r} in workspace {store.uri}"
            + (f"; available: {', '.join(available)}" if available else "; it holds none")
        )
    return Collection(name=name, storage=store, manifest=store.read_json(name, MANIFEST))


def list_collections(workspace) -> list[dict]:
    """Every collection in ``workspace``: ``name``, ``data_source``, ``date_range``, ``size``."""
    store = Storage.from_uri(workspace)
    out = []
    for name in store.list_dirs():
        if not store.exists(name, MANIFEST):
            continue
        manifest = store.read_json(name, MANIFEST)
        out.append(
            {
                "name": name,
                "data_source": manifest.get("data_source"),
                "date_range": tuple(manifest.get("date_range") or ()),
                "size": int(manifest.get("size", 0)),
            }
        )
    return out
