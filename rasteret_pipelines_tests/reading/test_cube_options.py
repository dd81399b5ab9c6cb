"""A cube takes its options as a ``CubeOptions`` or as today's keywords, alike.

The oracle is the keyword form of the same cube (its pixels are checked against rasterio in
``test_cube.py``, its requests against its dry run in ``test_explain.py``): the options form
must give the identical Dataset, the same dry run, and the same typed errors before any request.
"""

from __future__ import annotations

import pytest
import xarray as xr

from rasteret_pipelines import Rasteret
from rasteret_pipelines.errors import GroupbyError, InvalidReadArgumentError
from rasteret_pipelines.reading import CubeOptions, ReadOptions, read_cube
from rasteret_pipelines.reading.explain import explain
from rasteret_pipelines_tests.reading.conftest import AOIS, BASE_RANGE
from rasteret_pipelines_tests.reading.test_cube import AOI_BOX, UTM43
from rasteret_pipelines_tests.reading.test_zonal import hard_fields

OPTIONS = dict(crs=UTM43, resolution=20, resampling="average", groupby="month", mosaic="median", cloud_mask=True)
"""A 20 m monthly median cube of 10 m bands with the cloud mask: most options away from their defaults."""
CHUNKS = {"time": 1, "y": 64, "x": 64}


@pytest.fixture
def processor(world):
    return Rasteret.load_collection("world", world.workspace)


def test_read_cube_with_options_equals_the_keywords(world):
    c = world.collection()
    by_keywords = read_cube(c, ["red", "nir"], bbox=AOI_BOX, date_range=BASE_RANGE, **OPTIONS)
    by_options = read_cube(c, ["red", "nir"], bbox=AOI_BOX, date_range=BASE_RANGE, options=CubeOptions(**OPTIONS))
    xr.testing.assert_identical(by_options, by_keywords)
    assert by_options.attrs["mosaic"] == "median" and by_options.attrs["cloud_mask"] == 1
    # a keyword adds to the options
    mixed = read_cube(
        c,
        ["red", "nir"],
        bbox=AOI_BOX,
        date_range=BASE_RANGE,
        options=CubeOptions(crs=UTM43, resolution=20, groupby="month"),
        resampling="average",
        mosaic="median",
        cloud_mask=True,
    )
    xr.testing.assert_identical(mixed, by_keywords)
    # a per-geometry read's options are a cube's options too
    read_options = ReadOptions(cloud_mask=True, crs=UTM43, resolution=20, mosaic="median")
    by_read_options = read_cube(
        c,
        ["red", "nir"],
        bbox=AOI_BOX,
        date_range=BASE_RANGE,
        options=read_options,
        resampling="average",
        groupby="month",
    )
    xr.testing.assert_identical(by_read_options, by_keywords)


def test_get_xarray_and_explain_take_cube_options(world, processor):
    area = dict(bands=["red", "nir"], bbox=AOI_BOX, date_range=BASE_RANGE)
    options = CubeOptions(**OPTIONS)
    xr.testing.assert_identical(processor.get_xarray(**area, options=options), processor.get_xarray(**area, **OPTIONS))
    lazy = processor.get_xarray(**area, options=CubeOptions(**OPTIONS, chunks=CHUNKS))
    assert lazy["red"].data.chunksize[1:] == (64, 64)
    by_keywords = processor.explain("get_xarray", **area, **OPTIONS, chunks=CHUNKS)
    by_options = processor.explain("get_xarray", **area, options=CubeOptions(**OPTIONS, chunks=CHUNKS))
    assert by_options.to_pandas().equals(by_keywords.to_pandas())
    assert by_options.tasks == by_keywords.tasks == lazy["red"].data.npartitions > 1
    direct = explain("get_xarray", world.collection(), options=CubeOptions(**OPTIONS, chunks=CHUNKS), **area)
    assert direct.to_pandas().equals(by_keywords.to_pandas()) and direct.tasks == by_keywords.tasks


@pytest.mark.parametrize(
    "options, keywords, error, match",
    [
        (None, {"colour": "red"}, InvalidReadArgumentError, "got an unexpected keyword argument 'colour'"),
        (CubeOptions(groupby="month"), {"groupby": "time"}, InvalidReadArgumentError, "groupby is given twice"),
        ({"groupby": "month"}, {}, InvalidReadArgumentError, "options must be a (Cube|Read)Options, got dict"),
        (None, {"values": "raw"}, InvalidReadArgumentError, "values must be one of"),
        (None, {"resampling": "lanczos"}, InvalidReadArgumentError, "resampling must be one of .*'lanczos'"),
        (None, {"mosaic": "loudest"}, InvalidReadArgumentError, "mosaic must be one of .*'loudest'"),
        (None, {"groupby": 3}, GroupbyError, "groupby must be one of .* got 3"),
    ],
)
def test_bad_cube_options_are_typed_errors_before_any_request(world, processor, options, keywords, error, match):
    """The read and its dry run (through ``Rasteret``, which spells ``options`` out) refuse alike."""
    world.cogs.reset_log()
    with pytest.raises(error, match=match):
        read_cube(world.collection(), ["red"], bbox=AOI_BOX, options=options, **keywords)
    with pytest.raises(error, match=match):
        processor.explain("get_xarray", bands=["red"], bbox=AOI_BOX, options=options, **keywords)
    with pytest.raises(error, match=match):
        explain("get_xarray", world.collection(), bands=["red"], bbox=AOI_BOX, options=options, **keywords)
    assert list(world.cogs.requests) == []


def test_unknown_cube_keywords_name_the_read(world):
    with pytest.raises(InvalidReadArgumentError, match="^read_cube got an unexpected keyword argument 'colour'"):
        read_cube(world.collection(), ["red"], bbox=AOI_BOX, colour="red")
    with pytest.raises(InvalidReadArgumentError, match="^get_xarray got an unexpected keyword argument 'colour'"):
        explain("get_xarray", world.collection(), bands=["red"], bbox=AOI_BOX, colour="red")
    with pytest.raises(InvalidReadArgumentError, match="^read_cube: options must be a CubeOptions, got dict"):
        read_cube(world.collection(), ["red"], bbox=AOI_BOX, options={"groupby": "month"})


def test_bad_cube_options_are_refused_when_made():
    with pytest.raises(InvalidReadArgumentError, match="resampling must be one of .*'lanczos'"):
        CubeOptions(resampling="lanczos")
    with pytest.raises(GroupbyError, match="groupby must be one of"):
        CubeOptions(groupby="")


def test_reads_without_a_cube_refuse_cube_options(world, processor):
    aois = list(AOIS.values())
    with pytest.raises(
        InvalidReadArgumentError, match="read_geometries: options must be a ReadOptions, got CubeOptions"
    ):
        processor.get_xarray(aois, ["red"], date_range=BASE_RANGE, options=CubeOptions(groupby="month"))
    with pytest.raises(InvalidReadArgumentError, match="zonal_stats: options must be a ReadOptions, got CubeOptions"):
        processor.zonal_stats(hard_fields(), index="ndvi", options=CubeOptions(cloud_mask=True))
    with pytest.raises(InvalidReadArgumentError, match="unexpected keyword argument 'groupby'"):
        processor.explain("get_xarray", aois, ["red"], options=CubeOptions(groupby="month"))


def test_cube_options_keywords_are_only_what_differs_from_the_cubes_defaults():
    assert CubeOptions().keywords() == {}
    assert CubeOptions(resampling="nearest", groupby="time").keywords() == {"groupby": "time"}
    assert CubeOptions.resolve(ReadOptions(values="native"), {}) == CubeOptions(values="native")
