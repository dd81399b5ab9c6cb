"""Data cubes (``read_cube``, ``get_xarray(bbox=...)``) against rasterio and numpy, over HTTP.

Oracles: every band read from the same COG files on disk by rasterio (the full-resolution
image, or the overview GDAL's rule picks, opened with ``overview_level``), warped onto the
cube's grid by ``rasterio.warp.reproject`` with the same resampling, nodata ignored
(``src_nodata``); composites are numpy reductions (``nanmedian``, ``nanstd``, ...) of those
arrays with the cloud mask (SCL, nearest) applied first. The world is ``conftest.py``'s.

The oracle warps with the two settings that make GDAL's warper give the same pixels however a
grid is cut (the cube uses them, so that every chunking gives the eager read's pixels):

* the grid is warped in strips of ``WARP_STRIP`` columns from its first column. GDAL's
  approximate transformer (``gdalwarp -et``, 0.125 source pixel by default, which rasterio 1.4's
  ``reproject`` cannot change) interpolates each destination row of a warped region between
  exact points at its ends, so a pixel's source coordinate depends on the region's columns;
* GDAL's ``XSCALE``/``YSCALE`` warp options are given: the source pixel size over the cube's.
  Left out, GDAL works them out per warped region from its source window, and they size the
  bilinear and cubic kernels (GDAL's gdalwarp FAQ: "Those ratios are computed per warping
  chunk ... you may manually specify the XSCALE and YSCALE warping options"). The cube computes
  them at its centre; across the UTM zone boundary that is 0.1 % off the ratio of the pixel
  sizes, which GDAL's kernels treat as the same scale (the pixels are equal, checked below).
"""

from __future__ import annotations

import functools
import math
import pickle
import warnings

import dask
import numpy as np
import pytest
import rasterio
import rasterio.warp
import shapely
from affine import Affine
from rasterio.enums import Resampling

from rasteret_pipelines.errors import CubeChunksError, CubeGridError, GroupbyError, InvalidReadArgumentError
from rasteret_pipelines.reading.cube import WARP_STRIP, CubeGrid, cube_grid, read_cube
from rasteret_pipelines.reading.mosaic import FirstValid, MosaicMethod
from rasteret_pipelines_tests.reading.conftest import (
    AOIS,
    BASE_IDS,
    BASE_RANGE,
    CROSS_ID,
    CROSS_RANGE,
    MOSAIC_DAY,
    MOSAIC_IDS,
)
from rasteret_pipelines_tests.reading.test_read import _tile_layout

UTM43 = "EPSG:32643"
SCL_CLOUDY = (0, 1, 3, 8, 9, 10)
AOI_BOX = tuple(np.round(shapely.union_all(list(AOIS.values())).buffer(0.002).bounds, 4))
"""Both quick-start AOIs and about 200 m around them, in degrees."""


def grid_of(ds) -> CubeGrid:
    return CubeGrid(ds.attrs["crs"], tuple(ds.attrs["transform"]), ds.sizes["x"], ds.sizes["y"])


def warped(path, grid: CubeGrid, resampling: str, overview_level: int | None = None) -> np.ndarray:
    """rasterio's warp of the whole band (or one overview) onto ``grid``, float32, NaN at nodata."""
    return _warped(path, grid, resampling, overview_level).copy()


@functools.cache  # the same warps recur across a test's parameters; each reads a whole band
def _warped(path, grid: CubeGrid, resampling: str, overview_level: int | None) -> np.ndarray:
    kwargs = {} if overview_level is None else {"overview_level": overview_level}
    with rasterio.open(path, **kwargs) as src:
        data = src.read(1)
        scale = abs(src.transform.a) / abs(grid.transform[0])  # source pixel size over the cube's
        out = np.full((grid.height, grid.width), np.nan, np.float32)
        for c0 in range(0, grid.width, WARP_STRIP):  # the module docs say why strips
            strip = grid.block(0, grid.height, c0, min(c0 + WARP_STRIP, grid.width))
            warped_strip = np.full((strip.height, strip.width), np.nan, np.float32)
            rasterio.warp.reproject(
                data,
                warped_strip,
                src_transform=src.transform,
                src_crs=src.crs,
                src_nodata=src.nodata,
                dst_transform=Affine(*strip.transform),
                dst_crs=grid.crs,
                dst_nodata=np.nan,
                resampling=Resampling[resampling],
                XSCALE=scale,
                YSCALE=scale,
            )
            out[:, c0 : c0 + strip.width] = warped_strip
    return out


def clear_of(world, scene_id, grid: CubeGrid) -> np.ndarray:
    scl = warped(world.path(scene_id, "scl"), grid, "nearest")
    return np.isfinite(scl) & ~np.isin(np.nan_to_num(scl, nan=0), SCL_CLOUDY)


# -- the grid --------------------------------------------------------------------------------


def test_grid_edges_sit_on_multiples_of_the_resolution_around_the_area():
    """odc-stac's default anchor: pixel edges on multiples of the resolution, the area inside."""
    grid = cube_grid(crs=UTM43, resolution=20, area_4326=shapely.box(*AOI_BOX))
    a, b, c, d, e, f = grid.transform
    assert (a, b, d, e) == (20.0, 0.0, 0.0, -20.0)
    assert c % 20 == 0 and f % 20 == 0
    area = rasterio.warp.transform_geom("EPSG:4326", UTM43, shapely.geometry.mapping(shapely.box(*AOI_BOX)))
    minx, miny, maxx, maxy = shapely.geometry.shape(area).bounds
    left, bottom, right, top = grid.bounds()
    assert left <= minx < left + 20 and right - 20 < maxx <= right
    assert bottom <= miny < bottom + 20 and top - 20 < maxy <= top


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"crs": UTM43, "resolution": None}, "resolution"),
        ({"crs": UTM43, "resolution": -10}, "positive"),
        ({"crs": "EPSG:nope", "resolution": 10}, "not a CRS"),
    ],
)
def test_bad_grids_are_named(kwargs, message):
    with pytest.raises(CubeGridError, match=message):
        cube_grid(area_4326=shapely.box(*AOI_BOX), **kwargs)


# -- pixels against rasterio -----------------------------------------------------------------


@pytest.mark.parametrize("resampling", ["nearest", "bilinear", "cubic", "average"])
def test_two_utm_zones_on_one_grid_equal_rasterio_warp(world, resampling):
    """The 2024-02-10 scene (EPSG:32643, the cube's own grid) and the EPSG:32644 scene, both on
    a 10 m EPSG:32643 grid: each step equals rasterio's warp of the file with the same resampling."""
    ds = read_cube(
        world.collection(),
        ["red", "nir"],
        bbox=AOI_BOX,
        crs=UTM43,
        resolution=10,
        resampling=resampling,
        groupby="time",
        date_range=CROSS_RANGE,
    )
    assert ds["red"].dims == ("time", "y", "x") and ds.attrs["header_requests"] == 0
    grid = grid_of(ds)
    assert list(ds["scene_id"].values) == [next(s for s in BASE_IDS if "20240210" in s), CROSS_ID]
    for ti, scene_id in enumerate(ds["scene_id"].values):
        for band in ("red", "nir"):
            expected = warped(world.path(scene_id, band), grid, resampling)
            got = ds[band].values[ti]
            assert np.isfinite(expected).sum() > 50_000
            if resampling == "nearest" or scene_id != CROSS_ID:
                np.testing.assert_array_equal(got, expected)
            else:
                np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
                np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(ds["x"].values[:2] - grid.transform[2], [5.0, 15.0])


SPLITS = {
    "x": {"time": 1, "y": -1, "x": 300},
    "y": {"time": 1, "y": 300, "x": -1},
    "x and y": {"time": 1, "y": 300, "x": 300},
}
"""Chunks that cut the 488 x 936 pixel grid of :func:`test_a_warped_scene_has_the_eager_reads_pixels_however_chunked`."""


@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("resampling", ["nearest", "bilinear", "cubic", "average"])
def test_a_warped_scene_has_the_eager_reads_pixels_however_chunked(world, resampling, split):
    """The EPSG:32644 scene warped onto the 10 m EPSG:32643 grid: a lazy read whose blocks cut
    the grid's columns, its rows or both gives exactly the eager read's pixels, and the eager
    read gives rasterio's (with the settings the module docs name)."""
    kwargs = dict(bbox=AOI_BOX, crs=UTM43, resolution=10, resampling=resampling, groupby="time", date_range=CROSS_RANGE)
    eager = read_cube(world.collection(), ["red"], **kwargs)
    grid = grid_of(eager)
    assert (grid.width, grid.height) == (488, 936) and grid.width > WARP_STRIP  # the chunks cut strips
    lazy = read_cube(world.collection(), ["red"], chunks=SPLITS[split], **kwargs)
    assert lazy["red"].data.npartitions > len(eager["scene_id"])
    with dask.config.set(scheduler="synchronous"):
        got = lazy["red"].values
    np.testing.assert_array_equal(got, eager["red"].values)
    cross = list(eager["scene_id"].values).index(CROSS_ID)
    expected = warped(world.path(CROSS_ID, "red"), grid, resampling)
    assert np.isfinite(expected).sum() > 400_000
    np.testing.assert_array_equal(eager["red"].values[cross], expected)


@pytest.mark.parametrize("resampling", ["nearest", "bilinear"])
def test_a_20m_band_onto_a_10m_grid(world, resampling):
    ds = read_cube(
        world.collection(),
        ["scl"],
        bbox=AOI_BOX,
        crs=UTM43,
        resolution=10,
        resampling=resampling,
        groupby="time",
        date_range=BASE_RANGE,
    )
    grid = grid_of(ds)
    for ti, scene_id in enumerate(ds["scene_id"].values):
        np.testing.assert_allclose(
            ds["scl"].values[ti], warped(world.path(scene_id, "scl"), grid, resampling), rtol=1e-6
        )


def _gdal_best_overview(factors: list[int], desired: float, threshold: float) -> int | None:
    """GDALBandGetBestOverviewLevel2 as documented: the overview with the largest factor below
    desired x threshold (None: full resolution); rasterio lists the factors in GDAL's order."""
    best, best_factor = None, 1.0
    for i, factor in enumerate(factors):
        if factor >= desired * threshold or factor <= best_factor:
            continue
        best, best_factor = i, factor
    return best


@pytest.mark.parametrize("resolution, resampling", [(60, "average"), (20, "average"), (80, "nearest")])
def test_a_coarser_grid_reads_the_overview_gdal_picks(world, resolution, resampling):
    """60 m from 10 m data: GDAL's rule picks the 4x overview (8x would be coarser than asked);
    20 m: the 2x overview; 80 m nearest: the 8x. Pixels equal rasterio's warp of that overview;
    every GET lies in that overview's tiles and none reads a header."""
    scene_id = BASE_IDS[0]
    path = world.path(scene_id, "red")
    with rasterio.open(path) as src:
        factors = src.overviews(1)
    level = _gdal_best_overview(factors, resolution / 10, 1.2 if resampling == "nearest" else 1.01)
    assert level is not None and factors[level] == {60: 4, 20: 2, 80: 8}[resolution]
    with rasterio.open(path, overview_level=level) as ovr:
        offsets = [
            int(ovr.get_tag_item(f"BLOCK_OFFSET_{c}_{r}", "TIFF", bidx=1) or 0)
            for r in range(math.ceil(ovr.height / ovr.block_shapes[0][0]))
            for c in range(math.ceil(ovr.width / ovr.block_shapes[0][1]))
        ]
        sizes = [
            int(ovr.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=1) or 0)
            for r in range(math.ceil(ovr.height / ovr.block_shapes[0][0]))
            for c in range(math.ceil(ovr.width / ovr.block_shapes[0][1]))
        ]
    tiles = [(o, o + s - 1) for o, s in zip(offsets, sizes) if o and s]
    collection = world.collection()
    world.cogs.reset_log()
    ds = read_cube(
        collection,
        ["red"],
        bbox=AOI_BOX,
        crs=UTM43,
        resolution=resolution,
        resampling=resampling,
        groupby="time",
        date_range=(BASE_RANGE[0], BASE_RANGE[0][:8] + "06"),
    )
    assert list(ds["scene_id"].values) == [scene_id]
    expected = warped(path, grid_of(ds), resampling, overview_level=level)
    assert np.isfinite(expected).sum() > 1000
    np.testing.assert_allclose(ds["red"].values[0], expected, rtol=1e-6)
    gets = [r for r in world.cogs.requests if r.path.endswith(path.relative_to(world.root).as_posix())]
    assert gets and ds.attrs["header_requests"] == 0
    for r in gets:
        assert any(s <= r.range[0] <= e for s, e in tiles), r


# -- time steps and composites ---------------------------------------------------------------


def test_solar_day_mosaics_the_two_scenes_of_one_day_first_valid(world):
    ds = read_cube(
        world.collection(),
        ["red"],
        bbox=AOI_BOX,
        crs=UTM43,
        resolution=10,
        date_range=(str(MOSAIC_DAY), str(MOSAIC_DAY)),
    )
    assert ds.sizes["time"] == 1 and ds.attrs["groupby"] == "solar_day"
    first, second = sorted(MOSAIC_IDS, key=world.datetime)
    assert ds["scene_id"].values[0] == f"{first},{second}"
    assert ds["time"].values[0] == world.datetime(first)  # odc-stac's label: the earliest scene
    grid = grid_of(ds)
    a, b = (warped(world.path(s, "red"), grid, "nearest") for s in (first, second))
    expected = np.where(np.isfinite(a), a, b)
    assert (np.isnan(a) & np.isfinite(b)).sum() > 1000  # the second scene fills a real gap
    np.testing.assert_array_equal(ds["red"].values[0], expected)


REDUCTIONS = {
    "first": None,
    "last": None,
    "highest": np.nanmax,
    "lowest": np.nanmin,
    "mean": np.nanmean,
    "median": np.nanmedian,
    "stdev": np.nanstd,
    "count": None,
}


@pytest.mark.parametrize("method", list(REDUCTIONS))
def test_monthly_composites_with_the_cloud_mask_equal_numpy(world, method):
    """January and February 2024, two scenes each, clouds masked before the reduction."""
    ds = read_cube(
        world.collection(),
        ["red"],
        bbox=AOI_BOX,
        crs=UTM43,
        resolution=10,
        groupby="month",
        mosaic=method,
        cloud_mask=True,
        date_range=BASE_RANGE,
    )
    assert [str(t)[:10] for t in ds["time"].values] == ["2024-01-01", "2024-02-01"]
    grid = grid_of(ds)
    for ti, month in enumerate(("2024-01", "2024-02")):
        ids = sorted((s for s in BASE_IDS if str(world.datetime(s))[:7] == month), key=world.datetime)
        assert len(ids) == 2 and ds["scene_id"].values[ti] == ",".join(ids)
        stack = np.stack(
            [np.where(clear_of(world, s, grid), warped(world.path(s, "red"), grid, "nearest"), np.nan) for s in ids]
        )
        valid = np.isfinite(stack)
        assert (valid.sum(0) == 1).sum() > 1000 and (valid.sum(0) == 2).sum() > 1000
        if method == "first":
            expected = np.where(valid[0], stack[0], stack[1])
        elif method == "last":
            expected = np.where(valid[1], stack[1], stack[0])
        elif method == "count":
            expected = valid.sum(0).astype(np.float32)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
                expected = REDUCTIONS[method](stack.astype(np.float64), axis=0)
        np.testing.assert_allclose(ds["red"].values[ti], expected, rtol=1e-6, atol=1e-3)


def test_groupby_a_property_and_a_mosaic_subclass_plugs_in(world):
    fed = []

    class Recording(FirstValid):
        def feed(self, values, valid, rank):
            fed.append(rank)
            super().feed(values, valid, rank)

    ds = read_cube(
        world.collection(),
        ["red"],
        bbox=AOI_BOX,
        crs=UTM43,
        resolution=20,
        groupby="platform",
        mosaic=Recording,
        date_range=BASE_RANGE,
    )
    platforms = {world.items[s]["properties"]["platform"] for s in BASE_IDS}
    assert ds.sizes["time"] == len(platforms) and sorted(fed) == sorted(
        r for p in platforms for r in range(sum(world.items[s]["properties"]["platform"] == p for s in BASE_IDS))
    )
    assert issubclass(Recording, MosaicMethod) and ds.attrs["mosaic"] == "Recording"


def test_bad_groupby_chunks_and_resampling_are_named(world):
    c = world.collection()
    with pytest.raises(GroupbyError, match="no_such_property"):
        read_cube(c, ["red"], bbox=AOI_BOX, crs=UTM43, resolution=10, groupby="no_such_property")
    with pytest.raises(CubeChunksError, match="band"):
        read_cube(c, ["red"], bbox=AOI_BOX, crs=UTM43, resolution=10, chunks={"band": 1})
    with pytest.raises(InvalidReadArgumentError, match="lanczos"):
        read_cube(c, ["red"], bbox=AOI_BOX, crs=UTM43, resolution=10, resampling="lanczos")
    with pytest.raises(CubeGridError, match="area"):
        read_cube(c, ["red"], crs=UTM43, resolution=10)


def test_geometries_mask_the_cube_and_get_xarray_takes_the_grid_form(world):
    from rasteret_pipelines import Rasteret

    r = Rasteret.load_collection("world", world.workspace)
    aoi = AOIS[1]
    ds = r.get_xarray(
        geometries=[aoi],
        bands=["red"],
        bbox=AOI_BOX,
        crs=UTM43,
        resolution=10,
        date_range=(BASE_RANGE[0], BASE_RANGE[0][:8] + "06"),
    )
    grid = grid_of(ds)
    from rasterio.features import geometry_mask

    inside = ~geometry_mask(
        [rasterio.warp.transform_geom("EPSG:4326", UTM43, shapely.geometry.mapping(aoi))],
        (grid.height, grid.width),
        Affine(*grid.transform),
    )
    expected = np.where(inside, warped(world.path(BASE_IDS[0], "red"), grid, "nearest"), np.nan)
    np.testing.assert_array_equal(ds["red"].values[0], expected)
    assert 0 < inside.sum() < inside.size


# -- lazy reads ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    import distributed  # the test extra's (a declared dependency: missing, this fails)

    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, memory_limit="400MiB", dashboard_address=None
        ) as lc,
        distributed.Client(lc) as client,
    ):
        yield client


def test_lazy_cube_on_a_cluster_equals_the_eager_read_without_refetching_tiles(world, cluster):
    """Chunks of 1024 px (the base files' tile size) on the scenes' own grid: the block edges
    are moved onto the tile lattice, so across all tasks every tile is fetched once, no GET
    reads a header, and each task of the graph pickles in a few hundred bytes."""
    area = tuple(np.round(shapely.box(*AOI_BOX).buffer(0.03, join_style="mitre").bounds, 4))
    kwargs = dict(bbox=area, crs=UTM43, resolution=10, groupby="month", mosaic="median", date_range=BASE_RANGE)
    eager = read_cube(world.collection(), ["red", "nir"], **kwargs)
    lazy = read_cube(world.collection(), ["red", "nir"], chunks={"time": 1, "y": 1024, "x": 1024}, **kwargs)
    data = lazy["red"].data
    assert type(data).__module__.startswith("dask") and data.npartitions >= 8
    assert data.chunks[1][0] < 1024 or data.chunks[2][0] < 1024  # a first block shortened to the lattice
    graph = dict(lazy["red"].data.__dask_graph__())
    plans = [k for k in graph if isinstance(k, str) and k.startswith("rasteret-cube-plan")]
    assert len(plans) == 1
    for key, task in graph.items():
        if key not in plans:
            assert len(pickle.dumps(task)) < 600, key
    world.cogs.reset_log()
    got = lazy.compute()
    for band in ("red", "nir"):
        np.testing.assert_array_equal(got[band].values, eager[band].values)
    gets = [r for r in world.cogs.requests if r.method == "GET"]
    assert len(gets) == len(world.cogs.requests) > 0
    by_path: dict = {}
    for r in gets:
        by_path.setdefault(r.path, []).append(r.range)
    for path, ranges in by_path.items():
        ranges.sort()
        assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:])), path  # no byte fetched twice
        _, header_size, _ = _tile_layout(world.root / path.lstrip("/"))
        assert ranges[0][0] >= header_size > 0, path  # no GET reads a header
    assert sum(e - s + 1 for rs in by_path.values() for s, e in rs) <= eager.attrs["bytes_read"]


class _Box:
    """A GeoBox-like grid (crs, affine, shape), as ``like=`` takes."""

    def __init__(self, crs, affine, shape):
        self.crs, self.affine, self.shape = crs, affine, shape


def test_a_cube_larger_than_the_workers_memory_is_reduced_in_bounded_memory(world, cluster):
    """The four base scenes' whole 8192 x 8192 grids, red and nir as float32: 2.1 GB, against
    two workers of 400 MiB. Per-step valid-pixel counts equal rasterio's, and no worker grew
    past its limit."""
    with rasterio.open(world.path(BASE_IDS[0], "red")) as src:
        box = _Box(str(src.crs), src.transform, (src.height, src.width))
    ds = read_cube(
        world.collection(),
        ["red", "nir"],
        like=box,
        groupby="time",
        date_range=BASE_RANGE,
        chunks={"time": 1, "y": 2048, "x": 2048},
    )
    assert ds["red"].nbytes + ds["nir"].nbytes > 2 * 2 * 400 * 2**20
    counts = ds.count(dim=("y", "x")).compute()
    for ti, scene_id in enumerate(ds["scene_id"].values):
        for band in ("red", "nir"):
            with rasterio.open(world.path(scene_id, band)) as src:
                expected = int(np.count_nonzero(src.read(1)))
            assert int(counts[band].values[ti]) == expected > 0
    peaks = cluster.run(_peak_rss_mib)
    assert len(peaks) == 2 and all(p < 400 for p in peaks.values()), peaks


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_an_eager_cube_above_the_memory_limit_is_refused_before_any_request(world):
    from rasteret_pipelines.cog import FetchConfig
    from rasteret_pipelines.errors import MemoryLimitError

    collection = world.collection()
    world.cogs.reset_log()
    with pytest.raises(MemoryLimitError, match="chunks="):
        read_cube(
            collection,
            ["red"],
            bbox=AOI_BOX,
            crs=UTM43,
            resolution=10,
            date_range=BASE_RANGE,
            fetch_config=FetchConfig(max_read_memory=1 << 20),
        )
    assert world.cogs.requests == []


def test_like_takes_another_cubes_grid(world):
    first = read_cube(
        world.collection(),
        ["red"],
        bbox=AOI_BOX,
        crs=UTM43,
        resolution=20,
        date_range=(BASE_RANGE[0], BASE_RANGE[0][:8] + "06"),
    )
    again = read_cube(world.collection(), ["nir"], like=first, resampling="average", date_range=CROSS_RANGE)
    assert grid_of(again) == grid_of(first)
    np.testing.assert_array_equal(again["x"].values, first["x"].values)
    np.testing.assert_array_equal(again["y"].values, first["y"].values)
    assert again.sizes["time"] == 2 and np.isfinite(again["nir"].values).sum() > 10_000
