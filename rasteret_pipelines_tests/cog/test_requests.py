"""Request counts: 1 GET per header, at most 1 GET per distinct tile, 0 header GETs when cached."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from rasteret_pipelines.cog import FetchConfig, read_header, read_headers, read_window, read_windows
from rasteret_pipelines.cog import read as read_module
from rasteret_pipelines.mirror.range_server import RangeServer
from rasteret_pipelines_tests.cog.cogs import write_cog, write_sparse_scene

NO_COALESCING = FetchConfig(coalesce_gap=-1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("counted")
    for size in (256, 512, 1024):
        write_sparse_scene(root / f"scene_{size}.tif", blocksize=size)
    write_cog(root / "dense.tif", blocksize=512)
    write_cog(root / "planar.tif", bands=3, blocksize=256, interleave="band", width=900, height=700)
    return root


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
def test_full_size_scene_header_costs_one_get(server, files, blocksize):
    name = f"scene_{blocksize}.tif"
    header = read_header(server.url_for(name))
    assert server.count("GET") == 1
    assert server.count(None) == 1  # no HEAD either
    with rasterio.open(files / name) as src:
        assert (header.width, header.height) == (src.width, src.height) == (10980, 10980)
        overviews = len(src.overviews(1))
    assert overviews == header.overview_count >= 3
    for k in range(1, overviews + 1):
        with rasterio.open(files / name, overview_level=k - 1) as ovr:
            assert (header.levels[k].width, header.levels[k].height) == (ovr.width, ovr.height)
    assert header.size == (files / name).stat().st_size


def test_headers_of_many_files_cost_one_get_each(server):
    names = ["scene_256.tif", "scene_512.tif", "scene_1024.tif", "dense.tif", "planar.tif"]
    read_headers([server.url_for(n) for n in names])
    assert server.count("GET") == len(names)


def test_small_first_read_costs_a_second_get_not_one_per_tag(server):
    """With a 4 KiB first read the tile arrays of a 256-tile scene are fetched in one more GET."""
    read_header(server.url_for("scene_256.tif"), config=FetchConfig(header_read_bytes=4096))
    assert server.count("GET") == 2


@pytest.mark.parametrize("window", [(100, 100, 50, 50), (400, 300, 900, 700), (-100, -100, 3000, 3000)])
def test_window_costs_at_most_one_get_per_distinct_tile(server, files, window):
    header = read_header(server.url_for("dense.tif"))
    server.reset_log()
    tiles = distinct_tiles(header, window)
    got = read_window(header, window, config=NO_COALESCING)
    assert server.count("GET") == tiles
    server.reset_log()
    coalesced = read_window(header, window)
    assert server.count("GET") <= tiles
    with rasterio.open(files / "dense.tif") as src:
        expected = src.read(window=Window(*window), boundless=True)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(coalesced, expected)


def test_adjacent_tiles_are_coalesced(server):
    header = read_header(server.url_for("dense.tif"))
    server.reset_log()
    level = header.levels[0]
    read_window(header, (0, 0, level.tile_width * 4, 10))  # four tiles side by side in one row
    assert server.count("GET") == 1


def test_planar_window_costs_one_get_per_band_tile(server, files):
    header = read_header(server.url_for("planar.tif"))
    server.reset_log()
    window = (200, 200, 300, 100)
    got = read_window(header, window, config=NO_COALESCING)
    assert header.levels[0].planar == 2
    assert server.count("GET") == distinct_tiles(header, window) == 3 * 4
    with rasterio.open(files / "planar.tif") as src:
        np.testing.assert_array_equal(got, src.read(window=Window(*window)))


def test_a_tile_shared_by_many_windows_is_fetched_and_decoded_once(server, monkeypatch):
    header = read_header(server.url_for("dense.tif"))
    server.reset_log()
    calls = []
    real = read_module.decode_block
    monkeypatch.setattr(read_module, "decode_block", lambda *a: calls.append(1) or real(*a))
    windows = [(10, 10, 20, 20), (30, 40, 100, 100), (0, 0, 512, 512), (500, 500, 5, 5)]
    results = read_windows([(header, w) for w in windows])
    assert server.count("GET") == 1
    assert len(calls) == 1
    assert [r.shape for r in results] == [(1, w[3], w[2]) for w in windows]


def test_sparse_tiles_cost_nothing(server, files):
    header = read_header(server.url_for("scene_1024.tif"))
    server.reset_log()
    window = (0, 0, 2048, 2048)  # all sparse in this scene
    got = read_window(header, window)
    assert server.count("GET") == 0
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
    first_tile = int(min(o for o in header.levels[0].tile_offsets.tolist() + [
        o for lvl in header.levels[1:] for o in lvl.tile_offsets.tolist()] if o))
    records = server.requests
    assert records, "the read made no request at all"
    assert all(r.range is not None and r.range[0] >= first_tile for r in records)
    assert all(r.range[0] >= header.header_bytes for r in records)
    assert len(records) <= distinct_tiles(header, window)
    with rasterio.open(files / "dense.tif") as src:
        np.testing.assert_array_equal(np.load(out), src.read(window=Window(*window)))
