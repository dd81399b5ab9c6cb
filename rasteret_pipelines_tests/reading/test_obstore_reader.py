"""ObstoreReader: geometry reads through obstore's HTTP and local stores, against rasterio.

Oracles: rasterio reading the same COG files from disk, and the range server's access log.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from obstore.store import LocalStore

from rasteret_pipelines import Rasteret
from rasteret_pipelines.cog.obstore_reader import ObstoreReader
from rasteret_pipelines.errors import CogNotFoundError, FetchError
from rasteret_pipelines.reading import read_geometries
from rasteret_pipelines_tests.reading.conftest import AOIS, BASE_IDS, BASE_RANGE
from rasteret_pipelines_tests.reading.test_read import day, layer, rio_masked, to_crs

BANDS = ("red", "nir")


def assert_equals_rasterio(ds, world):
    for gid, geom in AOIS.items():
        g = to_crs(geom)
        for scene_id in BASE_IDS:
            for band in BANDS:
                expected, transform = rio_masked(world.path(scene_id, band), g)
                got, got_transform = layer(ds, band, gid, day(scene_id, world))
                assert tuple(got_transform)[:6] == pytest.approx(tuple(transform)[:6], abs=1e-6)
                np.testing.assert_array_equal(got, expected)


def test_a_read_through_obstores_http_store_equals_rasterio_with_the_same_requests(world):
    world.cogs.reset_log()
    default = read_geometries(world.collection(), list(AOIS.values()), list(BANDS), date_range=BASE_RANGE)
    expected_ranges = sorted((r.path, r.range) for r in world.cogs.requests if r.method == "GET")
    reader = ObstoreReader.from_url(world.cogs.url, client_options={"allow_http": True})
    world.cogs.reset_log()
    ds = read_geometries(world.collection(), list(AOIS.values()), list(BANDS), date_range=BASE_RANGE, reader=reader)
    got_ranges = sorted((r.path, r.range) for r in world.cogs.requests if r.method == "GET")
    assert got_ranges == expected_ranges  # one GET per planned range, none for headers
    assert ds.attrs["requests"] == len(got_ranges) > 0 and ds.attrs["header_requests"] == 0
    assert_equals_rasterio(ds, world)
    for band in BANDS:
        np.testing.assert_array_equal(ds[band].values, default[band].values)


def test_a_local_store_mirroring_the_server_builds_and_reads_without_the_server(world, tmp_path):
    reader = ObstoreReader({world.cogs.url + "/": LocalStore(prefix=world.root)})
    world.cogs.reset_log()
    processor = Rasteret(
        tmp_path / "ws",
        custom_name="mirror",
        data_source="sentinel-2-l2a",
        date_range=BASE_RANGE,
        stac_url=world.stac.url,
        reader=reader,
    )
    processor.create_collection(bands=list(BANDS))
    assert processor.last_build.failed == [] and processor.last_build.items == len(BASE_IDS)
    ds = processor.get_xarray(list(AOIS.values()), list(BANDS))
    assert world.cogs.count(method=None) == 0  # headers and tiles all came from the local store
    assert_equals_rasterio(ds, world)


def test_missing_objects_and_unregistered_hrefs_are_typed_errors(world):
    reader = ObstoreReader({world.cogs.url + "/": LocalStore(prefix=world.root)})
    with pytest.raises(CogNotFoundError):
        asyncio.run(reader.get_bytes(world.cogs.url + "/no/such.tif", 0, 10))
    with pytest.raises(FetchError, match="no obstore store is registered"):
        asyncio.run(reader.get_bytes("https://elsewhere.test/B04.tif", 0, 10))
    path = world.path(BASE_IDS[0], "red")
    href = world.cogs.url + "/" + path.relative_to(world.root).as_posix()
    data = path.read_bytes()
    got = asyncio.run(reader.get_byte_ranges(href, [(0, 16), (len(data) - 8, len(data) + 100)]))
    assert [r.data for r in got] == [data[:16], data[-8:]]  # short only where the object ends
    assert all(r.version.size == len(data) and r.version.etag for r in got)
