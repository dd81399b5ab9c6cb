"""The dry run is exact: no request while planning, then the read makes exactly its GETs and bytes."""

from __future__ import annotations

from collections import Counter

import dask
import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely

from rasteret_pipelines import Rasteret
from rasteret_pipelines.errors import CubeChunksError, CubeUserColumnsError, InvalidReadArgumentError
from rasteret_pipelines_demo import demo_data
from rasteret_pipelines_tests.conftest import count_calls
from rasteret_pipelines_tests.reading.conftest import BASE_IDS, BASE_RANGE, CROSS_ID, CROSS_RANGE
from rasteret_pipelines_tests.reading.test_cube import AOI_BOX, UTM43, grid_of, warped
from rasteret_pipelines_tests.reading.test_reader import CountingReader
from rasteret_pipelines_tests.reading.test_zonal import hard_fields


def _served(world):
    """(GETs, bytes sent) in the range server's log."""
    gets = [r for r in world.cogs.requests if str(r.method).upper() == "GET"]
    return len(gets), sum(int(r.bytes_sent or 0) for r in gets)


@pytest.fixture
def processor(world):
    return Rasteret.load_collection("world", world.workspace)


def _dry_run(world, processor, read, **kwargs):
    world.cogs.reset_log()
    world.stac.reset_log()
    plan = processor.explain(read, **kwargs)
    assert list(world.cogs.requests) == [] and world.stac.count() == 0, "the dry run made a request"
    return plan


def test_get_xarray_makes_exactly_the_planned_gets_and_bytes(world, processor):
    aois = list(demo_data.QUICKSTART_AOIS.values())
    kwargs = dict(geometries=aois, bands=["red", "nir"], date_range=CROSS_RANGE, cloud_mask=True)
    plan = _dry_run(world, processor, "get_xarray", **kwargs)
    table = plan.to_pandas()
    assert len(table) == plan.scenes * 3  # red, nir and the cloud mask's scl, per scene
    assert set(table["band"]) == {"red", "nir", "scl"}
    assert plan.windows == len(aois) * plan.scenes * 3 and plan.tiles >= plan.gets > 0
    assert plan.decoded_bytes > plan.bytes > 0 and plan.peak_bytes > 0
    ds = processor.get_xarray(**kwargs)
    assert _served(world) == (plan.gets, plan.bytes)
    assert (ds.attrs["requests"], ds.attrs["bytes_read"], ds.attrs["header_requests"]) == (plan.gets, plan.bytes, 0)
    html = plan._repr_html_()
    assert "GETs" in html and "no request made" in html


def test_zonal_stats_and_sample_points_make_exactly_the_planned_gets_and_bytes(world, processor):
    fields = hard_fields()
    kwargs = dict(fields=fields, index="ndvi", stats=["mean", "p90"], date_range=BASE_RANGE, cloud_mask=True)
    plan = _dry_run(world, processor, "zonal_stats", **kwargs)
    assert plan.scenes == len(BASE_IDS)
    table = processor.zonal_stats(**kwargs)
    assert _served(world) == (plan.gets, plan.bytes)
    assert int(table.schema.metadata[b"requests"]) == plan.gets
    assert int(table.schema.metadata[b"bytes_read"]) == plan.bytes

    points = gpd.GeoDataFrame(
        {"id": ["a", "b", "c"]},
        crs="EPSG:4326",
        geometry=[shapely.Point(77.555, 13.02), shapely.Point(77.57, 13.05), shapely.Point(2.35, 48.8)],
    )
    plan = _dry_run(world, processor, "sample_points", points=points, bands=["red"], date_range=BASE_RANGE)
    assert plan.to_pandas()["band"].tolist() == ["red"] * len(BASE_IDS)
    table = processor.sample_points(points, ["red"], date_range=BASE_RANGE)
    assert _served(world) == (plan.gets, plan.bytes)
    assert sorted(set(table.column("id").to_pylist())) == ["a", "b"]
    assert np.isfinite(np.array(table.column("red").to_pylist(), float)).all()


@pytest.fixture
def planning_calls(monkeypatch) -> Counter:
    """How often the reads' planning functions run (each wrapped, still doing its work)."""
    from rasteret_pipelines.reading import read as read_module
    from rasteret_pipelines.reading import zonal

    return count_calls(monkeypatch, ((read_module, "plan_read"), (zonal, "plan_fields_read"), (zonal, "load_fields")))


def test_a_read_given_its_dry_run_plans_nothing_again_and_fetches_exactly_that_plan(world, processor, planning_calls):
    """``planned=``: the read runs the plan its dry run made (the planning functions run once,
    in the dry run), and makes exactly the GETs and bytes that plan predicted."""
    from rasteret_pipelines.reading import read_geometries, sample_points, zonal_stats
    from rasteret_pipelines.reading.explain import explain

    collection = processor.collection
    aois = list(demo_data.QUICKSTART_AOIS.values())
    args = (collection, aois, ["red", "nir"])
    kwargs = dict(date_range=CROSS_RANGE, cloud_mask=True, values="reflectance")
    world.cogs.reset_log()
    plan = explain("get_xarray", *args, **kwargs)
    assert planning_calls == {"plan_read": 1} and list(world.cogs.requests) == []
    ds = read_geometries(*args, **kwargs, planned=plan)
    assert planning_calls == {"plan_read": 1}, "the read planned again"
    assert _served(world) == (plan.gets, plan.bytes)
    assert (ds.attrs["requests"], ds.attrs["bytes_read"]) == (plan.gets, plan.bytes)
    world.cogs.reset_log()
    again = read_geometries(*args, **kwargs)  # planned here: the same pixels from the same GETs
    assert planning_calls == {"plan_read": 2} and _served(world) == (plan.gets, plan.bytes)
    assert again.identical(ds)

    planning_calls.clear()
    fields = hard_fields()
    kwargs = dict(index="ndvi", date_range=BASE_RANGE, cloud_mask=True)
    plan = explain("zonal_stats", collection, fields, stats=["mean"], **kwargs)
    assert planning_calls == {"plan_fields_read": 1, "load_fields": 1}
    world.cogs.reset_log()
    # stats, reader and output are the read's own; equal fields (another frame) are the same input
    table = zonal_stats(collection, fields.copy(), stats=["mean", "p90"], **kwargs, planned=plan)
    assert planning_calls == {"plan_fields_read": 1, "load_fields": 1}, "the read planned again"
    assert _served(world) == (plan.gets, plan.bytes)
    assert table.equals(zonal_stats(collection, fields, stats=["mean", "p90"], **kwargs))
    assert planning_calls == {"plan_fields_read": 2, "load_fields": 2}
    # the high-level API passes planned= through to the read
    plan = processor.explain("zonal_stats", fields=fields, **kwargs)
    world.cogs.reset_log()
    assert processor.zonal_stats(fields, **kwargs, planned=plan).num_rows > 0
    assert planning_calls == {"plan_fields_read": 3, "load_fields": 3}
    assert _served(world) == (plan.gets, plan.bytes)

    planning_calls.clear()
    points = gpd.GeoDataFrame(
        {"id": ["a", "b"]}, crs="EPSG:4326", geometry=[shapely.Point(77.555, 13.02), shapely.Point(77.57, 13.05)]
    )
    plan = explain("sample_points", collection, points, bands=["red"], date_range=BASE_RANGE)
    world.cogs.reset_log()
    table = sample_points(collection, points, bands=["red"], date_range=BASE_RANGE, planned=plan)
    assert planning_calls == {"plan_fields_read": 1, "load_fields": 1}
    assert _served(world) == (plan.gets, plan.bytes) and table.num_rows > 0


def test_a_plan_is_refused_by_a_read_it_was_not_made_for(world, processor, planning_calls):
    """A ``planned=`` that is not this read's dry run is refused by name, before any request."""
    import pickle

    from rasteret_pipelines.collections import load_collection
    from rasteret_pipelines.reading import read_geometries, sample_points, zonal_stats
    from rasteret_pipelines.reading.explain import ReadPlan, explain

    collection = processor.collection
    aois = list(demo_data.QUICKSTART_AOIS.values())
    plan = explain("get_xarray", collection, aois, ["red"], date_range=CROSS_RANGE)
    fields = hard_fields()
    stats_plan = explain("zonal_stats", collection, fields, index="ndvi", date_range=BASE_RANGE)
    world.cogs.reset_log()
    with pytest.raises(InvalidReadArgumentError, match="another date_range="):
        read_geometries(collection, aois, ["red"], date_range=BASE_RANGE, planned=plan)
    with pytest.raises(InvalidReadArgumentError, match="another bands="):
        read_geometries(collection, aois, ["red", "nir"], date_range=CROSS_RANGE, planned=plan)
    with pytest.raises(InvalidReadArgumentError, match="another geometries="):
        read_geometries(collection, aois[:1], ["red"], date_range=CROSS_RANGE, planned=plan)
    with pytest.raises(InvalidReadArgumentError, match="another collection"):
        other = load_collection(collection.name, world.workspace)
        read_geometries(other, aois, ["red"], date_range=CROSS_RANGE, planned=plan)
    with pytest.raises(InvalidReadArgumentError, match="plan of 'get_xarray', not of 'zonal_stats'"):
        zonal_stats(collection, fields, index="ndvi", date_range=BASE_RANGE, planned=plan)
    with pytest.raises(InvalidReadArgumentError, match="plan of 'zonal_stats', not of 'sample_points'"):
        sample_points(collection, fields, index="ndvi", date_range=BASE_RANGE, planned=stats_plan)
    with pytest.raises(InvalidReadArgumentError, match="another cloud_mask="):
        zonal_stats(collection, fields, index="ndvi", date_range=BASE_RANGE, cloud_mask=True, planned=stats_plan)
    with pytest.raises(InvalidReadArgumentError, match="another fields="):
        zonal_stats(collection, fields.iloc[:2], index="ndvi", date_range=BASE_RANGE, planned=stats_plan)
    # a plan's numbers travel (pickled, added up), its planned read does not
    for numbers_only in (pickle.loads(pickle.dumps(stats_plan)), ReadPlan.sequence("total", [stats_plan])):
        assert numbers_only.summary() == {**stats_plan.summary(), "read": numbers_only.read}
        with pytest.raises(InvalidReadArgumentError, match="without its planned read"):
            zonal_stats(collection, fields, index="ndvi", date_range=BASE_RANGE, planned=numbers_only)
    with pytest.raises(InvalidReadArgumentError, match="explain plans zonal_stats itself"):
        explain("zonal_stats", collection, fields, index="ndvi", planned=stats_plan)
    assert list(world.cogs.requests) == [] and planning_calls["plan_read"] == 1


def test_explain_refuses_what_the_read_refuses(world, processor):
    with pytest.raises(InvalidReadArgumentError, match="not 'get_dataframe'"):
        processor.explain("get_dataframe", geometries=[demo_data.QUICKSTART_AOIS[1]], bands=["red"])
    with pytest.raises(InvalidReadArgumentError, match="unexpected keyword argument 'colour'"):
        processor.explain("get_xarray", geometries=[demo_data.QUICKSTART_AOIS[1]], bands=["red"], colour="red")


# -- the data-cube form of get_xarray --------------------------------------------------------------

CUBE_KWARGS = dict(
    bands=["red", "nir"],
    bbox=AOI_BOX,
    crs=UTM43,
    resolution=20,
    resampling="average",
    groupby="month",
    mosaic="median",
    cloud_mask=True,
    date_range=BASE_RANGE,
)
"""A 20 m monthly median cube of 10 m bands (their 2x overview) with the 20 m SCL (full resolution)."""
TWO_ZONES = dict(bands=["red"], bbox=AOI_BOX, crs=UTM43, resolution=10, date_range=CROSS_RANGE)
"""A 10 m cube over a scene of EPSG:32643 (tiles copied) and one of EPSG:32644 (warped)."""


def _served_by_file(world) -> dict[str, tuple[int, int]]:
    """``{path: (GETs, bytes)}`` in the range server's log."""
    out: dict[str, list[int]] = {}
    for r in world.cogs.requests:
        if str(r.method).upper() == "GET":
            got = out.setdefault(r.path.lstrip("/"), [0, 0])
            got[0] += 1
            got[1] += int(r.bytes_sent or 0)
    return {k: tuple(v) for k, v in out.items()}


def _ranges_fetched_twice(world) -> int:
    seen = Counter((r.path, tuple(r.range)) for r in world.cogs.requests if str(r.method).upper() == "GET")
    return sum(1 for n in seen.values() if n > 1)


def test_an_eager_cube_makes_exactly_the_planned_gets_and_bytes_per_file(world, processor):
    """Per (scene, band): the level GDAL's rule reads (rasterio's 2x overview for the 10 m bands
    on a 20 m grid, the SCL's full resolution) and the GETs and bytes the server then sends for
    that file."""
    plan = _dry_run(world, processor, "get_xarray", **CUBE_KWARGS)
    table = plan.to_pandas()
    assert len(table) == len(BASE_IDS) * 3 and plan.scenes == len(BASE_IDS) and plan.tasks == 0
    with rasterio.open(world.path(BASE_IDS[0], "red")) as src:
        two_x = src.overviews(1).index(2) + 1  # header level k is rasterio's overview_level k - 1
    assert set(table.loc[table["band"] != "scl", "level"]) == {two_x}
    assert set(table.loc[table["band"] == "scl", "level"]) == {0}
    ds = processor.get_xarray(**CUBE_KWARGS)
    assert _served(world) == (plan.gets, plan.bytes) and plan.gets > 0
    assert (ds.attrs["requests"], ds.attrs["bytes_read"], ds.attrs["header_requests"]) == (plan.gets, plan.bytes, 0)
    by_file = _served_by_file(world)
    for row in plan.rows:
        path = world.path(row["scene"], row["band"]).relative_to(world.root).as_posix()
        assert by_file.pop(path) == (row["gets"], row["bytes"]), row
    assert by_file == {}
    assert 0 < plan.peak_bytes and plan.decoded_bytes > plan.bytes


def test_a_cube_over_two_utm_zones_makes_exactly_the_planned_gets(world, processor):
    plan = _dry_run(world, processor, "get_xarray", **TWO_ZONES)
    assert CROSS_ID in set(plan.to_pandas()["scene"])
    processor.get_xarray(**TWO_ZONES)
    assert _served(world) == (plan.gets, plan.bytes) and plan.gets > 0


def _lazy_read(world, processor, chunks, kwargs):
    """explain, then compute the dask-backed cube on the synchronous scheduler."""
    plan = _dry_run(world, processor, "get_xarray", chunks=chunks, **kwargs)
    lazy = processor.get_xarray(chunks=chunks, **kwargs)
    assert world.cogs.requests == [], "building the graph made a request"
    assert plan.tasks == lazy[kwargs["bands"][0]].data.npartitions
    with dask.config.set(scheduler="synchronous"):
        lazy.compute()
    return plan


def test_chunks_that_split_tiles_make_exactly_the_planned_gets_and_say_why(world, processor):
    """300-pixel blocks on a 10 m grid of 1024-pixel tiles: neighbouring blocks need the same
    tiles, and each block's task fetches them (the server sees the same ranges twice). The plan
    counts those GETs exactly and says how many more than the eager read they are."""
    eager = _dry_run(world, processor, "get_xarray", **TWO_ZONES)
    plan = _lazy_read(world, processor, {"time": 1, "y": 300, "x": 300}, TWO_ZONES)
    assert _served(world) == (plan.gets, plan.bytes)
    assert _ranges_fetched_twice(world) > 0 and plan.gets > eager.gets and plan.bytes > eager.bytes
    notes = " ".join(plan.notes)
    assert "fetched by each" in notes and f"eager read would make {eager.gets} GETs" in notes
    assert "fetched by each" in plan._repr_html_()


def test_chunks_on_the_tile_lattice_make_the_eager_reads_gets(world, processor):
    """1024-pixel blocks (the files' tile size) on the scenes' own grid: no tile is shared, so
    the tasks together fetch what the eager read fetches, each range once."""
    kwargs = dict(TWO_ZONES, date_range=BASE_RANGE)
    eager = _dry_run(world, processor, "get_xarray", **kwargs)
    plan = _lazy_read(world, processor, {"time": 1, "y": 1024, "x": 1024}, kwargs)
    assert _served(world) == (plan.gets, plan.bytes) == (eager.gets, eager.bytes)
    assert _ranges_fetched_twice(world) == 0 and plan.tasks >= len(BASE_IDS)
    assert any("no tile is needed by more than one block" in n for n in plan.notes)


def test_explain_refuses_what_the_cube_refuses(world, processor):
    with pytest.raises(CubeChunksError, match="band"):
        processor.explain("get_xarray", chunks={"band": 1}, **TWO_ZONES)
    with pytest.raises(InvalidReadArgumentError, match="unexpected keyword argument 'colour'"):
        processor.explain("get_xarray", colour="red", **TWO_ZONES)
    with pytest.raises(CubeUserColumnsError, match="keep=\\['crop'\\]"):
        processor.explain("get_xarray", keep=["crop"], **TWO_ZONES)


def test_a_cube_refuses_user_columns_by_name_and_says_where_they_go(world, processor):
    """A cube has no geometry dimension (odc-stac's and stackstac's neither): ``id_column`` and
    ``keep`` are refused, naming the argument, before any request; the per-geometry read
    carries them."""
    fields = gpd.GeoDataFrame(
        {"plot_id": ["north", "south"], "crop": ["rice", "millet"]},
        geometry=list(demo_data.QUICKSTART_AOIS.values()),
        crs="EPSG:4326",
    )
    world.cogs.reset_log()
    with pytest.raises(CubeUserColumnsError, match="id_column='plot_id'.*no geometry dimension.*zonal_stats"):
        processor.get_xarray(fields, ["red"], bbox=AOI_BOX, crs=UTM43, resolution=10, id_column="plot_id")
    with pytest.raises(CubeUserColumnsError, match="keep=\\['crop'\\]"):
        processor.get_xarray(fields, ["red"], bbox=AOI_BOX, crs=UTM43, resolution=10, keep=["crop"])
    with pytest.raises(CubeUserColumnsError, match="id_column='plot_id'"):
        processor.get_xarray(bands=["red"], bbox=AOI_BOX, crs=UTM43, resolution=10, id_column="plot_id")
    assert world.cogs.requests == []
    ds = processor.get_xarray(fields, ["red"], date_range=CROSS_RANGE, id_column="plot_id", keep=["crop"])
    assert ds["geometry"].values.tolist() == ["north", "south"] and ds["crop"].values.tolist() == ["rice", "millet"]


# -- planned= on a data cube -----------------------------------------------------------------------

ORACLE_CUBE = dict(TWO_ZONES, bands=["red", "nir"], groupby="time")
""":data:`TWO_ZONES` with both bands, one step per scene: each step equals rasterio's warp (nearest)."""


@pytest.fixture
def cube_planning(monkeypatch) -> Counter:
    """How often the cube's planner runs (wrapped, still doing its work)."""
    from rasteret_pipelines.reading import cube

    return count_calls(monkeypatch, ((cube, "plan_cube"),))


def test_a_cube_given_its_dry_run_plans_nothing_again_and_fetches_exactly_that_plan(world, processor, cube_planning):
    """``read_cube(..., planned=plan)`` and ``get_xarray(<cube>, planned=plan)`` run the plan
    the dry run made (the planner runs once, in the dry run), make exactly its GETs and bytes,
    and give rasterio's pixels, as the same read planned again does."""
    from rasteret_pipelines.cog import HttpReader
    from rasteret_pipelines.reading.cube import read_cube
    from rasteret_pipelines.reading.options import CubeOptions

    collection = processor.collection
    plan = _dry_run(world, processor, "get_xarray", **ORACLE_CUBE)
    assert cube_planning == {"plan_cube": 1} and plan.gets > 0
    ds = read_cube(collection, **ORACLE_CUBE, planned=plan)
    assert cube_planning == {"plan_cube": 1}, "the read planned again"
    assert _served(world) == (plan.gets, plan.bytes)
    assert (ds.attrs["requests"], ds.attrs["bytes_read"], ds.attrs["header_requests"]) == (plan.gets, plan.bytes, 0)
    grid = grid_of(ds)
    assert ds.sizes["time"] == 2
    for ti, scene_id in enumerate(ds["scene_id"].values):
        for band in ORACLE_CUBE["bands"]:
            np.testing.assert_array_equal(ds[band].values[ti], warped(world.path(scene_id, band), grid, "nearest"))
    world.cogs.reset_log()
    again = read_cube(collection, **ORACLE_CUBE)  # planned here: the same pixels from the same GETs
    assert cube_planning == {"plan_cube": 2} and _served(world) == (plan.gets, plan.bytes)
    assert again.identical(ds)

    # the high-level API passes planned= through; the same values as options are the same arguments;
    # a plan runs again; the reader is the read's own (the dry run was given none)
    world.cogs.reset_log()
    options = CubeOptions(crs=UTM43, resolution=10, groupby="time")
    area = {k: ORACLE_CUBE[k] for k in ("bands", "bbox", "date_range")}
    assert processor.get_xarray(**area, options=options, planned=plan).identical(ds)
    assert _served(world) == (plan.gets, plan.bytes)
    counting = CountingReader(HttpReader())
    world.cogs.reset_log()
    assert read_cube(collection, **ORACLE_CUBE, reader=counting, planned=plan).identical(ds)
    assert len(counting.ranges) == plan.gets and _served(world) == (plan.gets, plan.bytes)
    assert cube_planning == {"plan_cube": 2}


def test_a_lazy_cube_given_its_dry_run_builds_its_graph_from_that_plan(world, processor, cube_planning):
    """``chunks=`` with ``planned=``: the graph is built from the kept plan (no planning, no
    request, one copy of the plan in the graph and small tasks), one compute makes exactly the
    plan's GETs and bytes, and the pixels equal the eager read's."""
    import pickle

    from rasteret_pipelines.reading.cube import read_cube

    # two row blocks per step: tiles split between them, so more GETs than the eager read. Rows
    # only: a warped scene's blocks split along x warp some edge pixels otherwise than the whole
    # grid does (rasterio's approximate transformer follows each block's scanlines)
    chunks = {"time": 1, "y": 512, "x": 512}
    plan = _dry_run(world, processor, "get_xarray", chunks=chunks, **ORACLE_CUBE)
    lazy = processor.get_xarray(chunks=chunks, **ORACLE_CUBE, planned=plan)
    assert cube_planning == {"plan_cube": 1}, "the read planned again"
    assert world.cogs.requests == [], "building the graph made a request"
    graph = dict(lazy["red"].data.__dask_graph__())
    assert plan.tasks == lazy["red"].data.npartitions > 1
    plans = [k for k in graph if isinstance(k, str) and k.startswith("rasteret-cube-plan")]
    assert len(plans) == 1
    assert all(len(pickle.dumps(task)) < 600 for key, task in graph.items() if key not in plans)
    with dask.config.set(scheduler="synchronous"):
        got = lazy.compute()
    assert _served(world) == (plan.gets, plan.bytes)
    eager = read_cube(processor.collection, **ORACLE_CUBE)
    assert eager.attrs["requests"] < plan.gets  # the lazy plan's numbers, not the eager read's
    for band in ORACLE_CUBE["bands"]:
        np.testing.assert_array_equal(got[band].values, eager[band].values)


def test_a_cube_plan_is_refused_by_a_read_it_was_not_made_for(world, processor, cube_planning):
    """A ``planned=`` that is not this cube's dry run (another read, collection or value of an
    argument, options and ``chunks`` included) is refused by name, before any request."""
    import pickle

    from rasteret_pipelines.collections import load_collection
    from rasteret_pipelines.reading import read_geometries, zonal_stats
    from rasteret_pipelines.reading.cube import read_cube
    from rasteret_pipelines.reading.explain import explain

    collection = processor.collection
    plan = explain("get_xarray", collection, **TWO_ZONES)
    aois = list(demo_data.QUICKSTART_AOIS.values())
    windows_plan = explain("get_xarray", collection, aois, ["red"], date_range=CROSS_RANGE)
    world.cogs.reset_log()
    moved = tuple(v + 0.01 for v in AOI_BOX)
    for changed, name in [
        ({"resolution": 20}, "resolution"),
        ({"bbox": moved}, "bbox"),
        ({"bands": ["red", "nir"]}, "bands"),
        ({"date_range": BASE_RANGE}, "date_range"),
        ({"chunks": {"time": 1, "y": 300, "x": 300}}, "chunks"),
        ({"resampling": "bilinear"}, "resampling"),
        ({"geometries": aois}, "geometries"),
    ]:
        with pytest.raises(InvalidReadArgumentError, match=f"another {name}="):
            read_cube(collection, **{**TWO_ZONES, **changed}, planned=plan)
    with pytest.raises(InvalidReadArgumentError, match="another resolution="):
        processor.get_xarray(**{**TWO_ZONES, "resolution": 20}, planned=plan)
    with pytest.raises(InvalidReadArgumentError, match="another collection"):
        read_cube(load_collection(collection.name, world.workspace), **TWO_ZONES, planned=plan)
    with pytest.raises(InvalidReadArgumentError, match="plan of 'get_xarray', not of 'get_xarray \\(data cube\\)'"):
        read_cube(collection, **TWO_ZONES, planned=windows_plan)
    with pytest.raises(InvalidReadArgumentError, match="plan of 'get_xarray \\(data cube\\)', not of 'get_xarray'"):
        read_geometries(collection, aois, ["red"], date_range=CROSS_RANGE, planned=plan)
    with pytest.raises(InvalidReadArgumentError, match="not of 'zonal_stats'"):
        zonal_stats(collection, hard_fields(), index="ndvi", date_range=BASE_RANGE, planned=plan)
    with pytest.raises(InvalidReadArgumentError, match="without its planned read"):
        read_cube(collection, **TWO_ZONES, planned=pickle.loads(pickle.dumps(plan)))
    with pytest.raises(InvalidReadArgumentError, match="explain plans read_cube itself"):
        explain("get_xarray", collection, **TWO_ZONES, planned=plan)
    assert world.cogs.requests == [] and cube_planning == {"plan_cube": 1}
