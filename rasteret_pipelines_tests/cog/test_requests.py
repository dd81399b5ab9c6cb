"""Request counts: 1 GET per header, at most 1 GET per distinct tile, 0 header GETs when cached.

The engine's requests are counted where they reach storage: a :class:`MemoryReader` holding the
files (its request log, one entry per range asked for), so most tests start no server. Two stay
end to end over the real range server: a full-size scene's header is one HTTP GET and no HEAD,
and a cached header read in a fresh process asks only for tile bytes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from rasteret_pipelines.cog import (
    FetchConfig,
    MemoryReader,
    RangeFetcher,
    read_header,
    read_header_async,
    read_headers,
    read_window,
    read_windows,
    run_sync,
)
from rasteret_pipelines.cog import read as read_module
from rasteret_pipelines_demo.range_server import RangeServer
from rasteret_pipelines_tests.cog.cogs import S2_TRANSFORM, s2_cog, write_sparse_scene
from rasteret_pipelines_tests.cog_factory import write_cog
from rasteret_pipelines_tests.conftest import count_calls

NO_COALESCING = FetchConfig(coalesce_gap=-1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("counted")
    for size in (256, 512, 1024):
        write_sparse_scene(root / f"scene_{size}.tif", blocksize=size)
    s2_cog(root / "dense.tif", blocksize=512)
    write_cog(
        root / "planar.tif",
        count=3,
        blocksize=256,
        interleave="band",
        width=900,
        height=700,
        predictor=2,
        nodata=0,
        transform=S2_TRANSFORM,
        seed=1,
    )
    return root


NAMES = ["scene_256.tif", "scene_512.tif", "scene_1024.tif", "dense.tif", "planar.tif"]


def href(name: str) -> str:
    return f"https://cogs.example.test/{name}"


@pytest.fixture(scope="module")
def store(files):
    """The files, in memory (one reader for the module; tests reset its log)."""
    return MemoryReader({href(n): (files / n).read_bytes() for n in NAMES})


@pytest.fixture
def reader(store):
    store.reset_log()
    return store


@pytest.fixture
def server(files):
    with RangeServer(files) as srv:
        yield srv


def distinct_tiles(header, window, overview=0):
    level = header.levels[overview]
    col, row, w, h = window
    count = 0
    for r in range(max(row, 0) // level.tile_height, (min(row + h, level.height) - 1) // level.tile_height + 1):
        for c in range(max(col, 0) // level.tile_width, (min(col + w, level.width) - 1) // level.tile_width + 1):
            planes = header.count if level.planar == 2 else 1
            for p in range(planes):
                if level.tile_byte_counts[level.tile_index(r, c, p)]:
                    count += 1
    return count


@pytest.mark.parametrize("blocksize", [256, 512, 1024])
def test_full_size_scene_header_costs_one_get(reader, files, blocksize):
    name = f"scene_{blocksize}.tif"
    header = read_header(href(name), reader=reader)
    assert reader.count() == 1
    assert reader.requests[0].start == 0
    with rasterio.open(files / name) as src:
        assert (header.width, header.height) == (src.width, src.height) == (10980, 10980)
        overviews = len(src.overviews(1))
    assert overviews == header.overview_count >= 3
    for k in range(1, overviews + 1):
        with rasterio.open(files / name, overview_level=k - 1) as ovr:
            assert (header.levels[k].width, header.levels[k].height) == (ovr.width, ovr.height)
    assert header.size == (files / name).stat().st_size


def test_full_size_scene_header_is_one_http_get_end_to_end(server, files):
    """Over the real range server: one GET, no HEAD, and the same header as from memory."""
    header = read_header(server.url_for("scene_512.tif"))
    assert server.count("GET") == 1
    assert server.count(None) == 1  # no HEAD either
    assert header.etag == server.etag_for("scene_512.tif")
    from_memory = read_header(
        href("scene_512.tif"), reader=MemoryReader({href("scene_512.tif"): (files / "scene_512.tif").read_bytes()})
    )
    assert from_memory.levels == header.levels and from_memory.size == header.size


def test_headers_of_many_files_cost_one_get_each(reader):
    read_headers([href(n) for n in NAMES], reader=reader)
    assert reader.count() == len(NAMES)
    assert sorted(r.href for r in reader.requests) == sorted(href(n) for n in NAMES)


def test_small_first_read_costs_a_second_get_not_one_per_tag(reader):
    """With a 4 KiB first read the tile arrays of a 256-tile scene are fetched in one more GET."""
    read_header(href("scene_256.tif"), config=FetchConfig(header_read_bytes=4096), reader=reader)
    assert reader.count() == 2


def test_fetcher_counts_what_the_reader_served(reader):
    """RangeFetcher's stats (what build reports and read manifests show) match the reader's log."""

    async def run():
        async with RangeFetcher(FetchConfig(header_read_bytes=4096), reader=reader) as fetcher:
            header = await read_header_async(href("scene_256.tif"), fetcher=fetcher)
            return header, fetcher.stats

    header, stats = run_sync(run())
    assert stats.requests == stats.header_requests == reader.count() == 2
    assert stats.bytes == sum(min(r.end, header.size) - r.start for r in reader.requests)
    assert stats.retries == 0


@pytest.mark.parametrize("window", [(100, 100, 50, 50), (400, 300, 900, 700), (-100, -100, 3000, 3000)])
def test_window_costs_at_most_one_get_per_distinct_tile(reader, files, window):
    header = read_header(href("dense.tif"), reader=reader)
    reader.reset_log()
    tiles = distinct_tiles(header, window)
    got = read_window(header, window, config=NO_COALESCING, reader=reader)
    assert reader.count() == tiles
    reader.reset_log()
    coalesced = read_window(header, window, reader=reader)
    assert reader.count() <= tiles
    with rasterio.open(files / "dense.tif") as src:
        expected = src.read(window=Window(*window), boundless=True)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(coalesced, expected)


def test_adjacent_tiles_are_coalesced(reader):
    header = read_header(href("dense.tif"), reader=reader)
    reader.reset_log()
    level = header.levels[0]
    read_window(header, (0, 0, level.tile_width * 4, 10), reader=reader)  # four tiles in a row
    assert reader.count() == 1
    (request,) = reader.requests
    offsets = level.tile_offsets[:4].astype(int)
    ends = offsets + level.tile_byte_counts[:4].astype(int)
    assert (request.start, request.end) == (offsets.min(), ends.max())


def test_planar_window_costs_one_get_per_band_tile(reader, files):
    header = read_header(href("planar.tif"), reader=reader)
    reader.reset_log()
    window = (200, 200, 300, 100)
    got = read_window(header, window, config=NO_COALESCING, reader=reader)
    assert header.levels[0].planar == 2
    assert reader.count() == distinct_tiles(header, window) == 3 * 4
    with rasterio.open(files / "planar.tif") as src:
        np.testing.assert_array_equal(got, src.read(window=Window(*window)))


def test_a_tile_shared_by_many_windows_is_fetched_and_decoded_once(reader, monkeypatch):
    header = read_header(href("dense.tif"), reader=reader)
    reader.reset_log()
    calls = count_calls(monkeypatch, ((read_module, "decode_block"),))
    windows = [(10, 10, 20, 20), (30, 40, 100, 100), (0, 0, 512, 512), (500, 500, 5, 5)]
    results = read_windows([(header, w) for w in windows], reader=reader)
    assert reader.count() == 1
    assert calls["decode_block"] == 1
    assert [r.shape for r in results] == [(1, w[3], w[2]) for w in windows]


def test_decode_buffers_are_recycled_and_windows_stay_rasterios(reader, files, monkeypatch):
    """Every block's decompression buffer goes back to the batch's pool once its windows are
    copied out, and a recycled buffer never shows through: each window equals rasterio's."""
    taken, given = [], []

    class Counting(read_module.BlockBuffers):
        def take(self, nbytes):
            buffer = super().take(nbytes)
            taken.append(buffer)
            return buffer

        def give(self, buffer):
            given.append(buffer)
            super().give(buffer)

    monkeypatch.setattr(read_module, "BlockBuffers", Counting)
    header = read_header(href("planar.tif"), reader=reader)
    level = header.levels[0]
    # Two windows in every block of every plane, read one request at a time.
    windows = [
        (col * 256 + dx, row * 256 + dy, 40, 30)
        for row in range(level.tiles_down)
        for col in range(level.tiles_across)
        for dx, dy in ((0, 0), (100, 120))
        if col * 256 + dx + 40 <= header.width and row * 256 + dy + 30 <= header.height
    ]
    config = FetchConfig(coalesce_gap=-1, max_concurrency=1)
    got = read_windows([(header, w) for w in windows], config=config, reader=reader)
    blocks = level.tiles_across * level.tiles_down * header.count
    assert len(taken) == len(given) == blocks
    assert {id(b) for b in given} == {id(b) for b in taken}
    with rasterio.open(files / "planar.tif") as src:
        for window, array in zip(windows, got):
            np.testing.assert_array_equal(array, src.read(window=Window(*window)))


def test_predictor_undone_only_on_the_rows_windows_read(reader, files, monkeypatch):
    """Horizontal differencing is undone on the rows some window reads, not the whole block:
    windows at a block's top, at its bottom, across two block rows and two windows sharing a
    block all equal rasterio's, with fewer rows un-differenced than the blocks hold."""
    from rasteret_pipelines.cog import decode as decode_module

    undone = []
    real = decode_module.imagecodecs.delta_decode

    def counting(data, *args, **kwargs):
        undone.append(data.shape[0])
        return real(data, *args, **kwargs)

    monkeypatch.setattr(decode_module.imagecodecs, "delta_decode", counting)
    header = read_header(href("planar.tif"), reader=reader)
    windows = [
        (10, 0, 30, 12),  # the top rows of block (0, 0)
        (300, 250, 20, 16),  # the bottom 6 rows of block (0, 1), the top 10 of block (1, 1)
        (600, 500, 25, 12),  # rows 244-255 of block (1, 2) ...
        (610, 300, 10, 5),  # ... and rows 44-48 of it: rows 44-255 are undone
        (880, 690, 40, 40),  # past the image's corner: rows 178-217 of block (2, 3)
    ]
    got = read_windows([(header, w) for w in windows], config=NO_COALESCING, reader=reader)
    with rasterio.open(files / "planar.tif") as src:
        for window, array in zip(windows, got):
            expected = src.read(window=Window(*window), boundless=True, fill_value=0)
            np.testing.assert_array_equal(array, expected, err_msg=str(window))
    blocks = 5 * header.count  # the windows touch 5 blocks of each plane
    assert len(undone) == blocks
    assert sum(undone) == header.count * (12 + 6 + 10 + (256 - 44) + (218 - 178))
    assert sum(undone) < blocks * 256


def test_block_buffers_hand_back_what_was_given():
    buffers = read_module.BlockBuffers()
    first = buffers.take(1025)
    assert first.nbytes == 1025 and first.dtype == np.uint8
    buffers.give(first)
    assert buffers.take(4097) is not first  # another size: a new buffer
    assert buffers.take(1025) is first
    assert buffers.take(1025) is not first  # handed out once


def test_on_fetched_is_called_once_when_the_last_range_has_arrived(reader, monkeypatch):
    """``fetch_windows(on_fetched=)`` fires once, after every GET of the batch has answered
    and before the last blocks are decoded; with nothing to fetch (sparse), before returning."""
    calls = count_calls(monkeypatch, ((read_module, "decode_block"),))
    seen = []

    def on_fetched():
        seen.append((reader.count(), calls["decode_block"]))

    async def fetch(requests):
        async with RangeFetcher(NO_COALESCING, reader=reader) as fetcher:
            return await read_module.fetch_windows(fetcher, requests, on_fetched=on_fetched)

    header = read_header(href("dense.tif"), reader=reader)
    reader.reset_log()
    run_sync(fetch([(header, (0, 0, 600, 600)), (header, (900, 100, 50, 50))]))
    assert reader.count() >= 2 and seen == [(reader.count(), seen[0][1])]
    assert seen[0][1] < calls["decode_block"]  # the last blocks were still to decode

    sparse = read_header(href("scene_1024.tif"), reader=reader)
    reader.reset_log()
    seen.clear()
    run_sync(fetch([(sparse, (0, 0, 2048, 2048))]))
    assert seen == [(0, calls["decode_block"])] and reader.count() == 0


def test_sparse_tiles_cost_nothing(reader, files):
    header = read_header(href("scene_1024.tif"), reader=reader)
    reader.reset_log()
    window = (0, 0, 2048, 2048)  # all sparse in this scene
    got = read_window(header, window, reader=reader)
    assert reader.count() == 0
    with rasterio.open(files / "scene_1024.tif") as src:
        np.testing.assert_array_equal(got, src.read(window=Window(*window)))


def test_cached_header_in_a_new_process_makes_zero_header_requests(server, files, tmp_path):
    header = read_header(server.url_for("dense.tif"))
    cached = tmp_path / "header.json"
    cached.write_text(json.dumps(header.to_dict()))
    window = (700, 650, 600, 500)
    out = tmp_path / "pixels.npy"
    server.reset_log()
    script = textwrap.dedent(
        f"""
        import json, numpy as np
        from rasteret_pipelines.cog import CogHeader, read_window
        header = CogHeader.from_dict(json.load(open({str(cached)!r})))
        np.save({str(out)!r}, read_window(header, {window!r}, config=None))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    first_tile = int(
        min(
            o
            for o in header.levels[0].tile_offsets.tolist()
            + [o for lvl in header.levels[1:] for o in lvl.tile_offsets.tolist()]
            if o
        )
    )
    records = server.requests
    assert records, "the read made no request at all"
    assert all(r.range is not None and r.range[0] >= first_tile for r in records)
    assert all(r.range[0] >= header.header_bytes for r in records)
    assert len(records) <= distinct_tiles(header, window)
    with rasterio.open(files / "dense.tif") as src:
        np.testing.assert_array_equal(np.load(out), src.read(window=Window(*window)))
