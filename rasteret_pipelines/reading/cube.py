"""Data cubes: every scene on one common grid, grouped into time steps, eager or lazy (dask).

``read_cube`` (``Rasteret.get_xarray(bands=..., bbox=... | geopolygon=... | like=..., crs=,
resolution=)``) returns one Dataset with dimensions ``(time, y, x)``, one variable per band,
the grid of odc-stac's ``load`` for the same arguments:

* **Grid.** North-up, square ``resolution`` pixels in ``crs``, edges on multiples of the
  resolution (odc-stac's default anchor), covering ``bbox`` (lon/lat degrees) or
  ``geopolygon`` (EPSG:4326) after transforming it, densified, into ``crs``; or the grid of
  ``like`` (a Dataset from this function or any object with ``crs``, ``affine``/``transform``
  and ``shape``, such as an odc-geo ``GeoBox``). ``geometries``, when given, mask the cube
  (pixel centres inside, or ``all_touched``) and, without another area, make it.
* **Pixels.** Each (scene, band) is read from the level of its COG that GDAL's
  ``GDALBandGetBestOverviewLevel2`` would choose (the coarsest overview at least as fine as
  the target, with GDAL's oversampling threshold: 1.2 for nearest, 1.0 otherwise, nudged to
  1.01 as GDAL does), picked from the cached header with no request. When that level's grid
  is the cube's grid shifted by whole pixels, its tiles are copied; otherwise the decoded
  source window (plus a margin for the kernel) is warped with ``rasterio.warp.reproject``
  using ``resampling`` (nearest, bilinear, cubic, average), nodata ignored, as GDAL's warper
  does. A warp is made in strips of :data:`WARP_STRIP` columns of the cube's grid, with GDAL's
  ``XSCALE``/``YSCALE`` given for the whole grid, so that a pixel's value does not depend on
  the block it is read in (see :data:`WARP_STRIP` and :func:`_kernel_scale`). Reading stays
  GDAL-free: aiohttp, imagecodecs, numpy; rasterio only resamples decoded arrays.
* **Time steps.** ``groupby``: ``"solar_day"`` (default: scenes of one local solar day,
  odc-stac's rule: UTC time plus ``int(longitude / 15)`` hours at the cube's centre),
  ``"time"`` (each acquisition time), ``"month"`` or a STAC property name. A step's time is
  the earliest datetime of its scenes (odc-stac's label), or the month's first day.
* **Composites.** ``mosaic`` combines the scenes of a step: ``first`` (default), ``last``,
  ``highest``, ``lowest``, ``mean``, ``median``, ``stdev``, ``count``
  (:mod:`~rasteret_pipelines.reading.composite`), or a
  :class:`~rasteret_pipelines.reading.mosaic.MosaicMethod` subclass. The cloud mask, when
  asked for, is applied to every scene before it is fed.
* **Lazy reads.** With ``chunks={"time": t, "y": n, "x": n}`` the variables are dask arrays.
  A task reads one block (all bands, ``t`` steps, ``n x n`` pixels) through the cached
  headers: no header request in any worker. The graph holds the plan once (scene ids,
  datetimes and headers), and each task only names it and its block, so it pickles small.
  Every tile a block needs is fetched once per block (one batch, like an eager read); a tile
  is fetched again only by another block that needs it. To keep that to what the chunking
  forces, the block edges are moved onto the tile lattice of the first scene when the cube's
  grid is a whole-pixel shift of that scene's level grid and the chunk size is a multiple of
  the tile size (the first block is shorter): then no tile is shared between blocks at all.

The eager path is the same block reader run once over the whole cube, and a warped scene is
warped in the same strips with the same kernel scale in every block, so every chunking gives
the eager read's pixels. A block whose edges are not on the strips' lattice fetches a
warped scene's source under its whole strips (up to ``WARP_STRIP - 1`` columns more on each
side).

A dry run (:func:`~rasteret_pipelines.reading.explain.explain`) keeps the plan it makes;
``planned=`` runs that plan instead of planning again, eager or lazy.
"""

from __future__ import annotations

import asyncio
import atexit
import copy
import inspect
import logging
import math
import operator
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import shapely
from affine import Affine

from rasteret_pipelines.cog import FetchConfig, FetchStats, RangeFetcher, _run_sync_with
from rasteret_pipelines.cog.read import decode_pool, fetch_windows
from rasteret_pipelines.errors import (
    CubeChunksError,
    CubeGridError,
    CubeUserColumnsError,
    DaskMissingError,
    GroupbyError,
    InvalidReadArgumentError,
    NoScenesError,
)
from rasteret_pipelines.hrefs import check_href
from rasteret_pipelines.reading.assemble import convert, empty_in_small_pages, nodata_valid
from rasteret_pipelines.reading.mosaic import MosaicMethod, mosaic_method
from rasteret_pipelines.reading.options import GROUPINGS, RESAMPLINGS, CubeOptions
from rasteret_pipelines.reading.plan import (
    Scene,
    check_date_range,
    cloud_mask_rule,
    crs_of,
    crs_text,
    read_attrs,
    reproject_geometry,
    requested_bands,
    select_scenes,
)

log = logging.getLogger(__name__)

__all__ = ["CubeGrid", "CubeOptions", "RESAMPLINGS", "GROUPINGS", "read_cube", "plan_cube", "overview_for", "cube_grid"]


# -- the grid ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CubeGrid:
    """The cube's pixel grid: north-up, ``width`` x ``height`` pixels of ``transform`` in ``crs``."""

    crs: str
    """CRS text (``EPSG:<code>`` or WKT)."""
    transform: tuple[float, float, float, float, float, float]
    """Affine of the top-left pixel (a, b, c, d, e, f)."""
    width: int
    height: int

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform)

    def block(self, r0: int, r1: int, c0: int, c1: int) -> CubeGrid:
        """The sub-grid of rows ``r0:r1`` and columns ``c0:c1``."""
        t = self.affine @ Affine.translation(c0, r0)
        return CubeGrid(self.crs, tuple(t)[:6], c1 - c0, r1 - r0)

    def bounds(self) -> tuple[float, float, float, float]:
        a, _, c, _, e, f = self.transform
        return c, f + e * self.height, c + a * self.width, f

    def outline(self, n: int = 21) -> np.ndarray:
        """``(4n, 2)`` points along the grid's edges, in its CRS (for transforming bounds)."""
        left, bottom, right, top = self.bounds()
        t = np.linspace(0.0, 1.0, n)
        xs = np.concatenate(
            [left + t * (right - left), np.full(n, right), right - t * (right - left), np.full(n, left)]
        )
        ys = np.concatenate(
            [np.full(n, top), top - t * (top - bottom), np.full(n, bottom), bottom + t * (top - bottom)]
        )
        return np.column_stack([xs, ys])


def cube_grid(*, crs, resolution, area_4326: shapely.Geometry | None = None, like=None) -> CubeGrid:
    """The grid odc-stac's ``load`` makes for ``crs``/``resolution`` and an area, or ``like``'s grid.

    ``area_4326`` is transformed into ``crs`` (densified, so a lon/lat box keeps its curved
    edges) and its bounds snapped outwards to multiples of ``resolution``.
    """
    if like is not None:
        return _grid_of_like(like)
    if area_4326 is None or area_4326.is_empty:
        raise CubeGridError("a cube needs an area: bbox=, geopolygon=, like= or geometries=")
    if crs is None:
        raise CubeGridError("a cube needs crs= (for example crs='EPSG:32643') or like=")
    if resolution is None:
        raise CubeGridError(f"a cube needs resolution= in the units of {crs}")
    try:
        res = float(resolution[0] if isinstance(resolution, (tuple, list)) else resolution)
    except (TypeError, ValueError, IndexError):
        raise CubeGridError(f"resolution must be a positive number, got {resolution!r}") from None
    if not math.isfinite(res) or res <= 0:
        raise CubeGridError(f"resolution must be a positive number, got {resolution!r}")
    key = _crs_key(crs)
    dense = shapely.segmentize(area_4326, 0.005)
    local = reproject_geometry(dense, "EPSG:4326", key)
    minx, miny, maxx, maxy = local.bounds
    if not all(map(math.isfinite, (minx, miny, maxx, maxy))):
        raise CubeGridError(f"the area does not transform into {crs}")
    x0, x1 = math.floor(minx / res) * res, math.ceil(maxx / res) * res
    y0, y1 = math.floor(miny / res) * res, math.ceil(maxy / res) * res
    width, height = max(round((x1 - x0) / res), 1), max(round((y1 - y0) / res), 1)
    return CubeGrid(key, (res, 0.0, x0, 0.0, -res, y1), width, height)


def _crs_key(crs) -> str:
    try:
        key = crs if isinstance(crs, str) else crs.to_wkt()
        crs_of(key)
    except Exception as exc:  # pyproj's CRSError, or an object without to_wkt
        raise CubeGridError(f"crs {crs!r} is not a CRS pyproj understands ({exc})") from None
    return key


def _grid_of_like(like) -> CubeGrid:
    """The grid of an odc-geo GeoBox-like object or of an xarray object with x/y coordinates."""
    if hasattr(like, "affine") and hasattr(like, "shape") and hasattr(like, "crs"):  # odc-geo GeoBox
        h, w = (int(v) for v in tuple(like.shape)[:2])
        return CubeGrid(_crs_key(str(like.crs)), tuple(like.affine)[:6], w, h)
    try:
        xs = np.asarray(like["x"].values, dtype=float)
        ys = np.asarray(like["y"].values, dtype=float)
    except (KeyError, TypeError, AttributeError):
        raise CubeGridError("like= must be a GeoBox or an xarray object with x and y coordinates") from None
    if xs.ndim != 1 or ys.ndim != 1 or len(xs) < 2 or len(ys) < 2:
        raise CubeGridError("like= needs 1-D x and y coordinates of at least 2 pixels")
    crs = None
    if "spatial_ref" in getattr(like, "coords", {}):
        crs = like["spatial_ref"].attrs.get("crs_wkt")
    crs = crs or getattr(like, "attrs", {}).get("crs")
    if crs is None:
        raise CubeGridError("like= has no CRS (no spatial_ref coordinate with crs_wkt, no crs attribute)")
    a, e = float(xs[1] - xs[0]), float(ys[1] - ys[0])
    return CubeGrid(_crs_key(crs), (a, 0.0, xs[0] - a / 2, 0.0, e, ys[0] - e / 2), len(xs), len(ys))


# -- overviews -----------------------------------------------------------------------------------


def overview_for(header, desired: float, resampling: str) -> int:
    """The level GDAL reads for a ``desired`` downsampling factor (``GDALBandGetBestOverviewLevel2``).

    The overview with the largest factor (full width / overview width) that stays below
    ``desired`` times the oversampling threshold: 1.2 for nearest, 1.0 otherwise (GDAL uses
    1.01 for a threshold of exactly 1.0, against rounding). 0 is full resolution.
    """
    threshold = 1.2 if resampling == "nearest" else 1.01
    full = header.levels[0]
    best, best_factor = 0, 1.0
    for k in range(1, len(header.levels)):
        level = header.levels[k]
        factor = min(full.width / level.width, full.height / level.height)
        if factor >= desired * threshold or factor <= best_factor:
            continue
        best, best_factor = k, factor
    return best


def _desired_factor(header, grid: CubeGrid) -> float:
    """Source pixels per cube pixel at the cube's centre (the smaller of x and y)."""
    from rasteret_pipelines.reading.plan import _transformer

    a, _, c, _, e, f = grid.transform
    cx, cy = c + a * grid.width / 2, f + e * grid.height / 2
    xs, ys = _transformer(grid.crs, header.crs).transform([cx, cx + a, cx], [cy, cy, cy + e])
    sx, sy = abs(header.transform[0]), abs(header.transform[4])
    fx = math.hypot(xs[1] - xs[0], ys[1] - ys[0]) / sx
    fy = math.hypot(xs[2] - xs[0], ys[2] - ys[0]) / sy
    return min(fx, fy)


# -- the plan ------------------------------------------------------------------------------------


@dataclass
class CubeScene:
    """One scene of a step: what a block read needs, and nothing else (it travels to workers)."""

    id: str
    datetime: np.datetime64
    reflectance: tuple[float, float]
    headers: dict
    """Asset key -> cached header."""
    levels: dict
    """Asset key -> level to read (GDAL's overview choice for the cube's resolution)."""


@dataclass
class Step:
    """One time step: its label and its scenes in (datetime, id) order."""

    time: np.datetime64
    scenes: list[CubeScene]
    key: object = None
    """The group key (solar day, month, property value)."""


@dataclass
class CubePlan:
    """Everything a block read needs; made once, shipped once to every worker."""

    grid: CubeGrid
    bands: list[str]
    keys: dict[str, str]
    """Band name -> asset key."""
    quality: object
    """The source's cloud-mask rule, or None."""
    values: str
    resampling: str
    mosaic: type[MosaicMethod]
    dtype: np.dtype
    fill: object
    steps: list[Step]
    area: shapely.Geometry | None
    """Geometries (in the cube's CRS) outside which pixels are masked; None masks nothing."""
    all_touched: bool
    config: FetchConfig
    reader: object = None
    attrs: dict = field(default_factory=dict)


# -- block reads ---------------------------------------------------------------------------------


WARP_STRIP = 256
"""Width, in cube columns, of the strips every warp is made in (strips start at the grid's
first column, whatever the chunking). GDAL's warper transforms each destination row of a
warped region with its approximate transformer (exact at the row's ends and middle, linear in
between while the error stays under 0.125 source pixel), so the source pixel a cube pixel
takes depends on where its row of the region starts and ends; rasterio 1.4's ``reproject``
fixes that threshold (its ``tolerance`` reaches GDAL from rasterio 1.5, which needs Python
3.12). Warping the same strips of the grid in every block gives every chunking, and the eager
read, the same transformed coordinates, so the same pixels."""


@dataclass
class _Read:
    key: str
    header: object
    level: int
    window: tuple[int, int, int, int]
    direct: bool
    inside: tuple[int, int, int, int] | None = None
    """For a direct window partly outside the image: (row0, row1, col0, col1) of the block inside."""
    span: CubeGrid | None = None
    """For a warped read: the block widened to whole :data:`WARP_STRIP` strips of the grid."""
    offset: int = 0
    """For a warped read: the block's first column in ``span``."""
    scale: tuple[float, float] = (1.0, 1.0)
    """For a warped read: GDAL's ``XSCALE``/``YSCALE`` (cube pixels per source pixel along x and
    y), computed once for the whole grid so that no block's kernel is sized by its own extent."""


def _margin(resampling: str, factor: float) -> int:
    if resampling == "nearest":
        return 1
    return 2 + 2 * math.ceil(max(factor, 1.0))


def _source_window(header, level: int, grid: CubeGrid, resampling: str) -> tuple[int, int, int, int] | None:
    """(col0, row0, col1, row1) of ``header``'s ``level`` that a warp onto ``grid`` reads: the
    transformed outline plus a margin for the kernel, clipped to the image; None when it misses."""
    from rasteret_pipelines.reading.plan import _transformer

    lvl = header.levels[level]
    a, b, c, d, e, f = header.level_transform(level) if level else header.transform
    pts = grid.outline()
    xs, ys = _transformer(grid.crs, header.crs).transform(pts[:, 0], pts[:, 1])
    xs, ys = np.asarray(xs), np.asarray(ys)
    ok = np.isfinite(xs) & np.isfinite(ys)
    if not ok.any():
        return None
    inv = ~Affine(a, b, c, d, e, f)
    cols = xs[ok] * inv.a + ys[ok] * inv.b + inv.c
    rows = xs[ok] * inv.d + ys[ok] * inv.e + inv.f
    m = _margin(resampling, max(abs(grid.transform[0] / a), abs(grid.transform[4] / e)))
    c0, c1 = max(math.floor(cols.min()) - m, 0), min(math.ceil(cols.max()) + m, lvl.width)
    r0, r1 = max(math.floor(rows.min()) - m, 0), min(math.ceil(rows.max()) + m, lvl.height)
    if c0 >= c1 or r0 >= r1:
        return None
    return c0, r0, c1, r1


def _kernel_scale(header, level: int, grid: CubeGrid) -> tuple[float, float]:
    """Cube pixels per source pixel along the cube's x and y at the grid's centre: GDAL's
    ``XSCALE``/``YSCALE`` warp options, which size the kernel (a scale below 1 widens it). Left
    to GDAL, they are worked out per warped region from the region's source window, so a narrow
    block got a wider kernel than the whole grid; given once per grid, every block agrees."""
    from rasteret_pipelines.reading.plan import _transformer

    a, b, c, d, e, f = header.level_transform(level) if level else header.transform
    ga, _, gc, _, ge, gf = grid.transform
    cx, cy = gc + ga * grid.width / 2, gf + ge * grid.height / 2
    xs, ys = _transformer(grid.crs, header.crs).transform([cx, cx + ga, cx], [cy, cy, cy + ge])
    inv = ~Affine(a, b, c, d, e, f)
    cols = [inv.a * x + inv.b * y + inv.c for x, y in zip(xs, ys)]
    rows = [inv.d * x + inv.e * y + inv.f for x, y in zip(xs, ys)]
    fx = math.hypot(cols[1] - cols[0], rows[1] - rows[0])
    fy = math.hypot(cols[2] - cols[0], rows[2] - rows[0])
    return 1.0 / fx, 1.0 / fy


def _strip_span(grid: CubeGrid, block: CubeGrid) -> tuple[CubeGrid, int]:
    """``block`` (a sub-grid of ``grid``) widened to whole :data:`WARP_STRIP` strips of ``grid``,
    and the block's first column in it."""
    ga, _, gc, _, ge, gf = grid.transform
    c0 = round((block.transform[2] - gc) / ga)
    r0 = round((block.transform[5] - gf) / ge)
    s0 = c0 - c0 % WARP_STRIP
    s1 = min(-(-(c0 + block.width) // WARP_STRIP) * WARP_STRIP, grid.width)
    return grid.block(r0, r0 + block.height, s0, s1), c0 - s0


def _plan_read(
    key: str, header, level: int, block: CubeGrid, resampling: str, grid: CubeGrid | None = None
) -> _Read | None:
    """The window of ``header``'s ``level`` for ``block`` of ``grid`` (default: the block is the
    grid): direct when on the same grid; else the source of the block's :data:`WARP_STRIP`
    strips plus a margin, clipped to the image. None when the block misses the image."""
    from rasteret_pipelines.reading.plan import same_crs

    grid = block if grid is None else grid
    lvl = header.levels[level]
    a, b, c, d, e, f = header.level_transform(level) if level else header.transform
    ga, _, gc, _, ge, gf = block.transform
    if (
        b == d == 0
        and math.isclose(a, ga, rel_tol=1e-9)
        and math.isclose(e, ge, rel_tol=1e-9)
        and same_crs(header.crs, block.crs)
    ):
        col, row = (gc - c) / a, (gf - f) / e
        if abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6:
            col, row = round(col), round(row)
            c0, r0 = max(col, 0), max(row, 0)
            c1, r1 = min(col + block.width, lvl.width), min(row + block.height, lvl.height)
            if c0 >= c1 or r0 >= r1:
                return None
            inside = None
            if (c0, r0, c1, r1) != (col, row, col + block.width, row + block.height):
                inside = (r0 - row, r1 - row, c0 - col, c1 - col)
            return _Read(key, header, level, (col, row, block.width, block.height), True, inside)
    if _source_window(header, level, block, resampling) is None:
        return None
    span, offset = _strip_span(grid, block)
    c0, r0, c1, r1 = _source_window(header, level, span, resampling)
    scale = _kernel_scale(header, level, grid)
    return _Read(key, header, level, (c0, r0, c1 - c0, r1 - r0), False, span=span, offset=offset, scale=scale)


def _resampling(name: str):
    from rasterio.enums import Resampling

    return Resampling[name]


def _place(read: _Read, data: np.ndarray, block: CubeGrid, resampling: str, nodata):
    """(values, valid) of one read on the block's grid."""
    if read.direct:
        valid = nodata_valid(data, nodata)
        if read.inside is not None:
            r0, r1, c0, c1 = read.inside
            keep = np.zeros(valid.shape, bool)
            keep[r0:r1, c0:c1] = True
            valid &= keep
        return data, valid
    import rasterio.warp

    header = read.header
    t = Affine(*(header.level_transform(read.level) if read.level else header.transform))
    col0, row0, width, height = read.window
    out = empty_in_small_pages((block.height, block.width), np.float32)
    out.fill(np.nan)
    span, first, last = read.span, read.offset, read.offset + block.width
    for s0 in range(first - first % WARP_STRIP, last, WARP_STRIP):
        s1 = min(s0 + WARP_STRIP, span.width)
        strip = span.block(0, span.height, s0, s1)
        window = _source_window(header, read.level, strip, resampling)
        if window is None:
            continue
        c0, r0 = max(window[0], col0), max(window[1], row0)
        c1, r1 = min(window[2], col0 + width), min(window[3], row0 + height)
        if c0 >= c1 or r0 >= r1:
            continue
        warped = np.full((strip.height, strip.width), np.nan, np.float32)
        rasterio.warp.reproject(
            data[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0],
            warped,
            src_transform=t @ Affine.translation(c0, r0),
            src_crs=crs_of(header.crs),
            src_nodata=nodata,
            dst_transform=strip.affine,
            dst_crs=crs_of(block.crs),
            dst_nodata=np.nan,
            resampling=_resampling(resampling),
            XSCALE=read.scale[0],
            YSCALE=read.scale[1],
        )
        lo, hi = max(s0, first), min(s1, last)
        out[:, lo - first : hi - first] = warped[:, lo - s0 : hi - s0]
    return out, ~np.isnan(out)


def _step_reads(plan: CubePlan, block: CubeGrid, t0: int, t1: int) -> list[tuple[int, list[tuple[CubeScene, dict]]]]:
    """``[(step index, [(scene, {asset key: _Read})])]`` of a block: the scenes of each step
    that reach the block with every key they need, in the step's order (a scene missing the
    block for one key is left out). Shared by the read and its dry run."""
    data_keys = [plan.keys[b] for b in plan.bands]
    qkey = plan.quality.band if plan.quality is not None else None
    out = []
    for ti in range(t0, t1):
        fed = []
        for scene in plan.steps[ti].scenes:
            reads = {}
            for key in dict.fromkeys(data_keys + ([qkey] if qkey else [])):
                res = "nearest" if key == qkey and key not in data_keys else plan.resampling
                read = _plan_read(key, scene.headers[key], scene.levels[key], block, res, plan.grid)
                if read is None:
                    break
                reads[key] = read
            else:
                fed.append((scene, reads))
        out.append((ti, fed))
    return out


def _by_level(jobs) -> dict[int, list[tuple[int, str]]]:
    """One request list per level (``fetch_windows`` reads one level per call, and the read
    sends every list at once): ``{level: [(job index, asset key)]}``."""
    by_level: dict[int, list[tuple[int, str]]] = {}
    for ji, (_, _, _, reads) in enumerate(jobs):
        for key, read in reads.items():
            by_level.setdefault(read.level, []).append((ji, key))
    return by_level


def block_requests(plan: CubePlan, t0: int, t1: int, r0: int, r1: int, c0: int, c1: int):
    """What reading one block fetches, without fetching: ``{level: [(scene, asset key, header,
    window)]}``, one list per ``fetch_windows`` batch the block read sends (see
    :mod:`~rasteret_pipelines.reading.explain`)."""
    block = plan.grid.block(r0, r1, c0, c1)
    jobs = [
        (ti, rank, scene, reads)
        for ti, fed in _step_reads(plan, block, t0, t1)
        for rank, (scene, reads) in enumerate(fed)
    ]
    out: dict[int, list] = {}
    for level, entries in _by_level(jobs).items():
        out[level] = [(jobs[ji][2], key, jobs[ji][3][key].header, jobs[ji][3][key].window) for ji, key in entries]
    return out


async def _read_block_async(
    plan: CubePlan, t0: int, t1: int, r0: int, r1: int, c0: int, c1: int, fetcher: RangeFetcher
) -> dict[str, np.ndarray]:
    block = plan.grid.block(r0, r1, c0, c1)
    nt = t1 - t0
    out = {b: empty_in_small_pages((nt, block.height, block.width), plan.dtype) for b in plan.bands}
    inside = None
    if plan.area is not None:
        from rasteret_pipelines.reading.mask import geometry_mask

        inside = geometry_mask(plan.area, block.transform, block.height, block.width, all_touched=plan.all_touched)
    qkey = plan.quality.band if plan.quality is not None else None
    methods: dict[int, dict[str, MosaicMethod]] = {}
    left: dict[int, int] = {}
    jobs = []  # (ti, rank, scene, {key: _Read})
    empty_steps = []
    for ti, fed in _step_reads(plan, block, t0, t1):
        methods[ti] = {b: plan.mosaic(out[b][ti - t0], len(fed), plan.fill) for b in plan.bands}
        left[ti] = len(fed)
        if not fed:
            empty_steps.append(ti)
        for rank, (scene, reads) in enumerate(fed):
            jobs.append((ti, rank, scene, reads))
    nodata: dict[str, object] = {}
    pool = decode_pool(plan.config.decode_threads)
    finishing: list = []

    def nodata_of(header):
        if header.href not in nodata:
            nodata[header.href] = header.nodata
        return nodata[header.href]

    def on_scene(ti: int, rank: int, scene: CubeScene, reads: dict, arrays: dict) -> None:
        clear = inside
        if qkey is not None:
            q = reads[qkey]
            qa, qvalid = _place(q, arrays[qkey], block, "nearest", nodata_of(q.header))
            qa_clear = qvalid & plan.quality.clear(
                np.nan_to_num(qa).astype(q.header.dtype) if qa.dtype.kind == "f" else qa
            )
            clear = qa_clear if clear is None else clear & qa_clear
        for band in plan.bands:
            read = reads[plan.keys[band]]
            values, valid = _place(read, arrays[read.key], block, plan.resampling, nodata_of(read.header))
            if clear is not None:
                valid = valid & clear
            methods[ti][band].feed(convert(values, plan.values, scene.reflectance), valid, rank)
        left[ti] -= 1
        if left[ti] == 0:  # the step's reductions (a median sorts) run beside the next scenes
            finishing.extend(pool.submit(m.finish) for m in methods[ti].values())

    by_level = _by_level(jobs)
    pending: dict[int, dict[str, np.ndarray]] = {}

    # Scenes are warped, masked and fed on one thread of their own, in landing order: the event
    # loop keeps fetching and the decode pool keeps decoding while a scene is assembled.
    assembler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cube-assemble")
    assembling: list = []

    def landed(ji: int, key: str, array: np.ndarray) -> None:
        got = pending.setdefault(ji, {})
        got[key] = array[0]
        ti, rank, scene, reads = jobs[ji]
        if len(got) == len(reads):
            del pending[ji]
            assembling.append(asyncio.wrap_future(assembler.submit(on_scene, ti, rank, scene, reads, got)))

    async def level_batch(level: int, entries: list[tuple[int, str]]) -> None:
        requests = [(jobs[ji][3][key].header, jobs[ji][3][key].window) for ji, key in entries]
        await fetch_windows(
            fetcher, requests, level, on_window=lambda i, arr: landed(entries[i][0], entries[i][1], arr)
        )

    try:
        await asyncio.gather(*(level_batch(level, entries) for level, entries in by_level.items()))
        await asyncio.gather(*assembling)
        await asyncio.gather(*(asyncio.wrap_future(f) for f in finishing))
    finally:
        assembler.shutdown(wait=True, cancel_futures=True)
    for ti in empty_steps:  # no scene of the step covers the block: every pixel is fill
        for m in methods[ti].values():
            m.finish()
    return out


def read_block(plan: CubePlan, t0: int, t1: int, r0: int, r1: int, c0: int, c1: int) -> tuple[dict, FetchStats]:
    """Read one block of the cube: ``{band: (t1 - t0, r1 - r0, c1 - c0) array}`` and the request counts."""

    async def run():
        async with RangeFetcher(plan.config, reader=plan.reader) as fetcher:
            arrays = await _read_block_async(plan, t0, t1, r0, r1, c0, c1, fetcher)
        return arrays, fetcher.stats

    return _run_sync_with(plan.reader, run())


class _TaskIO:
    """One event loop thread per process for the dask tasks, and one fetcher per configuration.

    Every task of a worker (threads of the threaded scheduler, or of a distributed worker)
    runs its block's coroutine on this loop, so tasks share the HTTP connection pool and no
    task pays for a loop and a client session of its own: starting both is work of its own per
    task, independent of the tiles it reads, so on a cube of many small blocks it would
    outweigh the reads. Used for the default reader only: a reader passed in keeps the eager
    path's per-call loop.
    """

    _instance: _TaskIO | None = None
    _lock = threading.Lock()

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="cube-io", daemon=True)
        self.thread.start()
        self.fetchers: dict = {}
        atexit.register(self.close)

    @classmethod
    def get(cls) -> _TaskIO:
        with cls._lock:
            if cls._instance is None or not cls._instance.thread.is_alive():
                cls._instance = _TaskIO()
            return cls._instance

    def run(self, plan: CubePlan, bounds: tuple[int, ...]) -> dict:
        return asyncio.run_coroutine_threadsafe(self._read(plan, bounds), self.loop).result()

    async def _read(self, plan: CubePlan, bounds: tuple[int, ...]) -> dict:
        fetcher = self.fetchers.get(plan.config)
        if fetcher is None:
            fetcher = self.fetchers[plan.config] = RangeFetcher(plan.config)
        return await _read_block_async(plan, *bounds, fetcher)

    def close(self) -> None:
        async def close_all():
            for fetcher in self.fetchers.values():
                await fetcher.close()

        if self.thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(timeout=5)
            except Exception:  # noqa: BLE001 (closing at exit: nothing left to report to)
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)


def _block_task(plan: CubePlan, t0: int, t1: int, r0: int, r1: int, c0: int, c1: int) -> dict:
    """A dask task: one block, ``{band: (time, y, x) array}`` (each band's chunk takes its item,
    so no array is copied to stack the bands)."""
    if plan.reader is None:
        return _TaskIO.get().run(plan, (t0, t1, r0, r1, c0, c1))
    arrays, _ = read_block(plan, t0, t1, r0, r1, c0, c1)
    return arrays


# -- grouping ------------------------------------------------------------------------------------


def group_scenes(scenes: list[Scene], groupby: str, lon: float, properties: dict | None = None):
    """``[(label, key, scenes)]`` in time order (see module docs for the keys and labels)."""
    if groupby == "time":
        key_of = lambda s: s.datetime  # noqa: E731
    elif groupby == "solar_day":
        offset = np.timedelta64(int(lon / 15) * 3600, "s")
        key_of = lambda s: (s.datetime + offset).astype("datetime64[D]")  # noqa: E731
    elif groupby == "month":
        key_of = lambda s: s.datetime.astype("datetime64[M]")  # noqa: E731
    else:
        key_of = lambda s: properties.get(s.id)  # noqa: E731
    groups: dict = {}
    for s in scenes:  # sorted by (datetime, id)
        groups.setdefault(key_of(s), []).append(s)
    out = []
    for key, members in groups.items():
        label = key.astype("datetime64[ns]") if groupby == "month" else members[0].datetime
        out.append((label, key, members))
    out.sort(key=lambda g: (g[0], str(g[1])))
    return out


# -- chunks --------------------------------------------------------------------------------------


def _edges(n: int, size: int | None, phase: int = 0) -> list[int]:
    """Block edges over ``0..n`` of ``size`` (None or -1: one block), the first ``phase`` long."""
    if size is None or size == -1 or size >= n:
        return [0, n]
    edges = [0]
    pos = phase if 0 < phase < size else size
    while pos < n:
        edges.append(pos)
        pos += size
    edges.append(n)
    return edges


def _chunk_sizes(chunks, grid: CubeGrid, nt: int) -> dict[str, int | None]:
    default = {"time": 1, "y": 2048, "x": 2048}
    sizes = dict(default)
    if chunks == "auto":
        chunks = {}
    if not isinstance(chunks, dict):
        raise CubeChunksError(f"chunks must be a dict such as {{'time': 1, 'y': 2048, 'x': 2048}}, got {chunks!r}")
    for dim, value in chunks.items():
        if dim not in sizes:
            raise CubeChunksError(f"chunks names dimension {dim!r}; a cube has time, y and x")
        if value in (None, -1, "auto"):
            sizes[dim] = default[dim] if value == "auto" else None
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise CubeChunksError(f"chunks[{dim!r}] must be a positive whole number, -1 or 'auto', got {value!r}")
        sizes[dim] = int(value)
    return sizes


def _tile_phase(plan: CubePlan, size: int | None, axis: str) -> int:
    """Where the first block should end so that the others start on the first scene's tile lattice."""
    if size is None:
        return 0
    for step in plan.steps:
        for scene in step.scenes:
            key = plan.keys[plan.bands[0]]
            read = _plan_read(key, scene.headers[key], scene.levels[key], plan.grid, plan.resampling)
            if read is None or not read.direct:
                return 0
            lvl = scene.headers[key].levels[scene.levels[key]]
            tile = lvl.tile_width if axis == "x" else lvl.tile_height
            if size % tile:
                return 0
            start = read.window[0] if axis == "x" else read.window[1]
            return (-start) % tile
    return 0


def block_edges(plan: CubePlan, chunks) -> tuple[list[int], list[int], list[int]]:
    """The block edges along time, y and x for ``chunks`` (None: one block, the eager read)."""
    nt = len(plan.steps)
    if chunks is None:
        return [0, nt], [0, plan.grid.height], [0, plan.grid.width]
    sizes = _chunk_sizes(chunks, plan.grid, nt)
    return (
        _edges(nt, sizes["time"]),
        _edges(plan.grid.height, sizes["y"], _tile_phase(plan, sizes["y"], "y")),
        _edges(plan.grid.width, sizes["x"], _tile_phase(plan, sizes["x"], "x")),
    )


def _dask_cube(plan: CubePlan, chunks) -> dict:
    try:
        import dask.array as da
        from dask.base import tokenize
        from dask.highlevelgraph import HighLevelGraph
    except ImportError:
        raise DaskMissingError("chunks= needs dask: pip install 'rasteret-pipelines[dask]'") from None
    t_edges, y_edges, x_edges = block_edges(plan, chunks)
    token = tokenize(
        plan.grid,
        plan.bands,
        [(s.time, [x.id for x in s.scenes]) for s in plan.steps],
        plan.values,
        plan.resampling,
        plan.mosaic.__qualname__,
        plan.area,
        t_edges,
        y_edges,
        x_edges,
    )
    blocks = f"rasteret-cube-blocks-{token}"
    plan_key = f"rasteret-cube-plan-{token}"
    layers: dict = {blocks: {plan_key: plan}}
    names = {b: f"rasteret-cube-{b}-{token}" for b in plan.bands}
    for b in plan.bands:
        layers[names[b]] = {}
    for ti, (t0, t1) in enumerate(zip(t_edges, t_edges[1:])):
        for yi, (r0, r1) in enumerate(zip(y_edges, y_edges[1:])):
            for xi, (c0, c1) in enumerate(zip(x_edges, x_edges[1:])):
                block = (blocks, ti, yi, xi)
                layers[blocks][block] = (_block_task, plan_key, t0, t1, r0, r1, c0, c1)
                for b in plan.bands:
                    layers[names[b]][(names[b], ti, yi, xi)] = (operator.getitem, block, b)
    chunks = tuple(tuple(e1 - e0 for e0, e1 in zip(e, e[1:])) for e in (t_edges, y_edges, x_edges))
    out = {}
    for b in plan.bands:
        graph = HighLevelGraph(
            {blocks: layers[blocks], names[b]: layers[names[b]]}, {blocks: set(), names[b]: {blocks}}
        )
        out[b] = da.Array(graph, names[b], chunks, dtype=plan.dtype)
    return out


# -- the read ------------------------------------------------------------------------------------


def read_cube(collection, bands: Sequence[str], *, options: CubeOptions | None = None, planned=None, **keywords):
    """Read ``bands`` of the collection's scenes onto one grid, one layer per time step.

    ``bbox`` to ``keep`` below are :func:`plan_cube`'s keywords (declared there once; this
    function's signature lists them, see :func:`_read_cube_signature`), ``crs`` to ``reader``
    the fields of ``options`` (:class:`~rasteret_pipelines.reading.options.CubeOptions`), also
    accepted as keywords.

    Args:
        collection: An opened :class:`~rasteret_pipelines.collections.Collection`.
        bands: Band names as the user calls them; the variables keep them.
        bbox: ``(minx, miny, maxx, maxy)`` in lon/lat degrees.
        geopolygon: A shapely geometry (EPSG:4326), or a GeoSeries/GeoDataFrame with a CRS.
        like: A GeoBox or an xarray object whose grid (CRS, x, y) the cube takes.
        geometries: Geometries (as :func:`~rasteret_pipelines.reading.read_geometries` takes
            them): pixels outside them are masked; without another area, their bounds make it.
        date_range, cloud_cover_lt, filters: As in
            :func:`~rasteret_pipelines.reading.read_geometries`.
        id_column, keep: Refused (:class:`~rasteret_pipelines.errors.CubeUserColumnsError`): a
            cube has no ``geometry`` dimension to carry ids or columns on (see
            :func:`refuse_user_columns`).
        options: The cube's options as one value; a keyword may add to them, not contradict
            them. A :class:`~rasteret_pipelines.reading.options.ReadOptions` is taken too.
        planned: The :class:`~rasteret_pipelines.reading.explain.ReadPlan` that
            :func:`~rasteret_pipelines.reading.explain.explain` returned for this cube
            (``"get_xarray"`` in its cube form, the same collection object and equal arguments,
            ``chunks`` included): the read runs that plan (grid, steps, scenes, levels) instead
            of planning again, eager or with ``chunks=``, so it fetches exactly what the plan
            says. ``reader`` is the read's own and may differ.
        crs: The cube's CRS (``"EPSG:32643"``, WKT or a ``pyproj.CRS``); default the first
            scene's.
        resolution: Pixel size in ``crs`` units; default the finest band's when units agree.
        resampling: ``nearest``, ``bilinear``, ``cubic`` or ``average``.
        groupby: ``solar_day``, ``time``, ``month`` or a STAC property name.
        mosaic: ``first``, ``last``, ``highest``, ``lowest``, ``mean``, ``median``,
            ``stdev``, ``count`` or a :class:`~rasteret_pipelines.reading.mosaic.MosaicMethod`.
        chunks: ``{"time": t, "y": n, "x": n}`` for a dask-backed Dataset; None reads now.
        values, cloud_mask, all_touched, fetch_config, reader: As in
            :func:`~rasteret_pipelines.reading.read_geometries`.

    Returns:
        A Dataset ``(time, y, x)`` with ``x``/``y`` pixel centres, ``spatial_ref`` (rioxarray's
        convention), ``scene_id(time)`` and, for an eager read, the request counts in attrs.

    Raises:
        CubeGridError, CubeChunksError, CubeUserColumnsError, GroupbyError, UnknownBandError,
        DateRangeError, NoScenesError, UnsafeHrefError, DaskMissingError,
        InvalidReadArgumentError (an unknown option, one given twice with two values, or a
        value no cube takes; a ``planned`` that is not this cube's plan).
    """
    selection = {name: keywords.pop(name) for name in CUBE_SELECTION if name in keywords}
    opts = CubeOptions.resolve(options, keywords)
    if planned is None:
        plan, attrs = plan_cube(collection, bands, opts, **selection)
    else:
        from rasteret_pipelines.reading.explain import reuse_plan

        arguments = plan_arguments(bands, opts, selection)
        plan, attrs = reuse_plan(planned, (CUBE_READ,), collection, plan_cube, arguments)
        # the read's own reader; the Dataset's attributes are its own (the plan may be run again)
        plan, attrs = replace(plan, reader=opts.reader), copy.deepcopy(attrs)
    if opts.chunks is not None:
        data = _dask_cube(plan, opts.chunks)
    else:
        _check_memory(plan)  # MemoryLimitError before any request
        arrays, stats = read_block(plan, 0, len(plan.steps), 0, plan.grid.height, 0, plan.grid.width)
        data = arrays
        attrs.update(requests=stats.requests, header_requests=stats.header_requests, bytes_read=stats.bytes)
    return _dataset(plan, data, attrs)


CUBE_READ = "get_xarray (data cube)"
"""The read a kept cube plan is of (:func:`~rasteret_pipelines.reading.explain.reuse_plan`):
``get_xarray`` in its cube form, told apart from its per-geometry form, whose plan differs."""


def plan_arguments(bands, options: CubeOptions, selection: dict) -> dict:
    """The arguments a cube plan is made from and a kept one is checked against, the same for
    the dry run and the read: :func:`plan_cube`'s, with ``options`` without their ``reader``
    (the read's own, so a dry run, which reads nothing, need not be given it)."""
    return dict(bands=bands, options=replace(options, reader=None), **selection)


CUBE_AREAS = ("bbox", "geopolygon", "like")
"""The arguments that make ``get_xarray`` read a cube instead of per-geometry windows."""


def is_cube_read(geometries, kwargs: dict) -> bool:
    """Whether ``get_xarray(geometries, **kwargs)`` reads a cube: an area is given, or no geometries."""
    return geometries is None or any(kwargs.get(k) is not None for k in CUBE_AREAS)


def refuse_user_columns(id_column, keep) -> None:
    """A cube takes no ``id_column`` nor ``keep``: it has dimensions ``(time, y, x)``, and
    ``geometries`` only mask it (as ``geopolygon=`` masks nothing and ``bbox=`` only bounds the
    grid in odc-stac and stackstac, whose cubes have no geometry dimension either). Silently
    dropping the columns would lose what the caller asked to carry; so they are refused, with
    the reads that do carry them.

    Raises:
        CubeUserColumnsError: naming the argument given.
    """
    keep = [keep] if isinstance(keep, str) else list(keep or ())
    given = [f"id_column={id_column!r}"] if id_column is not None else []
    given += [f"keep={keep!r}"] if keep else []
    if given:
        raise CubeUserColumnsError(
            f"{' and '.join(given)}: a data cube (bbox=, geopolygon=, like=, or no geometries) has dimensions "
            "(time, y, x) and no geometry dimension to carry ids or columns on; geometries= only mask it. "
            "For one result per geometry with its id and columns, read per-geometry windows "
            "(get_xarray(geometries=gdf, bands=..., id_column=..., keep=[...]) without bbox/geopolygon/like), "
            "or zonal_stats(gdf, ..., id_column=..., keep=[...]) for statistics per geometry and date"
        )


def plan_cube(
    collection,
    bands: Sequence[str],
    options: CubeOptions,
    *,
    bbox=None,
    geopolygon=None,
    like=None,
    geometries=None,
    date_range=None,
    cloud_cover_lt: float | None = None,
    filters: dict | None = None,
    id_column=None,
    keep: Sequence[str] = (),
) -> tuple[CubePlan, dict]:
    """Check :func:`read_cube`'s arguments and plan the cube from the cached headers alone (no
    request): the grid, the steps and their scenes, each (scene, band)'s level. Returns the
    plan and the Dataset's attributes. Shared by the read and its dry run
    (:mod:`~rasteret_pipelines.reading.explain`), so both see the same reads; ``options`` were
    checked when they were made (:class:`~rasteret_pipelines.reading.options.CubeOptions`)."""
    refuse_user_columns(id_column, keep)
    method = mosaic_method(options.mosaic)
    bands, keys = requested_bands(collection, bands)
    rule = cloud_mask_rule(collection, options.cloud_mask)
    quality = rule.band if rule is not None else None
    check_date_range(collection, date_range)
    area_4326, mask_4326 = _areas(bbox, geopolygon, geometries)
    data_keys = sorted(set(keys.values()))
    read_keys = sorted(set(data_keys + ([quality] if quality else [])))
    if like is not None:
        grid = cube_grid(crs=None, resolution=None, like=like)
        area_4326 = _grid_4326(grid)
    elif area_4326 is None:
        raise CubeGridError("a cube needs an area: bbox=, geopolygon=, like= or geometries=")
    scenes = select_scenes(collection, [(0, area_4326)], date_range, cloud_cover_lt, filters, read_keys)
    if not scenes:
        raise NoScenesError(
            f"no scene of collection {collection.name!r} covers the cube's area"
            + (f" between {date_range[0]} and {date_range[1]}" if date_range else "")
        )
    if like is None:
        first = min((scenes[0].headers[k] for k in data_keys), key=lambda h: abs(h.transform[0]))
        crs = options.crs if options.crs is not None else first.crs
        resolution = options.resolution
        if resolution is None:
            src, dst = crs_of(first.crs), crs_of(_crs_key(crs))
            if src.axis_info[0].unit_name != dst.axis_info[0].unit_name:
                raise CubeGridError(f"resolution= is needed: the units of {crs} differ from the scenes'")
            resolution = abs(first.transform[0])
        grid = cube_grid(crs=crs, resolution=resolution, area_4326=area_4326)
    properties = None
    if options.groupby not in GROUPINGS:
        properties = _property_of(collection, options.groupby, [s.id for s in scenes])
    centre = reproject_geometry(shapely.Point(*grid.affine @ (grid.width / 2, grid.height / 2)), grid.crs, "EPSG:4326")
    steps = []
    for label, key, members in group_scenes(scenes, options.groupby, centre.x, properties):
        cube_scenes = []
        for s in members:
            headers = {k: s.headers[k] for k in read_keys}
            levels = {}
            for k, h in headers.items():
                res = "nearest" if k == quality and k not in data_keys else options.resampling
                levels[k] = overview_for(h, _desired_factor(h, grid), res)
            cube_scenes.append(CubeScene(s.id, s.datetime, s.reflectance, headers, levels))
        steps.append(Step(label, cube_scenes, key))
    dtype, fill = _output_type(steps[0].scenes[0].headers, [keys[b] for b in bands], options.values, method)
    config = replace(
        options.fetch_config or FetchConfig(),
        requester_pays=collection.source.requester_pays,
        local_files=collection.allow_local_hrefs,
    )
    for step in steps:  # UnsafeHrefError before any request
        for s in step.scenes:
            for h in s.headers.values():
                check_href(h.href, allow_local=collection.allow_local_hrefs)
    area = None
    if mask_4326 is not None:
        area = reproject_geometry(mask_4326, "EPSG:4326", grid.crs)
    plan = CubePlan(
        grid,
        list(bands),
        keys,
        rule,
        options.values,
        options.resampling,
        method,
        dtype,
        fill,
        steps,
        area,
        options.all_touched,
        config,
        options.reader,
    )
    attrs = {
        **read_attrs(collection, bands, keys, options.values, options.cloud_mask),
        "crs": crs_text(grid.crs),
        "transform": list(grid.transform),
        "resolution": abs(grid.transform[0]),
        "resampling": options.resampling,
        "groupby": options.groupby,
        "mosaic": options.mosaic if isinstance(options.mosaic, str) else method.__name__,
    }
    return plan, attrs


CUBE_SELECTION = tuple(
    name for name, p in inspect.signature(plan_cube).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
)
"""Where the cube lies and which scenes it reads: :func:`plan_cube`'s keywords, which
:func:`read_cube` takes as they are (the rest of its keywords are options)."""


def _read_cube_signature() -> inspect.Signature:
    """:func:`read_cube`'s signature: the collection and bands, :func:`plan_cube`'s keywords
    (:data:`CUBE_SELECTION`, with their defaults), ``options``, ``planned`` and the option
    keywords. The keywords are declared once, on the planner: the dry run binds a cube read's
    arguments against this signature and compares a kept plan's against the planner's
    (:func:`~rasteret_pipelines.reading.explain.complete_arguments`), so both name the same
    keywords with the same defaults."""
    planner = inspect.signature(plan_cube).parameters
    own = inspect.signature(read_cube).parameters
    return inspect.Signature(
        [
            own["collection"],
            own["bands"],
            *(planner[name] for name in CUBE_SELECTION),
            own["options"],
            own["planned"],
            inspect.Parameter("option_keywords", inspect.Parameter.VAR_KEYWORD),
        ]
    )


read_cube.__signature__ = _read_cube_signature()


def estimate_block(plan: CubePlan, t0: int, t1: int, pixels: int):
    """The memory estimate of a block of ``t1 - t0`` steps and ``pixels`` pixels (the whole
    cube for an eager read): its output, its warped scene layers and (for the stacking
    composites) the largest step's scene stack, as a
    :class:`~rasteret_pipelines.reading.memory.ReadEstimate`."""
    from rasteret_pipelines.reading.composite import Median
    from rasteret_pipelines.reading.memory import ReadEstimate

    steps = plan.steps[t0:t1]
    n_bands = len(plan.bands)
    output = len(steps) * pixels * n_bands * plan.dtype.itemsize
    scenes = sum(len(s.scenes) for s in steps)
    windows = scenes * pixels * n_bands * 4
    if issubclass(plan.mosaic, Median) and steps:
        windows = max(windows, max(len(s.scenes) for s in steps) * pixels * n_bands * 4)
    return ReadEstimate(output, windows, pixels if plan.area is not None else 0)


def _check_memory(plan: CubePlan) -> None:
    """An eager cube's estimate (:func:`estimate_block` over the whole cube) against the read
    memory limit of :mod:`~rasteret_pipelines.reading.memory`; a lazy read holds blocks, not
    the cube."""
    from rasteret_pipelines.reading.memory import check_memory, memory_limit

    estimate = estimate_block(plan, 0, len(plan.steps), plan.grid.width * plan.grid.height)
    check_memory(
        estimate,
        memory_limit(getattr(plan.config, "max_read_memory", None)),
        what="the cube (pass chunks= to read it lazily, block by block)",
    )


def _areas(bbox, geopolygon, geometries):
    """(area in EPSG:4326 or None, mask geometry in EPSG:4326 or None)."""
    from rasteret_pipelines.reading.geometries import normalize_geometries, union_of

    given = [x is not None for x in (bbox, geopolygon)]
    if sum(given) > 1:
        raise CubeGridError("give one of bbox= and geopolygon=, not both")
    mask = None
    if geometries is not None:
        mask = union_of(normalize_geometries(geometries))
    if bbox is not None:
        try:
            minx, miny, maxx, maxy = (float(v) for v in bbox)
        except (TypeError, ValueError):
            raise CubeGridError(f"bbox must be (minx, miny, maxx, maxy) in degrees, got {bbox!r}") from None
        if not (-180 <= minx < maxx <= 180 and -90 <= miny < maxy <= 90):
            raise CubeGridError(f"bbox {bbox!r} is not (minx, miny, maxx, maxy) in lon/lat degrees")
        return shapely.box(minx, miny, maxx, maxy), mask
    if geopolygon is not None:
        if hasattr(geopolygon, "to_crs"):  # GeoSeries / GeoDataFrame
            if geopolygon.crs is None:
                raise CubeGridError("geopolygon= has no CRS")
            geom = shapely.disjoint_subset_union_all(np.asarray(geopolygon.to_crs("EPSG:4326").geometry.values))
        elif isinstance(geopolygon, shapely.Geometry):
            geom = geopolygon
        else:
            raise CubeGridError(
                f"geopolygon= must be a shapely geometry or a GeoSeries, got {type(geopolygon).__name__}"
            )
        if geom.is_empty or geom.area == 0:
            raise CubeGridError("geopolygon= is empty")
        return geom, mask
    return mask, mask


def _grid_4326(grid: CubeGrid) -> shapely.Geometry:
    pts = grid.outline()
    return reproject_geometry(shapely.Polygon(pts), grid.crs, "EPSG:4326")


def _property_of(collection, name: str, ids: list[str]) -> dict:
    if name not in collection.schema.names:
        raise GroupbyError(f"groupby={name!r}: not one of {GROUPINGS} nor a property of collection {collection.name!r}")
    table = collection.to_table(columns=["id", name], sort=False)
    wanted = set(ids)
    return {i: v for i, v in zip(table.column("id").to_pylist(), table.column(name).to_pylist()) if i in wanted}


def _output_type(headers: dict, data_keys: list[str], values: str, method):
    if values != "native":
        return np.dtype("float32"), np.nan
    kinds = {(headers[k].dtype, headers[k].nodata_text) for k in data_keys}
    if len(kinds) > 1:
        raise InvalidReadArgumentError("values='native' needs bands of one dtype and nodata; use values='float'")
    h = headers[data_keys[0]]
    return np.dtype(h.dtype), h.fill_value


def _dataset(plan: CubePlan, data: dict, attrs: dict):
    import xarray as xr

    from rasteret_pipelines.reading.model import crs_wkt

    g = plan.grid
    a, _, c, _, e, f = g.transform
    xs = c + a * (np.arange(g.width) + 0.5)
    ys = f + e * (np.arange(g.height) + 0.5)
    times = np.array([s.time for s in plan.steps], dtype="datetime64[ns]")
    coords = {
        "time": times,
        "y": ys,
        "x": xs,
        "scene_id": ("time", np.array([",".join(x.id for x in s.scenes) for s in plan.steps], dtype=object)),
        "spatial_ref": (
            (),
            0,
            {
                "crs_wkt": crs_wkt(crs_text(g.crs)),
                "GeoTransform": " ".join(repr(float(v)) for v in (c, a, 0.0, f, 0.0, e)),
            },
        ),
    }
    ds = xr.Dataset({b: (("time", "y", "x"), data[b]) for b in plan.bands}, coords=coords, attrs=attrs)
    for b in plan.bands:
        ds[b].attrs["grid_mapping"] = "spatial_ref"
    return ds
