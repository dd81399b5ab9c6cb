"""The network reader: ``http(s)://`` through aiohttp, ``s3://`` signed with SigV4 (botocore).

:class:`HttpReader` is a :class:`~rasteret_pipelines.cog.reader.ByteReader`. It holds one aiohttp
session (connections are reused), bounds concurrency with a semaphore, and retries transient
faults (5xx, 429, resets, truncated bodies) by the library's one
:class:`~rasteret_pipelines.cog.config.RetryPolicy` (``FetchConfig.retry_policy``): capped exponential
backoff with full jitter, a server's ``Retry-After`` honoured.

Endpoint, region, profile and credentials come from :func:`rasteret_pipelines.s3config.s3_config`,
the one S3 configuration that storage uses too. Credentials only ever live in request headers: they
are never logged, stored in a header, or put in an error message. Redirects are followed here,
not by aiohttp: a redirect to another origin (scheme, host or port) drops every credential
header (``Authorization``, ``X-Amz-Security-Token`` and every other ``x-amz-*``, ``Cookie``),
and no cookie jar is kept. It reads only ``http(s)://`` and ``s3://`` hrefs.

Time is bounded per attempt: :attr:`FetchConfig.idle_timeout` seconds without a byte (a silent
server), :attr:`FetchConfig.read_timeout` for the whole attempt, and a range that timed out
more than :attr:`FetchConfig.timeout_retries` + 1 times fails, so a server that accepts
connections and never answers costs seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from urllib.parse import quote, urlparse

import aiohttp
from yarl import URL

from rasteret_pipelines.cog.config import FetchConfig
from rasteret_pipelines.cog.reader import ObjectVersion, RangeResponse, gather_ranges
from rasteret_pipelines.errors import CogNotFoundError, FetchError
from rasteret_pipelines.hrefs import check_href
from rasteret_pipelines.s3config import S3Config, s3_config

__all__ = ["CREDENTIAL_HEADERS", "HttpReader", "strip_credentials"]

log = logging.getLogger(__name__)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
"""Headers dropped on a redirect to another origin, with every ``x-amz-*`` header."""
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


DEFAULT_BUCKET_REGION = "us-west-2"
"""Region of a bucket when nothing configures one (Earth Search's buckets); a bucket in another
region answers with its own (``x-amz-bucket-region``), which is then used."""

_BUCKET_REGIONS: dict[str | None, dict[str, str]] = {}
"""Regions learned from S3's answers, per endpoint (None: AWS's own), then per bucket."""


def _s3_settings(config: FetchConfig) -> S3Config:
    """The S3 configuration of ``config``'s reads: the one storage uses too (:func:`s3_config`)."""
    return s3_config(region=config.aws_region, requester_pays=config.requester_pays, unsigned=config.aws_unsigned)


class HttpReader:
    """``http(s)://`` and ``s3://`` ranges through one aiohttp session (use as ``async with``).

    Args:
        config: Retries, timeouts, concurrency and S3 options
            (:class:`~rasteret_pipelines.cog.config.FetchConfig`); defaults when None.

    Attributes:
        retries: Attempts repeated after a transient fault, over the reader's life.

    The session belongs to the event loop that opened it. :meth:`close` releases it and the
    reader stays usable: its next read opens a new session, also from another event loop (the
    synchronous API, whose calls each run their own loop, closes it at the end of each call).
    """

    def __init__(self, config: FetchConfig | None = None):
        self.config = config if config is not None else FetchConfig()
        self.retry_policy = self.config.retry_policy
        """The retry policy applied to every range (from ``config``)."""
        self.retries = 0
        self._session: aiohttp.ClientSession | None = None
        self._sem: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> HttpReader:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session (and its connections) if one is open in this event loop."""
        session, self._session = self._session, None
        if session is not None and self._loop is asyncio.get_running_loop():
            await session.close()
        elif session is not None:
            session.detach()  # opened by a loop that is gone; its sockets went with it

    def _bind(self) -> None:
        """Session and semaphore for the running event loop (new ones after a loop change)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._session is not None:
            self._session.detach()
            self._session = None
        self._loop = loop
        self._sem = asyncio.Semaphore(self.config.max_concurrency)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(
                total=self.config.read_timeout,
                sock_connect=self.config.connect_timeout,
                sock_read=self.config.idle_timeout,
            )
            connector = aiohttp.TCPConnector(
                limit=self.config.max_concurrency, ttl_dns_cache=300, enable_cleanup_closed=True
            )
            self._session = aiohttp.ClientSession(
                timeout=timeout,
                connector=connector,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),  # no cookie is ever stored or sent back
            )
        return self._session

    async def get_byte_ranges(self, href: str, ranges: Sequence[tuple[int, int]]) -> list[RangeResponse]:
        """Several ranges of ``href``, fetched concurrently (one request each)."""
        return await gather_ranges(self, href, ranges)

    async def get_bytes(self, href: str, start: int, end: int) -> RangeResponse:
        """Bytes ``[start, end)`` of ``href`` (fewer only where the object ends first).

        Raises:
            CogNotFoundError: the object does not exist.
            FetchError: the range could not be fetched after the configured retries.
            UnsafeHrefError: not an ``http(s)://`` or ``s3://`` href (nothing is opened).
        """
        check_href(href, allow_local=False)
        self._bind()
        scheme = href.split("://", 1)[0].lower()
        want = end - start
        last_error = "no attempt made"
        policy = self.retry_policy
        attempts = policy.max_retries + 1
        region_redirects = 0
        timeouts = 0
        attempt = 0
        retry_after: str | None = None
        while attempt < attempts:
            if attempt:
                self.retries += 1
                await asyncio.sleep(policy.delay(attempt, retry_after))
            attempt += 1
            retry_after = None
            url, headers = self._request(href, scheme, start, end)
            try:
                async with self._sem:
                    async with asyncio.timeout(self.config.read_timeout):
                        outcome = await self._attempt(href, url, headers, start, end, want)
            except (TimeoutError, aiohttp.ClientError, _Truncated) as exc:
                last_error = _describe(exc)
                if isinstance(exc, asyncio.TimeoutError):
                    timeouts += 1
                    if timeouts > policy.timeout_retries:
                        raise FetchError(
                            href,
                            f"bytes {start}-{end - 1}: no complete answer in {timeouts} attempts "
                            f"(idle_timeout {self.config.idle_timeout:g} s, read_timeout "
                            f"{self.config.read_timeout:g} s per attempt)",
                        ) from None
                continue
            if isinstance(outcome, RangeResponse):
                return outcome
            status, region, retry_after = outcome
            # Non-success statuses.
            if scheme == "s3" and region and status in (301, 307, 400) and region_redirects < 2:
                bucket = urlparse(href).netloc
                _BUCKET_REGIONS.setdefault(_s3_settings(self.config).endpoint_url, {})[bucket] = region
                region_redirects += 1
                attempt -= 1
                continue
            if status == 404:
                raise CogNotFoundError(href, "object not found (HTTP 404)")
            if status == 416:
                raise FetchError(href, f"bytes {start}-{end - 1} are past the end of the object (HTTP 416)")
            if status in (401, 403):
                hint = ""
                if scheme == "s3" and not self.config.requester_pays:
                    hint = "; requester-pays buckets need requester_pays=True"
                raise FetchError(href, f"access denied (HTTP {status}){hint}")
            if policy.retries_status(status):
                last_error = f"HTTP {status}"
                continue
            if status in REDIRECT_STATUSES:
                raise FetchError(
                    href,
                    f"more than {self.config.max_redirects} redirects, or one without a "
                    f"usable http(s) Location (HTTP {status})",
                )
            raise FetchError(href, f"unexpected HTTP {status} for bytes {start}-{end - 1}")
        raise FetchError(href, f"bytes {start}-{end - 1} failed after {attempts} attempts (last: {last_error})")

    async def _attempt(self, href, url, headers: dict, start: int, end: int, want: int):
        """One attempt, following redirects here: credential headers never cross origins.

        Returns the :class:`RangeResponse`, or ``(status, bucket region, Retry-After)`` of a
        response that is not a success (nor a redirect that could be followed).
        """
        url = URL(url) if isinstance(url, str) else url
        hops = 0
        while True:
            async with self._http().get(url, headers=headers, allow_redirects=False) as resp:
                status = resp.status
                if status in (200, 206):
                    # Never more than the range (206) or than its end (200: the server ignored
                    # Range): a hostile or broken server cannot make a read buffer gigabytes.
                    limit = want + 1 if status == 206 else end
                    body = await _read_at_most(resp.content, limit)
                    return _accept(href, resp, body, start, end, want)
                region = resp.headers.get("x-amz-bucket-region")
                location = resp.headers.get("Location")
                retry_after = resp.headers.get("Retry-After")
                await resp.content.read(1 << 16)  # an error page, at most 64 KiB of it
            if status not in REDIRECT_STATUSES or not location or region:
                return status, region, retry_after
            if hops >= self.config.max_redirects:
                return status, region, retry_after
            try:
                target = url.join(URL(location))
            except ValueError:
                return status, region, retry_after
            if target.scheme not in ("http", "https") or not target.host:
                return status, region, retry_after
            if _origin(target) != _origin(url):
                headers = strip_credentials(headers)
            url = target
            hops += 1

    def _request(self, href: str, scheme: str, start: int, end: int) -> tuple[URL | str, dict]:
        headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        if scheme != "s3":
            return href, headers
        return self._s3_request(href, headers)

    def _s3_request(self, href: str, headers: dict) -> tuple[URL, dict]:
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest

        parsed = urlparse(href)
        bucket, key = parsed.netloc, parsed.path.lstrip("/")
        s3 = _s3_settings(self.config)
        learned = _BUCKET_REGIONS.get(s3.endpoint_url, {})
        region = learned.get(bucket) or s3.region or DEFAULT_BUCKET_REGION
        quoted = quote(key, safe="/~")
        if s3.endpoint_url:
            url = f"{s3.endpoint_url.rstrip('/')}/{bucket}/{quoted}"
        elif "." in bucket:
            url = f"https://s3.{region}.amazonaws.com/{bucket}/{quoted}"
        else:
            url = f"https://{bucket}.s3.{region}.amazonaws.com/{quoted}"
        if s3.requester_pays:
            headers["x-amz-request-payer"] = "requester"
        if not s3.unsigned:
            if s3.credentials is None:
                raise FetchError(
                    href,
                    "no AWS credentials found (environment, ~/.aws/credentials or profile); "
                    "set them, or read public buckets with aws_unsigned=True",
                )
            request = AWSRequest(method="GET", url=url, headers=dict(headers))
            S3SigV4Auth(s3.credentials.get_frozen_credentials(), "s3", region).add_auth(request)
            headers = dict(request.headers.items())
        return URL(url, encoded=True), headers


def _accept(href, resp, body: bytes, start: int, end: int, want: int) -> RangeResponse:
    etag = resp.headers.get("ETag")
    last_modified = resp.headers.get("Last-Modified")
    if resp.status == 206:
        match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if match is None:
            raise _Truncated("206 without a usable Content-Range")
        got_start, got_end = int(match.group(1)), int(match.group(2))
        size = None if match.group(3) == "*" else int(match.group(3))
        expected = min(end, size) - start if size is not None else want
        if len(body) > want or got_end - got_start + 1 > want:
            raise FetchError(href, f"asked for {want} bytes at {start}, the server sent more (206)")
        if got_start != start or len(body) != got_end - got_start + 1 or len(body) < expected:
            raise _Truncated(f"got {len(body)} of {expected} bytes")
        data = body
    else:  # 200: the server ignored Range and sends the whole object; only its start is read
        declared = resp.headers.get("Content-Length")
        size = int(declared) if declared is not None and declared.isdigit() else None
        if size is None and len(body) < end:
            size = len(body)  # the whole object arrived
        if len(body) < (min(end, size) if size is not None else end):
            raise _Truncated(f"got {len(body)} of {min(end, size) if size is not None else end} bytes")
        data = body[start:end]
    return RangeResponse(data, ObjectVersion(size, etag, last_modified))


async def _read_at_most(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """Up to ``limit`` bytes of a body (all of it when shorter), without reading further."""
    chunks: list[bytes] = []
    got = 0
    while got < limit:
        chunk = await stream.read(limit - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _origin(url: URL) -> tuple[str, str, int | None]:
    return (url.scheme.lower(), (url.host or "").lower(), url.port)


def strip_credentials(headers: dict) -> dict:
    """``headers`` without credentials: auth, cookies and every ``x-amz-*`` header."""
    return {
        k: v for k, v in headers.items() if k.lower() not in CREDENTIAL_HEADERS and not k.lower().startswith("x-amz-")
    }


class _Truncated(Exception):
    """A response body shorter than the range asked for (retried)."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc).split("\n", 1)[0]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
