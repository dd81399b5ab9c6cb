"""Open, list and filter collections locally, with predicate push-down and no network request."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
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
    CollectionError,
    CollectionNotFoundError,
    OutdatedCollectionError,
    UnknownBandError,
)
from rasteret_pipelines.storage import Storage


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
    def dataset(self) -> ds.Dataset:
        """All months as one :mod:`pyarrow.dataset`, with the ``month`` partition column.

        Month schemas are unified (a property one month lacks reads as null), and the typed
        properties of :data:`schema.PROPERTY_TYPES` are always present, so filters never miss
        a column. Only the columns a scan asks for are read.

        Raises:
            OutdatedCollectionError: a month file predates the STAC-GeoParquet layout.
        """
        files = self.files
        if not files:
            return ds.dataset(pa.schema(schema.guaranteed_fields()).empty_table())
        # One fragment per month file, its footer read once here and kept: scans reuse it
        # (a month of Earth Search items has hundreds of leaf columns, so the footer is the
        # larger part of what a projected read fetches).
        fmt = ds.ParquetFileFormat()
        fragments = []
        for f in files:
            fragment = fmt.make_fragment(f, filesystem=self.storage.fs,
                                         partition_expression=pc.field("month") == _month_of(f))
            fragment.ensure_complete_metadata()
            fragments.append(fragment)
        schemas = [fragment.physical_schema for fragment in fragments]
        outdated = sorted(_month_of(f) for f, s in zip(files, schemas) if schema.is_outdated(s))
        if outdated:
            raise OutdatedCollectionError(
                f"collection {self.name!r} in {self.storage.uri} has months written by an older "
                f"rasteret-pipelines, before collections became STAC-GeoParquet: "
                f"{', '.join(outdated)}. Rebuild them (build_collection / create_collection over "
                f"those months, or rematerialise those partitions): the cached headers are reused, "
                f"so only the STAC search is repeated"
            )
        try:
            unified = pa.unify_schemas([s.remove_metadata() for s in schemas], promote_options="permissive")
        except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
            raise CollectionError(
                f"the month files of collection {self.name!r} in {self.storage.uri} disagree on a "
                f"column type and cannot be read together: {exc}"
            ) from exc
        for f in schema.guaranteed_fields():
            if f.name not in unified.names:
                unified = unified.append(f)
        return ds.FileSystemDataset(
            fragments, schema=unified.append(pa.field("month", pa.string())), format=fmt,
            filesystem=self.storage.fs,
        )

    def resolve_band(self, name: str) -> str:
        """Asset key of ``name`` in this collection, or :class:`UnknownBandError`."""
        key = self.source.resolve_band(name)
        if key not in self.bands:
            raise UnknownBandError(
                f"band {name!r} ({key}) is not in collection {self.name!r}; it holds "
                f"{', '.join(self.bands)}"
            )
        return key

    def filter_expression(
        self,
        *,
        date_range=None,
        cloud_cover_lt: float | None = None,
        bbox=None,
        geometry=None,
        platform=None,
        properties: Mapping | None = None,
    ) -> ds.Expression | None:
        """The push-down filter for :meth:`to_table` (geometry: bbox overlap only)."""
        exprs = []
        if date_range is not None:
            start, end = check_date_range(date_range)
            exprs.append(pc.field("month") >= f"{start:%Y-%m}")
            exprs.append(pc.field("month") <= f"{end:%Y-%m}")
            lo = dt.datetime.combine(start, dt.time.min, dt.timezone.utc)
            hi = dt.datetime.combine(end + dt.timedelta(days=1), dt.time.min, dt.timezone.utc)
            exprs.append(pc.field("datetime") >= pa.scalar(lo, pa.timestamp("us", "UTC")))
            exprs.append(pc.field("datetime") < pa.scalar(hi, pa.timestamp("us", "UTC")))
        cloud_cover_lt = check_cloud_cover(cloud_cover_lt)
        if cloud_cover_lt is not None:
            exprs.append(pc.field("eo:cloud_cover") < cloud_cover_lt)
        boxes = []
        if bbox is not None:
            boxes.append(check_bbox(bbox))
        if geometry is not None:
            boxes.append(check_geometry(geometry).bounds)
        for minx, miny, maxx, maxy in boxes:
            exprs += [
                pc.field("bbox", "xmin") <= maxx,
                pc.field("bbox", "xmax") >= minx,
                pc.field("bbox", "ymin") <= maxy,
                pc.field("bbox", "ymax") >= miny,
            ]
        if platform is not None:
            values = platform.get("in") if isinstance(platform, Mapping) else platform
            values = [values] if isinstance(values, str) else list(values)
            exprs.append(pc.field("platform").isin(values))
        for key, value in (properties or {}).items():
            if isinstance(value, (list, tuple, set)):
                exprs.append(pc.field(key).isin(list(value)))
            else:
                exprs.append(pc.field(key) == value)
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
    ) -> pa.Table:
        """Rows matching every filter, read with push-down; exact geometry intersection.

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
        """
        expr = self.filter_expression(
            date_range=date_range, cloud_cover_lt=cloud_cover_lt, bbox=bbox, geometry=geometry,
            platform=platform, properties=properties,
        )
        wanted = list(columns) if columns is not None else None
        cols = None
        if wanted is not None:
            extra = ["datetime", "id"] + (["geometry"] if geometry is not None else [])
            cols = wanted + [c for c in extra if c not in wanted]
        table = self.dataset.to_table(columns=cols, filter=expr)
        if geometry is not None and table.num_rows:
            geom = check_geometry(geometry)
            footprints = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
            table = table.filter(pa.array(shapely.intersects(footprints, geom)))
        if table.num_rows:
            table = table.sort_by([("datetime", "ascending"), ("id", "ascending")])
        return table.select(wanted) if wanted is not None else table

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
