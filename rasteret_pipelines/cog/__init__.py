"""GDAL-free Cloud-Optimized GeoTIFF engine: parse a header once, then read only tiles.

Synchronous API::

    header = read_header("https://.../B04.tif")      # 1 request for a GDAL COG
    cached = CogHeader.from_dict(header.to_dict())    # store it anywhere (JSON, Parquet)
    pixels = read_window(cached, (col_off, row_off, width, height))  # 0 header requests

Each ``*_async`` twin does the same inside a running event loop. Bytes come through a
:class:`ByteReader` (``get_bytes`` / ``get_byte_ranges``): by default a :class:`DefaultReader`
built from ``config=`` (a :class:`FetchConfig`: concurrency, retries by its :class:`RetryPolicy`, S3 options), i.e. aiohttp
for ``http(s)://`` and ``s3://`` and ``pread`` for local paths. Pass ``reader=`` to read from
elsewhere, e.g. a :class:`MemoryReader` holding ``{href: bytes}``::

    reader = MemoryReader({"mem://B04.tif": data})
    header = read_header("mem://B04.tif", reader=reader)

The async twins also take ``fetcher=`` (a :class:`RangeFetcher`) to share a reader and its
request counters across calls.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import numpy as np

from rasteret_pipelines.cog.config import FetchConfig, RetryPolicy
from rasteret_pipelines.cog.fetch import DefaultReader, FetchStats, RangeFetcher
from rasteret_pipelines.cog.header import CogHeader, ImageLevel
from rasteret_pipelines.cog.http import HttpReader
from rasteret_pipelines.cog.read import fetch_header, fetch_headers, fetch_windows
from rasteret_pipelines.cog.reader import (
    ByteReader,
    LocalFileReader,
    MemoryReader,
    ObjectVersion,
    RangeResponse,
)
from rasteret_pipelines.errors import ReaderArgumentError

__all__ = [
    "ByteReader",
    "CogHeader",
    "DefaultReader",
    "FetchConfig",
    "FetchStats",
    "HttpReader",
    "ImageLevel",
    "LocalFileReader",
    "MemoryReader",
    "ObjectVersion",
    "RangeFetcher",
    "RangeResponse",
    "RetryPolicy",
    "read_header",
    "read_header_async",
    "read_headers",
    "read_headers_async",
    "read_window",
    "read_window_async",
    "read_windows",
    "read_windows_async",
    "run_sync",
]

T = TypeVar("T")


async def _with_fetcher(fetcher: RangeFetcher | None, config: FetchConfig | None, reader: ByteReader | None, work):
    if fetcher is not None:
        if reader is not None and reader is not fetcher.reader:
            raise ReaderArgumentError("pass either fetcher= or reader=, not both (a fetcher already has its reader)")
        return await work(fetcher)
    async with RangeFetcher(config, reader=reader) as own:
        return await work(own)


async def read_header_async(
    href: str,
    *,
    fetcher: RangeFetcher | None = None,
    config: FetchConfig | None = None,
    reader: ByteReader | None = None,
) -> CogHeader:
    """Async twin of :func:`read_header`."""
    return await _with_fetcher(fetcher, config, reader, lambda f: fetch_header(f, href))


async def read_headers_async(
    hrefs: Sequence[str],
    *,
    fetcher: RangeFetcher | None = None,
    config: FetchConfig | None = None,
    reader: ByteReader | None = None,
) -> list[CogHeader]:
    """Async twin of :func:`read_headers`."""
    return await _with_fetcher(fetcher, config, reader, lambda f: fetch_headers(f, list(hrefs)))


async def read_windows_async(
    requests: Sequence[tuple[CogHeader, Sequence[int]]],
    overview: int = 0,
    *,
    fetcher: RangeFetcher | None = None,
    config: FetchConfig | None = None,
    reader: ByteReader | None = None,
) -> list[np.ndarray]:
    """Async twin of :func:`read_windows`."""
    return await _with_fetcher(fetcher, config, reader, lambda f: fetch_windows(f, list(requests), overview))


async def read_window_async(
    header: CogHeader,
    window: Sequence[int],
    overview: int = 0,
    *,
    fetcher: RangeFetcher | None = None,
    config: FetchConfig | None = None,
    reader: ByteReader | None = None,
) -> np.ndarray:
    """Async twin of :func:`read_window`."""
    result = await read_windows_async([(header, window)], overview, fetcher=fetcher, config=config, reader=reader)
    return result[0]


def read_header(href: str, *, config: FetchConfig | None = None, reader: ByteReader | None = None) -> CogHeader:
    """Read and parse the header of one COG.

    Args:
        href: ``http(s)://`` URL, ``s3://bucket/key`` or a local path (or any href ``reader``
            serves).
        config: Transport settings (retries, concurrency, requester pays, ...).
        reader: Where the bytes come from; None reads through a :class:`DefaultReader`.

    Returns:
        The parsed header, with the object's size and ETag recorded.

    Raises:
        NotATiffError, TiffFormatError, UnsupportedTiffError, CogNotFoundError, FetchError.
    """
    return _run_sync_with(reader, read_header_async(href, config=config, reader=reader))


def read_headers(
    hrefs: Sequence[str], *, config: FetchConfig | None = None, reader: ByteReader | None = None
) -> list[CogHeader]:
    """Read the headers of many COGs concurrently; results in input order."""
    return _run_sync_with(reader, read_headers_async(hrefs, config=config, reader=reader))


def read_window(
    header: CogHeader,
    window: Sequence[int],
    overview: int = 0,
    *,
    config: FetchConfig | None = None,
    reader: ByteReader | None = None,
) -> np.ndarray:
    """Read one window through a (cached) header, with no header request.

    Args:
        header: The file's header, from :func:`read_header` or :meth:`CogHeader.from_dict`.
        window: ``(col_off, row_off, width, height)`` in pixels of the chosen level; parts
            outside the image are filled with nodata (0 when none is set).
        overview: 0 for full resolution, k for the k-th overview.
        config: Transport settings.
        reader: Where the bytes come from; None reads through a :class:`DefaultReader`.

    Returns:
        Array of shape (bands, height, width) in the file's dtype, equal to rasterio's
        ``read(window=..., boundless=True)`` on the same level.

    Raises:
        WindowError, StaleHeaderError, FetchError, TiffFormatError.
    """
    return _run_sync_with(reader, read_window_async(header, window, overview, config=config, reader=reader))


def read_windows(
    requests: Sequence[tuple[CogHeader, Sequence[int]]],
    overview: int = 0,
    *,
    config: FetchConfig | None = None,
    reader: ByteReader | None = None,
) -> list[np.ndarray]:
    """Read many ``(header, window)`` pairs as one concurrent batch; results in order.

    A block needed by several windows is fetched and decoded once; nearby blocks of one file
    are fetched in one request.
    """
    return _run_sync_with(reader, read_windows_async(requests, overview, config=config, reader=reader))


def _run_sync_with(reader: ByteReader | None, coro: Coroutine[Any, Any, T]) -> T:
    """:func:`run_sync` for the synchronous API: its event loop ends with the call, so a bundled
    network reader passed in releases that loop's connections (it reopens on its next read)."""
    if not isinstance(reader, (HttpReader, DefaultReader)):
        return run_sync(coro)

    async def call() -> T:
        try:
            return await coro
        finally:
            await reader.close()

    return run_sync(call())


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code, even inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from a running loop (Jupyter, an async framework): use a private loop in a thread.
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target, name="cog-sync")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]
