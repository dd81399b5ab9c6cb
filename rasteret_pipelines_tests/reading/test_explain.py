"""The dry run is exact: no request while planning, then the read makes exactly its GETs and bytes."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely

from rasteret_pipelines import Rasteret
from rasteret_pipelines.errors import InvalidReadArgumentError
from rasteret_pipelines_demo import demo_data
from rasteret_pipelines_tests.reading.conftest import BASE_IDS, BASE_RANGE, CROSS_RANGE
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


def test_explain_refuses_what_the_read_refuses(world, processor):
    with pytest.raises(InvalidReadArgumentError, match="not 'get_dataframe'"):
        processor.explain("get_dataframe", geometries=[demo_data.QUICKSTART_AOIS[1]], bands=["red"])
    with pytest.raises(InvalidReadArgumentError, match="unexpected keyword argument 'colour'"):
        processor.explain("get_xarray", geometries=[demo_data.QUICKSTART_AOIS[1]], bands=["red"], colour="red")
