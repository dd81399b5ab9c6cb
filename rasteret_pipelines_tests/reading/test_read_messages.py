"""Messages of reads that cannot be served: a band the items lack, a place or time no scene covers."""

from __future__ import annotations

import logging

import pytest
import shapely
import shapely.geometry

from rasteret_pipelines.collections import build_collection, load_collection
from rasteret_pipelines.errors import MissingAssetError, NoScenesError
from rasteret_pipelines.reading import read_geometries
from rasteret_pipelines_tests.reading.conftest import AOIS, BASE_RANGE

PARIS = shapely.geometry.box(2.33, 48.85, 2.36, 48.87)


@pytest.fixture(scope="module")
def with_blue(world, tmp_path_factory):
    """A collection that indexed ``blue``, which the world's items have no asset for."""
    workspace = tmp_path_factory.mktemp("with_blue")
    report = build_collection(
        "sentinel-2-l2a",
        "with_blue",
        workspace,
        date_range=BASE_RANGE,
        bands=["red", "nir", "blue"],
        stac_url=world.stac.url,
        progress=False,
    )
    assert report.failed == [] and {m.band for m in report.missing} == {"blue"}
    return load_collection("with_blue", workspace)


def test_a_band_the_items_lack_is_missing_not_a_failure_to_retry(world, with_blue, caplog):
    world.cogs.reset_log()
    with caplog.at_level(logging.WARNING, logger="rasteret_pipelines"):
        with pytest.raises(MissingAssetError) as info:
            read_geometries(with_blue, list(AOIS.values()), ["B02"])
    exc = info.value
    assert (exc.band, exc.asset_key, exc.collection) == ("B02", "blue", "with_blue")
    assert exc.available == ["nir", "red"]
    text = str(exc)
    assert "'B02'" in text and "'blue'" in text and "'with_blue'" in text and "nir, red" in text
    assert "retry" not in text.replace("nothing a rebuild would retry", "")
    assert world.cogs.requests == [], "refused before any request"
    assert not [r for r in caplog.records if "Rebuild" in r.getMessage()]
    # the bands the items have still read
    ds = read_geometries(with_blue, list(AOIS.values()), ["red"])
    assert ds.sizes["geometry"] == len(AOIS)


def test_no_scene_error_names_both_extents(world):
    collection = world.collection()
    with pytest.raises(NoScenesError) as info:
        read_geometries(collection, [PARIS], ["red"])
    text = str(info.value)
    assert "geometries' bounds (lon/lat, EPSG:4326): [2.3300, 48.8500, 2.3600, 48.8700]" in text, text
    assert "collection extent: bbox [" in text and "EPSG:32643" in text and "months 2024-" in text, text
    assert "outside the collection's extent" in text and "swapped" not in text, text


def test_no_scene_error_suggests_swapped_axes(world):
    swapped = shapely.transform(AOIS[1], lambda xy: xy[:, ::-1])
    with pytest.raises(NoScenesError, match="latitude and longitude given in the wrong order"):
        read_geometries(world.collection(), [swapped], ["red"])


def test_no_scene_error_inside_the_extent_blames_the_dates(world):
    with pytest.raises(NoScenesError, match="overlap the collection's extent, so the date range") as info:
        read_geometries(world.collection(), [AOIS[1]], ["red"], date_range=("2024-04-01", "2024-04-30"))
    assert "between 2024-04-01 and 2024-04-30" in str(info.value)
