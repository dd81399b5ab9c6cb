"""A read takes its options as a ``ReadOptions`` or as today's keywords, alike.

The oracle is the keyword form of the same read (its pixels are checked against rasterio in
``test_read.py``): the options form must give the identical Dataset and the same requests.
"""

from __future__ import annotations

import pytest
import xarray as xr

from rasteret_pipelines import Rasteret
from rasteret_pipelines.cog import FetchConfig
from rasteret_pipelines.errors import InvalidReadArgumentError
from rasteret_pipelines.reading import ReadOptions, read_geometries
from rasteret_pipelines.reading.explain import explain
from rasteret_pipelines_tests.reading.conftest import AOIS, BASE_RANGE, CROSS_RANGE
from rasteret_pipelines_tests.reading.test_zonal import hard_fields

OPTIONS = dict(values="reflectance", cloud_mask=True, all_touched=True, mosaic="last")


def test_read_geometries_with_options_equals_the_keywords(world):
    aois = list(AOIS.values())
    by_keywords = read_geometries(world.collection(), aois, ["red", "nir"], date_range=BASE_RANGE, **OPTIONS)
    by_options = read_geometries(
        world.collection(), aois, ["red", "nir"], date_range=BASE_RANGE, options=ReadOptions(**OPTIONS)
    )
    xr.testing.assert_identical(by_options, by_keywords)
    assert by_options.attrs["cloud_mask"] == 1 and by_options.attrs["all_touched"] == 1
    # a keyword adds to the options
    mixed = read_geometries(
        world.collection(),
        aois,
        ["red", "nir"],
        date_range=BASE_RANGE,
        options=ReadOptions(values="reflectance", cloud_mask=True, mosaic="last"),
        all_touched=True,
    )
    xr.testing.assert_identical(mixed, by_keywords)


@pytest.mark.parametrize(
    "options, keywords, match",
    [
        (None, {"colour": "red"}, "unexpected keyword argument 'colour'"),
        (ReadOptions(values="native"), {"values": "reflectance"}, "values is given twice"),
        ({"values": "native"}, {}, "options must be a ReadOptions, got dict"),
        (ReadOptions(values="raw"), {}, "values must be one of"),
    ],
)
def test_bad_options_are_typed_errors_before_any_request(world, options, keywords, match):
    world.cogs.reset_log()
    with pytest.raises(InvalidReadArgumentError, match=match):
        read_geometries(world.collection(), list(AOIS.values()), ["red"], options=options, **keywords)
    assert list(world.cogs.requests) == []


def test_the_rasteret_reads_take_options(world):
    processor = Rasteret.load_collection("world", world.workspace)
    aois = list(AOIS.values())
    kwargs = dict(geometries=aois, bands=["red"], date_range=CROSS_RANGE)
    options = ReadOptions(values="reflectance", cloud_mask=True)
    xr.testing.assert_identical(
        processor.get_xarray(**kwargs, options=options),
        processor.get_xarray(**kwargs, values="reflectance", cloud_mask=True),
    )
    gdf = processor.get_gdf(aois, ["red"], date_range=CROSS_RANGE, options=options)
    assert gdf.equals(processor.get_gdf(aois, ["red"], date_range=CROSS_RANGE, values="reflectance", cloud_mask=True))
    fields = hard_fields()
    stats = dict(index="ndvi", stats=["mean", "count"], date_range=BASE_RANGE)
    by_options = processor.zonal_stats(fields, **stats, options=ReadOptions(cloud_mask=True, all_touched=True))
    by_keywords = processor.zonal_stats(fields, **stats, cloud_mask=True, all_touched=True)
    assert by_options.to_pylist() == by_keywords.to_pylist()
    with pytest.raises(InvalidReadArgumentError, match="sample_points takes no all_touched"):
        processor.sample_points(fields.representative_point(), ["red"], options=ReadOptions(all_touched=True))
    plan = processor.explain("get_xarray", **kwargs, options=options)
    assert plan.to_pandas().equals(
        processor.explain("get_xarray", **kwargs, values="reflectance", cloud_mask=True).to_pandas()
    )


def test_explain_takes_options(world):
    collection = world.collection()
    aois = list(AOIS.values())
    config = FetchConfig(coalesce_gap=0)
    by_options = explain(
        "get_xarray", collection, aois, ["red"], options=ReadOptions(cloud_mask=True, fetch_config=config)
    )
    by_keywords = explain("get_xarray", collection, aois, ["red"], cloud_mask=True, fetch_config=config)
    assert by_options.to_pandas().equals(by_keywords.to_pandas())
    assert set(by_options.to_pandas()["band"]) == {"red", "scl"}  # the cloud mask's band is planned


def test_options_keywords_are_only_what_differs_from_the_defaults():
    assert ReadOptions().keywords() == {}
    assert ReadOptions(values="native", mosaic="first").keywords() == {"values": "native"}
