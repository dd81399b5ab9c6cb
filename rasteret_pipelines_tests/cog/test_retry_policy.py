"""The one retry policy (``cog/config.py``) and the COG reader that applies it.

Oracles: RFC 9110 section 10.2.3 for ``Retry-After`` (delay-seconds or an HTTP date), and the
range server's request log for the attempts the reader makes.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from dataclasses import dataclass, field

import pytest

from rasteret_pipelines.cog import FetchConfig, HttpReader
from rasteret_pipelines.cog.config import RETRY_STATUSES, RetryPolicy, parse_retry_after
from rasteret_pipelines.errors import FetchError
from rasteret_pipelines_demo.range_server import FaultPlan, RangeServer


@dataclass(frozen=True)
class RecordingPolicy(RetryPolicy):
    """A policy that records every ``delay`` asked of it and never sleeps."""

    asked: list = field(default_factory=list, compare=False)

    def delay(self, retry: int, retry_after: str | None = None) -> float:
        self.asked.append((retry, retry_after))
        return 0.0


def test_retry_after_seconds_and_dates_follow_rfc_9110():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 7 ") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 3600, usegmt=True)  # an IMF-fixdate an hour ahead
    assert 3500 < parse_retry_after(later) <= 3600
    past = email.utils.formatdate(time.time() - 3600, usegmt=True)
    assert parse_retry_after(past) == 0.0


def test_delay_honours_retry_after_up_to_the_cap_and_backs_off_without_it():
    policy = RetryPolicy(backoff_base=0.5, backoff_max=4.0)
    assert policy.delay(1, "2") == 2.0
    assert policy.delay(1, "3600") == 4.0  # never longer than one capped sleep
    for retry, cap in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        delays = [policy.delay(retry) for _ in range(50)]
        assert all(0 <= d <= cap for d in delays), (retry, max(delays))
    assert all(0 <= policy.delay(3, "not a date") <= 2.0 for _ in range(50))


def test_retried_statuses():
    policy = RetryPolicy()
    assert policy.statuses == RETRY_STATUSES
    assert all(policy.retries_status(s) for s in (408, 425, 429, 500, 502, 503, 504, 599))
    assert not any(policy.retries_status(s) for s in (200, 206, 301, 400, 401, 403, 404, 416))


def test_fetch_config_carries_the_policy():
    config = FetchConfig(max_retries=2, timeout_retries=0, backoff_base=0.01, backoff_max=0.02)
    assert config.retry_policy == RetryPolicy(max_retries=2, timeout_retries=0, backoff_base=0.01, backoff_max=0.02)
    default = RetryPolicy()
    assert (FetchConfig().max_retries, FetchConfig().timeout_retries) == (default.max_retries, default.timeout_retries)
    assert HttpReader(config).retry_policy == config.retry_policy


@pytest.fixture
def server(tmp_path):
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 64)
    with RangeServer(tmp_path) as srv:
        yield srv


async def _read(reader: HttpReader, url: str) -> bytes:
    async with reader:
        return (await reader.get_bytes(url, 0, 100)).data


@pytest.mark.parametrize("kind", ["503", "429", "500"])
def test_the_reader_makes_max_retries_plus_one_attempts_and_honours_retry_after(server, kind):
    reader = HttpReader(FetchConfig(max_retries=3))
    reader.retry_policy = policy = RecordingPolicy(max_retries=3)
    server.faults = FaultPlan(rate=1.0, kinds=[kind])
    with pytest.raises(FetchError, match="4 attempts"):
        asyncio.run(_read(reader, server.url_for("blob.bin")))
    assert server.count("GET") == 4
    # The server answers every fault with ``Retry-After: 0``: each retry's sleep is asked with it.
    assert policy.asked == [(1, "0"), (2, "0"), (3, "0")]
    assert reader.retries == 3


def test_the_reader_stops_retrying_once_the_server_recovers(server):
    reader = HttpReader()
    reader.retry_policy = policy = RecordingPolicy(max_retries=5)
    server.faults = FaultPlan(rate=1.0, kinds=["503"], max_faults=2)
    data = asyncio.run(_read(reader, server.url_for("blob.bin")))
    assert data == (bytes(range(256)) * 64)[:100]
    assert server.count("GET") == 3 and len(policy.asked) == 2


def test_a_status_outside_the_policy_is_not_retried(server):
    reader = HttpReader()
    reader.retry_policy = policy = RecordingPolicy(statuses=frozenset({429}))
    server.faults = FaultPlan(rate=1.0, kinds=["503"])
    with pytest.raises(FetchError, match="unexpected HTTP 503"):
        asyncio.run(_read(reader, server.url_for("blob.bin")))
    assert server.count("GET") == 1 and policy.asked == []
