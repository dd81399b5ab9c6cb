"""The reading layer against independent oracles, every pixel read over HTTP from the range server.

Oracles: rasterio/GDAL reading the same COG files from disk (``rasterio.mask.mask`` with
``crop=True``, ``rasterio.mask.raster_geometry_mask``, ``rasterio.features.geometry_mask``,
``rasterio.warp.reproject``), numpy, and the providers' documented formulas:

* Sentinel-2 L2A of processing baseline >= 04.00: reflectance = DN * 0.0001 - 0.1
  (BOA_ADD_OFFSET -1000); Earth Search removes that offset from the COGs and says so with
  ``earthsearch:boa_offset_applied: true``, then reflectance = DN * 0.0001 (the flag is the
  truth, whatever ``raster:bands`` says). Earlier baselines never had the offset.
* Landsat Collection 2 Level-2 surface reflectance: reflectance = DN * 0.0000275 - 0.2.
* Sentinel-2 SCL classes masked by ``cloud_mask``: 0 no data, 1 saturated or defective,
  3 cloud shadows, 8 cloud medium probability, 9 cloud high probability, 10 thin cirrus.

The world (scenes, grids, dates) is described in ``conftest.py``.
"""

from __future__ import annotations

import logging
import math

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import rasterio.features
import rasterio.mask
import rasterio.warp
import rasterio.windows
import shapely
import shapely.geometry
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window

from rasteret_pipelines.cog import FetchConfig
from rasteret_pipelines.collections import build_collection, get_source, load_collection
from rasteret_pipelines.errors import (
    DateRangeError,
    InvalidGeometryError,
    InvalidReadArgumentError,
    NoScenesError,
    UnknownBandError,
)
from rasteret_pipelines.reading import read_geometries
from rasteret_pipelines.reading.model import geometry_transform
from rasteret_pipelines_demo import demo_data
from rasteret_pipelines_demo.range_server import FaultPlan
from rasteret_pipelines_tests.reading.conftest import (
    AOIS,
    BASE_IDS,
    BASE_RANGE,
    CROSS_ID,
    CROSS_RANGE,
    FLAG_COPIES,
    FLAG_SOURCE_ID,
    LANDSAT_ID,
    MOSAIC_DAY,
    MOSAIC_IDS,
    WORLD_SIZE,
)

UTM43 = "EPSG:32643"
SCL_CLOUDY = (0, 1, 3, 8, 9, 10)
PARIS = shapely.geometry.box(2.33, 48.85, 2.36, 48.87)


# -- helpers ---------------------------------------------------------------------------------


def to_crs(geom, crs=UTM43):
    return gpd.GeoSeries([geom], crs="EPSG:4326").to_crs(crs).iloc[0]


def from_utm(geom, crs=UTM43):
    return gpd.GeoSeries([geom], crs=crs).to_crs("EPSG:4326").iloc[0]


def day(scene_id: str, world) -> np.datetime64:
    return world.datetime(scene_id).astype("datetime64[D]").astype("datetime64[ns]")


def rio_masked(path, geom_utm, all_touched=False):
    """rasterio.mask.mask(crop=True) as float32 with NaN outside the geometry and at nodata."""
    with rasterio.open(path) as src:
        arr, transform = rasterio.mask.mask(src, [geom_utm], crop=True, all_touched=all_touched, filled=False)
    return np.ma.filled(arr[0].astype(np.float32), np.nan), transform


def layer(ds, band, gid, when):
    """(true-window array of one geometry and date, its Affine)."""
    one = ds.sel(geometry=gid)
    h, w = int(one["height"]), int(one["width"])
    arr = one[band].sel(time=np.datetime64(when, "ns")).values
    return arr[:h, :w], Affine(*geometry_transform(ds, gid))


def scene_of(ds, gid, when) -> str:
    return str(ds["scene_id"].sel(geometry=gid, time=np.datetime64(when, "ns")).item())


def assert_same_transform(a: Affine, b: Affine):
    assert np.allclose(tuple(a)[:6], tuple(b)[:6], rtol=0, atol=1e-6), (a, b)


def read_world(world, geoms, bands, **kwargs):
    return read_geometries(world.collection(), geoms, bands, **kwargs)


# -- masked reads equal rasterio -------------------------------------------------------------


@pytest.mark.parametrize("all_touched", [False, True], ids=["centres", "all_touched"])
def test_masked_reads_equal_rasterio_mask(world, all_touched):
    ds = read_world(world, list(AOIS.values()), ["B04", "nir"], date_range=BASE_RANGE, all_touched=all_touched)
    assert list(ds.data_vars) == ["B04", "nir"]
    assert ds["B04"].dims == ("geometry", "time", "row", "col") and ds["B04"].dtype == np.float32
    assert ds["geometry"].values.tolist() == [1, 2]
    assert [np.datetime64(t, "D") for t in ds["time"].values] == [np.datetime64(day(s, world), "D") for s in BASE_IDS]
    assert ds.attrs["all_touched"] == int(all_touched) and ds.attrs["values"] == "raw"
    for gi, (gid, geom) in enumerate(AOIS.items()):
        g = to_crs(geom)
        assert ds["crs"].sel(geometry=gid).item() == UTM43
        for scene_id in BASE_IDS:
            when = day(scene_id, world)
            assert scene_of(ds, gid, when) == scene_id
            for band, file_band in (("B04", "red"), ("nir", "nir")):
                expected, transform = rio_masked(world.path(scene_id, file_band), g, all_touched)
                got, got_transform = layer(ds, band, gid, when)
                assert got.shape == expected.shape
                assert_same_transform(got_transform, transform)
                np.testing.assert_array_equal(got, expected)
                assert np.isfinite(got).sum() > 1000  # real data, not only NaN
        # Pixel-centre coordinates of the window, and NaN padding beyond it.
        h, w = int(ds["height"][gi]), int(ds["width"][gi])
        t = Affine(*geometry_transform(ds, gid))
        np.testing.assert_allclose(ds["x"].values[gi, :w], t.c + t.a * (np.arange(w) + 0.5))
        np.testing.assert_allclose(ds["y"].values[gi, :h], t.f + t.e * (np.arange(h) + 0.5))
        pad_rows = ds["B04"].values[gi, :, h:, :]
        pad_cols = ds["B04"].values[gi, :, :, w:]
        assert np.isnan(pad_rows).all() and np.isnan(pad_cols).all()
    assert ds.sizes["row"] == int(ds["height"].max()) and ds.sizes["col"] == int(ds["width"].max())


def test_native_values_are_uint16_with_nodata_zero(world):
    ds = read_world(world, list(AOIS.values()), ["red"], date_range=BASE_RANGE, values="native")
    assert ds["red"].dtype == np.uint16 and ds.attrs["values"] == "native"
    for gi, (gid, geom) in enumerate(AOIS.items()):
        g = to_crs(geom)
        for scene_id in BASE_IDS:
            with rasterio.open(world.path(scene_id, "red")) as src:
                assert src.nodata == 0
                expected, transform = rasterio.mask.mask(src, [g], crop=True)  # filled with nodata
            got, got_transform = layer(ds, "red", gid, day(scene_id, world))
            assert got.dtype == np.uint16
            np.testing.assert_array_equal(got, expected[0])
            assert_same_transform(got_transform, transform)
            assert (got == 0).any() and (got > 0).sum() > 1000
        h, w = int(ds["height"][gi]), int(ds["width"][gi])
        assert (ds["red"].values[gi, :, h:, :] == 0).all() and (ds["red"].values[gi, :, :, w:] == 0).all()


def test_native_values_refuse_bands_of_different_dtypes(world):
    """SCL is uint8 and red uint16: one native array cannot hold both without changing values."""
    with pytest.raises(InvalidReadArgumentError, match="red: uint16.*scl: uint8"):
        read_world(world, list(AOIS.values()), ["red", "scl"], date_range=BASE_RANGE, values="native")


# -- reflectance -----------------------------------------------------------------------------


def _dn(world, scene_id, band, geom_utm):
    with rasterio.open(world.path(scene_id, band)) as src:
        arr, _ = rasterio.mask.mask(src, [geom_utm], crop=True, filled=False)
    return arr[0].astype(np.float64).filled(np.nan)


def test_reflectance_with_boa_offset_applied(world):
    assert world.items[BASE_IDS[0]]["properties"]["earthsearch:boa_offset_applied"] is True
    ds = read_world(world, list(AOIS.values()), ["red", "nir"], date_range=BASE_RANGE, values="reflectance")
    assert ds.attrs["values"] == "reflectance" and ds["red"].dtype == np.float32
    for gid, geom in AOIS.items():
        g = to_crs(geom)
        for scene_id in BASE_IDS:
            for band in ("red", "nir"):
                got, _ = layer(ds, band, gid, day(scene_id, world))
                expected = _dn(world, scene_id, band, g) * 0.0001
                np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
                assert np.array_equal(np.isnan(got), np.isnan(expected))


def test_reflectance_when_the_offset_flag_is_false(world):
    """Same COGs, flag false: baseline 05.10 subtracts 0.1, baseline 03.01 does not."""
    (late_id, (_, late_baseline)), (early_id, (_, early_baseline)) = FLAG_COPIES.items()
    assert (late_baseline, early_baseline) == ("05.10", "03.01")
    for scene_id in (late_id, early_id):
        assert world.items[scene_id]["properties"]["earthsearch:boa_offset_applied"] is False
    ds = read_world(world, list(AOIS.values()), ["red"], date_range=("2024-05-01", "2024-05-31"), values="reflectance")
    for gid, geom in AOIS.items():
        dn = _dn(world, FLAG_SOURCE_ID, "red", to_crs(geom))
        late, _ = layer(ds, "red", gid, day(late_id, world))
        early, _ = layer(ds, "red", gid, day(early_id, world))
        np.testing.assert_allclose(late, dn * 0.0001 - 0.1, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(early, dn * 0.0001, rtol=1e-6, atol=1e-7)
        assert np.nanmin(late) < 0.1 and np.nanmax(np.abs(early - late - 0.1)) < 1e-6


def test_landsat_scale_and_offset(world):
    assert get_source("landsat-c2l2-sr").reflectance({}) == (0.0000275, -0.2)
    collection = world.collection("landsat")
    assert collection.source.id == "landsat-c2l2-sr"
    ds = read_geometries(collection, list(AOIS.values()), ["B4", "nir08"], values="reflectance")
    when = day(LANDSAT_ID, world)
    for gid, geom in AOIS.items():
        g = to_crs(geom)
        for band, file_band in (("B4", "red"), ("nir08", "nir")):
            got, _ = layer(ds, band, gid, when)
            expected = _dn(world, LANDSAT_ID, file_band, g) * 0.0000275 - 0.2
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
            assert np.array_equal(np.isnan(got), np.isnan(expected))


# -- mosaics, grids and edges ----------------------------------------------------------------


def test_mosaic_takes_the_first_valid_pixel_in_datetime_then_id_order(world):
    """Two scenes of one day on grids shifted by whole pixels: no resampling, first valid wins.

    Oracle: each file read by rasterio at the integer offset of the reference window (the
    window of the first scene's grid), then numpy picks per pixel the first scene in
    (datetime, id) order whose pixel is not nodata, inside the geometry (rasterio's mask).
    """
    order = sorted(MOSAIC_IDS, key=lambda s: (world.datetime(s), s))
    assert order == list(MOSAIC_IDS) and order != sorted(MOSAIC_IDS)  # datetime decides, not id
    when = np.datetime64(MOSAIC_DAY, "ns")
    ds = read_world(world, list(AOIS.values()), ["red", "nir"], date_range=(str(MOSAIC_DAY), str(MOSAIC_DAY)))
    assert ds.sizes["time"] == 1 and ds["time"].values[0] == when
    for gid, geom in AOIS.items():
        g = to_crs(geom)
        assert scene_of(ds, gid, when) == ",".join(order)
        with rasterio.open(world.path(order[0], "red")) as first:
            outside, ref_transform, _ = rasterio.mask.raster_geometry_mask(first, [g], crop=True)
        h, w = outside.shape
        for band in ("red", "nir"):
            expected = np.full((h, w), np.nan, np.float32)
            filled = np.zeros((h, w), bool)
            stacks = []
            for scene_id in order:
                with rasterio.open(world.path(scene_id, band)) as src:
                    col, row = ~src.transform @ (ref_transform.c, ref_transform.f)
                    assert abs(col - round(col)) < 1e-9 and abs(row - round(row)) < 1e-9
                    data = src.read(1, window=Window(round(col), round(row), w, h), boundless=True, fill_value=0)
                    valid = data != src.nodata
                stacks.append((data, valid))
                take = valid & ~outside & ~filled
                expected[take] = data[take]
                filled |= take
            got, got_transform = layer(ds, band, gid, when)
            assert_same_transform(got_transform, ref_transform)
            np.testing.assert_array_equal(got, expected)
            # The case is not trivial: both scenes contribute, the first wins where both are
            # valid (and differs there), and some pixels inside the geometry are in neither.
            (d0, v0), (d1, v1) = stacks
            inside = ~outside
            assert (inside & v0).sum() > 1000 and (inside & ~v0 & v1).sum() > 1000
            both = inside & v0 & v1
            assert both.sum() > 1000 and (got[both] == d0[both]).all() and (d0[both] != d1[both]).mean() > 0.99
            if gid == 1:
                assert np.isnan(got[inside & ~v0 & ~v1]).all() and (inside & ~v0 & ~v1).sum() > 100


def test_other_crs_is_warped_onto_the_first_scenes_grid(world):
    """A scene in another CRS is warped onto the reference grid: the first covering scene's.

    Rule: for each geometry the reference grid is the grid of its earliest covering scene
    (by datetime, then id), at the finest requested band; here the 43PGQ scene of 2024-02-10
    (EPSG:32643). The EPSG:32644 scene of 2024-03-01 is resampled onto that window with
    nearest neighbour, nodata staying nodata, then masked like every layer. Oracle:
    ``rasterio.warp.reproject`` (nearest) of the whole source band read by rasterio onto the
    window's transform, and ``rasterio.features.geometry_mask`` of the geometry.
    """
    base_id = BASE_IDS[-1]
    ds = read_world(world, list(AOIS.values()), ["red", "nir"], date_range=CROSS_RANGE)
    assert [np.datetime64(t, "D") for t in ds["time"].values] == [
        np.datetime64(day(base_id, world), "D"),
        np.datetime64(day(CROSS_ID, world), "D"),
    ]
    for gid, geom in AOIS.items():
        g = to_crs(geom)
        assert ds["crs"].sel(geometry=gid).item() == UTM43
        with rasterio.open(world.path(base_id, "red")) as src:
            _, ref_transform, window = rasterio.mask.raster_geometry_mask(src, [g], crop=True)
        h, w = int(window.height), int(window.width)
        inside = rasterio.features.geometry_mask([g], out_shape=(h, w), transform=ref_transform, invert=True)
        assert scene_of(ds, gid, day(CROSS_ID, world)) == CROSS_ID
        for band in ("red", "nir"):
            got_base, got_transform = layer(ds, band, gid, day(base_id, world))
            assert_same_transform(got_transform, ref_transform)
            np.testing.assert_array_equal(got_base, rio_masked(world.path(base_id, band), g)[0])
            with rasterio.open(world.path(CROSS_ID, band)) as src:
                assert src.crs.to_epsg() == 32644
                source = src.read(1)
                warped = np.zeros((h, w), np.uint16)
                rasterio.warp.reproject(
                    source,
                    warped,
                    src_transform=src.transform,
                    src_crs=src.crs,
                    src_nodata=0,
                    dst_transform=ref_transform,
                    dst_crs=UTM43,
                    dst_nodata=0,
                    resampling=Resampling.nearest,
                )
            expected = np.where(inside & (warped != 0), warped.astype(np.float32), np.float32(np.nan))
            got, _ = layer(ds, band, gid, day(CROSS_ID, world))
            assert got.shape == (h, w)
            np.testing.assert_array_equal(got, expected)
            assert np.isfinite(got).sum() > 1000
            if gid == 1:
                assert (inside & (warped == 0)).sum() > 100  # the nodata patch came through as NaN


def test_geometry_partly_outside_the_scene(world):
    """Pixels beyond the scene's edge are NaN; those inside equal rasterio.mask.mask."""
    base_id = BASE_IDS[0]
    x_edge = demo_data.ORIGIN[0] + WORLD_SIZE * 10.0  # east edge of the cut 43PGQ grid
    g_utm = shapely.geometry.box(x_edge - 383, 1444300, x_edge + 317, 1445100)  # 38.3 px in, 31.7 out
    geom = from_utm(g_utm)
    g = to_crs(geom)  # what the engine sees: the lon/lat polygon back in UTM
    ds = read_world(world, [geom], ["red"], date_range=(str(day(base_id, world))[:10],) * 2)
    got, got_transform = layer(ds, "red", 1, day(base_id, world))
    with rasterio.open(world.path(base_id, "red")) as src:
        assert src.width == WORLD_SIZE
        full = rasterio.features.geometry_window(src, [g], boundless=True)
        expected_in, transform_in = rio_masked(world.path(base_id, "red"), g)
        assert_same_transform(got_transform, src.window_transform(full))
    assert got.shape == (int(full.height), int(full.width))
    n_in = WORLD_SIZE - int(full.col_off)
    assert expected_in.shape == (got.shape[0], n_in) and 0 < n_in < got.shape[1]
    assert_same_transform(transform_in, got_transform)  # same upper-left corner
    np.testing.assert_array_equal(got[:, :n_in], expected_in)
    inside = rasterio.features.geometry_mask([g], out_shape=got.shape, transform=got_transform, invert=True)
    assert inside[:, n_in:].sum() > 500  # geometry pixels beyond the edge ...
    assert np.isnan(got[:, n_in:]).all()  # ... are NaN
    assert np.isfinite(got[:, :n_in]).sum() > 500


def test_cloud_mask_uses_the_nearest_20m_scl_pixel(world):
    """SCL (20 m) masks a 10 m grid: a 10 m pixel is masked when the 20 m SCL pixel containing
    its centre (the nearest one) is a cloud, shadow, cirrus, saturated or nodata class."""
    ds = read_world(world, list(AOIS.values()), ["red"], date_range=BASE_RANGE, cloud_mask=True)
    assert ds.attrs["cloud_mask"] == 1
    masked_by_clouds = kept = 0
    for gid, geom in AOIS.items():
        g = to_crs(geom)
        for scene_id in BASE_IDS:
            plain, transform = rio_masked(world.path(scene_id, "red"), g)
            h, w = plain.shape
            tile_grid = Affine(10.0, 0.0, demo_data.ORIGIN[0], 0.0, -10.0, demo_data.ORIGIN[1])  # 43PGQ
            col0, row0 = (round(v) for v in ~tile_grid @ (transform.c, transform.f))
            with rasterio.open(world.path(scene_id, "scl")) as scl_src:
                assert scl_src.res == (20.0, 20.0)
                r0, c0 = row0 // 2, col0 // 2
                r1, c1 = (row0 + h - 1) // 2 + 1, (col0 + w - 1) // 2 + 1
                scl = scl_src.read(1, window=Window(c0, r0, c1 - c0, r1 - r0))
                rows = (row0 + np.arange(h)) // 2 - r0
                cols = (col0 + np.arange(w)) // 2 - c0
                scl_10m = scl[np.ix_(rows, cols)]
                # The same with GDAL's nearest-neighbour resampling: two oracles agree.
                warped = np.zeros((h, w), np.uint8)
                rasterio.warp.reproject(
                    scl_src.read(1),
                    warped,
                    src_transform=scl_src.transform,
                    src_crs=scl_src.crs,
                    dst_transform=transform,
                    dst_crs=UTM43,
                    resampling=Resampling.nearest,
                )
                np.testing.assert_array_equal(scl_10m, warped)
            cloudy = np.isin(scl_10m, SCL_CLOUDY)
            expected = np.where(cloudy, np.float32(np.nan), plain)
            got, _ = layer(ds, "red", gid, day(scene_id, world))
            np.testing.assert_array_equal(got, expected)
            masked_by_clouds += int((cloudy & np.isfinite(plain)).sum())
            kept += int(np.isfinite(got).sum())
    assert masked_by_clouds > 1000 and kept > 10000


# -- requests --------------------------------------------------------------------------------


def _tile_layout(path):
    """(tile -> (offset, size)) of the full-resolution non-sparse tiles, and the header size
    (the smallest tile offset over every level), read by GDAL from the file."""
    first_offsets = []
    tiles = {}
    with rasterio.open(path) as src:
        levels = len(src.overviews(1))
    for level in [None] + list(range(levels)):
        with rasterio.open(path, **({} if level is None else {"OVERVIEW_LEVEL": level})) as src:
            bh, bw = src.block_shapes[0]
            for row in range(math.ceil(src.height / bh)):
                for col in range(math.ceil(src.width / bw)):
                    offset = int(src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1) or 0)
                    size = int(src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=1) or 0)
                    if offset:
                        first_offsets.append(offset)
                        if level is None:
                            tiles[(row, col)] = (offset, size)
    return tiles, min(first_offsets), (bh, bw)


def _tiles_of(window: Window, block_shape, layout) -> dict:
    bh, bw = block_shape
    out = {}
    for row in range(max(int(window.row_off), 0) // bh, (int(window.row_off + window.height) - 1) // bh + 1):
        for col in range(max(int(window.col_off), 0) // bw, (int(window.col_off + window.width) - 1) // bw + 1):
            if (row, col) in layout:  # inside the image and not sparse
                out[(row, col)] = layout[(row, col)]
    return out


def test_one_get_per_distinct_tile_no_header_gets_no_stac(world):
    """Both AOIs x every date of the collection x red and nir, in one read.

    Independent expectation of the tiles needed, from GDAL's block layout of each file:
    on grids of the reference CRS (whole-pixel shifts of it), the tiles under rasterio's
    ``geometry_window`` of the geometry on that file; for the EPSG:32644 scene, the tiles
    under the reference window (rasterio's window on the first scene) transformed into its
    grid, plus one pixel for nearest neighbour. Files shared by several items count once.
    """
    geoms = [to_crs(g) for g in AOIS.values()]
    scene_ids = sorted((s for s in world.items if s != LANDSAT_ID), key=lambda s: (world.datetime(s), s))
    needed: dict[str, dict[tuple[int, int], tuple[int, int]]] = {}
    header_size: dict[str, int] = {}
    with rasterio.open(world.path(scene_ids[0], "red")) as first:
        reference = [(first.transform, rasterio.features.geometry_window(first, [g])) for g in geoms]
    for scene_id in scene_ids:
        for band in ("red", "nir"):
            path = world.path(scene_id, band)
            layout, first_offset, block_shape = _tile_layout(path)
            url_path = "/" + path.relative_to(world.root).as_posix()
            header_size[url_path] = first_offset
            tiles = needed.setdefault(url_path, {})
            with rasterio.open(path) as src:
                for g, (first_transform, ref_window) in zip(geoms, reference):
                    if src.crs == UTM43:
                        window = rasterio.features.geometry_window(src, [g])
                    else:
                        bounds = rasterio.windows.bounds(ref_window, first_transform)
                        local = rasterio.warp.transform_bounds(UTM43, src.crs, *bounds, densify_pts=21)
                        w = rasterio.windows.from_bounds(*local, transform=src.transform)
                        window = Window(
                            math.floor(w.col_off) - 1,
                            math.floor(w.row_off) - 1,
                            math.ceil(w.width) + 3,
                            math.ceil(w.height) + 3,
                        )
                    tiles.update(_tiles_of(window, block_shape, layout))
    distinct = sum(len(t) for t in needed.values())
    assert distinct > len(needed) >= 2 * (len(BASE_IDS) + 3)  # some files need several tiles

    collection = world.collection()
    world.cogs.reset_log()
    world.stac.reset_log()
    ds = read_geometries(collection, list(AOIS.values()), ["red", "nir"])
    assert ds.sizes["time"] == len({day(s, world) for s in scene_ids})
    requests = world.cogs.requests
    gets = [r for r in requests if r.method == "GET"]
    assert len(requests) == len(gets)  # no HEAD or anything else
    assert 0 < len(gets) <= distinct, (len(gets), distinct)
    print(f"{len(gets)} GETs for {distinct} distinct tiles in {len(needed)} files")
    for r in gets:
        assert r.status == 206 and r.range is not None, r
        assert r.range[0] >= header_size[r.path] > 0, f"header GET {r.range} of {r.path}"
        spans = needed[r.path].values()
        assert any(r.range[0] == off for off, _ in spans), r  # starts at a needed tile
        assert r.range[1] <= max(off + size - 1 for off, size in spans), r  # nothing beyond them
    # Every needed tile was fetched, once (the ranges of one file do not overlap).
    for path, tiles in needed.items():
        ranges = sorted(r.range for r in gets if r.path == path)
        assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:])), path
        for off, size in tiles.values():
            assert any(s <= off and off + size - 1 <= e for s, e in ranges), (path, off)
    assert world.stac.count() == 0


# -- bad input -------------------------------------------------------------------------------


def test_band_not_in_the_collection(world):
    with pytest.raises(UnknownBandError, match="blue"):
        read_world(world, list(AOIS.values()), ["B02"])
    with pytest.raises(UnknownBandError, match="B99"):
        read_world(world, list(AOIS.values()), ["red", "B99"])


def test_date_range_outside_the_collection(world):
    with pytest.raises(DateRangeError, match="2023-06-01"):
        read_world(world, list(AOIS.values()), ["red"], date_range=("2023-06-01", "2023-07-31"))


@pytest.mark.parametrize(
    "geometry, message",
    [
        (shapely.Polygon(), "empty"),
        (shapely.Polygon([(77.55, 13.01), (77.58, 13.08), (77.58, 13.01), (77.55, 13.08)]), "invalid"),
        (shapely.Point(77.56, 13.03), "Point"),
    ],
    ids=["empty", "bow-tie", "point"],
)
def test_invalid_geometries_are_named(world, geometry, message):
    gdf = gpd.GeoDataFrame(geometry=[AOIS[1], geometry], index=["good-field", "bad-field"], crs="EPSG:4326")
    with pytest.raises(InvalidGeometryError, match=f"bad-field.*{message}|{message}.*bad-field"):
        read_world(world, gdf, ["red"])
    with pytest.raises(InvalidGeometryError, match=f"geometry 2 .*{message}"):
        read_world(world, [AOIS[1], geometry], ["red"])


def test_geodataframe_without_crs_and_duplicate_ids(world):
    with pytest.raises(InvalidGeometryError, match="no CRS"):
        read_world(world, gpd.GeoDataFrame(geometry=list(AOIS.values())), ["red"])
    dupes = gpd.GeoDataFrame(geometry=list(AOIS.values()) * 2, index=["a", "field-7", "b", "field-7"], crs="EPSG:4326")
    with pytest.raises(InvalidGeometryError, match="field-7"):
        read_world(world, dupes, ["red"])


def test_geometries_covering_no_scene(world):
    with pytest.raises(NoScenesError):
        read_world(world, [PARIS], ["red"])
    with pytest.raises(NoScenesError):  # covered in space, but not in that date range
        read_world(world, [AOIS[1]], ["red"], date_range=("2024-04-01", "2024-04-30"))
    ds = read_world(world, [AOIS[1], PARIS, AOIS[2]], ["red"], date_range=BASE_RANGE)
    assert ds["geometry"].values.tolist() == [1, 3]
    assert ds.attrs["geometries_without_scenes"] == ["2"]
    got, _ = layer(ds, "red", 3, day(BASE_IDS[0], world))
    np.testing.assert_array_equal(got, rio_masked(world.path(BASE_IDS[0], "red"), to_crs(AOIS[2]))[0])


def test_scene_whose_header_failed_at_build_is_skipped(world, tmp_path, caplog):
    broken_id = BASE_IDS[1]
    broken = world.path(broken_id, "nir").relative_to(world.root).as_posix()
    world.cogs.faults = FaultPlan(rate=1.0, kinds=["503"], paths=broken)
    try:
        report = build_collection(
            "sentinel-2-l2a",
            "half_broken",
            tmp_path,
            date_range=BASE_RANGE,
            bands=["red", "nir", "scl"],
            stac_url=world.stac.url,
            progress=False,
            fetch_config=FetchConfig(max_retries=1, backoff_base=0.001, backoff_max=0.01),
        )
    finally:
        world.cogs.faults = None
    assert [(f.item_id, f.band) for f in report.failed] == [(broken_id, "nir")]
    collection = load_collection("half_broken", tmp_path)
    with caplog.at_level(logging.WARNING, logger="rasteret_pipelines.reading"):
        ds = read_geometries(collection, list(AOIS.values()), ["red", "nir"])
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(broken_id in m and "nir" in m and "skipped" in m for m in warned), warned
    others = [s for s in BASE_IDS if s != broken_id]
    assert [np.datetime64(t, "D") for t in ds["time"].values] == [np.datetime64(day(s, world), "D") for s in others]
    for gid, geom in AOIS.items():
        for scene_id in others:
            got, _ = layer(ds, "nir", gid, day(scene_id, world))
            np.testing.assert_array_equal(got, rio_masked(world.path(scene_id, "nir"), to_crs(geom))[0])
    # Its red header is fine: a red-only read uses the scene.
    ds_red = read_geometries(collection, list(AOIS.values()), ["red"])
    assert ds_red.sizes["time"] == len(BASE_IDS)


# -- memory and input forms ------------------------------------------------------------------


def test_distant_geometries_do_not_allocate_the_span_between_them(world):
    """A field ~93 km from AOI 1 (north-west corner of the tile): the Dataset holds two small
    windows, padded to the larger one, never the ~7700 x 5300 pixel box spanning both."""
    x0, y0 = demo_data.ORIGIN
    far_utm = shapely.geometry.box(x0 + 1500, y0 - 2300, x0 + 2100, y0 - 1500)  # 60 x 80 px
    far = from_utm(far_utm)
    scene_id = BASE_IDS[0]
    when = str(day(scene_id, world))[:10]
    ds = read_world(world, {"aoi": AOIS[1], "far": far}.values(), ["red", "nir"], date_range=(when, when))
    windows = []
    with rasterio.open(world.path(scene_id, "red")) as src:
        for geom in (AOIS[1], far):
            windows.append(rasterio.features.geometry_window(src, [to_crs(geom)]))
        distance = shapely.distance(to_crs(AOIS[1]), to_crs(far))
    assert distance > 85_000
    span_rows = int(max(w.row_off + w.height for w in windows) - min(w.row_off for w in windows))
    span_cols = int(max(w.col_off + w.width for w in windows) - min(w.col_off for w in windows))
    assert span_rows > 5000 and span_cols > 7000
    assert ds.sizes["row"] == max(int(w.height) for w in windows) < 1000
    assert ds.sizes["col"] == max(int(w.width) for w in windows) < 1000
    assert ds["height"].values.tolist() == [int(w.height) for w in windows]
    assert ds["width"].values.tolist() == [int(w.width) for w in windows]
    assert ds.nbytes < 2 * 2 * 1000 * 1000 * 4 * 1.2  # geometries x bands x window x float32 (+coords)
    got, transform = layer(ds, "red", 2, np.datetime64(when))
    with rasterio.open(world.path(scene_id, "red")) as src:
        assert_same_transform(transform, src.window_transform(windows[1]))
    assert np.isnan(got).all()  # the sparse (nodata) corner of the demo tile


def test_geodataframe_with_ids_and_a_utm_crs_gives_the_same_pixels(world):
    ids = pd.Index(["north-field", "south-field"], name="field")
    gdf = gpd.GeoDataFrame({"crop": ["rice", "ragi"]}, geometry=list(AOIS.values()), index=ids, crs="EPSG:4326")
    utm = gdf.to_crs(UTM43)
    kwargs = dict(date_range=BASE_RANGE, all_touched=True)
    from_4326 = read_world(world, list(AOIS.values()), ["red", "nir"], **kwargs)
    from_utm_gdf = read_world(world, utm, ["red", "nir"], **kwargs)
    assert from_utm_gdf["geometry"].values.tolist() == ["north-field", "south-field"]
    for band in ("red", "nir"):
        np.testing.assert_array_equal(from_utm_gdf[band].values, from_4326[band].values)
    for coord in ("height", "width", "crs", "transform", "scene_id"):
        assert from_utm_gdf[coord].values.tolist() == from_4326[coord].values.tolist()
    np.testing.assert_array_equal(from_utm_gdf["x"].values, from_4326["x"].values)
    np.testing.assert_array_equal(from_utm_gdf["y"].values, from_4326["y"].values)


def test_a_caller_named_crs_puts_every_geometry_on_that_grid(world):
    """``crs=`` builds a north-up grid in that CRS, pixels aligned to multiples of the
    resolution (default: the finest band's 10 m), and warps every scene onto it (nearest).
    Oracle: ``rasterio.warp.reproject`` of the rasterio-read band onto the same grid, masked
    with ``rasterio.features.geometry_mask``."""
    scene = BASE_IDS[0]
    ds = read_world(world, list(AOIS.values()), ["red"], date_range=BASE_RANGE, crs="EPSG:32644")
    for gid, geom in AOIS.items():
        g = to_crs(geom, "EPSG:32644")
        left, bottom, right, top = g.bounds
        origin = (math.floor(left / 10) * 10, math.ceil(top / 10) * 10)
        grid = Affine(10, 0, origin[0], 0, -10, origin[1])
        window = rasterio.features.geometry_window(_FakeDataset(grid), [g], boundless=True)
        transform = rasterio.windows.transform(window, grid)
        h, w = int(window.height), int(window.width)
        assert ds["crs"].sel(geometry=gid).item() == "EPSG:32644"
        assert_same_transform(Affine(*geometry_transform(ds, gid)), transform)
        inside = rasterio.features.geometry_mask([g], out_shape=(h, w), transform=transform, invert=True)
        with rasterio.open(world.path(scene, "red")) as src:
            warped = np.zeros((h, w), np.uint16)
            rasterio.warp.reproject(
                src.read(1),
                warped,
                src_transform=src.transform,
                src_crs=src.crs,
                src_nodata=0,
                dst_transform=transform,
                dst_crs="EPSG:32644",
                dst_nodata=0,
                resampling=Resampling.nearest,
            )
        expected = np.where(inside & (warped != 0), warped.astype(np.float32), np.float32(np.nan))
        got, _ = layer(ds, "red", gid, day(scene, world))
        np.testing.assert_array_equal(got, expected)
        assert np.isfinite(got).sum() > 10000


class _FakeDataset:
    """What ``rasterio.features.geometry_window`` needs of a dataset: a transform and a size."""

    def __init__(self, transform):
        self.transform = transform
        self.width = self.height = 10**7


def test_mosaic_last_takes_the_last_valid_pixel(world):
    """``mosaic="last"``: where both same-day scenes are valid the later one wins, elsewhere
    whichever is valid; the grid is still the first scene's. Oracle: rasterio reads of both
    files at the reference window, combined in reverse (datetime, id) order with numpy."""
    order = sorted(MOSAIC_IDS, key=lambda s: (world.datetime(s), s))
    when = np.datetime64(MOSAIC_DAY, "ns")
    ds = read_world(world, list(AOIS.values()), ["red"], date_range=(str(MOSAIC_DAY), str(MOSAIC_DAY)), mosaic="last")
    for gid, geom in AOIS.items():
        with rasterio.open(world.path(order[0], "red")) as first:
            outside, ref_transform, _ = rasterio.mask.raster_geometry_mask(first, [to_crs(geom)], crop=True)
        h, w = outside.shape
        expected = np.full((h, w), np.nan, np.float32)
        filled = np.zeros((h, w), bool)
        used, stack = [], {}
        for scene_id in reversed(order):
            with rasterio.open(world.path(scene_id, "red")) as src:
                col, row = ~src.transform @ (ref_transform.c, ref_transform.f)
                data = src.read(1, window=Window(round(col), round(row), w, h), boundless=True, fill_value=0)
            stack[scene_id] = data
            take = (data != 0) & ~outside & ~filled
            expected[take] = data[take]
            filled |= take
            if take.any():
                used.append(scene_id)
        got, got_transform = layer(ds, "red", gid, when)
        assert_same_transform(got_transform, ref_transform)
        np.testing.assert_array_equal(got, expected)
        assert scene_of(ds, gid, when) == ",".join(s for s in order if s in used)  # listed in date order
        # Not trivial: where both scenes are valid (and differ) the later one's value is kept.
        d0, d1 = stack[order[0]], stack[order[1]]
        both = ~outside & (d0 != 0) & (d1 != 0)
        assert both.sum() > 1000 and (got[both] == d1[both]).all() and (d0[both] != d1[both]).mean() > 0.99


def test_a_read_of_shapely_polygons_in_a_fresh_process_needs_neither_gdal_nor_geopandas(world):
    """Masks are rasterised with numpy and plain shapely input skips GeoPandas: a fresh process
    reading the quick start's AOIs never imports rasterio or geopandas, and its pixels equal
    rasterio's mask in this process. Building the Dataset does not import dask either (xarray
    probes for it on the first Variable it converts; the read hands it plain numpy arrays)."""
    import json
    import subprocess
    import sys

    script = (
        "import json, sys, shapely\n"
        "from rasteret_pipelines import Rasteret\n"
        f"r = Rasteret.load_collection('world', {str(world.workspace)!r})\n"
        f"geoms = [shapely.from_wkt(w) for w in {[g.wkt for g in AOIS.values()]!r}]\n"
        f"ds = r.get_xarray(geoms, ['red'], date_range={list(BASE_RANGE)!r})\n"
        "after_read = sorted(sys.modules)\n"
        "one = ds.isel(geometry=0, time=0)\n"
        "h, w = int(one['height']), int(one['width'])\n"
        "arr = one['red'].values[:h, :w]\n"
        "import numpy as np\n"
        "print(json.dumps({'modules': sorted(sys.modules), 'after_read': after_read,"
        " 'scene': str(one['scene_id'].values),"
        " 'sum': float(np.nansum(arr, dtype=np.float64)), 'count': int(np.isfinite(arr).sum())}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    loaded = set(result["modules"])
    assert not {"rasterio", "geopandas", "botocore", "boto3", "dagster", "tqdm"} & loaded
    assert "xarray" in result["after_read"] and "dask" not in result["after_read"]
    expected, _ = rio_masked(world.path(result["scene"], "red"), to_crs(AOIS[1]))
    assert result["count"] == int(np.isfinite(expected).sum()) > 1000
    assert result["sum"] == pytest.approx(float(np.nansum(expected, dtype=np.float64)), rel=1e-12)


def test_get_gdf_rows_equal_rasterio_mask(world):
    """``Rasteret.get_gdf``: one row per geometry x date x band whose array, transform and CRS
    are rasterio's ``mask(crop=True)`` of that scene's file, and whose geometry is the input."""
    from rasteret_pipelines import Rasteret

    processor = Rasteret.load_collection("world", world.workspace)
    geoms = list(AOIS.values())
    gdf = processor.get_gdf(geoms, ["B04", "nir"], date_range=BASE_RANGE)
    assert list(gdf.columns) == ["geometry_id", "date", "band", "array", "transform", "crs", "scene_id", "geometry"]
    assert gdf.crs == "EPSG:4326" and len(gdf) == len(AOIS) * len(BASE_IDS) * 2
    for gid, geom in AOIS.items():
        g = to_crs(geom)
        for scene_id in BASE_IDS:
            for band, file_band in (("B04", "red"), ("nir", "nir")):
                rows = gdf[(gdf.geometry_id == gid) & (gdf.band == band) & (gdf.scene_id == scene_id)]
                assert len(rows) == 1
                row = rows.iloc[0]
                expected, transform = rio_masked(world.path(scene_id, file_band), g, False)
                np.testing.assert_array_equal(row["array"], expected)
                assert_same_transform(Affine(*row["transform"]), transform)
                assert row["crs"] == UTM43 and row["geometry"].equals(geom)
                assert row["date"] == day(scene_id, world).astype("datetime64[D]").astype(object)
