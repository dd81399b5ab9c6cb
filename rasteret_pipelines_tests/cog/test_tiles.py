"""``fetch_tiles``: stored tiles handed over as decoded, against rasterio as the oracle.

Each COG (``cog_factory.write_cog``: edge tiles, sparse tiles, planar bands, pixel-interleaved
bands, strips) is read from its bytes through a :class:`MemoryReader`. Every tile handed to
``on_tile`` must hold, inside the image, exactly what rasterio reads over that tile's window
(for a planar file, the first band: the tiles asked for are the first band's); a sparse tile
is the fill value (nodata, or 0). The reader's log shows every stored tile's bytes fetched
once, even when a tile is asked for twice.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from rasteret_pipelines.cog import MemoryReader, RangeFetcher, read_header
from rasteret_pipelines.cog.read import fetch_tiles
from rasteret_pipelines.errors import WindowError
from rasteret_pipelines_tests.cog_factory import write_cog

CASES = {
    "deflate-uint16-p2": dict(dtype="uint16", predictor=2, width=1100, height=900, blocksize=256),
    "sparse-uint16-nodata": dict(dtype="uint16", nodata=7, sparse=True, width=1100, height=900, blocksize=256),
    "sparse-float32-planar": dict(
        dtype="float32", count=2, nodata=-9999.0, sparse=True, interleave="band", width=1100, height=900
    ),
    "rgb-uint8-pixel": dict(dtype="uint8", count=3, photometric="RGB", width=700, height=530, blocksize=256),
    "strips-lzw-int16": dict(dtype="int16", compress="LZW", tiled=False, blocksize=37, width=300, height=200),
}


def _fetch(reader: MemoryReader, tiles):
    """``{i: [block, ...]}`` of one ``fetch_tiles`` batch, and ``{i: (name of the calling
    thread, id of the block object, whether it was writeable)}``."""
    got: dict[int, list[np.ndarray]] = {}
    threads: dict[int, tuple[str, int, bool]] = {}

    def on_tile(i: int, block: np.ndarray) -> None:
        # A copy, as fetch_tiles asks: the block's memory decodes the next tile after this returns.
        got.setdefault(i, []).append(block.copy())
        threads[i] = (threading.current_thread().name, id(block), block.flags.writeable)

    async def run():
        async with RangeFetcher(reader=reader) as fetcher:
            await fetch_tiles(fetcher, tiles, on_tile)

    asyncio.run(run())
    return got, threads


@pytest.mark.parametrize("case", list(CASES))
def test_every_tile_equals_rasterio_over_its_window(tmp_path: Path, case: str):
    path = write_cog(tmp_path / f"{case}.tif", overviews=False, **CASES[case])
    href = f"mem://{case}.tif"
    reader = MemoryReader({href: path.read_bytes()})
    header = read_header(href, reader=reader)
    level = header.levels[0]
    n = level.tiles_across * level.tiles_down
    reader.reset_log()
    got, threads = _fetch(reader, [(header, t) for t in range(n)])
    assert sorted(got) == list(range(n)) and all(len(v) == 1 for v in got.values())
    sparse = 0
    with rasterio.open(path) as src:
        planar = src.interleaving == rasterio.enums.Interleaving.band
        bands = 1 if planar else src.count
        for t, (block,) in got.items():
            row, col = divmod(t, level.tiles_across)
            x0, y0 = col * level.tile_width, row * level.tile_height
            w, h = min(level.tile_width, src.width - x0), min(level.tile_height, src.height - y0)
            assert block.shape[0] == bands and block.shape[2] == level.tile_width and block.shape[1] >= h
            expected = src.read(list(range(1, bands + 1)), window=Window(x0, y0, w, h))
            np.testing.assert_array_equal(block[:, :h, :w], expected, err_msg=f"tile {t}")
            if not level.tile_byte_counts[t]:  # sparse: the fill value
                sparse += 1
                assert not threads[t][2] and (block == (src.nodata or 0)).all()
            else:  # decoded and handed over in a decoding thread, not the event loop's
                assert threads[t][0] != threading.current_thread().name
    stored = [t for t in range(n) if level.tile_byte_counts[t]]
    assert sparse == n - len(stored) and (sparse > 0) == bool(CASES[case].get("sparse"))
    assert 0 < len(reader.requests) <= len(stored)


def test_a_tile_asked_twice_is_fetched_and_decoded_once(tmp_path: Path):
    path = write_cog(tmp_path / "twice.tif", overviews=False, **CASES["deflate-uint16-p2"])
    reader = MemoryReader({"mem://twice.tif": path.read_bytes()})
    header = read_header("mem://twice.tif", reader=reader)
    level = header.levels[0]
    far = level.tiles_across * level.tiles_down - 1  # the bottom-right tile, far from tile 0
    reader.reset_log()
    got, handed = _fetch(reader, [(header, 0), (header, far), (header, 0)])
    assert handed[0][1] == handed[2][1]  # one decoded block handed to both
    np.testing.assert_array_equal(got[0][0], got[2][0])
    assert [(r.start, r.end) for r in reader.requests] == [
        (int(level.tile_offsets[t]), int(level.tile_offsets[t] + level.tile_byte_counts[t])) for t in (0, far)
    ]
    with pytest.raises(WindowError, match="tile 9999 is not a tile"):
        _fetch(reader, [(header, 9999)])
