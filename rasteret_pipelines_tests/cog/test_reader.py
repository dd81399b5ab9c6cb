"""The byte seam: any ByteReader feeds the engine; the bundled readers keep the store's contract.

Covers :mod:`rasteret_pipelines.cog.reader` (the protocol, ``MemoryReader``, ``LocalFileReader``),
``HttpReader``'s href and event-loop handling, ``DefaultReader``'s href policy, and the
accounting and stale-object checks ``RangeFetcher`` does for every reader. rasterio is the
pixel oracle.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Sequence

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from rasteret_pipelines.cog import (
    ByteReader,
    DefaultReader,
    FetchConfig,
    HttpReader,
    LocalFileReader,
    MemoryReader,
    ObjectVersion,
    RangeFetcher,
    RangeResponse,
    read_header,
    read_header_async,
    read_window,
    read_window_async,
    read_windows,
    run_sync,
)
from rasteret_pipelines.errors import (
    CogNotFoundError,
    FetchError,
    ReaderArgumentError,
    StaleHeaderError,
    UnsafeHrefError,
)
from rasteret_pipelines_demo.range_server import FaultPlan, RangeServer
from rasteret_pipelines_tests.cog.cogs import s2_cog

HREF = "https://cogs.example.test/B04.tif"
WINDOW = (300, 250, 700, 500)


@pytest.fixture(scope="module")
def cog(tmp_path_factory):
    return s2_cog(tmp_path_factory.mktemp("reader") / "B04.tif", width=1100, height=900, blocksize=256, seed=7)


def oracle(path, window):
    with rasterio.open(path) as src:
        return src.read(window=Window(*window), boundless=True)


class DictReader:
    """A reader written against the protocol alone: two methods, no base class."""

    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects
        self.calls: list[tuple[str, str]] = []

    async def get_bytes(self, href: str, start: int, end: int) -> RangeResponse:
        self.calls.append(("get_bytes", href))
        data = self.objects[href]
        return RangeResponse(data[start:end], ObjectVersion(len(data), None, None))

    async def get_byte_ranges(self, href: str, ranges: Sequence[tuple[int, int]]) -> list[RangeResponse]:
        self.calls.append(("get_byte_ranges", href))
        data = self.objects[href]
        return [RangeResponse(data[s:e], ObjectVersion(len(data), None, None)) for s, e in ranges]


def protocol_mismatches(reader) -> list[str]:
    """How ``reader`` departs from :class:`ByteReader`: each method must exist, be a coroutine
    function and take the protocol's parameters (``isinstance`` checks only the names exist)."""
    found = []
    for name in ("get_bytes", "get_byte_ranges"):
        method = getattr(reader, name, None)
        if method is None:
            found.append(f"no {name}")
            continue
        if not inspect.iscoroutinefunction(method):
            found.append(f"{name} is not async")
        wanted = list(inspect.signature(getattr(ByteReader, name)).parameters)[1:]  # without self
        if list(inspect.signature(method).parameters) != wanted:
            found.append(f"{name}{inspect.signature(method)} takes other parameters than {wanted}")
    return found


def test_every_bundled_reader_satisfies_the_protocol():
    for reader in (MemoryReader(), LocalFileReader(), HttpReader(), DefaultReader(), DictReader({})):
        assert protocol_mismatches(reader) == [], type(reader).__name__


def test_the_protocol_check_sees_a_reader_that_is_not_one():
    class Sync:
        def get_bytes(self, href, start, end):
            return b""

        async def get_byte_ranges(self, href, spans):
            return []

    assert isinstance(Sync(), ByteReader)  # why isinstance alone proves nothing
    assert protocol_mismatches(Sync()) == [
        "get_bytes is not async",
        "get_byte_ranges(href, spans) takes other parameters than ['href', 'ranges']",
    ]
    assert protocol_mismatches(object()) == ["no get_bytes", "no get_byte_ranges"]


def test_a_protocol_only_reader_reads_the_same_pixels_as_rasterio(cog):
    reader = DictReader({"any-key": cog.read_bytes()})
    header = read_header("any-key", reader=reader, config=FetchConfig(header_read_bytes=1024))
    assert (header.width, header.height, header.size) == (1100, 900, cog.stat().st_size)
    assert ("get_byte_ranges", "any-key") in reader.calls  # the header's tile arrays, one call
    np.testing.assert_array_equal(read_window(header, WINDOW, reader=reader), oracle(cog, WINDOW))


def test_memory_reader_equals_the_http_path(cog):
    """Header from memory == header over the real range server, ETag aside."""
    memory = MemoryReader({HREF: cog.read_bytes()})
    from_memory = read_header(HREF, reader=memory)
    with RangeServer(cog.parent) as srv:
        over_http = read_header(srv.url_for(cog.name))
        assert over_http.etag == srv.etag_for(cog.name)
        pixels = read_window(over_http, WINDOW)
    assert from_memory.etag == memory.etag_for(HREF)
    assert from_memory.levels == over_http.levels and from_memory.size == over_http.size
    np.testing.assert_array_equal(read_window(from_memory, WINDOW, reader=memory), pixels)


def test_memory_reader_behaves_like_a_store(cog):
    data = cog.read_bytes()
    reader = MemoryReader({HREF: data})

    async def run():
        tail = await reader.get_bytes(HREF, len(data) - 10, len(data) + 100)
        past = await reader.get_bytes(HREF, len(data) + 5, len(data) + 10)
        both = await reader.get_byte_ranges(HREF, [(100, 110), (0, 4)])
        return tail, past, both

    tail, past, both = run_sync(run())
    assert tail.data == data[-10:] and past.data == b""  # short only where the object ends
    assert [r.data for r in both] == [data[100:110], data[:4]]
    assert tail.version == ObjectVersion(len(data), reader.etag_for(HREF), None)
    assert [(r.start, r.end) for r in reader.requests] == [
        (len(data) - 10, len(data) + 100),
        (len(data) + 5, len(data) + 10),
        (100, 110),
        (0, 4),
    ]
    with pytest.raises(CogNotFoundError, match="missing.tif") as info:
        read_header("https://cogs.example.test/missing.tif", reader=reader)
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(FetchError, match="invalid byte range"):
        run_sync(reader.get_bytes(HREF, 10, 5))


def test_replacing_an_object_in_memory_makes_its_cached_header_stale(cog, tmp_path):
    reader = MemoryReader({HREF: cog.read_bytes()})
    header = read_header(HREF, reader=reader)
    same_size = bytearray(cog.read_bytes())
    same_size[-1] ^= 0xFF
    old = reader.etag_for(HREF)
    assert reader.put(HREF, bytes(same_size)) != old
    with pytest.raises(StaleHeaderError, match="ETag"):
        read_window(header, (0, 0, 100, 100), reader=reader)
    reader.put(HREF, s2_cog(tmp_path / "other.tif", blocksize=256, seed=99).read_bytes())
    with pytest.raises(StaleHeaderError, match="bytes"):
        read_window(header, (0, 0, 100, 100), reader=reader)


def test_local_file_reader(cog, tmp_path):
    reader = LocalFileReader()

    async def run():
        for href in (str(cog), f"file://{cog}"):
            yield await reader.get_bytes(href, 0, 8)

    async def collect():
        return [r async for r in run()]

    plain, url = run_sync(collect())
    stat = cog.stat()
    assert plain.data == url.data == cog.read_bytes()[:8]
    assert plain.version == ObjectVersion(stat.st_size, None, str(stat.st_mtime_ns))
    with pytest.raises(CogNotFoundError):
        run_sync(reader.get_bytes(str(tmp_path / "missing.tif"), 0, 8))
    with pytest.raises(UnsafeHrefError):
        run_sync(reader.get_bytes(HREF, 0, 8))


def test_http_reader_refuses_local_paths_without_opening_them(cog):
    with pytest.raises(UnsafeHrefError):
        run_sync(HttpReader().get_bytes(str(cog), 0, 8))


def test_default_reader_applies_the_href_policy(cog):
    strict = DefaultReader(FetchConfig(local_files=False))
    for href in (str(cog), f"file://{cog}", "ftp://h/x.tif"):
        with pytest.raises(UnsafeHrefError):
            run_sync(strict.get_bytes(href, 0, 8))
    assert run_sync(DefaultReader().get_bytes(str(cog), 0, 4)).data == cog.read_bytes()[:4]
    with pytest.raises(UnsafeHrefError):  # a refused scheme, whatever local_files says
        run_sync(DefaultReader().get_bytes("gs://bucket/x.tif", 0, 4))


def test_one_http_reader_serves_several_event_loops_and_reports_retries(cog):
    """A reader passed to synchronous calls (each runs its own loop) reopens its session per
    loop; retries after injected faults reach the fetcher's stats."""
    with RangeServer(cog.parent) as srv:
        reader = HttpReader(FetchConfig(max_retries=4, backoff_base=0.001, backoff_max=0.01))
        header = read_header(srv.url_for(cog.name), reader=reader)
        got = read_window(header, WINDOW, reader=reader)  # a second event loop
        np.testing.assert_array_equal(got, oracle(cog, WINDOW))
        srv.faults = FaultPlan(rate=1.0, kinds=["503"], max_faults=2)

        async def faulty():
            async with reader, RangeFetcher(reader=reader) as fetcher:
                await read_window_async(header, (0, 0, 10, 10), fetcher=fetcher)
                return fetcher.stats

        stats = run_sync(faulty())
    assert srv.faults.injected == 2 and stats.retries == 2 and stats.requests == 1


def test_a_reader_passed_in_stays_open_and_is_shared(cog):
    """The fetcher closes only a reader it opened; one reader serves many calls in one loop."""
    closed = []

    class Tracking(MemoryReader):
        async def close(self):
            closed.append(True)

    reader = Tracking({HREF: cog.read_bytes()})

    async def run():
        header = await read_header_async(HREF, reader=reader)
        return await asyncio.gather(*(read_window_async(header, WINDOW, reader=reader) for _ in range(3)))

    results = run_sync(run())
    assert closed == []
    for got in results:
        np.testing.assert_array_equal(got, oracle(cog, WINDOW))


def test_fetcher_and_reader_together_is_refused(cog):
    reader = MemoryReader({HREF: cog.read_bytes()})

    async def run():
        async with RangeFetcher() as fetcher:
            await read_header_async(HREF, fetcher=fetcher, reader=reader)

    with pytest.raises(ReaderArgumentError, match="either fetcher= or reader=") as info:
        run_sync(run())
    assert isinstance(info.value, TypeError)


def test_many_files_in_one_batch_from_memory(tmp_path):
    paths = [s2_cog(tmp_path / f"s{i}.tif", width=600, height=500, blocksize=256, seed=i) for i in range(3)]
    reader = MemoryReader({f"mem://s{i}.tif": p.read_bytes() for i, p in enumerate(paths)})
    headers = [read_header(f"mem://s{i}.tif", reader=reader) for i in range(3)]
    reader.reset_log()
    windows = [(0, 0, 300, 300), (250, 200, 300, 250), (-20, -20, 64, 64)]
    requests = [(h, w) for h in headers for w in windows]
    got = read_windows(requests, reader=reader)
    assert reader.count() <= sum(1 for _ in requests) * 4
    assert {r.href for r in reader.requests} == {f"mem://s{i}.tif" for i in range(3)}
    for (h, w), arr in zip(requests, got):
        np.testing.assert_array_equal(arr, oracle(paths[int(h.href[7])], w))


def test_a_refused_href_is_not_counted_a_missing_one_is(cog):
    async def run():
        async with RangeFetcher(FetchConfig(local_files=False)) as strict:
            with pytest.raises(UnsafeHrefError):
                await strict.get_range(str(cog), 0, 8, header=True)
            refused = (strict.stats.requests, strict.stats.header_requests)
        memory = MemoryReader()
        async with RangeFetcher(reader=memory) as fetcher:
            with pytest.raises(CogNotFoundError):
                await fetcher.get_range("mem://missing.tif", 0, 8, header=True)
            return refused, (fetcher.stats.requests, fetcher.stats.header_requests, fetcher.stats.bytes, memory.count())

    refused, missing = run_sync(run())
    assert refused == (0, 0)
    assert missing == (1, 1, 0, 1)
