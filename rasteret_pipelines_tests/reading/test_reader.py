"""``read_geometries(..., reader=)`` and ``Rasteret(reader=)``: the engine's byte seam through the API.

Oracles: rasterio reading the same COG files from disk, and the range server's access log of
the same read through the default (aiohttp) reader.
"""

from __future__ import annotations

import numpy as np
import pytest

from rasteret_pipelines import Rasteret
from rasteret_pipelines.cog import LocalFileReader, MemoryReader
from rasteret_pipelines.errors import UnsafeHrefError
from rasteret_pipelines.reading import read_geometries
from rasteret_pipelines_tests.reading.conftest import AOIS, BASE_IDS, BASE_RANGE
from rasteret_pipelines_tests.reading.test_read import day, layer, rio_masked, to_crs
from rasteret_pipelines_tests.reading.test_read_limits import _with_local_hrefs, with_edited_hrefs

BANDS = {"red": "red", "nir": "nir"}


class CountingReader:
    """Wraps a reader and logs every range asked of it, as ``(href, start, end)``."""

    def __init__(self, inner):
        self.inner = inner
        self.ranges: list[tuple[str, int, int]] = []

    async def get_bytes(self, href, start, end):
        self.ranges.append((href, start, end))
        return await self.inner.get_bytes(href, start, end)

    async def get_byte_ranges(self, href, ranges):
        self.ranges.extend((href, s, e) for s, e in ranges)
        return await self.inner.get_byte_ranges(href, ranges)


def memory_reader(world) -> MemoryReader:
    """Every world COG's bytes under the href the collection holds for it (no server involved)."""
    return MemoryReader(
        {
            world.cogs.url_for(p.relative_to(world.root).as_posix()): p.read_bytes()
            for scene in BASE_IDS
            for p in world.paths[scene].values()
        }
    )


@pytest.fixture(scope="module")
def mem(world, tmp_path_factory):
    """A collection of the base scenes whose headers were read through a MemoryReader, by
    ``Rasteret(reader=...).create_collection`` (the STAC search is the world's; no COG byte
    comes from the range server)."""
    counting = CountingReader(memory_reader(world))
    world.cogs.reset_log()
    processor = Rasteret(
        tmp_path_factory.mktemp("mem_ws"),
        custom_name="mem",
        data_source="sentinel-2-l2a",
        date_range=BASE_RANGE,
        stac_url=world.stac.url,
        reader=counting,
    )
    processor.create_collection(bands=["red", "nir"])
    assert world.cogs.count(method=None) == 0
    assert processor.last_build.items == len(BASE_IDS)
    assert processor.last_build.failed == []
    assert {r[0] for r in counting.ranges} == {
        world.cogs.url_for(world.path(s, b).relative_to(world.root).as_posix()) for s in BASE_IDS for b in BANDS
    }
    assert all(start == 0 for _, start, _ in counting.ranges)  # header reads
    return processor


def test_a_read_through_a_memory_reader_equals_rasterio(world, mem):
    reader = memory_reader(world)
    world.cogs.reset_log()
    ds = read_geometries(mem.collection, list(AOIS.values()), list(BANDS), date_range=BASE_RANGE, reader=reader)
    assert world.cogs.count(method=None) == 0  # not one request reached the server
    assert ds.attrs["requests"] == reader.count() > 0
    assert ds.attrs["header_requests"] == 0
    assert all(r.start > 0 for r in reader.requests)  # tiles only: a header starts at byte 0
    compared = 0
    for gid, geom in AOIS.items():
        g = to_crs(geom)
        for scene_id in BASE_IDS:
            for band, file_band in BANDS.items():
                expected, transform = rio_masked(world.path(scene_id, file_band), g)
                got, got_transform = layer(ds, band, gid, day(scene_id, world))
                assert tuple(got_transform)[:6] == pytest.approx(tuple(transform)[:6], abs=1e-6)
                np.testing.assert_array_equal(got, expected)
                compared += 1
    assert compared == len(AOIS) * len(BASE_IDS) * len(BANDS)


def test_a_passed_reader_gets_exactly_the_ranges_the_default_reader_sends(world, mem):
    world.cogs.reset_log()
    expected_ds = read_geometries(world.collection(), list(AOIS.values()), list(BANDS), date_range=BASE_RANGE)
    served = sorted(
        (world.cogs.url_for(r.path.lstrip("/")), r.range[0], r.range[1] + 1)
        for r in world.cogs.requests
        if r.method == "GET"
    )
    assert len(served) == expected_ds.attrs["requests"] > 0
    counting = CountingReader(memory_reader(world))
    ds = read_geometries(mem.collection, list(AOIS.values()), list(BANDS), date_range=BASE_RANGE, reader=counting)
    assert sorted(counting.ranges) == served
    assert ds.attrs["requests"] == len(served)
    for band in BANDS:
        np.testing.assert_array_equal(ds[band].values, expected_ds[band].values)


def test_rasteret_passes_its_reader_to_get_xarray_and_get_gdf(world, mem):
    counting = CountingReader(memory_reader(world))
    processor = Rasteret.load_collection(mem.name, mem.workspace_dir, reader=counting)
    assert processor.reader is counting
    world.cogs.reset_log()
    ds = processor.get_xarray(list(AOIS.values()), ["red"], date_range=BASE_RANGE)
    assert world.cogs.count(method=None) == 0
    assert len(counting.ranges) == ds.attrs["requests"] > 0
    before = len(counting.ranges)
    gdf = processor.get_gdf(list(AOIS.values()), ["red"], date_range=BASE_RANGE)
    assert len(counting.ranges) == 2 * before
    assert world.cogs.count(method=None) == 0
    assert len(gdf) == len(AOIS) * len(BASE_IDS)
    # A reader given to one call wins over the Rasteret's.
    other = CountingReader(memory_reader(world))
    processor.get_xarray(list(AOIS.values()), ["red"], date_range=BASE_RANGE, reader=other)
    assert len(other.ranges) == before and len(counting.ranges) == 2 * before


def test_a_local_href_is_refused_with_a_passed_reader_unless_the_collection_allows_it(world, tmp_path):
    edited = _with_local_hrefs(world, tmp_path / "edited", allow=False)
    counting = CountingReader(LocalFileReader())
    with pytest.raises(UnsafeHrefError, match="local paths and file:// hrefs are not read"):
        read_geometries(edited, list(AOIS.values()), ["red"], date_range=BASE_RANGE, reader=counting)
    assert counting.ranges == []  # refused before any request
    with pytest.raises(UnsafeHrefError):
        Rasteret.load_collection("world", tmp_path / "edited", reader=counting).get_xarray(
            list(AOIS.values()), ["red"], date_range=BASE_RANGE
        )
    assert counting.ranges == []

    local = _with_local_hrefs(world, tmp_path / "local", allow=True)
    got = read_geometries(local, list(AOIS.values()), ["red"], date_range=BASE_RANGE, reader=counting)
    assert len(counting.ranges) == got.attrs["requests"] > 0
    for gid, geom in AOIS.items():
        expected, _ = rio_masked(world.path(BASE_IDS[0], "red"), to_crs(geom))
        np.testing.assert_array_equal(layer(got, "red", gid, day(BASE_IDS[0], world))[0], expected)


def test_a_scheme_no_policy_accepts_is_refused_before_the_reader_is_asked(world, tmp_path):
    """A MemoryReader would serve ``mem://`` hrefs; the collection's policy still refuses them."""
    collection = with_edited_hrefs(world, tmp_path / "ws", lambda href: "mem://" + href.split("://", 1)[1], allow=False)
    counting = CountingReader(MemoryReader())
    with pytest.raises(UnsafeHrefError, match="unsupported URL scheme 'mem'"):
        read_geometries(collection, list(AOIS.values()), ["red"], date_range=BASE_RANGE, reader=counting)
    assert counting.ranges == []
