"""How reads talk to storage: :class:`FetchConfig`, and :class:`RetryPolicy`, the one retry policy.

Every network request of the library is retried by one policy. :class:`RetryPolicy` says how
many times a request is repeated, after how long, on which answers and faults, and how a
server's ``Retry-After`` is honoured. Two clients apply it:

* :class:`~rasteret_pipelines.cog.http.HttpReader` (aiohttp: COG ranges over ``http(s)://`` and
  ``s3://``) runs its attempt loop with :meth:`RetryPolicy.retries_status` and
  :meth:`RetryPolicy.delay`;
* :func:`~rasteret_pipelines.collections.search.search_items` (pystac-client over requests)
  translates it once into a urllib3 ``Retry`` whose sleeps also come from
  :meth:`RetryPolicy.delay`.

This module imports no third-party package, so both clients (and the settings of the Dagster
layer) can depend on it without depending on each other.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

__all__ = ["RETRY_STATUSES", "FetchConfig", "RetryPolicy"]

RETRY_STATUSES = frozenset({408, 425, 429, *range(500, 600)})
"""HTTP statuses that are retried: timeouts, too early, too many requests, and every 5xx."""


@dataclass(frozen=True)
class RetryPolicy:
    """When and how a failed request is repeated.

    A request is retried after a status in :attr:`statuses`, a connection error, or a body cut
    short, at most :attr:`max_retries` times; a request whose answer timed out is retried at
    most :attr:`timeout_retries` times, because a silent server rarely wakes up. Between
    attempts the client sleeps :meth:`delay` seconds.
    """

    max_retries: int = 5
    """Retries of one request after a transient fault (so at most ``max_retries + 1`` attempts)."""
    timeout_retries: int = 1
    """Of those, retries after attempts that timed out: a server that accepts a connection and
    never answers costs ``timeout_retries + 1`` deadlines, not ``max_retries + 1``."""
    backoff_base: float = 0.1
    """First backoff in seconds; doubles per retry, with full jitter."""
    backoff_max: float = 5.0
    """Cap of one sleep in seconds, a server's ``Retry-After`` included."""
    statuses: frozenset[int] = RETRY_STATUSES
    """HTTP statuses answered by a retry."""

    def retries_status(self, status: int) -> bool:
        """Whether an answer with HTTP ``status`` is retried."""
        return status in self.statuses

    def backoff(self, retry: int) -> float:
        """Seconds before retry number ``retry`` (1 for the first): full jitter over a capped doubling."""
        cap = min(self.backoff_max, self.backoff_base * (2 ** max(retry - 1, 0)))
        return random.uniform(0, cap)

    def delay(self, retry: int, retry_after: str | None = None) -> float:
        """Seconds to sleep before retry number ``retry`` (1 for the first).

        A server's ``Retry-After`` (seconds, or an HTTP date) is honoured up to
        :attr:`backoff_max`; without one (or with one that does not parse) the jittered
        :meth:`backoff` applies.
        """
        seconds = parse_retry_after(retry_after)
        if seconds is None:
            return self.backoff(retry)
        return min(seconds, self.backoff_max)


def parse_retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds from now (RFC 9110: delay-seconds or an HTTP date)."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    parsed = email.utils.parsedate_tz(text)
    if parsed is None:
        return None
    return max(0.0, email.utils.mktime_tz(parsed) - time.time())


_RETRY = RetryPolicy()


@dataclass(frozen=True)
class FetchConfig:
    """How reads talk to storage. Defaults suit public S3/HTTPS buckets from one machine."""

    max_concurrency: int = 64
    """Requests in flight at once (also the connection pool size)."""
    max_retries: int = _RETRY.max_retries
    """Retries of one range after a transient fault, before :class:`FetchError`
    (:attr:`RetryPolicy.max_retries`)."""
    backoff_base: float = _RETRY.backoff_base
    """First backoff in seconds; doubles per retry, with full jitter (:attr:`RetryPolicy.backoff_base`)."""
    backoff_max: float = _RETRY.backoff_max
    """Cap of one sleep between attempts in seconds (:attr:`RetryPolicy.backoff_max`)."""
    connect_timeout: float = 10.0
    """Seconds to open a connection."""
    read_timeout: float = 30.0
    """Deadline in seconds of one request attempt, redirects and body included."""
    idle_timeout: float = 5.0
    """Seconds without receiving a byte (waiting for the status line or inside the body)
    before the attempt is abandoned: a server that accepts and never answers."""
    timeout_retries: int = _RETRY.timeout_retries
    """Retries of a range after timed-out attempts (:attr:`RetryPolicy.timeout_retries`): a
    silent server fails after ``timeout_retries + 1`` idle timeouts, not ``max_retries + 1``
    read timeouts."""
    max_redirects: int = 5
    """HTTP redirects followed per attempt (credential headers never cross origins)."""
    local_files: bool = True
    """Let the default reader read local paths and ``file://`` hrefs. True for the engine called
    on a path; the indexer and the geometry reader turn it off unless the collection opted in (``allow_local_hrefs``)."""
    max_read_memory: int | None = None
    """Bytes a geometry read may allocate, estimated before any request; None means the
    ``RASTERET_MAX_READ_MEMORY`` environment variable, else 75% of physical memory."""
    header_read_bytes: int = 65536
    """Bytes asked for in the first header request (covers GDAL COG headers of large scenes)."""
    coalesce_gap: int = 256 * 1024
    """Blocks whose gap in the file is at most this many bytes are fetched in one request."""
    max_request_bytes: int = 32 * 1024 * 1024
    """A coalesced request is not grown past this size (keeps requests parallel)."""
    requester_pays: bool = False
    """Send ``x-amz-request-payer: requester`` on ``s3://`` reads (Landsat on S3)."""
    aws_region: str | None = None
    """Region of ``s3://`` buckets; defaults to the AWS configuration
    (:func:`rasteret_pipelines.s3config.s3_config`: ``AWS_REGION``, ``AWS_DEFAULT_REGION``, the
    profile's), then us-west-2."""
    aws_unsigned: bool = False
    """Read ``s3://`` objects anonymously (public buckets) instead of signing."""
    decode_threads: int | None = None
    """Threads decoding blocks; None means one per CPU."""

    @property
    def retry_policy(self) -> RetryPolicy:
        """The retry policy of these settings (the same one for COG reads and STAC searches)."""
        return RetryPolicy(
            max_retries=self.max_retries,
            timeout_retries=self.timeout_retries,
            backoff_base=self.backoff_base,
            backoff_max=self.backoff_max,
        )
