"""How the engine fetches bytes: settings, accounting, the default reader.

The engine never talks to storage directly. It asks a :class:`RangeFetcher` for ranges; the
fetcher passes them to a :class:`~rasteret_pipelines.cog.reader.ByteReader` (``get_bytes`` /
``get_byte_ranges``), counts requests, header requests and bytes in :class:`FetchStats` (for
every reader alike), and checks every answer against the object version a cached header
expects, so a changed object raises :class:`~rasteret_pipelines.errors.StaleHeaderError`
instead of being decoded with old offsets.

Without a reader, the fetcher opens a :class:`DefaultReader` from its :class:`FetchConfig`:
hrefs pass :func:`~rasteret_pipelines.hrefs.check_href` (local paths only when
:attr:`FetchConfig.local_files` allows them), then local files go to
:class:`~rasteret_pipelines.cog.reader.LocalFileReader` and ``http(s)://`` / ``s3://`` to
:class:`~rasteret_pipelines.cog.http.HttpReader` (aiohttp, SigV4, retries, redirects without
credentials across origins, deadlines). Pass ``reader=`` to read from anything else:
:class:`~rasteret_pipelines.cog.reader.MemoryReader` in tests, or an object store client.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from rasteret_pipelines.cog.config import FetchConfig
from rasteret_pipelines.cog.http import HttpReader
from rasteret_pipelines.cog.reader import (
    ByteReader,
    LocalFileReader,
    ObjectVersion,
    RangeResponse,
)
from rasteret_pipelines.errors import StaleHeaderError, UnsafeHrefError
from rasteret_pipelines.hrefs import check_href, is_local_href

__all__ = [
    "DefaultReader",
    "FetchConfig",
    "FetchStats",
    "ObjectVersion",
    "RangeFetcher",
    "RangeResponse",
    "check_version",
]


@dataclass
class FetchStats:
    """What one fetcher asked of its reader: the engine's request accounting."""

    requests: int = 0
    """Ranges requested (one GET each from a network reader, retries not included)."""
    header_requests: int = 0
    """Of :attr:`requests`, those reading headers."""
    bytes: int = 0
    """Bytes received."""
    retries: int = 0
    """Attempts the reader repeated after transient faults (readers that retry report them)."""


class DefaultReader:
    """The reader used when none is given: the href policy, then local files or the network.

    Args:
        config: Transport settings; :attr:`FetchConfig.local_files` decides whether local
            paths and ``file://`` hrefs may be read at all.

    A refused href raises :class:`~rasteret_pipelines.errors.UnsafeHrefError` before anything
    is opened. Use as ``async with`` (or call :meth:`close`) to release connections.
    """

    def __init__(self, config: FetchConfig | None = None):
        self.config = config or FetchConfig()
        self.http = HttpReader(self.config)
        """Reader of ``http(s)://`` and ``s3://`` hrefs."""
        self.local = LocalFileReader(self.config.max_concurrency)
        """Reader of local paths and ``file://`` hrefs."""

    @property
    def retries(self) -> int:
        """Attempts repeated by the network reader after transient faults."""
        return self.http.retries

    def _reader_for(self, href: str) -> ByteReader:
        check_href(href, allow_local=self.config.local_files)
        return self.local if is_local_href(href) else self.http

    async def get_bytes(self, href: str, start: int, end: int) -> RangeResponse:
        """Bytes ``[start, end)`` of ``href`` from the reader its scheme selects."""
        return await self._reader_for(href).get_bytes(href, start, end)

    async def get_byte_ranges(self, href: str, ranges: Sequence[tuple[int, int]]) -> list[RangeResponse]:
        """Several ranges of ``href``, answers in input order."""
        return await self._reader_for(href).get_byte_ranges(href, ranges)

    async def close(self) -> None:
        await self.http.close()
        await self.local.close()

    async def __aenter__(self) -> DefaultReader:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class RangeFetcher:
    """The engine's access to bytes for one batch of work (use as ``async with``).

    Args:
        config: Transport and read settings (header read size, coalescing, decode threads);
            defaults when None.
        reader: Where bytes come from (any :class:`~rasteret_pipelines.cog.reader.ByteReader`).
            None opens a :class:`DefaultReader` from ``config``, closed with the fetcher; a
            reader passed in stays open (its owner closes it).

    Attributes:
        stats: Requests, header requests and bytes asked of the reader by this fetcher.
    """

    def __init__(self, config: FetchConfig | None = None, reader: ByteReader | None = None):
        self.config = config or FetchConfig()
        self._owns_reader = reader is None
        self.reader: ByteReader = reader if reader is not None else DefaultReader(self.config)
        self._stats = FetchStats()
        self._retries_before = _reader_retries(self.reader)

    @property
    def stats(self) -> FetchStats:
        self._stats.retries = _reader_retries(self.reader) - self._retries_before
        return self._stats

    async def __aenter__(self) -> RangeFetcher:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the reader if this fetcher opened it."""
        if self._owns_reader:
            await self.reader.close()  # type: ignore[attr-defined]

    async def get_range(
        self,
        href: str,
        start: int,
        end: int,
        *,
        expect: ObjectVersion | None = None,
        header: bool = False,
    ) -> RangeResponse:
        """Bytes ``[start, end)`` of ``href`` (fewer only where the object ends first).

        Args:
            href: ``http(s)://``, ``s3://``, a local path, or whatever the reader serves.
            start: First byte.
            end: One past the last byte.
            expect: Version the caller's cached header was built from; a different size or
                ETag raises :class:`StaleHeaderError`.
            header: Count the request as a header request in :attr:`stats`.

        Raises:
            CogNotFoundError: the object does not exist.
            FetchError: the range could not be fetched after the configured retries.
            StaleHeaderError: the object is not the version ``expect`` describes.
            UnsafeHrefError: a local href while :attr:`FetchConfig.local_files` is off, or an
                unsupported scheme (nothing is opened; default reader).
        """
        async with self._counted(1, header):
            response = await self.reader.get_bytes(href, start, end)
        self._stats.bytes += len(response.data)
        if expect is not None:
            check_version(href, expect, response.version)
        return response

    async def get_ranges(
        self,
        href: str,
        ranges: Sequence[tuple[int, int]],
        *,
        expect: ObjectVersion | None = None,
        header: bool = False,
    ) -> list[RangeResponse]:
        """Several ranges of ``href`` through the reader's ``get_byte_ranges``; see
        :meth:`get_range` for the arguments and errors."""
        if not ranges:
            return []
        async with self._counted(len(ranges), header):
            responses = list(await self.reader.get_byte_ranges(href, list(ranges)))
        self._stats.bytes += sum(len(r.data) for r in responses)
        if expect is not None:
            for response in responses:
                check_version(href, expect, response.version)
        return responses

    @contextlib.asynccontextmanager
    async def _counted(self, n: int, header: bool):
        """Count ``n`` requests, answered or failed; an href the policy refused never left."""
        try:
            yield
        except UnsafeHrefError:
            raise
        except BaseException:
            self._count(n, header)
            raise
        self._count(n, header)

    def _count(self, n: int, header: bool) -> None:
        self._stats.requests += n
        if header:
            self._stats.header_requests += n


def _reader_retries(reader) -> int:
    retries = getattr(reader, "retries", 0)
    return retries if isinstance(retries, int) else 0


def check_version(href: str, expect: ObjectVersion, got: ObjectVersion) -> None:
    """Raise :class:`StaleHeaderError` when ``got`` is not the version ``expect`` describes."""
    if expect.size is not None and got.size is not None and expect.size != got.size:
        raise StaleHeaderError(
            href, f"object is now {got.size} bytes, the cached header says {expect.size}: re-index it"
        )
    if expect.etag and got.etag:
        if expect.etag != got.etag:
            raise StaleHeaderError(href, f"ETag changed from {expect.etag} to {got.etag} since the header was cached")
    elif expect.last_modified and got.last_modified and expect.last_modified != got.last_modified:
        raise StaleHeaderError(
            href,
            f"modified ({got.last_modified}) since the header was cached ({expect.last_modified})",
        )
