"""Header reads and window reads: plan blocks, coalesce ranges, fetch, decode, assemble.

The asynchronous functions here are the engine; :mod:`rasteret_pipelines.cog` wraps them for
synchronous callers. A window read computes the byte range of every block it needs from the
cached header alone, fetches distinct blocks once per batch (adjacent or nearby blocks in one
request), decodes them on a thread pool as they arrive, and copies each window out.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from rasteret_pipelines.cog import tiff
from rasteret_pipelines.cog.decode import (
    BYTE_CODECS,
    BlockBuffers,
    block_rows,
    decode_block,
    max_stored_bytes,
)
from rasteret_pipelines.cog.fetch import FetchConfig, ObjectVersion, RangeFetcher
from rasteret_pipelines.cog.header import CogHeader, ImageLevel, build_header, validate_window
from rasteret_pipelines.errors import DecodedSizeError, RasteretError, TiffFormatError, WindowError

MAX_HEADER_ROUNDS = 6
"""Header requests after the first before the file is declared unreadable."""
MAX_BLOCK_BYTES = 1 << 30
"""A block claiming more bytes than this is treated as corrupt."""

Window = tuple[int, int, int, int]

_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0


def decode_pool(threads: int | None = None) -> ThreadPoolExecutor:
    """The shared block-decoding thread pool (imagecodecs releases the GIL)."""
    global _POOL, _POOL_SIZE
    size = threads or os.cpu_count() or 2
    if _POOL is None or _POOL_SIZE != size:
        _POOL = ThreadPoolExecutor(max_workers=size, thread_name_prefix="cog-decode")
        _POOL_SIZE = size
    return _POOL


# -- headers -----------------------------------------------------------------------------------


async def fetch_header(fetcher: RangeFetcher, href: str) -> CogHeader:
    """Read and parse the header of ``href``: one request for a GDAL COG in the common case."""
    first = await fetcher.get_range(href, 0, fetcher.config.header_read_bytes, header=True)
    tiff.parse_signature(href, first.data[:16])
    version = first.version
    size = version.size if version.size is not None else None
    if size is None and len(first.data) < fetcher.config.header_read_bytes:
        size = len(first.data)
    data = tiff.ByteRanges()
    data.add(0, first.data)
    for _ in range(MAX_HEADER_ROUNDS + 1):
        parsed = _parse_checked(href, data, size)
        if not parsed.missing:
            return _build_checked(href, parsed, size, version)
        spans = _header_spans(parsed.missing, size)
        responses = await fetcher.get_ranges(href, spans, expect=version, header=True)
        for (s, _), response in zip(spans, responses):
            data.add(s, response.data)
    raise TiffFormatError(href, f"header still incomplete after {MAX_HEADER_ROUNDS + 1} requests")


_MALFORMED = (
    TypeError,
    ValueError,
    AttributeError,
    OverflowError,
    KeyError,
    IndexError,
    ZeroDivisionError,
    ArithmeticError,
    LookupError,
    struct.error,
    UnicodeError,
    RecursionError,
)
"""What a malformed header can make parsing code raise: always turned into TiffFormatError."""


def _parse_checked(href: str, data: tiff.ByteRanges, size: int | None) -> tiff.ParsedTiff:
    try:
        return tiff.parse_ifds(href, data, size)
    except RasteretError:
        raise
    except _MALFORMED as exc:
        raise TiffFormatError(href, f"malformed TIFF structure ({type(exc).__name__}: {exc})") from exc


def _build_checked(href: str, parsed: tiff.ParsedTiff, size: int | None, version) -> CogHeader:
    try:
        return build_header(href, parsed, size=size, etag=version.etag, last_modified=version.last_modified)
    except RasteretError:
        raise
    except _MALFORMED as exc:
        raise TiffFormatError(href, f"malformed header tags ({type(exc).__name__}: {exc})") from exc


def _header_spans(missing: list[tuple[int, int]], size: int | None) -> list[tuple[int, int]]:
    """Merge missing header ranges that are close, growing small ones to 16 KiB."""
    spans = []
    for start, end in sorted(missing):
        end = max(end, start + 16384)
        if size is not None:
            end = min(end, size)
        if spans and start <= spans[-1][1] + 1024 * 1024:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    return spans


async def fetch_headers(fetcher: RangeFetcher, hrefs: Sequence[str]) -> list[CogHeader]:
    """Headers of many objects, read concurrently, in input order."""
    return list(await asyncio.gather(*(fetch_header(fetcher, h) for h in hrefs)))


# -- windows -----------------------------------------------------------------------------------


class _Block(NamedTuple):
    """One stored block. A tuple, not a dataclass: it is hashed for every window's every
    block, and a tuple hashes in C."""

    href: str
    overview: int
    index: int


@dataclass
class _Span:
    start: int
    end: int
    blocks: list[tuple[_Block, int, int]]  # block, offset, byte count


def _blocks_for(header: CogHeader, level: ImageLevel, window: Window):
    """Yield (row, col) of the blocks intersecting ``window`` inside the image."""
    col_off, row_off, width, height = window
    x0, x1 = max(col_off, 0), min(col_off + width, level.width)
    y0, y1 = max(row_off, 0), min(row_off + height, level.height)
    if x0 >= x1 or y0 >= y1:
        return
    for row in range(y0 // level.tile_height, (y1 - 1) // level.tile_height + 1):
        for col in range(x0 // level.tile_width, (x1 - 1) // level.tile_width + 1):
            yield row, col


def _planes(level: ImageLevel) -> range:
    return range(level.samples_per_pixel) if level.planar == 2 else range(1)


def _window_blocks(header: CogHeader, level: ImageLevel, overview: int, window: Window):
    """``[(row, col, plane, block)]`` of the blocks intersecting ``window`` (the index arithmetic
    of :meth:`ImageLevel.tile_index`, with the level's tile counts computed once per window)."""
    href = header.href
    across = level.tiles_across
    per_plane = across * level.tiles_down
    planar = level.planar == 2
    return [
        (row, col, plane, _Block(href, overview, (plane * per_plane if planar else 0) + row * across + col))
        for row, col in _blocks_for(header, level, window)
        for plane in _planes(level)
    ]


async def _get_span(fetcher, header, span: _Span):
    """One coalesced range of ``header``'s file, checked against the cached version and length.

    Raises:
        TiffFormatError: the object ends before the span does.
    """
    expect = ObjectVersion(header.size, header.etag, header.last_modified)
    response = await fetcher.get_range(header.href, span.start, span.end, expect=expect)
    if len(response.data) < span.end - span.start:
        raise TiffFormatError(header.href, f"object ends before byte {span.end}")
    return response


def plan_spans(
    requests: Sequence[tuple[CogHeader, Window]], overview: int, config: FetchConfig
) -> tuple[dict[str, list[_Span]], list[set[_Block]]]:
    """Group the distinct non-sparse blocks of all windows into coalesced byte ranges.

    Returns:
        Spans per href, and for every request the set of blocks it needs.
    """
    spans, needs, _ = _plan_spans(requests, overview, config)
    return spans, needs


def _plan_spans(requests, overview: int, config: FetchConfig):
    """:func:`plan_spans`, plus every request's ``_window_blocks`` list (kept for assembling
    the window, so the block arithmetic runs once per window)."""
    wanted: dict[_Block, tuple[int, int]] = {}
    needs: list[set[_Block]] = []
    layouts: list[list] = []
    for header, window in requests:
        level = header.levels[overview]
        need: set[_Block] = set()
        needs.append(need)
        layout = _window_blocks(header, level, overview, window)
        layouts.append(layout)
        for _, _, _, block in layout:
            if block in wanted:
                need.add(block)
                continue
            index = block.index
            offset = int(level.tile_offsets[index])
            count = int(level.tile_byte_counts[index])
            if offset == 0 or count == 0:
                continue  # sparse block: filled, never fetched
            if count > MAX_BLOCK_BYTES or (header.size is not None and offset + count > header.size):
                raise TiffFormatError(
                    header.href,
                    f"block {index} at bytes {offset}+{count} lies outside the {header.size}-byte object",
                )
            if count > max_stored_bytes(level):
                raise DecodedSizeError(
                    header.href,
                    f"{count} stored bytes, more than any codec needs for a "
                    f"{level.tile_width}x{level.tile_height} block",
                    block=index,
                    overview=overview,
                )
            wanted[block] = (offset, count)
            need.add(block)
    by_href: dict[str, list[tuple[_Block, int, int]]] = defaultdict(list)
    for block, (offset, count) in wanted.items():
        by_href[block.href].append((block, offset, count))
    spans: dict[str, list[_Span]] = {}
    for href, blocks in by_href.items():
        blocks.sort(key=lambda b: b[1])
        out: list[_Span] = []
        for block, offset, count in blocks:
            end = offset + count
            if (
                out
                and offset - out[-1].end <= config.coalesce_gap
                and max(end, out[-1].end) - out[-1].start <= config.max_request_bytes
            ):
                out[-1].end = max(out[-1].end, end)
                out[-1].blocks.append((block, offset, count))
            else:
                out.append(_Span(offset, end, [(block, offset, count)]))
        spans[href] = out
    return spans, needs, layouts


async def fetch_windows(
    fetcher: RangeFetcher,
    requests: Sequence[tuple[CogHeader, Sequence[int]]],
    overview: int = 0,
    *,
    on_window: Callable[[int, np.ndarray], None] | None = None,
    on_fetched: Callable[[], None] | None = None,
) -> list[np.ndarray]:
    """Read many windows (over many files) as one batch; results in request order.

    With ``on_window``, each window is handed to ``on_window(index, array)`` as soon as it is
    assembled (in the event loop's thread) and not kept: the returned list then holds None.
    ``on_fetched()`` is called once (in the event loop's thread) when the last byte range has
    arrived, while blocks may still be decoding: the moment to start work that would compete
    with receiving for the interpreter but not with decoding (which runs outside it).
    """
    checked = [(h, validate_window(h, w, overview)) for h, w in requests]
    headers = {h.href: h for h, _ in checked}
    spans, needs, layouts = _plan_spans(checked, overview, fetcher.config)
    loop = asyncio.get_running_loop()
    pool = decode_pool(fetcher.config.decode_threads)
    # Windows are assembled as soon as their last block is decoded, and a block is dropped
    # once every window needing it is done: memory holds the blocks in flight, not all.
    decoded: dict[_Block, np.ndarray] = {}
    # A finished block's decompression buffer goes to the next block (windows are copies).
    buffers = BlockBuffers()
    buffer_of: dict[_Block, np.ndarray | None] = {}
    users: dict[_Block, list[int]] = defaultdict(list)
    for i, need in enumerate(needs):
        for block in need:
            users[block].append(i)
    remaining = [len(need) for need in needs]
    rows_of = _rows_needed(checked, layouts, overview)
    results: list[np.ndarray | None] = [None] * len(checked)
    # (dtype, fill value) per file: a header computes them (parsing its nodata text) per call.
    out_types = {href: (np.dtype(h.dtype), h.fill_value) for href, h in headers.items()}

    def finish(i: int) -> None:
        header, window = checked[i]
        array = _assemble(header, window, overview, decoded, *out_types[header.href], layouts[i])
        layouts[i] = None
        for block in needs[i]:
            users_left = users[block]
            users_left.remove(i)
            if not users_left:
                decoded.pop(block, None)
                buffers.give(buffer_of.pop(block, None))
        if on_window is None:
            results[i] = array
        else:
            on_window(i, array)

    for i, count in enumerate(remaining):
        if count == 0:
            finish(i)

    unfetched = sum(len(href_spans) for href_spans in spans.values())
    if on_fetched is not None and unfetched == 0:
        on_fetched()

    async def fetch_span(href: str, span: _Span) -> None:
        nonlocal unfetched
        header = headers[href]
        response = await _get_span(fetcher, header, span)
        unfetched -= 1
        if on_fetched is not None and unfetched == 0:
            on_fetched()
        data = response.data
        level_of = header.levels

        def decode_all(data: bytes) -> list[tuple[_Block, np.ndarray, np.ndarray | None]]:
            # Byte codecs read a view of the response; image codecs get bytes of their own.
            stored = memoryview(data) if header.levels[overview].compression in BYTE_CODECS else data
            out = []
            for block, offset, count in span.blocks:
                raw = stored[offset - span.start : offset - span.start + count]
                level = level_of[block.overview]
                buffer = buffers.take_for(level)
                arr = decode_block(
                    level,
                    header.byte_order,
                    raw,
                    href,
                    block.index,
                    block.overview,
                    out=buffer,
                    rows_needed=rows_of[block],
                )
                out.append((block, arr, buffer))
            return out

        blocks = await loop.run_in_executor(pool, decode_all, data)
        del data, response
        for block, arr, buffer in blocks:
            decoded[block] = arr
            buffer_of[block] = buffer
        for block, _, _ in blocks:
            for i in list(users[block]):
                remaining[i] -= 1
                if remaining[i] == 0:
                    finish(i)

    await asyncio.gather(*(fetch_span(href, span) for href, href_spans in spans.items() for span in href_spans))
    return results  # type: ignore[return-value]


def _rows_needed(checked, layouts, overview: int) -> dict[_Block, tuple[int, int]]:
    """Per block, the rows (``start, stop`` within the block) that some window reads: the
    only rows :func:`_assemble` copies, so the only ones a predictor must be undone on."""
    rows_of: dict[_Block, tuple[int, int]] = {}
    for (header, window), layout in zip(checked, layouts):
        top, bottom = window[1], window[1] + window[3]
        th = header.levels[overview].tile_height
        for row, _, _, block in layout:
            start, stop = max(top - row * th, 0), min(bottom - row * th, th)
            have = rows_of.get(block)
            rows_of[block] = (start, stop) if have is None else (min(have[0], start), max(have[1], stop))
    return rows_of


def _assemble(
    header: CogHeader, window: Window, overview: int, decoded, dtype: np.dtype, fill, layout=None
) -> np.ndarray:
    """The window from its decoded blocks; ``dtype`` and ``fill`` are the header's (computed
    once per file by the caller), ``layout`` the window's ``_window_blocks`` when known."""
    level = header.levels[overview]
    col_off, row_off, width, height = window
    th, tw = level.tile_height, level.tile_width
    if layout is None:
        layout = _window_blocks(header, level, overview, window)
    found = [(row, col, plane, decoded.get(block)) for row, col, plane, block in layout]
    inside = col_off >= 0 and row_off >= 0 and col_off + width <= level.width and row_off + height <= level.height
    complete = inside and all(block is not None for *_, block in found)
    if complete and len(found) == 1 and level.planar != 2:
        # The window lies in one block (most small windows): one copy of its slice.
        row, col, _, block = found[0]
        by, bx = row * th, col * tw
        if row_off + height <= by + block.shape[1] and block.dtype == dtype:
            return block[:, row_off - by : row_off - by + height, col_off - bx : col_off - bx + width].copy()
    shape = (header.count, height, width)
    # Always initialised (never np.empty): pixels outside the image and in sparse blocks keep
    # the fill value (nodata, or 0). Zeros come from calloc, so the common case costs nothing.
    if complete or fill == 0:
        out = np.zeros(shape, dtype=dtype)
    else:
        out = np.full(shape, fill, dtype=dtype)
    for row, col, plane, block in found:
        if block is None:
            continue  # sparse: stays at the fill value
        by, bx = row * th, col * tw
        rows = block.shape[1]
        ys, ye = max(row_off, by), min(row_off + height, by + rows, level.height)
        xs, xe = max(col_off, bx), min(col_off + width, bx + tw, level.width)
        if ys >= ye or xs >= xe:
            continue
        bands = slice(plane, plane + 1) if level.planar == 2 else slice(None)
        out[bands, ys - row_off : ye - row_off, xs - col_off : xe - col_off] = block[
            :, ys - by : ye - by, xs - bx : xe - bx
        ]
    return out


async def fetch_tiles(
    fetcher: RangeFetcher,
    tiles: Sequence[tuple[CogHeader, int]],
    on_tile: Callable[[int, np.ndarray], None],
    overview: int = 0,
) -> None:
    """Fetch and decode stored tiles as one batch, each handed over as decoded, not assembled.

    ``tiles`` are ``(header, tile index)`` pairs (the index of the tile's first band, row-major
    across the level). Byte ranges are planned and coalesced as :func:`fetch_windows` plans
    them (a tile asked for twice is fetched and decoded once). ``on_tile(i, block)`` gets the
    decoded block of ``tiles[i]``, shape (samples, rows, tile width) as
    :func:`~rasteret_pipelines.cog.decode.decode_block` returns it (padding of an edge tile
    included), in the decoding thread right after decoding: a caller that takes a few values
    from each tile neither copies the tile into a window nor waits for the event loop, and the
    tile is dropped as soon as its callbacks return. ``on_tile`` must copy what it keeps: the
    block's memory decodes the next tile once its callbacks have returned. Calls run
    concurrently, so ``on_tile`` must only write what no other call writes. A sparse tile is
    handed over as a read-only block of the fill value.
    """
    requests = []
    for header, index in tiles:
        level = header.levels[overview]
        if not 0 <= index < level.tiles_across * level.tiles_down:
            raise WindowError(f"{header.href}: tile {index} is not a tile of level {overview}")
        row, col = divmod(int(index), level.tiles_across)
        x0, y0 = col * level.tile_width, row * level.tile_height
        window = (x0, y0, min(level.tile_width, level.width - x0), min(level.tile_height, level.height - y0))
        requests.append((header, window))
    spans, _ = plan_spans(requests, overview, fetcher.config)
    users: dict[_Block, list[int]] = defaultdict(list)
    for i, (header, index) in enumerate(tiles):
        users[_Block(header.href, overview, int(index))].append(i)
    headers = {h.href: h for h, _ in tiles}
    loop = asyncio.get_running_loop()
    pool = decode_pool(fetcher.config.decode_threads)
    buffers = BlockBuffers()  # one per decoding thread in use: each tile's is reused by the next
    fetched = {block for href_spans in spans.values() for span in href_spans for block, _, _ in span.blocks}
    for block, indices in users.items():
        if block not in fetched:  # sparse: never stored, read as the fill value
            header = headers[block.href]
            level = header.levels[overview]
            samples = level.samples_per_pixel if level.planar == 1 else 1
            fill = np.broadcast_to(
                np.asarray(header.fill_value, np.dtype(header.dtype)),
                (samples, block_rows(level, block.index), level.tile_width),
            )
            for i in indices:
                on_tile(i, fill)

    async def fetch_span(href: str, span: _Span) -> None:
        header = headers[href]
        response = await _get_span(fetcher, header, span)
        data = response.data
        del response

        def decode_and_hand_over() -> None:
            # Byte codecs read a view of the response; image codecs get bytes of their own.
            stored = memoryview(data) if header.levels[overview].compression in BYTE_CODECS else data
            for block, offset, count in span.blocks:
                wanted = users.get(block)
                if not wanted:
                    continue  # another band's plane of a planar tile: fetched with it, not decoded
                raw = stored[offset - span.start : offset - span.start + count]
                level = header.levels[overview]
                buffer = buffers.take_for(level)
                arr = decode_block(level, header.byte_order, raw, href, block.index, overview, out=buffer)
                for i in wanted:
                    on_tile(i, arr)
                del arr
                buffers.give(buffer)

        await loop.run_in_executor(pool, decode_and_hand_over)

    await asyncio.gather(*(fetch_span(href, span) for href, href_spans in spans.items() for span in href_spans))
