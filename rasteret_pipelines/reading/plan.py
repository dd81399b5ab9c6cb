"""Selection and planning: which scenes cover each geometry, on which grid, through which windows.

Nothing here touches the network. :func:`select_scenes` reads only the columns a read needs
from the collection (ids, datetimes, footprints, the reflectance properties and the requested
bands' cached headers); :func:`plan_geometries` puts every geometry on its reference grid,
computes its mask (:mod:`~rasteret_pipelines.reading.mask`) and one window per (scene, band).

The reference grid of a geometry is the grid of its first covering scene (earliest, then by
id) at the finest requested band, or a caller-named CRS and resolution. A (scene, band) whose
grid is that grid shifted by whole pixels is read *directly*; any other is read in its own
grid (with a margin) and warped later.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS, Transformer  # every read puts geometries on a scene's grid

from rasteret_pipelines.cog.header import CogHeader
from rasteret_pipelines.errors import (
    DateRangeError,
    GeoreferenceError,
    InvalidReadArgumentError,
    MissingAssetError,
    UnknownBandError,
)
from rasteret_pipelines.reading.geometries import union_of
from rasteret_pipelines.reading.mask import geometry_mask

log = logging.getLogger(__name__)

_SCENE_COLUMNS = ["id", "datetime", "geometry"]


@dataclass
class Scene:
    """One STAC item of the collection with the cached headers a read needs."""

    id: str
    datetime: np.datetime64
    footprint: shapely.Geometry
    reflectance: tuple[float, float]
    """(scale, offset) from stored values to reflectance for this scene."""
    headers: dict[str, CogHeader]
    """Asset key -> cached header."""

    @property
    def day(self) -> np.datetime64:
        """The acquisition date (UTC midnight): scenes of one day are mosaicked together."""
        return self.datetime.astype("datetime64[D]").astype("datetime64[ns]")


@dataclass
class Grid:
    """A pixel window on a CRS: where one geometry's layers sit."""

    crs_key: str
    """The CRS as text (``EPSG:<code>`` or WKT, as the headers store it): cheap to compare and
    to cache by, where a ``pyproj.CRS`` hashes through its WKT on every lookup."""
    transform: Affine
    width: int
    height: int

    @property
    def crs(self):
        """The ``pyproj.CRS`` (parsed once per distinct text)."""
        return crs_of(self.crs_key)


@dataclass
class WindowRead:
    """One window read of one (scene, band) for one geometry."""

    header: CogHeader
    window: tuple[int, int, int, int]
    direct: bool
    """True: the window is the reference window itself (integer shift, same resolution)."""


@dataclass
class SceneReads:
    """The reads of one scene for one geometry, and the scene's rank within its date."""

    scene: Scene
    rank: int
    """0 for the first scene of the date (by datetime, then id), 1 for the next, ..."""
    reads: dict[str, WindowRead]
    """Asset key -> read (data bands and, with a cloud mask, the quality band)."""
    day: np.datetime64
    """The date (UTC midnight) of the layer this scene goes into."""


@dataclass
class GeometryPlan:
    """Everything needed to read one geometry: its grid, its mask, its reads by date."""

    gid: object
    geometry: shapely.Geometry
    grid: Grid
    inside: np.ndarray
    """Boolean (height, width): pixels of the reference window inside the geometry."""
    layers: dict[np.datetime64, list[SceneReads]] = field(default_factory=dict)
    """Date (UTC midnight) -> the scenes of that date covering the geometry, in rank order."""


def planned_reads(plans: Sequence[GeometryPlan]) -> Iterator[tuple[int, SceneReads, str, WindowRead]]:
    """Every planned window read: (geometry index, its scene's reads, asset key, read).

    The one walk over the plan's structure, for the fetcher and for estimates made before any
    request (memory, an exact dry run of the tiles and byte ranges).
    """
    for gi, plan in enumerate(plans):
        for layer in plan.layers.values():
            for sr in layer:
                for key, read in sr.reads.items():
                    yield gi, sr, key, read


# -- selection ---------------------------------------------------------------------------------------


def check_date_range(collection, date_range) -> None:
    """:class:`DateRangeError` when ``date_range`` does not overlap the collection's."""
    if date_range is None:
        return
    from rasteret_pipelines.collections.search import check_date_range as parse

    start, end = parse(date_range)
    c_start, c_end = collection.date_range
    if end.isoformat() < c_start or start.isoformat() > c_end:
        raise DateRangeError(
            f"date range {start}..{end} is outside collection {collection.name!r} ({c_start}..{c_end})"
        )


def read_attrs(collection, bands, keys: dict[str, str], values: str, cloud_mask: bool) -> dict:
    """The attributes every read's Dataset starts with: where it came from, its bands and their
    asset keys, the value mode (``"raw"`` for float reads, which carry no offsets) and the mask."""
    return {
        "collection": collection.name,
        "data_source": collection.source.id,
        "values": "raw" if values == "float" else values,
        "bands": list(bands),
        "asset_keys": [keys[b] for b in bands],
        "cloud_mask": int(bool(cloud_mask)),
    }


def requested_bands(collection, bands) -> tuple[list[str], dict[str, str]]:
    """``(band names, {name: asset key})`` of a read's ``bands`` (a name or a list).

    Raises:
        UnknownBandError: no band, or a band the collection's source does not have.
    """
    bands = [bands] if isinstance(bands, str) else list(bands or [])
    if not bands:
        raise UnknownBandError("no bands asked for")
    return bands, {name: collection.resolve_band(name) for name in bands}


def cloud_mask_rule(collection, cloud_mask: bool):
    """The source's cloud-mask rule when ``cloud_mask``, else None.

    Raises:
        UnknownBandError: the collection does not hold the rule's quality band.
    """
    rule = collection.source.cloud_mask if cloud_mask else None
    if rule is not None and rule.band not in collection.bands:
        raise UnknownBandError(
            f"cloud_mask needs the {rule.band!r} band, which collection {collection.name!r} does not hold"
        )
    return rule


def select_scenes(
    collection, geoms, date_range, cloud_cover_lt, filters, keys: Sequence[str], names: dict[str, str] | None = None
) -> list[Scene]:
    """The collection's scenes intersecting any geometry, sorted by (datetime, id).

    Only the needed columns are read. A scene without a cached header for one of ``keys`` is
    skipped with a warning that says why: its item has no such asset (nothing to retry), or its
    header failed at build time (a rebuild retries it).

    Args:
        names: Asset key -> the band name the caller asked for (for messages).

    Raises:
        MissingAssetError: no selected scene has an asset for one of ``keys``: the collection's
            items lack it (raised before any request).
    """
    from rasteret_pipelines.collections.schema import band_columns, is_missing_asset

    union = union_of(geoms)
    header_cols = {key: band_columns(key)[1] for key in keys}
    available = set(collection.schema.names)
    error_cols = {key: band_columns(key)[2] for key in keys if band_columns(key)[2] in available}
    scene_columns = _SCENE_COLUMNS + list(collection.source.reflectance_properties)
    columns = [c for c in scene_columns if c in available] + list(header_cols.values()) + list(error_cols.values())
    table = collection.to_table(
        date_range=date_range,
        cloud_cover_lt=cloud_cover_lt,
        geometry=union,
        properties=filters,
        columns=columns,
        sort=False,  # the scenes are sorted below
    )
    if not table.num_rows:
        return []
    import pyarrow as pa

    # Python values and raw counts only: pyarrow imports pandas to convert a tz-aware timestamp
    # (or any column to numpy), and pandas is left to load with xarray, in the background.
    data = {name: table.column(name).to_pylist() for name in table.column_names if name != "datetime"}
    unit = table.schema.field("datetime").type.unit
    counts = [v for chunk in table.column("datetime").chunks for v in chunk.view(pa.int64()).to_pylist()]
    footprints = shapely.from_wkb(data["geometry"])
    no_asset = {
        key: {
            i
            for i in range(table.num_rows)
            if data[header_cols[key]][i] is None
            and key in error_cols
            and is_missing_asset(data[error_cols[key]][i], key)
        }
        for key in keys
    }
    lacking = [key for key, rows in no_asset.items() if len(rows) == table.num_rows]
    if lacking:
        raise missing_asset_error(collection, lacking[0], (names or {}).get(lacking[0], lacking[0]))
    scenes = []
    for i in range(table.num_rows):
        headers, missing, absent = {}, [], []
        for key, column in header_cols.items():
            d = data[column][i]
            if d is None:
                (absent if i in no_asset[key] else missing).append(key)
            else:
                header = headers[key] = CogHeader.from_dict(d)
                if header.crs is None or crs_of(header.crs).is_engineering:
                    what = "no CRS" if header.crs is None else "only a local (engineering) CRS"
                    raise GeoreferenceError(
                        f"scene {data['id'][i]}, band {key}: {header.href} has {what} the engine "
                        "could build from its GeoKeys (see the GeoreferenceWarning of the build); "
                        "its pixels cannot be placed on a map"
                    )
        if absent:
            log.warning(
                "scene %s has no %s asset (its STAC item lacks it); it is skipped", data["id"][i], ", ".join(absent)
            )
        if missing:
            log.warning(
                "scene %s has no cached header for %s (failed at build time); it is skipped. "
                "Rebuild the collection month to retry.",
                data["id"][i],
                ", ".join(missing),
            )
        if absent or missing:
            continue
        row = {
            name: data[name][i] for name in data if name not in header_cols.values() and name not in error_cols.values()
        }
        when = np.datetime64(counts[i], unit).astype("datetime64[ns]")
        scenes.append(
            Scene(
                id=row["id"],
                datetime=when,
                footprint=footprints[i],
                reflectance=collection.source.reflectance(row),
                headers=headers,
            )
        )
    scenes.sort(key=lambda s: (s.datetime, s.id))
    return scenes


def missing_asset_error(collection, key: str, name: str) -> MissingAssetError:
    """:class:`MissingAssetError` for band ``name`` (asset ``key``), listing the bands of
    ``collection`` whose items do have an asset (read from the error columns, no request)."""
    from rasteret_pipelines.collections.schema import band_columns, is_missing_asset

    names = set(collection.schema.names)
    columns = [band_columns(b)[2] for b in collection.bands if band_columns(b)[2] in names]
    table = collection.to_table(columns=columns, sort=False) if columns else None
    has = []
    for band in collection.bands:
        column = band_columns(band)[2]
        if table is None or column not in table.column_names:
            has.append(band)
        elif any(not is_missing_asset(e, band) for e in table.column(column).to_pylist()):
            has.append(band)
    label = f"band {name!r} (asset {key!r})" if name != key else f"band {key!r}"
    return MissingAssetError(
        f"{label}: the items of collection {collection.name!r} have no {key!r} asset, so there is "
        f"nothing to read (and nothing a rebuild would retry); bands with assets: "
        f"{', '.join(has) or 'none'}",
        band=name,
        asset_key=key,
        collection=collection.name,
        available=has,
    )


# -- CRSs ----------------------------------------------------------------------------------------


@lru_cache(maxsize=512)
def crs_of(text: str):
    """A parsed ``pyproj.CRS``, cached: a read of many geometries x scenes asks for the same few."""
    return CRS.from_user_input(text)


def crs_key(crs) -> str:
    """Text identifying ``crs`` (a string is its own key; a ``pyproj.CRS`` gives its WKT)."""
    return crs if isinstance(crs, str) else crs.to_wkt()


@lru_cache(maxsize=512)
def same_crs(a: str, b: str) -> bool:
    """Whether two CRS texts name the same CRS (pyproj's equality, once per pair)."""
    return a == b or crs_of(a) == crs_of(b)


@lru_cache(maxsize=512)
def _transformer(src: str, dst: str):
    return Transformer.from_crs(crs_of(src), crs_of(dst), always_xy=True)


@lru_cache(maxsize=512)
def crs_text(key: str) -> str:
    """``EPSG:<code>`` when the CRS has one, else its WKT (cached: ``to_epsg`` searches a database)."""
    if key.upper().startswith("EPSG:"):
        return key.upper()
    crs = crs_of(key)
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def reproject_geometry(geom: shapely.Geometry, src_crs, dst_crs) -> shapely.Geometry:
    """``geom`` with its coordinates transformed by pyproj (always x/y order).

    Args:
        geom: Any shapely geometry.
        src_crs: Its CRS: text (``EPSG:4326``, WKT) or a ``pyproj.CRS``.
        dst_crs: The CRS wanted, likewise.
    """
    transformer = _transformer(crs_key(src_crs), crs_key(dst_crs))
    return shapely.transform(geom, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))


# -- planning --------------------------------------------------------------------------------------


def plan_geometries(
    geoms,
    scenes: list[Scene],
    data_keys: Sequence[str],
    read_keys: Sequence[str],
    all_touched: bool,
    target: str | None = None,
    resolution=None,
):
    """(plans, uncovered ids): one :class:`GeometryPlan` per geometry some scene covers.

    ``target``: CRS text of a caller-named grid (None: each geometry's first scene's grid).
    """
    plans, uncovered = [], []
    footprints = np.array([s.footprint for s in scenes], dtype=object)
    days = [s.day for s in scenes]
    for gid, geom in geoms:
        hits = shapely.intersects(footprints, geom) if len(scenes) else np.zeros(0, bool)
        covering = [s for s, hit in zip(scenes, hits) if hit]
        if not covering:
            uncovered.append(gid)
            continue
        ref = _finest(covering[0], data_keys)
        if target is None:
            grid, local_geom = reference_grid(ref.crs, ref.transform, geom)
        else:
            grid, local_geom = target_grid(ref, target, resolution, geom)
        inside = geometry_mask(local_geom, tuple(grid.transform)[:6], grid.height, grid.width, all_touched=all_touched)
        plan = GeometryPlan(gid=gid, geometry=geom, grid=grid, inside=inside)
        for scene, day in zip(covering, (days[i] for i in np.flatnonzero(hits))):
            layer = plan.layers.setdefault(day, [])
            reads = {k: window_read(scene.headers[k], grid) for k in read_keys}
            layer.append(SceneReads(scene, len(layer), reads, day))
        plans.append(plan)
    return plans, uncovered


def _finest(scene: Scene, keys: Sequence[str]) -> CogHeader:
    return min((scene.headers[k] for k in keys), key=lambda h: abs(h.transform[0] * h.transform[4]))


def target_grid(ref: CogHeader, target_key: str, resolution, geom_4326) -> tuple[Grid, shapely.Geometry]:
    """A north-up grid in ``target_key`` (CRS text) with square ``resolution`` pixels aligned to
    multiples of it."""
    target = crs_of(target_key)
    if resolution is None:
        source = crs_of(ref.crs)
        if source.axis_info[0].unit_name != target.axis_info[0].unit_name:
            raise InvalidReadArgumentError(
                f"resolution is needed for crs={target.to_string()}: its units "
                f"({target.axis_info[0].unit_name}) differ from the scenes' ({source.axis_info[0].unit_name})"
            )
        resolution = abs(ref.transform[0])
    res = float(resolution)
    local = reproject_geometry(geom_4326, "EPSG:4326", target_key)
    left, bottom, right, top = local.bounds
    origin = (math.floor(left / res) * res, math.ceil(top / res) * res)
    return reference_grid(target_key, (res, 0.0, origin[0], 0.0, -res, origin[1]), geom_4326)


def reference_grid(crs, transform, geom_4326) -> tuple[Grid, shapely.Geometry]:
    """The window of ``geom_4326`` on the grid (``crs``, ``transform``), as rasterio computes it.

    ``rasterio.features.geometry_window``: the geometry's coordinates through the inverse
    affine (Affine's own arithmetic, so the same floats), then floor/ceil of their bounds.
    """
    key = crs_key(crs)
    local = reproject_geometry(geom_4326, "EPSG:4326", key)
    transform = Affine(*transform)
    inv = ~transform
    xy = shapely.get_coordinates(local)
    cols = xy[:, 0] * inv.a + xy[:, 1] * inv.b + inv.c
    rows = xy[:, 0] * inv.d + xy[:, 1] * inv.e + inv.f
    col0, col1 = math.floor(cols.min()), math.ceil(cols.max())
    row0, row1 = math.floor(rows.min()), math.ceil(rows.max())
    width, height = max(col1 - col0, 1), max(row1 - row0, 1)
    window_transform = transform @ Affine.translation(col0, row0)
    return Grid(key, window_transform, width, height), local


def window_read(header: CogHeader, grid: Grid) -> WindowRead:
    """A direct window when ``header``'s grid is the reference grid shifted by whole pixels."""
    a, b, c, d, e, f = header.transform
    ga, gb, gc, gd, ge, gf = tuple(grid.transform)[:6]
    same_grid = b == gb == d == gd == 0 and math.isclose(a, ga, rel_tol=1e-9) and math.isclose(e, ge, rel_tol=1e-9)
    if same_grid and same_crs(header.crs, grid.crs_key):
        col, row = (gc - c) / a, (gf - f) / e
        if abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6:
            return WindowRead(header, (round(col), round(row), grid.width, grid.height), direct=True)
    # Otherwise read the part of this band's grid covering the reference window, plus a margin.
    left, top = grid.transform @ (0, 0)
    right, bottom = grid.transform @ (grid.width, grid.height)
    xs, ys = _transformer(grid.crs_key, header.crs).transform([left, right, left, right], [top, top, bottom, bottom])
    inv = ~Affine(a, b, c, d, e, f)
    pcols, prows = zip(*(inv @ (x, y) for x, y in zip(xs, ys)))
    col0, col1 = math.floor(min(pcols)) - 1, math.ceil(max(pcols)) + 1
    row0, row1 = math.floor(min(prows)) - 1, math.ceil(max(prows)) + 1
    return WindowRead(header, (col0, row0, col1 - col0, row1 - row0), direct=False)
