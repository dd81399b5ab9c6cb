"""What the assets do, as plain functions over the library (the assets only wire them up).

* :func:`build_month`: one month of a source's collection (STAC search over the AOIs' bounds,
  every band header cached), incrementally through
  :func:`~rasteret_pipelines.collections.build_collection`.
* :func:`field_stats_month`: the NDVI statistics of every field of a run's groups in one month,
  with ONE :func:`~rasteret_pipelines.reading.zonal_stats` call (every tile fetched once);
  :func:`split_by_group` and :func:`group_table` turn it into one GeoParquet table per group.
* :func:`group_geotiffs`: NDVI COGs, one per (group, date) masked to the group's fields (or one
  per (field, date) for small groups), read in batches bounded by :func:`chunk_aois`; a group's
  area is the union of its fields (:func:`union_by_group`), kept for a run's months by
  :class:`GroupAreas`.
* :func:`fields_outside`: fields outside the area a collection month was indexed for.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from rasteret_pipelines.aois import AoiSet
from rasteret_pipelines.collections import MonthReport, build_collection, get_source
from rasteret_pipelines.defs.io_managers import COLLECTIONS, CollectionMonth, CollectionSlice
from rasteret_pipelines.defs.partitions import month_bounds
from rasteret_pipelines.errors import AoiNotIndexedError, InvalidReadArgumentError, InvalidSearchError, NoScenesError


def collection_bands(source_id: str) -> list[str]:
    """Asset keys a source's collection indexes: red, NIR and the quality band (cloud mask)."""
    source = get_source(source_id)
    return list(dict.fromkeys([*source.ndvi_bands, source.quality_band]))


def check_month_in_source(source_id: str, month: str) -> None:
    """Refuse a month that ends before the source's first data.

    Raises:
        InvalidSearchError: naming the month, the source and its first date.
    """
    source = get_source(source_id)
    _, last = month_bounds(month)
    first = dt.date.fromisoformat(source.start_date)
    if last < first:
        raise InvalidSearchError(
            f"month {month} is before {source.id} starts ({first}): nothing to index; "
            "choose a later partition (or a later RASTERET_START_MONTH)"
        )


@dataclass
class MonthBuild:
    """Result of :func:`build_month`."""

    output: CollectionMonth
    report: MonthReport
    stac_url: str


def build_month(
    source_id: str,
    name: str,
    month: str,
    *,
    storage_uri: str,
    aois: AoiSet,
    stac_url: str | None,
    cloud_cover_lt: float | None = None,
    fetch_config=None,
) -> MonthBuild:
    """Build (or incrementally rebuild) month ``YYYY-MM`` of collection ``name``.

    Raises:
        InvalidSearchError: the month is before the source's start.
        StacApiError: the STAC API is unreachable or keeps failing.
    """
    check_month_in_source(source_id, month)
    first, last = month_bounds(month)
    workspace = storage_uri.rstrip("/") + "/" + COLLECTIONS
    report = build_collection(
        source_id,
        name,
        workspace,
        date_range=(first, last),
        bbox=aois.bbox,
        bands=collection_bands(source_id),
        cloud_cover_lt=cloud_cover_lt,
        stac_url=stac_url,
        fetch_config=fetch_config,
        progress=False,
    )
    month_report = report.months[0]
    effective = get_source(source_id).effective_stac_url(stac_url)
    search = {
        "bbox": [round(v, 7) for v in aois.bbox],
        "fields": len(aois.ids),
        "groups": list(getattr(aois, "groups", [])),
        "stac_url": effective,
        "cloud_cover_lt": cloud_cover_lt,
        "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return MonthBuild(CollectionMonth(name, month, month_report.path, search), month_report, effective)


def covers(search: dict, geometry) -> bool:
    """True when the search bbox of a collection month contains ``geometry`` (lon/lat)."""
    bbox = search.get("bbox")
    if not bbox:
        return False
    minx, miny, maxx, maxy = geometry.bounds
    eps = 1e-6
    return bbox[0] - eps <= minx and bbox[1] - eps <= miny and maxx <= bbox[2] + eps and maxy <= bbox[3] + eps


BYTES_PER_PIXEL_DATE = 16
"""Estimated bytes held per pixel and date of a read: red, NIR and NDVI as float32 plus masks."""


def check_aoi_indexed(collection: CollectionSlice, month: str, aoi_id: str, geometry) -> None:
    """Refuse an AOI outside the area a collection month was indexed for.

    Raises:
        AoiNotIndexedError: naming the month, its search bbox and the AOI.
    """
    search = collection.searches.get(month, {})
    if search and not covers(search, geometry):
        raise AoiNotIndexedError(
            f"collection {collection.name} month {month} was indexed for bbox {search.get('bbox')} "
            f"(AOIs {', '.join(search.get('aoi_ids', []))}), which does not contain AOI {aoi_id}: "
            f"materialise that collection month again (the AOI sensor requests it)"
        )


def fields_outside(collection: CollectionSlice, month: str, fields) -> list[str]:
    """Ids of ``fields`` (a GeoDataFrame indexed by id) not inside the bbox the collection's
    ``month`` was searched over (none when the month records no search)."""
    bbox = (collection.searches.get(month) or {}).get("bbox")
    if not bbox or len(fields) == 0:
        return []
    b = fields.geometry.bounds
    eps = 1e-6
    inside = (
        (b["minx"] >= bbox[0] - eps)
        & (b["miny"] >= bbox[1] - eps)
        & (b["maxx"] <= bbox[2] + eps)
        & (b["maxy"] <= bbox[3] + eps)
    )
    return [str(i) for i in fields.index[~inside.to_numpy()]]


def window_bytes(geometry, n_dates: int, pixel_size: float = 10.0) -> tuple[int, int, int]:
    """(rows, cols, bytes) estimated for one AOI's window over ``n_dates`` dates.

    From the geometry's lon/lat bounds (metres per degree at its latitude) and the pixel size;
    good to a few percent for field-sized areas, which is all a memory budget needs.
    """
    minx, miny, maxx, maxy = geometry.bounds
    lat = math.radians((miny + maxy) / 2)
    rows = int(math.ceil((maxy - miny) * 110_574 / pixel_size)) + 1
    cols = int(math.ceil((maxx - minx) * 111_320 * max(math.cos(lat), 0.01) / pixel_size)) + 1
    return rows, cols, rows * cols * max(n_dates, 1) * BYTES_PER_PIXEL_DATE


def chunk_aois(
    aois: AoiSet,
    ids,
    *,
    max_aois: int,
    max_bytes: int,
    n_dates: int,
    pixel_size: float = 10.0,
) -> list[list[str]]:
    """Split ``ids`` into read batches that each hold at most ``max_aois`` AOIs and at most
    ``max_bytes`` estimated bytes.

    A batch is read as one stacked Dataset padded to its largest window, so a batch costs
    ``len(batch) x max rows x max cols x dates x`` :data:`BYTES_PER_PIXEL_DATE`. AOIs are taken
    in spatial order (rows of 0.05 degrees, then longitude) so neighbours, which share tiles,
    share a batch. An AOI larger than the budget on its own is a batch of one.
    """
    max_aois = max(1, int(max_aois))
    order = sorted(ids, key=lambda a: (math.floor(aois.geometry(a).centroid.y / 0.05), aois.geometry(a).centroid.x, a))
    batches: list[list[str]] = []
    current: list[str] = []
    rows = cols = 0
    for aoi_id in order:
        r, c, _ = window_bytes(aois.geometry(aoi_id), n_dates, pixel_size)
        nr, nc = max(rows, r), max(cols, c)
        cost = (len(current) + 1) * nr * nc * max(n_dates, 1) * BYTES_PER_PIXEL_DATE
        if current and (len(current) >= max_aois or cost > max_bytes):
            batches.append(current)
            current, nr, nc = [], r, c
        current.append(aoi_id)
        rows, cols = nr, nc
    if current:
        batches.append(current)
    return batches


FIELD_STATS = ("mean", "median", "std", "min", "max", "count")
"""The NDVI statistics of every (field, date) row (``valid_fraction`` comes with them)."""
GEOTIFF_MODES = ("group", "fields", "none")
"""``RASTERET_FIELD_GEOTIFFS``: one COG per (group, date), per (field, date) for small groups, or none."""
FIELD_GEOTIFF_MAX_FIELDS = 200
"""Groups with more fields than this get group COGs even when per-field COGs are asked for."""


def stats_schema() -> pa.Schema:
    """The columns of a field-statistics table, without the kept ones (``group``, ``name``, ``geometry``)."""
    floats = [(f"ndvi_{s}", pa.float64()) for s in ("mean", "median", "std", "min", "max")]
    return pa.schema(
        [
            ("id", pa.string()),
            ("date", pa.date32()),
            *floats,
            ("ndvi_count", pa.int64()),
            ("ndvi_valid_fraction", pa.float64()),
            ("scene_ids", pa.string()),
        ]
    )


def field_stats_month(
    source_id: str, collection: CollectionSlice, month: str, fields, *, fetch_config=None, planned=None
) -> pa.Table:
    """NDVI statistics of every field in ``fields`` for every date of ``month``: ONE
    :func:`~rasteret_pipelines.reading.zonal_stats` call over all of them (every tile fetched
    once, whatever the number of fields and groups).

    Args:
        fields: GeoDataFrame indexed by field id with ``group`` and ``name`` (a
            :class:`~rasteret_pipelines.fields.FieldSet`'s frame or a part of it).
        planned: The month's :class:`MonthPlan` (:func:`plan_field_month` of these ``fields``):
            the read runs its planned ``zonal_stats`` call instead of planning it again, and
            frees that plan's pixel pairs once done.

    Returns:
        One row per (field, date) some scene covers: the library's columns, then ``group`` and
        ``name``; schema metadata ``requests``, ``header_requests``, ``bytes_read``. A month
        without scenes gives an empty table.
    """
    from rasteret_pipelines.reading import zonal_stats

    if planned is not None:
        planned.check_fields(fields)
    if planned is not None and planned.stats is not None:  # None: no field, planned nothing
        frame, kwargs, plan = planned.stats
        if plan is None:  # no scene covers them: the dry run found nothing to read
            return _no_stats()
        try:
            return zonal_stats(collection, frame, **kwargs, planned=plan)
        finally:
            plan.planned = None  # read: its pixel pairs are freed, its numbers stay
    try:
        return zonal_stats(collection, fields.reset_index(), **_stats_read(source_id, collection, month, fetch_config))
    except NoScenesError:
        return _no_stats()


def _no_stats() -> pa.Table:
    """The statistics of a month no scene covers: no row, no request."""
    schema = stats_schema().append(pa.field("group", pa.string())).append(pa.field("name", pa.string()))
    return schema.empty_table().replace_schema_metadata(
        {b"requests": b"0", b"header_requests": b"0", b"bytes_read": b"0"}
    )


def _stats_read(source_id: str, collection, month: str, fetch_config) -> dict:
    """The keyword arguments of the month's ``zonal_stats`` call (the read and its dry run)."""
    first, last = month_bounds(month)
    return dict(
        index="ndvi",
        stats=FIELD_STATS,
        id_column="id",
        keep=("group", "name"),
        date_range=(first, last),
        cloud_mask=get_source(source_id).quality_band in collection.bands,
        fetch_config=fetch_config,
    )


@dataclass
class MonthPlan:
    """A month's reads of the fields asset, planned once from the cached headers (no request):
    each read's exact dry run (:func:`~rasteret_pipelines.reading.explain.explain`), which
    :func:`field_stats_month` and :func:`group_geotiffs` then run as planned (``planned=``)."""

    fields: object
    """The fields planned for (a read is given this object)."""
    plans: list[tuple[str, object]]
    """``[(label, ReadPlan)]``: the statistics, then every batch of COGs that some scene covers."""
    stats: tuple | None
    """``(fields frame, zonal_stats keywords, ReadPlan or None: no scene covers them)``; None: no field."""
    geotiffs: list[tuple]
    """``[(areas, subfolder, {area: group} or None, args, kwargs, ReadPlan or None)]`` per batch of COGs."""

    def check_fields(self, fields) -> None:
        """Refuse to run this plan for other fields.

        Raises:
            InvalidReadArgumentError: ``fields`` is not the frame this month was planned for.
        """
        if fields is not self.fields:
            raise InvalidReadArgumentError("planned= is the plan of other fields: plan this month's fields first")


def plan_field_month(
    source_id: str,
    collection: CollectionSlice,
    month: str,
    fields,
    *,
    mode: str = "group",
    max_bytes: int = 512_000_000,
    max_areas: int = 64,
    fetch_config=None,
    areas: GroupAreas | None = None,
) -> MonthPlan:
    """The exact dry run of a month's reads, from the cached headers alone (no request):
    :func:`field_stats_month`'s ``zonal_stats`` call, then every batch :func:`group_geotiffs`
    reads, with the same arguments (see :mod:`~rasteret_pipelines.reading.explain`), labelled
    in :attr:`MonthPlan.plans`. A read no scene covers plans nothing, as it reads nothing. The
    reads then run these plans (``planned=``) instead of planning again. ``areas`` keeps the
    groups' unions between calls (one :class:`GroupAreas` for all the months of a run);
    None: a new one."""
    from rasteret_pipelines.reading.explain import ReadPlan, explain

    if len(fields) == 0:
        return MonthPlan(fields, [], None, [])
    frame, kwargs = fields.reset_index(), _stats_read(source_id, collection, month, fetch_config)
    try:
        plan = explain("zonal_stats", collection, frame, **kwargs)
    except NoScenesError:
        plan = None
    plans: list[tuple[str, object]] = [("statistics (zonal_stats)", plan or ReadPlan("zonal_stats"))]
    geotiffs = []
    reads = _geotiff_reads(source_id, collection, month, fields, mode, max_bytes, max_areas, fetch_config, areas)
    for i, (batch, sub, group_of, args, kw) in enumerate(reads, start=1):
        try:
            batch_plan = explain("get_xarray", collection, batch, *args, **kw)
        except NoScenesError:
            batch_plan = None
        else:
            plans.append((f"COGs, batch {i} of {len(reads)} (get_xarray)", batch_plan))
        geotiffs.append((batch, sub, group_of, args, kw, batch_plan))
    return MonthPlan(fields, plans, (frame, kwargs, plan), geotiffs)


def split_by_group(table: pa.Table) -> dict[str, pa.Table]:
    """``{group: its rows}`` of a statistics table, in one sort (no pass per group)."""
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return {}
    order = pc.sort_indices(table, sort_keys=[("group", "ascending"), ("id", "ascending"), ("date", "ascending")])
    table = table.take(order)
    groups = np.asarray(table.column("group").to_numpy(zero_copy_only=False), dtype=object)
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    ends = np.r_[starts[1:], len(groups)]
    return {str(groups[a]): table.slice(a, b - a) for a, b in zip(starts, ends)}


def group_table(rows: pa.Table, fields, month: str) -> pa.Table:
    """One partition's GeoParquet table: the statistics rows of a group (``group`` dropped),
    ``month`` added, each field's geometry (WKB, lon/lat) attached, ``geo`` metadata set."""
    import json

    import shapely

    ids = rows.column("id").to_pylist()
    geoms = fields.geometry.reindex(ids).to_numpy() if ids else np.array([], dtype=object)
    out = rows.drop_columns([c for c in ("group",) if c in rows.column_names])
    out = out.append_column("month", pa.array([month] * rows.num_rows, pa.string()))
    out = out.append_column("geometry", pa.array(shapely.to_wkb(geoms).tolist() if ids else [], pa.binary()))
    geo = {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["MultiPolygon", "Polygon"]}},
    }
    return out.replace_schema_metadata({**(rows.schema.metadata or {}), b"geo": json.dumps(geo).encode()})


def empty_group_table(month: str) -> pa.Table:
    """The table of a group no scene covers in ``month``: the columns, no row."""
    schema = stats_schema().append(pa.field("name", pa.string()))
    return group_table(schema.empty_table().append_column("group", pa.array([], pa.string())), None, month)


def reads_of(table: pa.Table) -> dict[str, int]:
    """``requests``, ``header_requests``, ``bytes_read`` of a statistics table (its schema metadata)."""
    meta = table.schema.metadata or {}
    return {k: int(meta.get(k.encode(), b"0") or 0) for k in ("requests", "header_requests", "bytes_read")}


class _Shapes:
    """What :func:`chunk_aois` needs of a set of areas: their geometries by id."""

    def __init__(self, frame):
        self.frame = frame

    def geometry(self, key):
        return self.frame.geometry.loc[key]


def group_geotiffs(
    source_id: str,
    collection: CollectionSlice,
    month: str,
    fields,
    *,
    output_uri: str,
    mode: str = "group",
    max_bytes: int = 512_000_000,
    max_areas: int = 64,
    fetch_config=None,
    planned: MonthPlan | None = None,
    areas: GroupAreas | None = None,
) -> dict[str, list[str]]:
    """NDVI COGs of the groups of ``fields`` for every date of ``month``.

    ``mode="group"``: one COG per (group, date) over the group's extent, NaN outside its fields
    (the read's mask is the union of the group's fields): ``<output_uri>/geometry_<group>/
    ndvi_YYYYMMDD.tif``. ``mode="fields"``: one COG per (field, date) for groups of at most
    :data:`FIELD_GEOTIFF_MAX_FIELDS` fields, at ``<output_uri>/fields/geometry_<id>/...``
    (larger groups get group COGs). Areas are read in batches bounded by count and estimated
    bytes (:func:`chunk_aois`), each batch in one read. With ``planned`` (the month's
    :class:`MonthPlan` of these ``fields``, made with the same ``mode`` and bounds) the batches
    are its batches and each read runs its plan instead of planning again; without it, the
    groups' unions come from ``areas`` (see :func:`plan_field_month`).

    Returns:
        ``({group: [path, ...]}, reads)``: the paths (for ``fields`` the group's fields' paths
        together) and the reads' ``requests``, ``header_requests`` and ``bytes_read``, summed.
    """
    from rasteret_pipelines.products import ndvi_dataset, save_per_geometry
    from rasteret_pipelines.reading import read_geometries

    reads = {"requests": 0, "header_requests": 0, "bytes_read": 0}
    out: dict[str, list[str]] = {}
    if planned is not None:
        planned.check_fields(fields)
        batches = planned.geotiffs
    else:
        batches = [
            (*read, None)
            for read in _geotiff_reads(
                source_id, collection, month, fields, mode, max_bytes, max_areas, fetch_config, areas
            )
        ]
    red, nir = get_source(source_id).ndvi_bands
    for batch, sub, group_of, args, kwargs, plan in batches:
        if planned is not None and plan is None:  # its dry run found no scene: nothing to read
            continue
        where = output_uri if sub is None else output_uri.rstrip("/") + "/" + sub
        try:
            ds = read_geometries(collection, batch, *args, **kwargs, planned=plan)  # None: planned here
        except NoScenesError:
            continue
        finally:
            if plan is not None:
                plan.planned = None  # read: its masks are freed, its numbers stay
        for k in reads:
            reads[k] += int(ds.attrs.get(k, 0))
        paths = save_per_geometry(ndvi_dataset(ds, red, nir), where, file_prefix="ndvi", data_var="NDVI")
        del ds
        for key, files in paths.items():
            group = group_of[str(key)] if group_of else str(key)
            out.setdefault(group, []).extend(files)
    return out, reads


def _geotiff_reads(
    source_id: str,
    collection,
    month: str,
    fields,
    mode: str,
    max_bytes: int,
    max_areas: int,
    fetch_config,
    areas: GroupAreas | None = None,
) -> list[tuple]:
    """The reads :func:`group_geotiffs` makes, in order: ``[(areas, subfolder (None: the output
    folder itself), {area: group} or None, args, kwargs)]`` for ``read_geometries(collection,
    areas, *args, **kwargs)`` (shared with its dry run, :func:`plan_field_month`). A group's
    area is the union of its fields, from ``areas`` (None: computed here)."""
    import geopandas as gpd

    if mode == "none" or len(fields) == 0:
        return []
    source = get_source(source_id)
    red, nir = source.ndvi_bands
    first, last = month_bounds(month)
    sizes = fields.groupby("group").size()
    per_field = set(sizes[sizes <= FIELD_GEOTIFF_MAX_FIELDS].index) if mode == "fields" else set()
    grouped = fields[~fields["group"].isin(per_field)]
    reads = []
    if len(grouped):
        unions = (areas if areas is not None else GroupAreas()).of(grouped)
        reads.append(
            (gpd.GeoDataFrame(geometry=list(unions.values()), index=list(unions), crs="EPSG:4326"), None, None)
        )
    if per_field:
        one = fields[fields["group"].isin(per_field)]
        reads.append(
            (
                gpd.GeoDataFrame(geometry=one.geometry.values, index=[str(i) for i in one.index], crs="EPSG:4326"),
                "fields",
                dict(zip(one.index, one["group"])),
            )
        )
    n_dates = max(collection.to_table(date_range=(first, last), columns=["id"]).num_rows, 1)
    kwargs = dict(
        date_range=(first, last),
        values="reflectance",
        cloud_mask=source.quality_band in collection.bands,
        fetch_config=fetch_config,
    )
    return [
        (frame.loc[batch], where, group_of, ([red, nir],), kwargs)
        for frame, where, group_of in reads
        for batch in chunk_aois(
            _Shapes(frame),
            list(frame.index),
            max_aois=max_areas,
            max_bytes=max_bytes,
            n_dates=n_dates,
            pixel_size=source.pixel_size,
        )
    ]


class GroupAreas:
    """The area of each group of fields: the union of its fields, equal to geopandas'
    ``dissolve(by="group")`` (the area a group COG is read over and masked to).

    The fields are the same in every month of a run, so their unions are kept: a group's union
    is stored with the geometry objects it was made of and given again for the same objects
    (shapely geometries are immutable, so the same objects have the same union; holding them
    keeps their ``id`` from being reused). A group whose fields differ (some left out in one
    month) gets its own union. One object per run: it holds its unions as long as it lives.
    """

    def __init__(self) -> None:
        self._unions: dict[tuple[str, bytes], tuple[np.ndarray, object]] = {}

    def of(self, fields) -> dict[str, object]:
        """``{group: union of its fields}`` of ``fields`` (a GeoDataFrame with ``group``), groups
        sorted; the unions not kept yet are made in one :func:`union_by_group` call."""
        import pandas as pd

        geoms = np.asarray(fields.geometry.values, dtype=object)
        groups = np.asarray([str(g) for g in fields["group"]], dtype=object)
        codes, names = pd.factorize(groups, sort=True)
        order = np.argsort(codes, kind="stable")
        edges = np.searchsorted(codes[order], np.arange(len(names) + 1))
        ids = np.fromiter(map(id, geoms), dtype=np.uint64, count=len(geoms))
        keys, todo = {}, {}
        for k, name in enumerate(names):
            rows = order[edges[k] : edges[k + 1]]
            keys[name] = (name, np.sort(ids[rows]).tobytes())
            if keys[name] not in self._unions:
                todo[name] = rows
        if todo:
            rows = np.concatenate(list(todo.values()))
            made = union_by_group(geoms[rows], groups[rows])
            for name, members in todo.items():
                self._unions[keys[name]] = (geoms[members], made[name])
        return {name: self._unions[keys[name]][1] for name in names}


COVERAGE_PROBE_PAIRS = 32
"""Pairs of a group's fields whose geometries are checked as a coverage (and for contact) before
all of the group's are."""


def union_by_group(geometries, groups) -> dict[str, object]:
    """``{group: the union of its geometries}``, equal (:func:`shapely.equals`) to geopandas'
    ``dissolve(by=group)``, each group by the fastest of shapely's unions that is exact for it:

    * geometries that meet (touch or overlap) none of their group:
      :func:`shapely.disjoint_subset_union_all`, which unions each cluster of intersecting
      geometries apart, here each alone, so the union is the collection of their polygons;
    * geometries that meet, only along shared edges with the same vertices and never overlapping
      (a valid coverage, checked with :func:`shapely.coverage_is_valid`):
      :func:`shapely.coverage_union_all`, which drops the shared edges without an overlay;
    * any other group (overlaps, one inside another, edges that meet without matching
      vertices): :func:`shapely.disjoint_subset_union_all`, a full union of each cluster of
      intersecting geometries, which is the only place an overlay is needed.

    The pairs whose bounding boxes meet come from one :class:`shapely.STRtree` query over all
    the geometries (boxes only: cheap even where thousands of fields overlap). A group with such
    pairs is then checked with :func:`_meets_as_coverage`.
    """
    import pandas as pd
    import shapely

    geoms = np.asarray(geometries, dtype=object)
    if len(geoms) == 0:
        return {}
    codes, names = pd.factorize(np.asarray(groups, dtype=object), sort=True)
    left, right = shapely.STRtree(geoms).query(geoms)
    near = (left < right) & (codes[left] == codes[right])
    left, right = left[near], right[near]
    by_group = np.argsort(codes[left], kind="stable")
    left, right = left[by_group], right[by_group]
    pair_edges = np.searchsorted(codes[left], np.arange(len(names) + 1))
    order = np.argsort(codes, kind="stable")
    edges = np.searchsorted(codes[order], np.arange(len(names) + 1))
    out = {}
    for k, name in enumerate(names):
        members = geoms[order[edges[k] : edges[k + 1]]]
        pairs = slice(pair_edges[k], pair_edges[k + 1])
        if _meets_as_coverage(geoms, members, left[pairs], right[pairs]):
            out[str(name)] = shapely.coverage_union_all(members)
        else:
            out[str(name)] = shapely.disjoint_subset_union_all(members)
    return out


def _meets_as_coverage(geoms, members, left, right) -> bool:
    """Whether a group's ``members`` meet and form a valid coverage; ``geoms[left]`` and
    ``geoms[right]`` are its pairs whose bounding boxes meet.

    A part of a valid coverage is a valid coverage, so the geometries of the first
    :data:`COVERAGE_PROBE_PAIRS` pairs are checked first: where they fail (fields that overlap
    throughout) the whole group is not checked, and where one of them touches, the other pairs
    are not checked for contact.
    """
    import shapely

    if len(left) == 0:
        return False  # nothing meets
    probe = slice(0, COVERAGE_PROBE_PAIRS)
    if len(left) > COVERAGE_PROBE_PAIRS:
        if not shapely.coverage_is_valid(geoms[np.unique(np.r_[left[probe], right[probe]])]):
            return False
    meet = shapely.intersects(geoms[left[probe]], geoms[right[probe]]).any()
    if not meet and not shapely.intersects(geoms[left], geoms[right]).any():
        return False  # only their bounding boxes meet
    return bool(shapely.coverage_is_valid(members))


def updated_items(
    source_id: str,
    stac_url: str | None,
    months: list[str],
    bbox,
    since: str,
    *,
    retry=None,
) -> dict[str, str]:
    """``{YYYY-MM: latest updated}`` of items in ``months`` updated (or added) after ``since``.

    One STAC search over the span of ``months`` (``query: updated > since``), grouped by month
    of acquisition; months outside ``months`` are dropped. ``retry`` is the search's
    :class:`~rasteret_pipelines.cog.config.RetryPolicy` (the project's is
    ``HttpClientResource.fetch_config().retry_policy``; None: the policy's defaults).

    Raises:
        StacApiError: the STAC API is unreachable or keeps failing.
    """
    from rasteret_pipelines.collections.search import Month, search_items

    first, _ = month_bounds(min(months))
    _, last = month_bounds(max(months))
    span = Month(f"{min(months)}..{max(months)}", first, last)
    items = search_items(
        get_source(source_id), span, stac_url=stac_url, bbox=bbox, query={"updated": {"gt": since}}, retry=retry
    )
    wanted = set(months)
    out: dict[str, str] = {}
    for item in items:
        props = item.get("properties") or {}
        when = str(props.get("datetime") or props.get("start_datetime") or "")[:7]
        stamp = str(props.get("updated") or props.get("created") or "")
        if when in wanted and stamp > since:
            out[when] = max(out.get(when, ""), stamp)
    return out
