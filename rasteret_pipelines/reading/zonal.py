"""Zonal statistics of many fields, values at many points: every tile fetched and decoded once.

:func:`zonal_stats` answers "for each field and date, what are the mean, median, ... of this
band or index over the field's pixels" for thousands to millions of fields, as one table with
a row per (field, date). It does what :func:`~rasteret_pipelines.reading.read_geometries`
plus a per-field reduction would, without a window, an array or a Python step per field:

1. **Fields to pixels, once.** Each field gets the reference grid a read would give it (the
   grid of its first covering scene, at the finest requested band). All fields of one grid
   are put on it together: :func:`~rasteret_pipelines.reading.mask.pixels_inside` gives
   every (field, pixel) pair by rasterio's rule (pixel centres, or ``all_touched``). Fields
   may overlap; a pixel inside two fields counts for both.
2. **Pixels to tiles, once per file layout.** For every (grid, band layout) the pairs are
   mapped to the band's pixels (the pixel containing each reference pixel's centre: the same
   pixel for a band on the reference grid, nearest-neighbour sampling for a coarser band or
   another CRS) and sorted by the tile holding them.
3. **Date by date.** The tiles the day's scenes need (for the fields each scene's footprint
   intersects) are fetched as one batch through the cached headers, a tile shared by many
   fields once; each decoded tile hands its values to the pairs inside it and is dropped.
   The scenes of a day are mosaicked per band (first valid scene by datetime then id, as a
   read does), masked by nodata and, with ``cloud_mask``, by the source's quality band.
4. **Reductions** run over all pairs of the day at once: ``bincount`` for counts, sums and
   variances, ``reduceat`` for extremes, one ``lexsort`` for medians and percentiles.

:func:`sample_points` is the same read with one pair per point (the pixel holding it, in every
band, as ``rasterio``'s ``sample`` picks it) and the values instead of the reductions.

A bounded number of days is in flight at a time, so memory holds the fields' pixel pairs
(which grow with the fields' area, not with dates) and the tiles of those days; with
``output=`` the rows go to a GeoParquet file as each day is done.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import pyarrow as pa
import shapely

from rasteret_pipelines.cog import FetchConfig, _run_sync_with
from rasteret_pipelines.errors import (
    InvalidGeometryError,
    InvalidReadArgumentError,
    ReflectanceRequiredError,
)
from rasteret_pipelines.reading.assemble import convert, nodata_valid
from rasteret_pipelines.reading.mask import pixels_inside
from rasteret_pipelines.reading.mosaic import FirstValid, LastValid, mosaic_method
from rasteret_pipelines.reading.plan import (
    Scene,
    check_date_range,
    cloud_mask_rule,
    crs_of,
    reproject_geometry,
    same_crs,
    select_scenes,
)

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_STATS", "FieldsPlan", "plan_fields_read", "sample_points", "zonal_stats"]

DEFAULT_STATS = ("mean", "median", "std", "min", "max", "count")
"""The statistics computed when none are named."""
_STATS = ("mean", "median", "std", "min", "max", "count", "sum")
_PERCENTILE = re.compile(r"^p(100|[0-9]{1,2}(\.[0-9]+)?)$")
DAYS_IN_FLIGHT = 8
"""At most this many dates are fetched and reduced at once (to hide request latency)..."""
DAY_MEMORY_BUDGET = 384 << 20
"""... and fewer when their per-pair working arrays would need more than this (many fields)."""
PAIR_BYTES_PER_BAND = 24
"""Working bytes per (field, pixel) pair and band of one date in flight: the stored value, its
presence and validity flags, and float64 scratch of the mosaic and the reductions."""


def days_in_flight(pairs: int, bands: int) -> int:
    """Dates in flight for a read of ``pairs`` pairs over ``bands`` bands (at least 1)."""
    per_day = max(pairs * bands * PAIR_BYTES_PER_BAND, 1)
    return max(1, min(DAYS_IN_FLIGHT, max(2, DAY_MEMORY_BUDGET // per_day)))


# -- arguments -----------------------------------------------------------------------------------


def parse_stats(stats) -> list[str]:
    """The statistic names, checked: mean, median, std, min, max, count, sum and ``pNN``.

    Raises:
        InvalidReadArgumentError: an unknown name, or none.
    """
    names = [stats] if isinstance(stats, str) else list(stats)
    if not names:
        raise InvalidReadArgumentError("stats is empty: name at least one statistic")
    for name in names:
        if name not in _STATS and not _PERCENTILE.match(str(name)):
            raise InvalidReadArgumentError(
                f"unknown statistic {name!r}: use {', '.join(_STATS)} or a percentile such as 'p10'"
            )
    return list(dict.fromkeys(names))


@dataclass
class _Variables:
    """What to compute per pixel: raw bands and/or one index over bands."""

    bands: list[str]
    """Bands to read (names as the user called them, or an index's inputs)."""
    keys: dict[str, str]
    """Band name -> asset key."""
    outputs: list[str]
    """Bands output as variables of their own."""
    index_name: str | None
    index: Callable | None
    """A function of ``{band: values}`` giving the index variable, or None."""
    values: str

    @property
    def names(self) -> list[str]:
        """Output variable names (column prefixes), bands first."""
        return [_column_name(b) for b in self.outputs] + ([self.index_name] if self.index_name else [])

    def compute(self, mosaicked: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {_column_name(b): mosaicked[b] for b in self.outputs}
        if self.index is not None:
            out[self.index_name] = self.index(mosaicked)
        return out


def _variables(collection, bands, index, values) -> _Variables:
    """The variables of a read: ``bands`` as they are, plus ``index`` ("ndvi" or a function)."""
    bands = [bands] if isinstance(bands, str) else list(bands or [])
    if index is None:
        if not bands:
            raise InvalidReadArgumentError("name the bands= to read, or an index= such as 'ndvi'")
        values = values or "float"
        if values not in ("float", "native", "reflectance"):
            raise InvalidReadArgumentError(f"values must be 'float', 'native' or 'reflectance', got {values!r}")
        return _Variables(bands, {b: collection.resolve_band(b) for b in bands}, bands, None, None, values)
    keys = {b: collection.resolve_band(b) for b in bands}
    if isinstance(index, str):
        if index.lower() != "ndvi":
            raise InvalidReadArgumentError(f"unknown index {index!r}: use 'ndvi' or a function of the bands")
        if values not in (None, "reflectance"):
            raise ReflectanceRequiredError(
                f"index='ndvi' is computed on surface reflectance, not values={values!r}: "
                "an offset (Sentinel-2 L2A -0.1, Landsat C2 L2 -0.2) changes the ratio"
            )
        from rasteret_pipelines.reading.indices import ndvi_values

        red, nir = collection.source.ndvi_bands
        inputs = {"\0red": red, "\0nir": nir}  # names no user band can have
        return _Variables(
            bands + list(inputs),
            {**keys, **inputs},
            bands,
            "ndvi",
            lambda v: ndvi_values(v["\0red"], v["\0nir"]),
            "reflectance",
        )
    if callable(index):
        if not bands:
            raise InvalidReadArgumentError("a function index= needs the bands= it is computed from")
        name = _column_name(getattr(index, "__name__", "index"))
        return _Variables(
            bands,
            keys,
            [],
            name,
            lambda v: np.asarray(index(**{b: v[b] for b in bands}), dtype=np.float64),
            values or "reflectance",
        )
    raise InvalidReadArgumentError(f"index must be 'ndvi' or a function of the bands, got {type(index).__name__}")


def _column_name(name: str) -> str:
    text = re.sub(r"[^0-9A-Za-z_]+", "_", str(name)).strip("_").lower()
    return text or "index"


# -- fields --------------------------------------------------------------------------------------


@dataclass
class Fields:
    """Fields as arrays: ids (text), EPSG:4326 polygons, and the columns to carry along."""

    ids: np.ndarray
    geometries: np.ndarray
    kept: pa.Table | None = None
    id_array: pa.Array | None = None
    """The ids as an Arrow string array when the input already held them in Arrow."""

    @cached_property
    def lonlat(self) -> np.ndarray:
        """(n, 2) longitude, latitude of points (one coordinate each)."""
        return shapely.get_coordinates(self.geometries)


def load_fields(fields, id_column: str = "id", keep: Sequence[str] = (), points: bool = False) -> Fields:
    """Fields from a GeoDataFrame, a GeoSeries, a GeoParquet/GeoJSON path (local or ``s3://``)
    or shapely geometries, checked all at once.

    Ids come from ``id_column`` when the input has that column, else from the index (or 1..n
    for plain geometries), as text.

    Raises:
        InvalidGeometryError: no fields, duplicate ids, or geometries that are empty, invalid,
            not polygons, without a CRS or outside longitude/latitude (the first few named).
    """
    keep = [keep] if isinstance(keep, str) else list(keep)
    if isinstance(fields, (str, os.PathLike)):
        path = os.fspath(fields)
        data = _read_fields_bytes(path)
        if data[:4] == b"PAR1":
            found = _from_geoparquet(data, id_column, keep, points)
            if found is not None:
                return found
        fields = _read_fields_file(data, path)
    import sys

    if "geopandas" in sys.modules:
        import geopandas as gpd

        if isinstance(fields, gpd.GeoSeries):
            fields = gpd.GeoDataFrame(geometry=fields)
        if isinstance(fields, gpd.GeoDataFrame):
            return _from_frame(fields, id_column, keep, points)
    if keep:
        raise InvalidReadArgumentError(f"keep={keep} needs a GeoDataFrame (plain geometries have no columns)")
    if isinstance(fields, shapely.Geometry):
        fields = [fields]
    geoms = np.asarray(list(fields), dtype=object)
    if not all(isinstance(g, shapely.Geometry) for g in geoms):
        raise InvalidGeometryError("fields must be a GeoDataFrame, a GeoParquet path or shapely geometries")
    ids = np.array([str(i) for i in range(1, len(geoms) + 1)], dtype=object)
    _check_geometries(ids, geoms, points=points)
    return Fields(ids, geoms)


def _read_fields_bytes(path: str) -> bytes:
    from rasteret_pipelines.aois import read_uri_bytes

    try:
        return read_uri_bytes(path)
    except FileNotFoundError as exc:
        raise InvalidGeometryError(f"fields file {path}: {exc}") from exc


_PLAIN_ID = ("string", "large_string", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


def _from_geoparquet(data: bytes, id_column: str, keep: list[str], points: bool) -> Fields | None:
    """The fields of a GeoParquet file read with pyarrow and shapely alone (no pandas), or
    None when the file needs GeoPandas to mean the same: geometries not WKB, ids from the
    index, or ids with nulls or of a type whose text pandas writes otherwise (floats).

    The result equals :func:`_from_frame` of ``geopandas.read_parquet``: the same CRS rule (no
    ``crs`` is OGC:CRS84, a null one is no CRS) and ids as text; the ``keep`` columns pass
    through pandas as they do there.
    """
    import json

    import pyarrow.parquet as pq
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        table = pq.ParquetFile(pa.BufferReader(data)).read()
        geo = json.loads((table.schema.metadata or {})[b"geo"])
        column = geo["primary_column"]
        meta = geo["columns"][column]
    except Exception:  # noqa: BLE001 - unreadable here: GeoPandas reads it or names the fault
        return None
    names = table.column_names
    if str(meta.get("encoding", "")).upper() != "WKB" or column not in names or id_column not in names:
        return None
    if table.column(id_column).null_count or str(table.schema.field(id_column).type) not in _PLAIN_ID:
        return None
    if "crs" not in meta:
        crs = CRS.from_user_input("OGC:CRS84")
    elif meta["crs"] is None:
        raise InvalidGeometryError("the fields have no CRS: set one (e.g. gdf.set_crs('EPSG:4326'))")
    else:
        try:
            crs = CRS.from_user_input(meta["crs"])
        except CRSError:
            return None
    missing = [c for c in keep if c not in names]
    if missing:
        raise InvalidReadArgumentError(f"keep names columns the fields do not have: {missing}")
    # Through Python lists: ChunkedArray.to_numpy would import pandas and a cast
    # pyarrow.compute, each a large part of a second longer start.
    column_ids = table.column(id_column).combine_chunks()
    texts = column_ids.to_pylist()
    if pa.types.is_string(column_ids.type):
        id_array = column_ids
    elif pa.types.is_large_string(column_ids.type):
        id_array = _small_offsets(column_ids)
    else:
        texts = [str(v) for v in texts]
        id_array = None
    ids = np.array(texts, dtype=object)
    geoms = shapely.from_wkb(np.array(table.column(column).to_pylist(), dtype=object))
    _check_geometries(ids, geoms, check_degrees=False, points=points)
    if not crs.equals(crs_of("EPSG:4326")):
        geoms = reproject_geometry(geoms, crs, "EPSG:4326")
    _check_degrees(ids, geoms)
    # Kept columns go through pandas as GeoPandas takes them, so their types are the same.
    kept = pa.Table.from_pandas(table.select(keep).to_pandas(), preserve_index=False) if keep else None
    return Fields(ids, geoms, kept, id_array)


def _read_fields_file(data: bytes, path: str):
    import io

    import geopandas as gpd

    try:
        if data[:4] == b"PAR1":
            return gpd.read_parquet(io.BytesIO(data))
        return gpd.read_file(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file, said by name
        raise InvalidGeometryError(f"fields file {path} is not GeoParquet or GeoJSON: {exc}") from exc


def _from_frame(frame, id_column: str, keep: list[str], points: bool) -> Fields:
    if frame.crs is None:
        raise InvalidGeometryError("the fields have no CRS: set one (e.g. gdf.set_crs('EPSG:4326'))")
    missing = [c for c in keep if c not in frame.columns]
    if missing:
        raise InvalidReadArgumentError(f"keep names columns the fields do not have: {missing}")
    raw_ids = frame[id_column] if id_column in frame.columns else frame.index.to_series()
    ids = raw_ids.astype(str).to_numpy(dtype=object)
    geoms = np.asarray(frame.geometry.values, dtype=object)
    _check_geometries(ids, geoms, check_degrees=False, points=points)
    if not frame.crs.equals("EPSG:4326"):
        geoms = np.asarray(frame.geometry.to_crs("EPSG:4326").values, dtype=object)
    _check_degrees(ids, geoms)
    kept = pa.Table.from_pandas(frame[keep].reset_index(drop=True), preserve_index=False) if keep else None
    return Fields(ids, geoms, kept)


def _named(ids: np.ndarray, bad: np.ndarray, limit: int = 5) -> str:
    names = [str(i) for i in ids[bad][:limit]]
    more = int(bad.sum()) - len(names)
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")


def _check_geometries(ids: np.ndarray, geoms: np.ndarray, check_degrees: bool = True, points: bool = False) -> None:
    if len(geoms) == 0:
        raise InvalidGeometryError("no fields given")
    if len(set(ids.tolist())) < len(ids):
        unique, counts = np.unique(ids.astype(str), return_counts=True)
        raise InvalidGeometryError(f"field ids are not unique: {', '.join(unique[counts > 1][:5])}")
    missing = np.array([g is None for g in geoms])
    if missing.any():
        raise InvalidGeometryError(f"fields without a geometry: {_named(ids, missing)}")
    empty = shapely.is_empty(geoms)
    if empty.any():
        raise InvalidGeometryError(f"fields with an empty geometry: {_named(ids, empty)}")
    kind = shapely.get_type_id(geoms)
    wrong = kind != 0 if points else ~np.isin(kind, (3, 6))  # Point; Polygon, MultiPolygon
    if wrong.any():
        what = "points" if points else "polygons"
        raise InvalidGeometryError(f"{'points' if points else 'fields'} that are not {what}: {_named(ids, wrong)}")
    xy, which = shapely.get_coordinates(geoms, return_index=True)
    bad = np.zeros(len(geoms), bool)
    bad[which[~np.isfinite(xy).all(axis=1)]] = True
    if bad.any():
        raise InvalidGeometryError(f"fields with NaN or infinite coordinates: {_named(ids, bad)}")
    invalid = ~shapely.is_valid(geoms)
    if invalid.any():
        first = geoms[invalid][0]
        raise InvalidGeometryError(
            f"fields with invalid geometries: {_named(ids, invalid)} (the first: {shapely.is_valid_reason(first)})"
        )
    if check_degrees:
        _check_degrees(ids, geoms)


def _check_degrees(ids: np.ndarray, geoms: np.ndarray) -> None:
    b = shapely.bounds(geoms)
    bad = ~((b[:, 0] >= -180) & (b[:, 2] <= 180) & (b[:, 1] >= -90) & (b[:, 3] <= 90))
    if bad.any():
        raise InvalidGeometryError(f"fields outside longitude/latitude (is their CRS right?): {_named(ids, bad)}")


# -- grids, pixels and tiles ----------------------------------------------------------------------


@dataclass
class _Grid:
    """The fields sharing one reference grid, and their pixels on it."""

    crs_key: str
    transform: tuple[float, ...]
    fields: np.ndarray
    """Indices (into all fields) of this grid's fields, ascending."""
    member_field: np.ndarray = None
    """For every (field, pixel) pair: the field's index into all fields (ascending)."""
    rows: np.ndarray = None
    cols: np.ndarray = None
    position: np.ndarray = None
    """For every pair: its field's slot in :attr:`fields`."""
    xy: tuple[np.ndarray, np.ndarray] | None = None
    """Where each pair is sampled in the grid's CRS: None for pixel centres; the points
    themselves when sampling points (as ``rasterio``'s ``sample`` does, in every band)."""
    layouts: dict = field(default_factory=dict)
    """(band CRS, transform, image size, tile size) -> :class:`_Layout` of the pairs."""


@dataclass
class _Layout:
    """The grid's pairs on one band's pixels, sorted by the tile that holds them.

    Pairs outside the image are left out. Each tile's pairs are one slice of the sorted order,
    so a decoded tile fills a contiguous run of values with one ``take`` from the block as
    decoded (no window is assembled).
    """

    order: np.ndarray
    """Pair indices sorted by tile."""
    field_sorted: np.ndarray
    """Field index (into all fields) of each sorted pair."""
    flat: np.ndarray
    """Offset of each sorted pair's pixel in its decoded tile, row-major over the stored tile
    width (an edge tile is stored padded to it)."""
    tiles: np.ndarray
    """Distinct tile indices, ascending."""
    starts: np.ndarray
    """Where each tile's pairs start in :attr:`order` (and, last, its length)."""
    windows: list[tuple[int, int, int, int]]
    """Each tile's window ``(col, row, width, height)``, clipped to the image."""


def _layout(grid: _Grid, header) -> _Layout:
    level = header.levels[0]
    key = (header.crs, tuple(header.transform), level.width, level.height, level.tile_width, level.tile_height)
    found = grid.layouts.get(key)
    if found is not None:
        return found
    ga, _, gc, _, ge, gf = grid.transform[:6]
    if grid.xy is not None:
        x, y = grid.xy
    else:
        x = gc + (grid.cols + 0.5) * ga
        y = gf + (grid.rows + 0.5) * ge
    if not same_crs(grid.crs_key, header.crs):
        from pyproj import Transformer

        x, y = Transformer.from_crs(crs_of(grid.crs_key), crs_of(header.crs), always_xy=True).transform(x, y)
    a, b, c, d, e, f = header.transform[:6]
    if b or d:
        from affine import Affine

        inv = ~Affine(a, b, c, d, e, f)
        fc, fr = x * inv.a + y * inv.b + inv.c, x * inv.d + y * inv.e + inv.f
    else:
        fc, fr = (x - c) / a, (y - f) / e
    del x, y
    scol = np.floor(fc).astype(np.int64)
    srow = np.floor(fr).astype(np.int64)
    inside = np.flatnonzero((scol >= 0) & (scol < level.width) & (srow >= 0) & (srow < level.height))
    scol, srow = scol[inside], srow[inside]
    tw, th = level.tile_width, level.tile_height
    tile_row, tile_col = srow // th, scol // tw
    tile = tile_row * level.tiles_across + tile_col
    by_tile = np.argsort(tile, kind="stable")
    order = inside[by_tile]
    tile, tile_row, tile_col = tile[by_tile], tile_row[by_tile], tile_col[by_tile]
    flat = (srow[by_tile] - tile_row * th) * tw + (scol[by_tile] - tile_col * tw)
    tiles, starts = np.unique(tile, return_index=True)
    windows = []
    for t in tiles.tolist():
        r, cc = divmod(t, level.tiles_across)
        x0, y0 = cc * tw, r * th
        windows.append((x0, y0, min(tw, level.width - x0), min(th, level.height - y0)))
    out = grid.layouts[key] = _Layout(
        order, grid.member_field[order], flat, tiles, np.append(starts, tile.size), windows
    )
    return out


def _grids(
    fields: Fields, scenes: list[Scene], covers: list[np.ndarray], data_keys, all_touched, points: bool = False
) -> list[_Grid]:
    """Each covered field on its reference grid (its first covering scene's finest data band):
    its pixels by rasterio's rule, or for ``points`` the one pixel holding each point."""
    ref = np.full(len(fields.ids), -1, np.int64)
    for si, covered in enumerate(covers):
        fresh = covered[ref[covered] < 0]
        ref[fresh] = si
    by_grid: dict[tuple, list[int]] = {}
    for si in np.flatnonzero(np.bincount(ref[ref >= 0], minlength=len(scenes))).tolist():
        header = min((scenes[si].headers[k] for k in data_keys), key=lambda h: abs(h.transform[0] * h.transform[4]))
        by_grid.setdefault((header.crs, tuple(header.transform[:6])), []).append(si)
    grids = []
    for (crs_key, transform), scene_indices in by_grid.items():
        members = np.flatnonzero(np.isin(ref, scene_indices))
        grid = _Grid(crs_key, transform, members)
        if points:
            # The coordinates alone, transformed as reproject_geometry transforms them.
            from pyproj import Transformer

            lonlat = fields.lonlat[members]
            to_grid = Transformer.from_crs(crs_of("EPSG:4326"), crs_of(crs_key), always_xy=True)
            x, y = (np.asarray(v, np.float64) for v in to_grid.transform(lonlat[:, 0], lonlat[:, 1]))
            a, b, c, d, e, f = transform[:6]
            if b or d:
                raise InvalidReadArgumentError("sampling points needs north-up scenes")
            which = np.arange(members.size)
            rows, cols = np.floor((y - f) / e).astype(np.int64), np.floor((x - c) / a).astype(np.int64)
            grid.xy = (x, y)
        else:
            local = reproject_geometry(fields.geometries[members], "EPSG:4326", crs_key)
            which, rows, cols = pixels_inside(local, transform, all_touched=all_touched)
        grid.member_field = members[which]
        grid.rows, grid.cols, grid.position = rows, cols, which
        grids.append(grid)
    return grids


def _covers(fields: Fields, footprints: list, points: bool = False) -> list[np.ndarray]:
    """For each footprint, the indices (ascending) of the fields it intersects; a footprint
    repeated across scenes (the same tile and orbit) is queried once. Points are tested by
    their coordinates (those inside the footprint's bounds) against the prepared footprint:
    no tree over the points to build."""
    if points:
        lon, lat = fields.lonlat[:, 0], fields.lonlat[:, 1]
    else:
        tree = shapely.STRtree(fields.geometries)
    found: dict[bytes, np.ndarray] = {}
    out = []
    for footprint in footprints:
        key = shapely.to_wkb(footprint)
        if key not in found:
            if points:
                x0, y0, x1, y1 = shapely.bounds(footprint)
                near = np.flatnonzero((lon >= x0) & (lon <= x1) & (lat >= y0) & (lat <= y1))
                shapely.prepare(footprint)
                found[key] = near[shapely.intersects_xy(footprint, lon[near], lat[near])]
            else:
                found[key] = np.sort(tree.query(footprint, predicate="intersects"))
        out.append(found[key])
    return out


# -- one day -------------------------------------------------------------------------------------


@dataclass
class _Samples:
    """One (scene, grid, band): the band's stored values at the grid's pairs, in tile order."""

    layout: _Layout
    sorted_values: np.ndarray
    fetched: np.ndarray
    """Per tile of the layout: whether it was read (some pair in it belongs to a covered field)."""

    def values(self, n_pairs: int) -> tuple[np.ndarray, np.ndarray]:
        """(values, present) for every pair of the grid; present is False outside the image
        and in tiles not read."""
        values = np.zeros(n_pairs, self.sorted_values.dtype)
        values[self.layout.order] = self.sorted_values
        present = np.zeros(n_pairs, bool)
        present[self.layout.order] = np.repeat(self.fetched, np.diff(self.layout.starts))
        return values, present


def _day_requests(day_scenes, grids, covered_by_scene, keys):
    """The tiles of one day and, per tile, where its values go.

    Returns ``(tiles, sinks, samples)``: ``(header, tile index)`` pairs for the engine's
    ``fetch_tiles``, ``sinks[i] = (samples, tile position in the layout)`` and
    ``samples[(rank, grid index, key)]``.
    """
    tiles, sinks, samples = [], [], {}
    for rank, (si, scene) in enumerate(day_scenes):
        covered = covered_by_scene[si]
        for g, grid in enumerate(grids):
            if not covered[grid.fields].any():
                continue
            for key in keys:
                header = scene.headers[key]
                layout = _layout(grid, header)
                wanted = (
                    np.add.reduceat(covered[layout.field_sorted], layout.starts[:-1]) > 0
                    if layout.tiles.size
                    else np.zeros(0, bool)
                )
                s = samples[rank, g, key] = _Samples(
                    layout, np.empty(layout.order.size, np.dtype(header.dtype)), wanted
                )
                for t in np.flatnonzero(wanted).tolist():
                    tiles.append((header, int(layout.tiles[t])))
                    sinks.append((s, t))
    return tiles, sinks, samples


def _gather(sinks):
    """``on_tile`` for ``fetch_tiles``: each decoded tile fills its pairs' slice of values (in
    the decoding thread; the slices of different tiles never overlap)."""

    def on_tile(i: int, block: np.ndarray) -> None:
        s, t = sinks[i]
        start, stop = s.layout.starts[t], s.layout.starts[t + 1]
        np.take(block[0].reshape(-1), s.layout.flat[start:stop], out=s.sorted_values[start:stop])
        sinks[i] = None

    return on_tile


@dataclass
class _Reduction:
    """Everything a day's rows need from one grid."""

    fields: np.ndarray
    """Field indices (into all fields) with a row this day, ascending."""
    stats: dict[str, np.ndarray]
    scene_ids: tuple[np.ndarray, np.ndarray]
    """(distinct texts, each row's index into them)."""


def _reduce_day(day_scenes, grid_index, grid, samples, covered_by_scene, spec, quality, stats, mosaic):
    """Mosaic, mask and reduce one grid's pairs for one day."""
    ranks = [r for r in range(len(day_scenes)) if (r, grid_index, spec.keys[spec.bands[0]]) in samples]
    if not ranks:
        return None
    n_pairs = grid.rows.size
    field_of = grid.member_field
    mosaicked: dict[str, np.ndarray] = {}
    winners: dict[str, np.ndarray] = {}
    clear_by_rank = {}
    for r in ranks:
        si, scene = day_scenes[r]
        ok = covered_by_scene[si][field_of]
        if quality is not None:
            q, q_present = samples[r, grid_index, quality.band].values(n_pairs)
            ok = ok & q_present & nodata_valid(q, scene.headers[quality.band].nodata) & quality.clear(q)
        clear_by_rank[r] = ok
    for band in spec.bands:
        key = spec.keys[band]
        if mosaic in (FirstValid, LastValid):
            out = np.full(n_pairs, np.nan, np.float32)
            won = np.full(n_pairs, -1, np.int64)
            for r in ranks if mosaic is FirstValid else ranks[::-1]:
                raw, present = samples[r, grid_index, key].values(n_pairs)
                scene = day_scenes[r][1]
                valid = clear_by_rank[r] & present & nodata_valid(raw, scene.headers[key].nodata)
                take = valid & (won < 0) if len(ranks) > 1 else valid
                out[take] = _convert(raw[take], spec.values, scene.reflectance)
                won[take] = r
        else:
            out = np.empty(n_pairs, np.float32)
            method = mosaic(out, len(ranks), np.nan)
            won = np.full(n_pairs, -1, np.int64)
            for i, r in enumerate(ranks):
                raw, present = samples[r, grid_index, key].values(n_pairs)
                scene = day_scenes[r][1]
                valid = clear_by_rank[r] & present & nodata_valid(raw, scene.headers[key].nodata)
                method.feed(_convert(raw, spec.values, scene.reflectance), valid, i)
                won[valid & (won < 0)] = r
            method.finish()
        mosaicked[band], winners[band] = out, won
    variables = spec.compute(mosaicked)
    fields_today = np.zeros(len(covered_by_scene[day_scenes[0][0]]), bool)
    for r in ranks:
        fields_today |= covered_by_scene[day_scenes[r][0]]
    keep = fields_today[grid.fields]
    position = grid.position
    n = grid.fields.size
    out_stats: dict[str, np.ndarray] = {}
    if stats is None:  # points: one pair each, its value
        for name, v in variables.items():
            out_stats[name] = np.asarray(v, dtype=np.float64)
    pixels = np.bincount(position, minlength=n)
    for name, v in variables.items() if stats is not None else ():
        v = np.asarray(v, dtype=np.float64)
        good = ~np.isnan(v)
        for stat, arr in _group_stats(position[good], v[good], n, stats).items():
            out_stats[f"{name}_{stat}"] = arr
        count = np.bincount(position[good], minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            out_stats[f"{name}_valid_fraction"] = np.where(pixels > 0, count / np.maximum(pixels, 1), np.nan)
    used = np.zeros(n, np.int64)
    for won in winners.values():
        for r in ranks:
            hit = np.bincount(position[won == r], minlength=n) > 0
            used |= hit.astype(np.int64) << r
    names = [day_scenes[r][1].id for r in range(len(day_scenes))]
    masks, inverse = np.unique(used[keep], return_inverse=True)
    texts = np.array([",".join(names[r] for r in range(len(names)) if int(m) >> r & 1) for m in masks], dtype=object)
    return _Reduction(grid.fields[keep], {k: a[keep] for k, a in out_stats.items()}, (texts, inverse))


def _convert(raw: np.ndarray, mode: str, reflectance) -> np.ndarray:
    """Stored values as float32 in the read's units (:func:`~rasteret_pipelines.reading.assemble.convert`)."""
    return convert(raw, mode, reflectance).astype(np.float32, copy=False)


def _group_stats(group: np.ndarray, v: np.ndarray, n: int, stats: list[str]) -> dict[str, np.ndarray]:
    """Statistics of ``v`` per group (``group`` ascending, values without NaN), numpy's formulas."""
    count = np.bincount(group, minlength=n)
    empty = count == 0
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        total = np.bincount(group, weights=v, minlength=n)
        mean = total / count
        if "count" in stats:
            out["count"] = count
        if "sum" in stats:
            out["sum"] = np.where(empty, np.nan, total)
        if "mean" in stats:
            out["mean"] = mean
        if "std" in stats:
            dev = v - mean[group]
            out["std"] = np.sqrt(np.bincount(group, weights=dev * dev, minlength=n) / count)
        starts = np.searchsorted(group, np.arange(n))
        if "min" in stats or "max" in stats:
            nonempty = np.flatnonzero(~empty)
            for name, ufunc in (("min", np.minimum), ("max", np.maximum)):
                if name in stats:
                    arr = np.full(n, np.nan)
                    if nonempty.size:
                        arr[nonempty] = ufunc.reduceat(v, starts[nonempty])
                    out[name] = arr
        quantiles = [s for s in stats if s == "median" or s.startswith("p")]
        if quantiles and not v.size:  # no valid value in any group (a date clouded everywhere)
            out.update({name: np.full(n, np.nan) for name in quantiles})
        elif quantiles:
            ordered = v[np.lexsort((v, group))]
            last = np.maximum(count - 1, 0)
            for name in quantiles:
                arr = np.full(n, np.nan)
                ok = ~empty
                if name == "median":
                    lo = starts + last // 2
                    hi = starts + (count // 2)
                    odd = count % 2 == 1
                    a, b = ordered[np.minimum(lo, v.size - 1)], ordered[np.minimum(hi, v.size - 1)]
                    arr[ok] = np.where(odd, a, (a + b) / 2)[ok]
                else:
                    q = float(name[1:]) / 100.0
                    h = last * q
                    below = np.floor(h).astype(np.int64)
                    t = h - below
                    above = np.minimum(below + 1, last)
                    a = ordered[np.minimum(starts + below, v.size - 1)]
                    b = ordered[np.minimum(starts + above, v.size - 1)]
                    diff = b - a
                    lerp = np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)  # numpy's _lerp
                    arr[ok] = lerp[ok]
                out[name] = arr
    return out


# -- the whole read -------------------------------------------------------------------------------


def zonal_stats(
    collection,
    fields,
    *,
    bands: Sequence[str] | None = None,
    index=None,
    stats: Sequence[str] = DEFAULT_STATS,
    id_column: str = "id",
    keep: Sequence[str] = (),
    date_range=None,
    cloud_cover_lt: float | None = None,
    values: str | None = None,
    cloud_mask: bool = False,
    all_touched: bool = False,
    mosaic="first",
    filters: dict | None = None,
    fetch_config: FetchConfig | None = None,
    reader=None,
    output: str | os.PathLike | None = None,
    planned=None,
):
    """Statistics of bands or an index over each field, for every date (see module docs).

    Args:
        collection: An opened :class:`~rasteret_pipelines.collections.Collection`.
        fields: A GeoDataFrame (any CRS), a GeoSeries, a GeoParquet or GeoJSON path (local or
            ``s3://``), or shapely polygons in EPSG:4326.
        bands: Bands to summarise (``["red", "nir"]``), or the bands a function ``index``
            takes.
        index: ``"ndvi"`` (the source's red and NIR on surface reflectance), or a function
            called with the bands as keyword arguments, returning the per-pixel index.
        stats: Any of mean, median, std (population, as numpy's), min, max, count, sum, and
            percentiles ``pNN`` (numpy's linear method).
        id_column: Column holding the field ids (default ``"id"``); without it, the index.
        keep: Columns of a GeoDataFrame copied into every row of their field.
        date_range: ``(start, end)`` dates, inclusive.
        cloud_cover_lt: Scene-level cloud cover filter.
        values: ``"float"`` (stored values, the default for bands), ``"native"`` (the same
            numbers) or ``"reflectance"`` (the default, and the only choice, for an index).
        cloud_mask: Leave out pixels the source's quality band calls cloudy.
        all_touched: Every pixel a field touches, not only those whose centre is inside.
        mosaic: How same-date scenes combine: ``"first"`` (default), ``"last"`` or a
            :class:`~rasteret_pipelines.reading.mosaic.MosaicMethod` subclass.
        filters: Extra ``{column: value}`` collection filters.
        fetch_config: Transport settings.
        reader: Any :class:`~rasteret_pipelines.cog.ByteReader` (None: the default reader).
        output: A local path or ``s3://`` URI: the rows are written there as GeoParquet (with
            each field's polygon as ``geometry``), day by day, instead of kept in memory.
        planned: The :class:`~rasteret_pipelines.reading.explain.ReadPlan` that
            :func:`~rasteret_pipelines.reading.explain.explain` returned for this read (the same
            collection object, equal arguments): the read runs its plan (fields, grids, pixel
            pairs, dates) instead of planning again, so a dry run followed by its read plans
            once. ``stats``, ``reader`` and ``output`` are the read's own and may differ.

    Returns:
        A ``pyarrow.Table`` with one row per (field, date) where a scene covers the field,
        ordered by date, then by the fields' input order: ``id``, ``date``, then
        ``<variable>_<stat>`` for every variable and statistic, ``<variable>_valid_fraction``
        (valid pixels over the field's pixels), ``scene_ids`` (the scenes whose pixels were
        used, comma-separated) and the ``keep`` columns. Its schema metadata holds
        ``requests``, ``header_requests`` and ``bytes_read``. With ``output``, the location
        written instead.

    Raises:
        UnknownBandError, DateRangeError, InvalidGeometryError, InvalidReadArgumentError (also a
        ``planned`` that is not this read's plan), ReflectanceRequiredError, NoScenesError,
        UnsafeHrefError (before any request).
    """
    stat_names = parse_stats(stats)
    arguments = dict(
        fields=fields,
        bands=bands,
        index=index,
        values=values,
        id_column=id_column,
        keep=keep,
        date_range=date_range,
        cloud_cover_lt=cloud_cover_lt,
        cloud_mask=cloud_mask,
        all_touched=all_touched,
        mosaic=mosaic,
        filters=filters,
        fetch_config=fetch_config,
    )
    plan = _plan_or_reuse(collection, "zonal_stats", planned, arguments)
    return _read(collection, plan, stat_names, reader=reader, output=output)


def sample_points(
    collection,
    points,
    *,
    bands: Sequence[str] | None = None,
    index=None,
    id_column: str = "id",
    keep: Sequence[str] = (),
    date_range=None,
    cloud_cover_lt: float | None = None,
    values: str | None = None,
    cloud_mask: bool = False,
    mosaic="first",
    filters: dict | None = None,
    fetch_config: FetchConfig | None = None,
    reader=None,
    output: str | os.PathLike | None = None,
    planned=None,
):
    """The value of bands (and an index) at each point, for every date: a time series per point.

    Each point takes the value of the pixel that holds it, in every band and scene (what
    ``rasterio``'s ``sample`` returns); same-date scenes are mosaicked as in a read. Work is
    that of :func:`zonal_stats`: every needed tile fetched once for all points on it, no
    Python step per point.

    Args:
        collection: An opened :class:`~rasteret_pipelines.collections.Collection`.
        points: A GeoDataFrame of points (any CRS), a GeoParquet/GeoJSON path, or shapely
            points in EPSG:4326.
        bands: Bands to sample (``["red", "nir"]``).
        index: ``"ndvi"`` or a function of the bands (see :func:`zonal_stats`).
        id_column, keep, date_range, cloud_cover_lt, values, cloud_mask, mosaic, filters,
        fetch_config, reader, output: as in :func:`zonal_stats`.
        planned: The plan :func:`~rasteret_pipelines.reading.explain.explain` returned for this
            read (``"sample_points"``), run instead of planning again (see :func:`zonal_stats`).

    Returns:
        A ``pyarrow.Table`` with a row per (point, date) where a scene covers the point:
        ``id``, ``date``, one float64 column per band and for the index, ``scene_ids`` and
        the ``keep`` columns. A masked pixel (nodata, cloud, outside the image) is null; a
        point outside every scene has no rows. With ``output``, the location written.
    """
    arguments = dict(
        fields=points,
        bands=bands,
        index=index,
        values=values,
        id_column=id_column,
        keep=keep,
        date_range=date_range,
        cloud_cover_lt=cloud_cover_lt,
        cloud_mask=cloud_mask,
        mosaic=mosaic,
        filters=filters,
        fetch_config=fetch_config,
    )
    plan = _plan_or_reuse(collection, "sample_points", planned, arguments)
    return _read(collection, plan, None, reader=reader, output=output)


def _plan_or_reuse(collection, read: str, planned, arguments: dict) -> FieldsPlan:
    """The plan of ``read`` with ``arguments``: made here, or ``planned``'s (its dry run's), checked."""
    points = read == "sample_points"
    if planned is None:
        return plan_fields(collection, points=points, **arguments)
    from rasteret_pipelines.reading.explain import reuse_plan

    return reuse_plan(planned, (read,), collection, plan_fields, arguments)


@dataclass
class FieldsPlan:
    """A fields or points read planned from the cached headers alone: grids, pairs and days."""

    data: Fields
    spec: _Variables
    rule: object
    read_keys: list[str]
    grids: list[_Grid]
    covered_by_scene: list[np.ndarray]
    days: dict
    """Date -> ``[(scene index, scene)]`` of the scenes covering some field that date."""
    config: FetchConfig
    mosaic: type

    def day_requests(self):
        """``(date, scenes, requests)`` per date: the ``(header, window)`` of every tile that date fetches."""
        for day in sorted(self.days):
            tiles, sinks, _ = _day_requests(self.days[day], self.grids, self.covered_by_scene, self.read_keys)
            yield day, self.days[day], [(h, s.layout.windows[t]) for (h, _), (s, t) in zip(tiles, sinks)]


def plan_fields_read(
    collection,
    data: Fields,
    spec: _Variables,
    *,
    points: bool,
    date_range=None,
    cloud_cover_lt=None,
    cloud_mask=False,
    all_touched=False,
    mosaic="first",
    filters=None,
    fetch_config=None,
) -> FieldsPlan:
    """Check and plan :func:`zonal_stats` or :func:`sample_points` (``points``) without a request.

    Shared by the reads and their dry run (:mod:`~rasteret_pipelines.reading.explain`).
    """
    method = mosaic_method(mosaic)
    rule = cloud_mask_rule(collection, cloud_mask)
    check_date_range(collection, date_range)
    what = "points" if points else "fields"
    data_keys = sorted({spec.keys[b] for b in spec.bands})
    read_keys = data_keys + ([rule.band] if rule is not None and rule.band not in data_keys else [])
    # Scenes meeting the fields' bounding box; which fields each covers is exact below.
    minx, miny, maxx, maxy = shapely.total_bounds(data.geometries)
    pad = 1e-9  # one point (or points on a line) still make an area
    area = shapely.box(
        minx - pad * (minx == maxx),
        miny - pad * (miny == maxy),
        maxx + pad * (minx == maxx),
        maxy + pad * (miny == maxy),
    )
    scenes = select_scenes(collection, [(None, area)], date_range, cloud_cover_lt, filters, read_keys)
    covers = _covers(data, [s.footprint for s in scenes], points=points)
    grids = _grids(data, scenes, covers, data_keys, all_touched, points=points)
    if not grids:
        from rasteret_pipelines.reading.coverage import no_scenes_error

        # the error names both extents; the fields' bounding box stands for them all
        raise no_scenes_error(collection, [(what, area)], date_range, cloud_cover_lt, filters)
    covered_any = np.zeros(len(data.ids), bool)
    for c in covers:
        covered_any[c] = True
    if not covered_any.all():
        log.warning(
            "%d %s are covered by no scene and have no rows: %s",
            int((~covered_any).sum()),
            what,
            _named(data.ids, ~covered_any),
        )
    from rasteret_pipelines.hrefs import check_href

    for href in sorted({s.headers[k].href for s, c in zip(scenes, covers) if c.size for k in read_keys}):
        check_href(href, allow_local=collection.allow_local_hrefs)
    covered_by_scene = []
    for c in covers:
        mask = np.zeros(len(data.ids), bool)
        mask[c] = True
        covered_by_scene.append(mask)
    days: dict[np.datetime64, list[tuple[int, Scene]]] = {}
    for si, scene in enumerate(scenes):
        if covers[si].size:
            days.setdefault(scene.day, []).append((si, scene))
    config = replace(
        fetch_config or FetchConfig(),
        requester_pays=collection.source.requester_pays,
        local_files=collection.allow_local_hrefs,
    )
    return FieldsPlan(data, spec, rule, read_keys, grids, covered_by_scene, days, config, method)


def plan_fields(
    collection,
    fields,
    *,
    points: bool,
    bands=None,
    index=None,
    values=None,
    id_column="id",
    keep=(),
    date_range=None,
    cloud_cover_lt=None,
    cloud_mask=False,
    all_touched=False,
    mosaic="first",
    filters=None,
    fetch_config=None,
) -> FieldsPlan:
    """The arguments of :func:`zonal_stats` or :func:`sample_points` (``points``) checked, the
    fields loaded and the read planned (:func:`plan_fields_read`), without a request: what the
    reads and their dry run (:mod:`~rasteret_pipelines.reading.explain`) share.
    """
    spec = _variables(collection, bands, index, values)
    data = load_fields(fields, id_column, keep, points=points)
    return plan_fields_read(
        collection,
        data,
        spec,
        points=points,
        date_range=date_range,
        cloud_cover_lt=cloud_cover_lt,
        cloud_mask=cloud_mask,
        all_touched=all_touched,
        mosaic=mosaic,
        filters=filters,
        fetch_config=fetch_config,
    )


def _read(collection, plan: FieldsPlan, stat_names, *, reader, output):
    """The shared read of :func:`zonal_stats` (``stat_names``) and :func:`sample_points` (None)."""
    data, spec = plan.data, plan.spec
    sink = _Sink(data, spec, stat_names, output)
    try:
        stats_out = _run_sync_with(reader, _run_days(plan, stat_names, reader, sink))
        return sink.close(
            {
                "requests": stats_out.requests,
                "header_requests": stats_out.header_requests,
                "bytes_read": stats_out.bytes,
                "collection": collection.name,
            }
        )
    finally:
        sink.abort()


async def _run_days(plan: FieldsPlan, stats, reader, sink):
    from rasteret_pipelines.cog import RangeFetcher
    from rasteret_pipelines.cog.read import fetch_tiles

    loop = asyncio.get_running_loop()
    days, grids, covered_by_scene, keys = plan.days, plan.grids, plan.covered_by_scene, plan.read_keys
    spec, rule, method, config = plan.spec, plan.rule, plan.mosaic, plan.config

    async def one_day(day, day_scenes):
        tiles, sinks, samples = _day_requests(day_scenes, grids, covered_by_scene, keys)
        await fetch_tiles(fetcher, tiles, _gather(sinks))
        del tiles, sinks

        def reduce():
            return [
                r
                for g, grid in enumerate(grids)
                if (r := _reduce_day(day_scenes, g, grid, samples, covered_by_scene, spec, rule, stats, method))
            ]

        return day, await loop.run_in_executor(None, reduce)

    in_flight = days_in_flight(sum(g.rows.size for g in grids), len(keys))
    async with RangeFetcher(config, reader=reader) as fetcher:
        pending: deque = deque()
        try:
            for day in sorted(days):
                pending.append(asyncio.ensure_future(one_day(day, days[day])))
                if len(pending) >= in_flight:
                    sink.add(*await pending.popleft())
            while pending:
                sink.add(*await pending.popleft())
        finally:
            for task in pending:
                task.cancel()
    return fetcher.stats


class _Sink:
    """The rows, day by day: kept as Arrow batches, or written to a GeoParquet file."""

    def __init__(self, fields: Fields, spec: _Variables, stats: list[str], output):
        self.fields = fields
        self.points = stats is None
        self.ids = fields.id_array if fields.id_array is not None else _texts(fields.ids.tolist())
        self.batches: list[pa.RecordBatch] = []
        columns = [pa.field("id", pa.string()), pa.field("date", pa.date32())]
        for name in spec.names:
            if stats is None:  # points: the values
                columns.append(pa.field(name, pa.float64()))
                continue
            for stat in stats:
                columns.append(pa.field(f"{name}_{stat}", pa.int64() if stat == "count" else pa.float64()))
            columns.append(pa.field(f"{name}_valid_fraction", pa.float64()))
        columns.append(pa.field("scene_ids", pa.string()))
        if fields.kept is not None:
            columns += list(fields.kept.schema)
        self.schema = pa.schema(columns)
        self.output = None if output is None else os.fspath(output)
        self.writer = None
        self.local_path = None
        if self.output is not None:
            self._open()

    def _open(self) -> None:
        import tempfile

        import pyarrow.parquet as pq

        from rasteret_pipelines.storage import temp_path

        if self.output.startswith("s3://"):
            handle, self.local_path = tempfile.mkstemp(suffix=".parquet")
            os.close(handle)
        else:
            folder = os.path.dirname(os.path.abspath(self.output))
            os.makedirs(folder, exist_ok=True)
            self.local_path = temp_path(os.path.abspath(self.output))
        schema = self.schema.append(pa.field("geometry", pa.binary()))
        kinds = ["Point"] if self.points else ["Polygon", "MultiPolygon"]
        schema = schema.with_metadata({b"geo": _geo_metadata(kinds)})
        self.writer = pq.ParquetWriter(self.local_path, schema, compression="zstd")

    def add(self, day, reductions: list[_Reduction]) -> None:
        date = np.datetime64(day, "D")
        if len(reductions) > 1:  # several grids: one batch in the fields' input order
            where = np.concatenate([r.fields for r in reductions])
            order = np.argsort(where, kind="stable")
            reductions = [
                _Reduction(
                    where[order],
                    {k: np.concatenate([r.stats[k] for r in reductions])[order] for k in reductions[0].stats},
                    _merge_texts([r.scene_ids for r in reductions], order),
                )
            ]
        for red in reductions:
            n = red.fields.size
            take = _numbers(red.fields, pa.int64())
            every = n == len(self.ids)  # every field, in order (fields are ascending): no take
            arrays = [
                self.ids if every else self.ids.take(take),
                _numbers(np.full(n, date.astype(np.int64), np.int32), pa.date32()),
            ]
            for f in self.schema:
                if f.name in ("id", "date", "scene_ids") or (
                    self.fields.kept is not None and f.name in self.fields.kept.column_names
                ):
                    continue
                arrays.append(_numbers(red.stats[f.name], f.type))
            arrays.append(_texts_at(*red.scene_ids))
            if self.fields.kept is not None:
                taken = self.fields.kept if every else self.fields.kept.take(take)
                arrays += [taken.column(i).combine_chunks() for i in range(taken.num_columns)]
            if self.writer is not None:
                arrays.append(_texts(shapely.to_wkb(self.fields.geometries[red.fields]).tolist(), pa.binary()))
                self.writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self.writer.schema))
            else:
                self.batches.append(pa.RecordBatch.from_arrays(arrays, schema=self.schema))

    def close(self, meta: dict):
        metadata = {k.encode(): str(v).encode() for k, v in meta.items()}
        if self.writer is None:
            table = pa.Table.from_batches(self.batches, schema=self.schema)
            self.batches = []
            return table.replace_schema_metadata(metadata)
        self.writer.add_key_value_metadata(metadata)
        self.writer.close()
        self.writer = None
        if self.output.startswith("s3://"):
            import posixpath

            from rasteret_pipelines.storage import Storage

            parent, name = posixpath.split(self.output)
            Storage.from_uri(parent).upload_file(self.local_path, name)
            os.unlink(self.local_path)
        else:
            os.replace(self.local_path, os.path.abspath(self.output))
        self.local_path = None
        return self.output

    def abort(self) -> None:
        """After a failure: no half-written file is left behind."""
        if self.writer is not None:
            try:
                self.writer.close()
            finally:
                self.writer = None
        if self.local_path is not None and os.path.exists(self.local_path):
            os.unlink(self.local_path)


# Arrow arrays are made from their buffers: pa.array() of anything makes pyarrow import pandas,
# which would then load while the tiles are decoded (the points path never needs it).


_STORAGE = {pa.int64(): np.int64, pa.float64(): np.float64, pa.date32(): np.int32}
"""Arrow type -> the numpy type of its values buffer (date32: days since 1970-01-01)."""


def _numbers(values: np.ndarray, kind: pa.DataType) -> pa.Array:
    """``values`` as an Arrow array of ``kind`` (a key of ``_STORAGE``); NaN is null, as
    ``pa.array(..., from_pandas=True)`` has it."""
    values = np.ascontiguousarray(values, dtype=_STORAGE[kind])
    validity = None
    if values.dtype.kind == "f":
        nan = np.isnan(values)
        if nan.any():
            validity = pa.py_buffer(np.packbits(~nan, bitorder="little"))
    return pa.Array.from_buffers(kind, values.size, [validity, pa.py_buffer(values)])


def _texts(items: list, kind: pa.DataType | None = None) -> pa.Array:
    """``items`` (str) as an Arrow string array, or (bytes, with ``kind`` binary) a binary one."""
    kind = pa.string() if kind is None else kind
    data = [t.encode() for t in items] if kind == pa.string() else items
    offsets = np.zeros(len(data) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, data), np.int64, len(data)), out=offsets[1:])
    if offsets[-1] >= 1 << 31:  # beyond 32-bit offsets: as pyarrow makes it
        return pa.array(items, kind)
    offsets = offsets.astype(np.int32)
    return pa.Array.from_buffers(kind, len(data), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))])


def _small_offsets(texts: pa.Array) -> pa.Array:
    """A ``large_string`` array as ``string`` (its offsets as int32), without pyarrow.compute."""
    _, offsets, data = texts.buffers()
    at = np.frombuffer(offsets, np.int64)[texts.offset : texts.offset + len(texts) + 1]
    if at[-1] >= 1 << 31:
        return pa.array(texts.to_pylist(), pa.string())
    buffers = [None, pa.py_buffer((at - at[0]).astype(np.int32)), data.slice(int(at[0]))]
    return pa.Array.from_buffers(pa.string(), len(texts), buffers)


def _texts_at(texts: np.ndarray, which: np.ndarray) -> pa.Array:
    """``texts[which]`` as an Arrow string array (one text repeated is built directly)."""
    if len(texts) == 1:
        data = str(texts[0]).encode()
        offsets = np.arange(which.size + 1, dtype=np.int64) * len(data)
        if offsets[-1] < 1 << 31:
            buffers = [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data * which.size)]
            return pa.Array.from_buffers(pa.string(), which.size, buffers)
    return _texts(texts.tolist()).take(_numbers(which, pa.int64()))


def _merge_texts(parts, order) -> tuple[np.ndarray, np.ndarray]:
    """(texts, index) pairs of several reductions as one, rows reordered by ``order``."""
    texts, index, offset = [], [], 0
    for t, i in parts:
        texts.append(t)
        index.append(i + offset)
        offset += len(t)
    return np.concatenate(texts), np.concatenate(index)[order]


def _geo_metadata(kinds: list[str]) -> bytes:
    import json

    return json.dumps(
        {
            "version": "1.1.0",
            "primary_column": "geometry",
            # No "crs": GeoParquet's default, OGC:CRS84 (longitude, latitude), is what is stored.
            "columns": {"geometry": {"encoding": "WKB", "geometry_types": kinds}},
        }
    ).encode()
