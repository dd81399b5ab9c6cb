"""The engine's byte seam: a :class:`ByteReader` protocol and the readers that need no network.

Everything the COG engine reads (headers, tiles) goes through two calls, in the shape of
async-tiff's ``AsyncFileReader`` (``get_bytes`` / ``get_byte_ranges``)::

    response = await reader.get_bytes(href, start, end)            # bytes [start, end)
    responses = await reader.get_byte_ranges(href, [(s0, e0), ...])

Each answer carries the bytes and the :class:`ObjectVersion` (size, ETag, Last-Modified) of
the object they came from, which the engine compares with the version a cached header
recorded, so a changed object is caught before old offsets are decoded.

Readers here: :class:`MemoryReader` (``{href: bytes}``, for tests and in-process data) and
:class:`LocalFileReader` (local paths and ``file://``). The default network reader,
:class:`~rasteret_pipelines.cog.http.HttpReader` (``http(s)://`` and SigV4-signed ``s3://``
through aiohttp), and :class:`~rasteret_pipelines.cog.fetch.DefaultReader` (the href policy, then
local or network) live beside them. Any object with the two methods is a reader:
:class:`~rasteret_pipelines.cog.obstore_reader.ObstoreReader` (optional ``obstore`` extra) is a
plug-in for stores the default reader does not speak (GCS, Azure with their own credentials).

Request accounting (requests, header requests, bytes) and version checks are done once, for
every reader, by :class:`~rasteret_pipelines.cog.fetch.RangeFetcher`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from urllib.parse import unquote, urlparse

from rasteret_pipelines.errors import CogNotFoundError, FetchError, UnsafeHrefError
from rasteret_pipelines.hrefs import is_local_href

__all__ = [
    "ByteReader",
    "LocalFileReader",
    "MemoryReader",
    "ObjectVersion",
    "RangeResponse",
    "ReadRecord",
]


@dataclass(frozen=True)
class ObjectVersion:
    """Size and ETag (or modification time) identifying one version of an object."""

    size: int | None
    """Object size in bytes, or None when the store did not say."""
    etag: str | None
    """ETag as the store sent it (quotes included), or None."""
    last_modified: str | None
    """Last-Modified (HTTP date; local files: ``st_mtime_ns``), or None."""


@dataclass
class RangeResponse:
    """The bytes of one range and the version of the object they came from."""

    data: bytes
    """Bytes ``[start, end)``; fewer only where the object ends first."""
    version: ObjectVersion
    """Version of the object that answered."""


@runtime_checkable
class ByteReader(Protocol):
    """Where the engine's bytes come from (passed in as ``reader=``).

    ``end`` is exclusive. A reader returns fewer bytes than asked only where the object ends
    first, raises :class:`~rasteret_pipelines.errors.CogNotFoundError` for a missing object and
    :class:`~rasteret_pipelines.errors.FetchError` when the range cannot be read. Readers are
    used from whatever event loop the caller runs (each synchronous call runs its own).
    """

    async def get_bytes(self, href: str, start: int, end: int) -> RangeResponse:
        """Bytes ``[start, end)`` of ``href`` and the version of the object."""
        ...

    async def get_byte_ranges(self, href: str, ranges: Sequence[tuple[int, int]]) -> list[RangeResponse]:
        """Several ranges of one object, answers in input order."""
        ...


async def gather_ranges(reader: ByteReader, href: str, ranges: Sequence[tuple[int, int]]) -> list[RangeResponse]:
    """``get_byte_ranges`` for readers without a better one: the ranges fetched concurrently."""
    return list(await asyncio.gather(*(reader.get_bytes(href, s, e) for s, e in ranges)))


@dataclass(frozen=True)
class ReadRecord:
    """One range a :class:`MemoryReader` served (the reader's request log)."""

    href: str
    start: int
    end: int
    """Exclusive end, as asked."""


class MemoryReader:
    """Objects held in memory, ``{href: bytes}``: a store for tests and in-process data.

    It behaves like an object store where the engine can tell the difference: a missing href
    raises :class:`~rasteret_pipelines.errors.CogNotFoundError`, ranges past the end come back
    short, and every object has a size and a content ETag, so replacing an object (:meth:`put`)
    makes a cached header stale. Every range served is logged in :attr:`requests` (what a
    server's access log would show), so tests assert request counts and ranges without a server.

    Example::

        reader = MemoryReader({"https://example.test/B04.tif": path.read_bytes()})
        header = read_header("https://example.test/B04.tif", reader=reader)
        assert reader.count() == 1
    """

    def __init__(self, objects: Mapping[str, bytes] | None = None):
        self._objects: dict[str, tuple[bytes, str]] = {}
        self.requests: list[ReadRecord] = []
        """Every range served, in order (cleared by :meth:`reset_log`)."""
        for href, data in (objects or {}).items():
            self.put(href, data)

    def put(self, href: str, data: bytes) -> str:
        """Store (or replace) ``href``; returns its new ETag."""
        data = bytes(data)
        etag = '"' + hashlib.blake2b(data, digest_size=12).hexdigest() + '"'
        self._objects[href] = (data, etag)
        return etag

    def remove(self, href: str) -> None:
        """Delete ``href`` (later reads raise :class:`CogNotFoundError`)."""
        self._objects.pop(href, None)

    def etag_for(self, href: str) -> str:
        """The current ETag of ``href``."""
        return self._objects[href][1]

    def __contains__(self, href: object) -> bool:
        return href in self._objects

    def count(self, href: str | None = None) -> int:
        """Ranges served (of ``href`` only, when given) since the last :meth:`reset_log`."""
        return sum(1 for r in self.requests if href is None or r.href == href)

    def reset_log(self) -> None:
        """Forget the request log."""
        self.requests.clear()

    async def get_bytes(self, href: str, start: int, end: int) -> RangeResponse:
        if start < 0 or end < start:
            raise FetchError(href, f"invalid byte range {start}-{end}")
        self.requests.append(ReadRecord(href, start, end))  # logged like a 404 in an access log
        try:
            data, etag = self._objects[href]
        except KeyError:
            raise CogNotFoundError(href, "no such object in the memory reader") from None
        return RangeResponse(data[start:end], ObjectVersion(len(data), etag, None))

    async def get_byte_ranges(self, href: str, ranges: Sequence[tuple[int, int]]) -> list[RangeResponse]:
        return [await self.get_bytes(href, s, e) for s, e in ranges]

    async def close(self) -> None:
        """Nothing to release (for symmetry with the network readers)."""

    async def __aenter__(self) -> MemoryReader:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def local_path(href: str) -> str:
    """The file system path of a local href (a plain path or a ``file://`` URL)."""
    return unquote(urlparse(href).path) if href.startswith("file://") else href


class LocalFileReader:
    """Local paths and ``file://`` URLs, read with ``pread`` on worker threads.

    The version of a file is its size and modification time (``st_mtime_ns``). It reads any
    local path it is given: the href policy (whether local hrefs may be read at all) is applied
    before it, by :class:`~rasteret_pipelines.cog.fetch.DefaultReader`.
    """

    def __init__(self, max_concurrency: int = 64):
        self.max_concurrency = max_concurrency
        self._sem: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._sem is None or self._loop is not loop:  # one per event loop
            self._sem, self._loop = asyncio.Semaphore(self.max_concurrency), loop
        return self._sem

    async def get_bytes(self, href: str, start: int, end: int) -> RangeResponse:
        if not is_local_href(href):
            raise UnsafeHrefError(href, "the local file reader reads only paths and file:// URLs")
        path = local_path(href)

        def read() -> RangeResponse:
            try:
                with open(path, "rb") as fh:
                    st = os.fstat(fh.fileno())
                    data = os.pread(fh.fileno(), max(0, end - start), start)
            except FileNotFoundError as exc:
                raise CogNotFoundError(href, "no such file") from exc
            except OSError as exc:
                raise FetchError(href, f"cannot read file: {exc.strerror}") from exc
            return RangeResponse(data, ObjectVersion(st.st_size, None, str(st.st_mtime_ns)))

        async with self._semaphore():
            return await asyncio.to_thread(read)

    async def get_byte_ranges(self, href: str, ranges: Sequence[tuple[int, int]]) -> list[RangeResponse]:
        return await gather_ranges(self, href, ranges)

    async def close(self) -> None:
        """Nothing to release: files are opened per read."""
