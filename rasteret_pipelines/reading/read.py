"""Read geometries from a collection: plan windows per scene, fetch every tile once, mask, mosaic.

For each geometry the reference grid is the grid of its first covering scene (earliest, then
by id) at the finest requested band. Every (scene, band) whose grid is that grid, shifted by a
whole number of pixels, is read directly (no resampling); any other (another CRS, another
resolution such as a 20 m band beside 10 m ones) is read in its own grid and warped onto the
reference window with rasterio's ``reproject`` (nearest neighbour unless asked otherwise).
All reads of all geometries, bands and scenes go out as one concurrent batch, so a tile shared
by several of them is fetched and decoded once.

Pixels outside a geometry follow rasterio's rule (pixel centres inside, or ``all_touched``),
so a single-scene read equals ``rasterio.mask.mask(..., crop=True)`` on the same file. Where
several scenes of one date cover a geometry they are mosaicked: for each band, the first
scene (by datetime, then id) with a valid pixel there wins.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
import rasterio.features
import rasterio.warp
import shapely
from affine import Affine
from pyproj import CRS, Transformer
from rasterio.enums import Resampling

from rasteret_pipelines.cog import CogHeader, FetchConfig, FetchStats, RangeFetcher, run_sync
from rasteret_pipelines.cog.read import fetch_windows
from rasteret_pipelines.collections.query import Collection
from rasteret_pipelines.errors import (
    DateRangeError,
    InvalidReadArgumentError,
    NoScenesError,
    UnknownBandError,
)
from rasteret_pipelines.reading.geometries import normalize_geometries
from rasteret_pipelines.reading.memory import check_plans
from rasteret_pipelines.reading.model import GeometryGrid, empty_stack
from rasteret_pipelines.reading.quality import clear_pixels

log = logging.getLogger(__name__)

VALUE_MODES = ("float", "native", "reflectance")
_SCENE_COLUMNS = ["id", "datetime", "geometry", "earthsearch:boa_offset_applied", "s2:processing_baseline"]


@dataclass
class _Scene:
    id: str
    datetime: np.datetime64
    footprint: shapely.Geometry
    reflectance: tuple[float, float]
    """(scale, offset) from stored values to reflectance for this scene."""
    headers: dict[str, CogHeader]


@dataclass
class _Grid:
    crs: CRS
    transform: Affine
    width: int
    height: int


@dataclass
class _Read:
    """One window read of one (scene, band) for one geometry."""

    header: CogHeader
    window: tuple[int, int, int, int]
    direct: bool
    """True: the window is the reference window itself (integer shift, same resolution)."""
    result: np.ndarray | None = None


@dataclass
class _GeometryPlan:
    gid: object
    geometry: shapely.Geometry
    grid: _Grid
    inside: np.ndarray
    """Boolean (height, width): pixels of the reference window inside the geometry."""
    layers: dict[np.datetime64, list[tuple[_Scene, dict[str, _Read]]]] = field(default_factory=dict)


def read_geometries(
    collection: Collection,
    geometries,
    bands: Sequence[str],
    *,
    date_range=None,
    cloud_cover_lt: float | None = None,
    values: str = "float",
    cloud_mask: bool = False,
    all_touched: bool = False,
    resampling: Resampling = Resampling.nearest,
    crs=None,
    resolution: float | None = None,
    fetch_config: FetchConfig | None = None,
    filters: dict | None = None,
):
    """Read ``bands`` for every geometry from the collection's scenes (see module docs).

    Args:
        collection: An opened collection.
        geometries: Shapely geometries, a GeoSeries or a GeoDataFrame (EPSG:4326 unless it
            says otherwise); ids from the index or 1..n.
        bands: Band names as the user calls them (``B04``, ``red``); variables keep them.
        date_range: ``(start, end)`` dates, inclusive; must overlap the collection's.
        cloud_cover_lt: Scene-level cloud cover filter.
        values: ``"float"`` (file values as float32, NaN where masked), ``"native"`` (the
            file's dtype, masked pixels set to nodata, or 0 when none is set), or
            ``"reflectance"`` (float32 physical reflectance with the source's scale and
            offset, ``earthsearch:boa_offset_applied`` respected).
        cloud_mask: Also read the source's quality band and mask cloudy pixels.
        all_touched: Include every pixel the geometry touches, not only pixel centres inside.
        resampling: Used only where a band must be warped onto the reference grid.
        crs: Put every geometry on a grid in this CRS instead of its first scene's; pixels
            are then warped with ``resampling``.
        resolution: Pixel size of that grid in ``crs`` units (default: the finest requested
            band's pixel size, which must then be in the same units).
        fetch_config: Transport settings.
        filters: Extra ``{column: value}`` collection filters (platform, MGRS tile, ...).

    Returns:
        The Dataset described in :mod:`rasteret_pipelines.reading.model`.

    Raises:
        UnknownBandError, DateRangeError, InvalidGeometryError, NoScenesError.
    """
    if values not in VALUE_MODES:
        raise InvalidReadArgumentError(f"values must be one of {VALUE_MODES}, got {values!r}")
    if isinstance(bands, str):
        bands = [bands]
    if not bands:
        raise UnknownBandError("no bands asked for")
    keys = {name: collection.resolve_band(name) for name in bands}
    quality = collection.source.quality_band if cloud_mask else None
    if quality is not None and quality not in collection.bands:
        raise UnknownBandError(
            f"cloud_mask needs the {quality!r} band, which collection {collection.name!r} does not hold"
        )
    _check_date_range(collection, date_range)
    geoms = normalize_geometries(geometries)
    scenes = _scenes(collection, geoms, date_range, cloud_cover_lt, filters,
                     sorted(set(keys.values()) | ({quality} if quality else set())))
    target = CRS.from_user_input(crs) if crs is not None else None
    plans, uncovered = _plan(geoms, scenes, keys, quality, all_touched, target, resolution)
    if not plans:
        raise NoScenesError(
            f"no scene of collection {collection.name!r} covers the geometries"
            + (f" between {date_range[0]} and {date_range[1]}" if date_range else "")
            + (f" with cloud cover below {cloud_cover_lt}" if cloud_cover_lt is not None else "")
        )
    config = replace(fetch_config or FetchConfig(), requester_pays=collection.source.requester_pays,
                     local_files=collection.allow_local_hrefs)
    check_plans(plans, bands, values, config)  # MemoryLimitError before any request
    stats = run_sync(_fetch(plans, config))  # works inside a running loop (Jupyter)
    out_dtype, fill = _output_type(plans, keys, bands, values)
    attrs = {
        "collection": collection.name,
        "data_source": collection.source.id,
        "values": "raw" if values == "float" else values,
        "bands": list(bands),
        "asset_keys": [keys[b] for b in bands],
        "cloud_mask": int(bool(cloud_mask)),
        "all_touched": int(bool(all_touched)),
        "requests": stats.requests,
        "header_requests": stats.header_requests,
        "bytes_read": stats.bytes,
    }
    if uncovered:
        attrs["geometries_without_scenes"] = [str(g) for g in uncovered]
        log.warning("geometries %s are covered by no scene; they are left out", uncovered)
    grids = [
        GeometryGrid(p.gid, _crs_text(p.grid.crs), tuple(p.grid.transform)[:6], p.grid.height, p.grid.width)
        for p in plans
    ]
    times = sorted({day for p in plans for day in p.layers})
    ds = empty_stack(grids, times, list(bands), out_dtype, fill, attrs)
    t_index = {t: i for i, t in enumerate(times)}
    for gi, plan in enumerate(plans):
        _fill_geometry(ds, gi, t_index, plan, keys, bands, quality, values, resampling)
        plan.layers.clear()  # release this geometry's windows
    return ds


# -- selection and planning --------------------------------------------------------------------


def _check_date_range(collection: Collection, date_range) -> None:
    if date_range is None:
        return
    from rasteret_pipelines.collections.search import check_date_range

    start, end = check_date_range(date_range)
    c_start, c_end = collection.date_range
    if end.isoformat() < c_start or start.isoformat() > c_end:
        raise DateRangeError(
            f"date range {start}..{end} is outside collection {collection.name!r} "
            f"({c_start}..{c_end})"
        )


def _scenes(collection, geoms, date_range, cloud_cover_lt, filters, keys) -> list[_Scene]:
    union = shapely.union_all([g for _, g in geoms])
    header_cols = [f"{k}_header" for k in keys]
    available = set(collection.dataset.schema.names)
    columns = [c for c in _SCENE_COLUMNS if c in available] + header_cols
    table = collection.to_table(
        date_range=date_range, cloud_cover_lt=cloud_cover_lt, geometry=union, properties=filters,
        columns=columns,
    )
    scenes = []
    rows = table.to_pylist() if table.num_rows else []
    for row in rows:
        headers = {}
        missing = []
        for key in keys:
            d = row.get(f"{key}_header")
            if d is None:
                missing.append(key)
            else:
                headers[key] = CogHeader.from_dict(d)
        if missing:
            log.warning(
                "scene %s has no cached header for %s (failed at build time); it is skipped. "
                "Rebuild the collection month to retry.", row["id"], ", ".join(missing),
            )
            continue
        when = np.datetime64(row["datetime"].replace(tzinfo=None), "ns")
        scenes.append(
            _Scene(
                id=row["id"],
                datetime=when,
                footprint=shapely.from_wkb(row["geometry"]),
                reflectance=collection.source.reflectance(row),
                headers=headers,
            )
        )
    scenes.sort(key=lambda s: (s.datetime, s.id))
    return scenes


def _finest(scene: _Scene, keys: Sequence[str]) -> CogHeader:
    return min((scene.headers[k] for k in keys), key=lambda h: abs(h.transform[0] * h.transform[4]))


def _plan(geoms, scenes, keys: dict[str, str], quality, all_touched, target=None, resolution=None):
    data_keys = sorted(set(keys.values()))
    read_keys = data_keys + ([quality] if quality and quality not in data_keys else [])
    plans, uncovered = [], []
    for gid, geom in geoms:
        covering = [s for s in scenes if s.footprint.intersects(geom)]
        if not covering:
            uncovered.append(gid)
            continue
        ref = _finest(covering[0], data_keys)
        if target is None:
            grid, local_geom = _reference_grid(ref.crs, ref.transform, geom)
        else:
            grid, local_geom = _target_grid(ref, target, resolution, geom)
        inside = rasterio.features.geometry_mask(
            [local_geom], out_shape=(grid.height, grid.width), transform=grid.transform,
            all_touched=all_touched, invert=True,
        )
        plan = _GeometryPlan(gid=gid, geometry=geom, grid=grid, inside=inside)
        for scene in covering:
            day = scene.datetime.astype("datetime64[D]").astype("datetime64[ns]")
            reads = {k: _window_read(scene.headers[k], grid) for k in read_keys}
            plan.layers.setdefault(day, []).append((scene, reads))
        plans.append(plan)
    return plans, uncovered


@lru_cache(maxsize=512)
def _crs_of(text: str) -> CRS:
    """Parsed CRSs are cached: a read of many geometries x scenes asks for the same few."""
    return CRS.from_user_input(text)


@lru_cache(maxsize=512)
def _transformer(src: CRS, dst: CRS) -> Transformer:
    return Transformer.from_crs(src, dst, always_xy=True)


def reproject_geometry(geom: shapely.Geometry, src_crs, dst_crs) -> shapely.Geometry:
    """``geom`` with its coordinates transformed by pyproj (always x/y order)."""
    src = _crs_of(src_crs) if isinstance(src_crs, str) else src_crs
    dst = _crs_of(dst_crs) if isinstance(dst_crs, str) else dst_crs
    transformer = _transformer(src, dst)
    return shapely.transform(geom, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))


def _target_grid(ref: CogHeader, target: CRS, resolution, geom_4326) -> tuple[_Grid, shapely.Geometry]:
    """A north-up grid in ``target`` with square ``resolution`` pixels aligned to multiples of it."""
    if resolution is None:
        source = _crs_of(ref.crs)
        if source.axis_info[0].unit_name != target.axis_info[0].unit_name:
            raise ValueError(
                f"resolution is needed for crs={target.to_string()}: its units "
                f"({target.axis_info[0].unit_name}) differ from the scenes' ({source.axis_info[0].unit_name})"
            )
        resolution = abs(ref.transform[0])
    res = float(resolution)
    local = reproject_geometry(geom_4326, "EPSG:4326", target)
    left, bottom, right, top = local.bounds
    origin = (math.floor(left / res) * res, math.ceil(top / res) * res)
    return _reference_grid(target, (res, 0.0, origin[0], 0.0, -res, origin[1]), geom_4326)


def _reference_grid(crs, transform, geom_4326) -> tuple[_Grid, shapely.Geometry]:
    """The window of ``geom_4326`` on the grid (``crs``, ``transform``), as rasterio computes it."""
    crs = _crs_of(crs) if isinstance(crs, str) else crs
    local = reproject_geometry(geom_4326, "EPSG:4326", crs)
    transform = Affine(*transform)
    # rasterio.features.geometry_window: pixel bounds of the geometry, floor/ceil.
    left, bottom, right, top = rasterio.features.bounds(local, transform=~transform)
    cols = (left, right)
    rows = (top, bottom)
    col0, col1 = math.floor(min(cols)), math.ceil(max(cols))
    row0, row1 = math.floor(min(rows)), math.ceil(max(rows))
    width, height = max(col1 - col0, 1), max(row1 - row0, 1)
    window_transform = transform * Affine.translation(col0, row0)
    return _Grid(crs, window_transform, width, height), local


def _window_read(header: CogHeader, grid: _Grid) -> _Read:
    """A direct window when ``header``'s grid is the reference grid shifted by whole pixels."""
    a, b, c, d, e, f = header.transform
    ga, gb, gc, gd, ge, gf = tuple(grid.transform)[:6]
    header_crs = _crs_of(header.crs)
    same_grid = b == gb == d == gd == 0 and math.isclose(a, ga, rel_tol=1e-9) and math.isclose(e, ge, rel_tol=1e-9)
    if same_grid and header_crs == grid.crs:
        col, row = (gc - c) / a, (gf - f) / e
        if abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6:
            return _Read(header, (round(col), round(row), grid.width, grid.height), direct=True)
    t = Affine(a, b, c, d, e, f)
    # Otherwise read the part of this band's grid covering the reference window, plus a margin.
    left, top = grid.transform * (0, 0)
    right, bottom = grid.transform * (grid.width, grid.height)
    xs, ys = rasterio.warp.transform(grid.crs, header_crs,
                                     [left, right, left, right], [top, top, bottom, bottom])
    inv = ~t
    pcols, prows = zip(*(inv * (x, y) for x, y in zip(xs, ys)))
    col0, col1 = math.floor(min(pcols)) - 1, math.ceil(max(pcols)) + 1
    row0, row1 = math.floor(min(prows)) - 1, math.ceil(max(prows)) + 1
    return _Read(header, (col0, row0, col1 - col0, row1 - row0), direct=False)


async def _fetch(plans: list[_GeometryPlan], config: FetchConfig | None) -> FetchStats:
    """Fetch every planned window in one batch; returns the transport's request counters."""
    reads = [r for p in plans for layer in p.layers.values() for _, rs in layer for r in rs.values()]
    async with RangeFetcher(config) as fetcher:
        arrays = await fetch_windows(fetcher, [(r.header, r.window) for r in reads])
    for r, arr in zip(reads, arrays):
        r.result = arr[0]  # single-band COGs (one asset per band)
    return fetcher.stats


# -- values, masks and mosaics -----------------------------------------------------------------


def _output_type(plans, keys, bands, values):
    """(dtype, fill) of the output: float32 and NaN, or for ``native`` the files' own."""
    if values != "native":
        return np.dtype("float32"), np.nan
    first = next(iter(plans[0].layers.values()))[0][1]
    headers = [first[keys[b]].header for b in bands]
    kinds = {(h.dtype, h.nodata_text) for h in headers}
    if len(kinds) > 1:
        raise ValueError(
            "values='native' needs bands of one dtype and nodata, got "
            + ", ".join(f"{b}: {h.dtype} nodata {h.nodata_text}" for b, h in zip(bands, headers))
            + "; read them separately or use values='float'"
        )
    return np.dtype(headers[0].dtype), headers[0].fill_value


def _on_grid(read: _Read, grid: _Grid, resampling) -> tuple[np.ndarray, np.ndarray]:
    """(values, valid) of one read on the reference window."""
    header = read.header
    data = read.result
    nodata = header.nodata
    valid = np.ones(data.shape, bool) if nodata is None else ~(
        np.isnan(data) if math.isnan(nodata) else data == nodata
    )
    if data.dtype.kind == "f":
        valid &= ~np.isnan(data)
    if read.direct:
        return data, valid
    col0, row0, _, _ = read.window
    src_transform = Affine(*header.transform) * Affine.translation(col0, row0)
    src_crs = _crs_of(header.crs)
    out = np.zeros((grid.height, grid.width), dtype=data.dtype)
    rasterio.warp.reproject(
        data, out, src_transform=src_transform, src_crs=src_crs, dst_transform=grid.transform,
        dst_crs=grid.crs, resampling=resampling,
    )
    out_valid = np.zeros((grid.height, grid.width), dtype=np.uint8)
    rasterio.warp.reproject(
        valid.astype(np.uint8), out_valid, src_transform=src_transform, src_crs=src_crs,
        dst_transform=grid.transform, dst_crs=grid.crs, resampling=Resampling.nearest,
        src_nodata=None, dst_nodata=0, init_dest_nodata=True,
    )
    return out, out_valid.astype(bool)


def _fill_geometry(ds, gi: int, t_index, plan: _GeometryPlan, keys, bands, quality, values, resampling) -> None:
    """Mask, mosaic and convert one geometry's reads straight into the stacked Dataset."""
    grid = plan.grid
    h, w = grid.height, grid.width
    scene_ids = ds["scene_id"].values
    targets = {band: ds[band].values for band in bands}
    for day in sorted(plan.layers):
        ti = t_index[day]
        used = []
        filled = {b: np.zeros((h, w), bool) for b in bands}
        for scene, reads in plan.layers[day]:
            clear = plan.inside
            if quality is not None:
                qa, qa_valid = _on_grid(reads[quality], grid, Resampling.nearest)
                clear = clear & qa_valid & clear_pixels(quality, qa)
            contributed = False
            for band in bands:
                data, valid = _on_grid(reads[keys[band]], grid, resampling)
                take = valid & clear & ~filled[band]
                if not take.any():
                    continue
                contributed = True
                np.copyto(targets[band][gi, ti, :h, :w], _convert(data, values, scene), where=take, casting="unsafe")
                filled[band] |= take
            if contributed:
                used.append(scene.id)
        scene_ids[gi, ti] = ",".join(used)


def _crs_text(crs: CRS) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def _convert(raw: np.ndarray, mode: str, scene: _Scene) -> np.ndarray:
    """Stored values as the output wants them (float32 reflectance, or unchanged)."""
    if mode == "reflectance":
        scale, offset = scene.reflectance
        return (raw.astype(np.float64) * scale + offset).astype(np.float32)  # rounded once
    return raw
