"""A :class:`~rasteret_pipelines.cog.reader.ByteReader` over `obstore <https://developmentseed.org/obstore/>`_:
an optional plug-in for stores the default reader does not speak.

The project's own S3 traffic has one client family, botocore + aiohttp: COG reads through
:class:`~rasteret_pipelines.cog.http.HttpReader`, storage through s3fs
(:mod:`rasteret_pipelines.storage`); none of it goes through this module. Use it for stores we
don't speak, such as Google Cloud Storage or Azure Blob Storage with their own credentials
(obstore, Rust's ``object_store``, speaks both), passed as ``reader=`` to a read. Their hrefs
are ``https://`` (the href policy, :mod:`rasteret_pipelines.hrefs`, reads no other remote
scheme than ``http(s)://`` and ``s3://``). :class:`ObstoreReader` maps hrefs to stores by
prefix: an href starting with a registered prefix is read from that store, at the path that
follows it::

    from obstore.store import GCSStore
    reader = ObstoreReader({"https://storage.googleapis.com/my-bucket/": GCSStore("my-bucket")})
    ds = read_geometries(collection, aois, ["red", "nir"], reader=reader)

or, for one store, ``ObstoreReader.from_url(url, **config)``.
Every range is one ``obstore.get_async`` with a range option, so the answer carries the object's
size, ETag and modification time, which the engine compares with the cached header's. Missing
objects raise :class:`~rasteret_pipelines.errors.CogNotFoundError`, other store errors
:class:`~rasteret_pipelines.errors.FetchError`; an href under no registered prefix is refused
(:class:`~rasteret_pipelines.errors.FetchError`) without touching any store. The href policy
(:func:`~rasteret_pipelines.hrefs.check_href`) is applied by the callers, as for every reader.

obstore is an optional dependency (``pip install rasteret-pipelines[obstore]``), imported when
a reader is made from a URL or first reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from rasteret_pipelines.cog.reader import ObjectVersion, RangeResponse
from rasteret_pipelines.errors import CogNotFoundError, FetchError

__all__ = ["ObstoreReader"]


def _obstore():
    try:
        import obstore
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("ObstoreReader needs obstore: pip install 'rasteret-pipelines[obstore]'") from exc
    return obstore


class ObstoreReader:
    """Read byte ranges through obstore stores, chosen by href prefix (longest prefix wins).

    Args:
        stores: ``{href prefix: obstore store}``, e.g. ``{"s3://bucket/": S3Store("bucket")}``.
            The object path is the href with the prefix removed (percent-encoding kept).
        max_concurrency: Ranges in flight at once through this reader.
    """

    def __init__(self, stores: Mapping[str, object], *, max_concurrency: int = 64):
        if not stores:
            raise ValueError("ObstoreReader needs at least one {href prefix: store}")
        self.stores = dict(sorted(stores.items(), key=lambda kv: -len(kv[0])))
        self.max_concurrency = max_concurrency
        self._sem: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_url(cls, url: str, *, max_concurrency: int = 64, **config) -> ObstoreReader:
        """One store made by ``obstore.store.from_url(url, **config)`` serving hrefs under ``url``."""
        store = _obstore().store.from_url(url, **config)
        prefix = url if url.endswith("/") else url + "/"
        return cls({prefix: store}, max_concurrency=max_concurrency)

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._sem is None or self._loop is not loop:  # one per event loop
            self._sem, self._loop = asyncio.Semaphore(self.max_concurrency), loop
        return self._sem

    def _locate(self, href: str) -> tuple[object, str]:
        for prefix, store in self.stores.items():
            if href.startswith(prefix) and len(href) > len(prefix):
                return store, href[len(prefix) :]
        raise FetchError(href, f"no obstore store is registered for this href (prefixes: {list(self.stores)})")

    async def get_bytes(self, href: str, start: int, end: int) -> RangeResponse:
        """Bytes ``[start, end)`` of ``href`` (fewer where the object ends first)."""
        if start < 0 or end < start:
            raise FetchError(href, f"invalid byte range {start}-{end}")
        store, path = self._locate(href)
        obstore = _obstore()
        if end == start:
            meta = await self._call(href, obstore.head_async(store, path))
            return RangeResponse(b"", _version(meta))
        async with self._semaphore():
            result = await self._call(href, obstore.get_async(store, path, options={"range": (start, end)}))
            data = await self._call(href, result.bytes_async())
        return RangeResponse(bytes(data), _version(result.meta))

    async def get_byte_ranges(self, href: str, ranges: Sequence[tuple[int, int]]) -> list[RangeResponse]:
        """Several ranges of ``href``, fetched concurrently (one request each), in input order."""
        return list(await asyncio.gather(*(self.get_bytes(href, s, e) for s, e in ranges)))

    async def close(self) -> None:
        """Nothing to release: obstore stores manage their own connections."""

    @staticmethod
    async def _call(href: str, awaitable):
        try:
            return await awaitable
        except FileNotFoundError as exc:  # obstore's NotFoundError
            raise CogNotFoundError(href, "object not found (obstore)") from exc
        except Exception as exc:  # obstore raises its own error types per store
            message = str(exc).split("\n", 1)[0]
            raise FetchError(href, f"obstore {type(exc).__name__}: {message}") from exc


def _version(meta) -> ObjectVersion:
    modified = meta.get("last_modified")
    return ObjectVersion(
        meta.get("size"),
        meta.get("e_tag"),
        modified.isoformat() if modified is not None else None,
    )
