"""Geometry masks on a pixel window, by GDAL's rule, without a GDAL round trip per geometry.

:func:`geometry_mask` answers "which pixels of this window are inside the polygon" exactly as
``rasterio.features.geometry_mask(..., invert=True)`` does, so a masked read equals
``rasterio.mask.mask(..., crop=True)``:

* **pixel centres** (the default): GDAL's scanline fill (``GDALdllImageFilledPolygon``). The
  polygon's rings are put into pixel space with GDAL's inverse geotransform; on each row the
  crossings of the line ``y = row + 0.5`` with the ring edges (an edge counts where
  ``y0 <= row + 0.5 < y1``) are rounded with ``floor(x + 0.5)`` and sorted, and the pixels
  between each pair ``[x_a, x_b)`` are set; a horizontal edge lying on the line is filled
  when it runs right to left. This is vectorised over rows and edges with numpy: a field
  needs no dataset, where a GDAL call builds an in-memory dataset and an OGR geometry each
  time (and the read path would import rasterio only for that).
* **all_touched**: GDAL's rule adds a line-walking pass over the ring outlines whose tie
  breaks (segments on pixel edges, vertices on corners) are GDAL's own; it is delegated to
  ``rasterio.features.geometry_mask`` (rasterio is then imported on first use).

The test suite checks both rules pixel for pixel against rasterio on random polygons,
grid-aligned boxes (edges exactly on pixel centres and pixel edges), holes and multipolygons.
"""

from __future__ import annotations

import numpy as np
import shapely

Transform = tuple[float, float, float, float, float, float]


def geometry_mask(
    geometry: shapely.Geometry, transform: Transform, height: int, width: int, *, all_touched: bool = False
) -> np.ndarray:
    """Boolean ``(height, width)``: True for pixels inside ``geometry`` (rasterio's rule).

    Args:
        geometry: A Polygon or MultiPolygon in the window's CRS.
        transform: The window's affine ``(a, b, c, d, e, f)`` (affine/rasterio order).
        height: Rows of the window.
        width: Columns of the window.
        all_touched: Every pixel the geometry touches, not only those whose centre is inside.

    Returns:
        The mask, equal to ``rasterio.features.geometry_mask([geometry], (height, width),
        transform, all_touched=all_touched, invert=True)``.
    """
    if all_touched:
        return _rasterio_mask(geometry, transform, height, width, all_touched=True)
    out = np.zeros((height, width), dtype=bool)
    if height <= 0 or width <= 0 or geometry.is_empty:
        return out
    if _fill_cells(geometry, transform, height) > DENSE_FILL_CELLS:
        # The vectorised fill holds a rows x edges table (24 bytes a cell): for a geometry of
        # many parts (a group of thousands of fields) GDAL's fill, which walks sorted edges,
        # costs far less and gives the same mask.
        return _rasterio_mask(geometry, transform, height, width, all_touched=False)
    rings = _rings_in_pixels(geometry, transform)
    if not rings:
        return out
    starts = np.concatenate([r[:-1] for r in rings])
    ends = np.concatenate([r[1:] for r in rings])
    flat = (starts[:, 1] == ends[:, 1]) & (starts[:, 0] != ends[:, 0])
    if flat.any() and np.any(np.modf(starts[flat, 1])[0] == 0.5):
        # A horizontal edge exactly on a row's centre line: GDAL's tie break for it depends on
        # the ring's orientation and neighbours; let GDAL decide these rare polygons.
        return _rasterio_mask(geometry, transform, height, width, all_touched=False)
    _fill_scanlines(out, starts, ends, _fill_rows(rings, height))
    return out


DENSE_FILL_CELLS = 1 << 20
"""Rows x edges above which :func:`geometry_mask` lets GDAL fill the polygon."""


def _fill_cells(geometry: shapely.Geometry, transform: Transform, height: int) -> int:
    """At least the rows x edges table the vectorised fill would hold for ``geometry``: its
    vertices (one edge each, and more than its edges) times the window rows its bounds span,
    known before its rings are put into pixel space."""
    inv = inverse_geotransform(transform)
    minx, miny, maxx, maxy = geometry.bounds
    rows = [inv[3] + x * inv[4] + y * inv[5] for x in (minx, maxx) for y in (miny, maxy)]
    span = min(int(max(rows)), height - 1) - max(int(min(rows)), 0) + 1
    return max(span, 0) * int(shapely.get_num_coordinates(geometry))


def _rasterio_mask(geometry, transform, height, width, *, all_touched):
    import rasterio.features
    from affine import Affine

    return rasterio.features.geometry_mask(
        [geometry],
        out_shape=(height, width),
        transform=Affine(*transform[:6]),
        all_touched=all_touched,
        invert=True,
    )


def inverse_geotransform(transform: Transform) -> tuple[float, float, float, float, float, float]:
    """GDAL's ``GDALInvGeoTransform`` of an affine given in rasterio order, in GDAL order.

    Computed with GDAL's formulas (the north-up shortcut included) so that the pixel
    coordinates, and therefore every rounding tie, are GDAL's.
    """
    a, b, c, d, e, f = (float(v) for v in transform[:6])
    gt = (c, a, b, f, d, e)  # GDAL order
    if gt[2] == 0.0 and gt[4] == 0.0 and gt[1] != 0.0 and gt[5] != 0.0:
        return (-gt[0] / gt[1], 1.0 / gt[1], 0.0, -gt[3] / gt[5], 0.0, 1.0 / gt[5])
    det = gt[1] * gt[5] - gt[2] * gt[4]
    magnitude = max(max(abs(gt[1]), abs(gt[2])), max(abs(gt[4]), abs(gt[5])))
    if abs(det) <= 1e-10 * magnitude * magnitude:
        raise ValueError(f"transform {transform} is not invertible")
    inv = 1.0 / det
    return (
        (gt[2] * gt[3] - gt[0] * gt[5]) * inv,
        gt[5] * inv,
        -gt[2] * inv,
        (-gt[1] * gt[3] + gt[0] * gt[4]) * inv,
        -gt[4] * inv,
        gt[1] * inv,
    )


def _rings_in_pixels(geometry: shapely.Geometry, transform: Transform) -> list[np.ndarray]:
    """Every ring (exteriors and holes) as an (n, 2) array of closed pixel coordinates."""
    inv = inverse_geotransform(transform)
    rings = []
    for polygon in shapely.get_parts(geometry):
        if polygon.is_empty:
            continue
        for ring in (polygon.exterior, *polygon.interiors):
            xy = shapely.get_coordinates(ring)
            if len(xy) < 2:
                continue
            x, y = xy[:, 0], xy[:, 1]
            # GDALApplyGeoTransform: inv[0] + x * inv[1] + y * inv[2] (same order of operations).
            px = inv[0] + x * inv[1] + y * inv[2]
            py = inv[3] + x * inv[4] + y * inv[5]
            rings.append(np.column_stack([px, py]))
    return rings


def _fill_rows(rings: list[np.ndarray], height: int) -> np.ndarray:
    """The rows GDAL visits: ``int(min y)`` to ``int(max y)``, clipped to the window."""
    ys = np.concatenate([r[:, 1] for r in rings])
    low = max(int(ys.min()), 0)  # C's (int) truncates toward zero, as int() does
    high = min(int(ys.max()), height - 1)
    return np.arange(low, high + 1)


def _fill_scanlines(out: np.ndarray, starts: np.ndarray, ends: np.ndarray, rows: np.ndarray) -> None:
    if rows.size == 0:
        return
    height, width = out.shape
    x_a, y_a = starts[:, 0], starts[:, 1]
    x_b, y_b = ends[:, 0], ends[:, 1]
    dy = rows.astype(np.float64)[:, None] + 0.5  # (rows, 1): centre line of each row
    # Edges oriented upwards: (dy1, dx1) the lower end, (dy2, dx2) the upper one.
    up = y_a < y_b
    dy1, dy2 = np.where(up, y_a, y_b), np.where(up, y_b, y_a)
    dx1, dx2 = np.where(up, x_a, x_b), np.where(up, x_b, x_a)
    sloped = y_a != y_b
    crosses = sloped & (dy < dy2) & (dy >= dy1)  # (rows, edges)
    with np.errstate(divide="ignore", invalid="ignore"):
        intersect = (dy - dy1) * (dx2 - dx1) / (dy2 - dy1) + dx1
    sentinel = np.iinfo(np.int64).max
    ints = np.full(crosses.shape, sentinel, dtype=np.int64)
    ints[crosses] = np.clip(np.floor(intersect[crosses] + 0.5), -1.0, width + 1.0).astype(np.int64)
    ints.sort(axis=1)
    counts = crosses.sum(axis=1)
    # Pairs (0, 1), (2, 3), ... of each row's sorted crossings, i + 1 < count.
    first = ints[:, 0::2]
    second = ints[:, 1::2] if ints.shape[1] > 1 else np.empty((len(rows), 0), np.int64)
    first = first[:, : second.shape[1]]
    pair_index = np.arange(first.shape[1]) * 2
    valid = (pair_index[None, :] + 1) < counts[:, None]
    spans_rows = np.broadcast_to(rows[:, None], first.shape)[valid]
    spans_x0 = first[valid]
    spans_x1 = second[valid]
    if spans_rows.size == 0:
        return
    x0 = np.clip(spans_x0, 0, width)
    x1 = np.clip(spans_x1, 0, width)
    keep = x1 > x0
    if not keep.any():
        return
    # Set each span (overlapping spans of several rings or parts simply stay set): one slice
    # per span is cheaper than a pass over every pixel of the window.
    for row, start, stop in zip(spans_rows[keep].tolist(), x0[keep].tolist(), x1[keep].tolist()):
        out[row, start:stop] = True


# -- many geometries at once -------------------------------------------------------------------------


def pixels_inside(
    geometries, transform: Transform, *, all_touched: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixels of a grid inside each of many geometries, by rasterio's rule, in one pass.

    For every geometry this is what a single read does: its window on the grid as
    ``rasterio.features.geometry_window`` computes it (:func:`geometry_windows`), then
    :func:`geometry_mask` on that window. The scanline fill runs over the edges of all
    geometries together (numpy, no Python loop per geometry), so a hundred thousand fields
    cost about what one large polygon does. Geometries may overlap: a pixel inside two of them
    is listed for both.

    Args:
        geometries: Polygons or MultiPolygons, in the grid's CRS (a sequence or an array).
        transform: The grid's affine ``(a, b, c, d, e, f)``.
        all_touched: Every pixel a geometry touches (rasterio decides, one geometry at a time).

    Returns:
        ``(index, rows, cols)``: int64 arrays, one entry per (geometry, pixel), sorted by
        geometry index; rows and columns are the grid's (they may be negative or beyond any
        image: the grid is unbounded).
    """
    geoms = np.asarray(geometries, dtype=object)
    n = len(geoms)
    empty = (np.zeros(0, np.int64),) * 3
    if n == 0:
        return empty
    col0, row0, width, height = geometry_windows(geoms, transform)
    a, b, c, d, e, f = (float(v) for v in transform[:6])
    # Each window's transform, with Affine's arithmetic: grid * translation(col0, row0).
    wc = a * col0 + b * row0 + c
    wf = d * col0 + e * row0 + f
    north_up = b == 0.0 and d == 0.0 and a != 0.0 and e != 0.0
    if all_touched or not north_up:
        one_by_one = np.arange(n)
        index, rows, cols = empty
    else:
        index, rows, cols, one_by_one = _scanline_all(geoms, a, e, wc, wf, width, height)
    if len(one_by_one):
        parts = [(index, rows, cols)]
        for i in one_by_one.tolist():
            window = (a, b, float(wc[i]), d, e, float(wf[i]))
            inside = geometry_mask(geoms[i], window, int(height[i]), int(width[i]), all_touched=all_touched)
            r, cc = np.nonzero(inside)
            parts.append((np.full(r.size, i, np.int64), r.astype(np.int64), cc.astype(np.int64)))
        index, rows, cols = (np.concatenate(p) for p in zip(*parts))
        order = np.argsort(index, kind="stable")
        index, rows, cols = index[order], rows[order], cols[order]
    return index, rows + row0[index], cols + col0[index]


def geometry_windows(geometries, transform: Transform) -> tuple[np.ndarray, ...]:
    """``(col0, row0, width, height)`` int64 arrays: each geometry's window on the grid.

    ``rasterio.features.geometry_window``'s rule, as :func:`~rasteret_pipelines.reading.plan.
    reference_grid` applies it to one geometry: the coordinates through the inverse affine,
    floor and ceil of their bounds, at least one pixel each way.
    """
    from affine import Affine

    inv = ~Affine(*transform[:6])
    xy, which = shapely.get_coordinates(geometries, return_index=True)
    cols = xy[:, 0] * inv.a + xy[:, 1] * inv.b + inv.c
    rows = xy[:, 0] * inv.d + xy[:, 1] * inv.e + inv.f
    starts = np.searchsorted(which, np.arange(len(geometries)))
    col0 = np.floor(np.minimum.reduceat(cols, starts)).astype(np.int64)
    col1 = np.ceil(np.maximum.reduceat(cols, starts)).astype(np.int64)
    row0 = np.floor(np.minimum.reduceat(rows, starts)).astype(np.int64)
    row1 = np.ceil(np.maximum.reduceat(rows, starts)).astype(np.int64)
    return col0, row0, np.maximum(col1 - col0, 1), np.maximum(row1 - row0, 1)


def _scanline_all(geoms, a, e, wc, wf, width, height):
    """:func:`_fill_scanlines` over every edge of every geometry (north-up windows).

    Returns the (index, row, col) pixels in window coordinates and the geometries left to
    :func:`geometry_mask` one by one (a horizontal edge exactly on a row's centre line).
    """
    parts, part_of = shapely.get_parts(geoms, return_index=True)
    rings, ring_of = shapely.get_rings(parts, return_index=True)
    xy, coord_ring = shapely.get_coordinates(rings, return_index=True)
    geom_of_coord = part_of[ring_of][coord_ring]
    # GDAL's inverse geotransform of each window (north-up shortcut), applied as GDAL does.
    inv0, inv1 = -wc / a, 1.0 / a
    inv3, inv5 = -wf / e, 1.0 / e
    px = inv0[geom_of_coord] + xy[:, 0] * inv1 + xy[:, 1] * 0.0
    py = inv3[geom_of_coord] + xy[:, 0] * 0.0 + xy[:, 1] * inv5
    same_ring = coord_ring[:-1] == coord_ring[1:]
    g = geom_of_coord[:-1][same_ring]
    xa, ya = px[:-1][same_ring], py[:-1][same_ring]
    xb, yb = px[1:][same_ring], py[1:][same_ring]
    tie = (ya == yb) & (xa != xb) & (np.modf(ya)[0] == 0.5)
    one_by_one = np.unique(g[tie])
    n = len(geoms)
    # Rows GDAL visits per geometry: int(min y) .. int(max y), clipped to the window.
    ymin = np.full(n, np.inf)
    ymax = np.full(n, -np.inf)
    np.minimum.at(ymin, geom_of_coord, py)
    np.maximum.at(ymax, geom_of_coord, py)
    low = np.maximum(np.trunc(ymin), 0)
    high = np.minimum(np.trunc(ymax), height - 1)
    sloped = (ya != yb) & ~np.isin(g, one_by_one)
    g, xa, ya, xb, yb = g[sloped], xa[sloped], ya[sloped], xb[sloped], yb[sloped]
    up = ya < yb
    dy1, dy2 = np.where(up, ya, yb), np.where(up, yb, ya)
    dx1, dx2 = np.where(up, xa, xb), np.where(up, xb, xa)
    # Candidate rows of each edge (a row's centre r + 0.5 in [dy1, dy2)), widened by one and
    # filtered exactly below, as GDAL compares them.
    r_lo = np.maximum(np.floor(dy1 - 0.5), low[g]).astype(np.int64)
    r_hi = np.minimum(np.ceil(dy2 - 0.5), high[g]).astype(np.int64)
    count = np.maximum(r_hi - r_lo + 1, 0)
    edge = np.repeat(np.arange(len(g)), count)
    row = r_lo[edge] + (np.arange(edge.size) - np.repeat(np.cumsum(count) - count, count))
    dy = row + 0.5
    hit = (dy >= dy1[edge]) & (dy < dy2[edge])
    edge, row, dy = edge[hit], row[hit], dy[hit]
    e1, e2 = dy1[edge], dy2[edge]
    x = (dy - e1) * (dx2[edge] - dx1[edge]) / (e2 - e1) + dx1[edge]
    gi = g[edge]
    w = width[gi]
    xi = np.clip(np.floor(x + 0.5), -1.0, w + 1.0).astype(np.int64)
    # Sort crossings by (geometry, row, x) and pair them (0, 1), (2, 3), ... within each row.
    span = int(width.max()) + 3
    rows_max = int(height.max()) + 1
    key = (gi * rows_max + row) * span + (xi + 1)
    key.sort()
    xi = key % span - 1
    gr = key // span
    start = np.ones(key.size, bool)
    start[1:] = gr[1:] != gr[:-1]
    first_of_run = np.maximum.accumulate(np.where(start, np.arange(key.size), 0))
    pos = np.arange(key.size) - first_of_run
    pair = pos % 2 == 0
    pair[-1:] = False
    pair[:-1] &= gr[1:] == gr[:-1]
    k = np.flatnonzero(pair)
    gk = gr[k] // rows_max
    rk = gr[k] % rows_max
    x0 = np.clip(xi[k], 0, width[gk])
    x1 = np.clip(xi[k + 1], 0, width[gk])
    keep = x1 > x0
    gk, rk, x0, x1 = gk[keep], rk[keep], x0[keep], x1[keep]
    length = x1 - x0
    index = np.repeat(gk, length)
    rows = np.repeat(rk, length)
    cols = np.repeat(x0, length) + (np.arange(index.size) - np.repeat(np.cumsum(length) - length, length))
    return index, rows, cols, one_by_one
