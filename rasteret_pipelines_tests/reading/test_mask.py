"""Geometry masks without GDAL equal rasterio's ``geometry_mask`` pixel for pixel.

The oracle is ``rasterio.features.geometry_mask(..., invert=True)`` (what ``rasterio.mask.mask``
uses). Cases are drawn to hit GDAL's tie breaks: grid-aligned boxes whose edges lie on pixel
edges and on pixel centres, vertices on scanlines, holes, multipolygons, rotated fields,
windows the geometry leaves, and several pixel sizes and origins.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio.features
import shapely
import shapely.affinity
from affine import Affine
from shapely.geometry import Polygon, box

from rasteret_pipelines.reading.mask import geometry_mask, inverse_geotransform


def rio(geom, transform, h, w, all_touched=False):
    return rasterio.features.geometry_mask(
        [geom], out_shape=(h, w), transform=Affine(*transform), all_touched=all_touched, invert=True
    )


def cases(seed: int, n: int):
    """(geometry, transform, height, width) drawn from the families above."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        res = float(rng.choice([10.0, 20.0, 30.0, 0.5, 1e-4]))
        ox = float(rng.uniform(-1e6, 1e6) // res * res)
        oy = float(rng.uniform(-1e6, 1e6) // res * res)
        t = (res, 0.0, ox, 0.0, -res, oy)
        h, w = (int(v) for v in rng.integers(1, 50, 2))
        kind = len(out) % 5
        if kind == 0:  # random simple polygon in pixel units, some vertices outside the window
            pts = rng.uniform(-5, max(h, w) + 5, (int(rng.integers(3, 12)), 2))
            g = Polygon(pts).buffer(0)
            g = shapely.affinity.affine_transform(g, [res, 0, 0, -res, ox, oy])
        elif kind == 1:  # box with edges on pixel edges (k) or centres (k + 0.5)
            c0, c1 = sorted(rng.integers(-3, 2 * w + 3, 2) / 2.0)
            r0, r1 = sorted(rng.integers(-3, 2 * h + 3, 2) / 2.0)
            if c0 == c1 or r0 == r1:
                continue
            g = box(ox + c0 * res, oy - r1 * res, ox + c1 * res, oy - r0 * res)
        elif kind == 2:  # box with a round hole and an overlapping second box (holes, ties)
            a = box(ox, oy - h * res * 0.9, ox + w * res * 0.8, oy - res * 0.3)
            hole = a.centroid.buffer(min(h, w) * res * 0.2)
            b = shapely.affinity.translate(box(0, 0, res * 3.5, res * 2.5), ox + w * res * 0.5, oy - h * res * 0.5)
            g = shapely.union_all([a.difference(hole), b])
        elif kind == 3:  # rotated field
            g = shapely.affinity.rotate(box(0, 0, rng.uniform(1, w) * res, rng.uniform(1, h) * res), rng.uniform(0, 90))
            g = shapely.affinity.translate(g, ox + rng.uniform(0, w / 2) * res, oy - rng.uniform(0, h) * res)
        else:  # two disjoint triangles with vertices on pixel centres (a MultiPolygon)
            p = (rng.integers(0, max(w, 2), (6, 2)) + 0.5) * [res, -res] + [ox, oy]
            g = shapely.MultiPolygon([Polygon(p[:3]), Polygon(p[3:])]).buffer(0)
        if g.is_empty or g.geom_type not in ("Polygon", "MultiPolygon"):
            continue
        out.append((g, t, h, w))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_pixel_centre_masks_equal_rasterio(seed):
    bad = []
    for g, t, h, w in cases(seed, 400):
        expected = rio(g, t, h, w)
        got = geometry_mask(g, t, h, w)
        assert got.dtype == bool and got.shape == (h, w)
        if not np.array_equal(expected, got):
            bad.append((g.wkt[:120], t, h, w, int((expected != got).sum())))
    assert not bad, f"{len(bad)} masks differ from rasterio, e.g. {bad[:3]}"


def test_a_geometry_of_many_parts_is_filled_by_gdal_without_the_dense_table(monkeypatch):
    """A group of thousands of fields (one MultiPolygon) has rasterio's mask without the
    vectorised fill's rows x edges table; a field keeps the vectorised fill."""
    from rasteret_pipelines.reading import mask as mask_module
    from rasteret_pipelines_tests.conftest import count_calls

    calls = count_calls(monkeypatch, ((mask_module, "_fill_scanlines"),))
    rng = np.random.default_rng(5)
    x, y = rng.uniform(0, 5000, 3000), rng.uniform(0, 5000, 3000)
    fields = shapely.union_all(shapely.box(x, y, x + 35, y + 25))  # overlapping and apart
    t = (10.0, 0.0, 0.0, 0.0, -10.0, 5100.0)
    assert np.array_equal(geometry_mask(fields, t, 510, 510), rio(fields, t, 510, 510))
    assert calls["_fill_scanlines"] == 0
    field = shapely.box(1000, 1000, 1300, 1250)
    assert np.array_equal(geometry_mask(field, t, 510, 510), rio(field, t, 510, 510))
    assert calls["_fill_scanlines"] == 1


def test_all_touched_masks_equal_rasterio():
    for g, t, h, w in cases(11, 200):
        assert np.array_equal(rio(g, t, h, w, True), geometry_mask(g, t, h, w, all_touched=True))


def test_a_field_the_window_does_not_hold_and_degenerate_windows():
    t = (10.0, 0.0, 1000.0, 0.0, -10.0, 2000.0)
    far = box(5000, 5000, 5100, 5100)
    assert not geometry_mask(far, t, 20, 30).any()
    assert np.array_equal(geometry_mask(far, t, 20, 30), rio(far, t, 20, 30))
    inside = box(1000, 1800, 1300, 2000)
    assert geometry_mask(inside, t, 20, 30).sum() == 20 * 30
    assert geometry_mask(inside, t, 0, 5).shape == (0, 5)


def test_inverse_geotransform_is_gdals():
    # North-up: GDAL's shortcut (-c / a, 1 / a, 0, -f / e, 0, 1 / e), in GDAL's order.
    assert inverse_geotransform((10.0, 0.0, 699960.0, 0.0, -10.0, 1500000.0)) == (
        -699960.0 / 10.0,
        0.1,
        0.0,
        -1500000.0 / -10.0,
        0.0,
        1 / -10.0,
    )
    # Rotated: inverse of the general affine (checked through affine's own inverse).
    t = (10.0, 2.0, 500.0, 1.5, -10.0, 800.0)
    inv = inverse_geotransform(t)
    ref = ~Affine(*t)
    assert np.allclose(inv, (ref.c, ref.a, ref.b, ref.f, ref.d, ref.e))
