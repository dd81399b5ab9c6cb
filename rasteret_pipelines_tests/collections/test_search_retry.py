"""STAC searches are retried by the library's one policy (``cog/config.py``), like COG reads.

The STAC server injects faults on ``/search`` and logs every request: the attempts are counted
there, and the sleeps are asked of the policy (never measured).
"""

from __future__ import annotations

import datetime as dt
import functools

import pytest

from rasteret_pipelines.cog import FetchConfig
from rasteret_pipelines.collections import build_collection
from rasteret_pipelines.collections.search import Month, search_items, stac_retry
from rasteret_pipelines.collections.sources import get_source
from rasteret_pipelines.errors import StacApiError
from rasteret_pipelines_demo.range_server import FaultPlan
from rasteret_pipelines_tests.cog.test_retry_policy import RecordingPolicy
from rasteret_pipelines_tests.collections.conftest import july_2025_items

JULY = Month("2025-07", dt.date(2025, 7, 1), dt.date(2025, 7, 31))


@pytest.fixture
def stac(stac_for, mirror):
    return stac_for([mirror.publish(i) for i in july_2025_items()])


@pytest.mark.parametrize("kind", ["503", "429", "500"])
def test_a_search_makes_max_retries_plus_one_attempts_and_honours_retry_after(stac, kind):
    policy = RecordingPolicy(max_retries=3)
    stac.faults = FaultPlan(rate=1.0, kinds=[kind])
    with pytest.raises(StacApiError, match=kind):
        search_items(get_source("sentinel-2-l2a"), JULY, stac_url=stac.url, retry=policy)
    assert stac.count("/search") == 4
    # The server answers every fault with ``Retry-After: 0``: each retry's sleep is asked with it.
    assert policy.asked == [(1, "0"), (2, "0"), (3, "0")]


def test_a_search_stops_retrying_once_the_api_recovers(stac):
    policy = RecordingPolicy(max_retries=5)
    stac.faults = FaultPlan(rate=1.0, kinds=["503"], max_faults=2)
    items = search_items(get_source("sentinel-2-l2a"), JULY, stac_url=stac.url, retry=policy)
    assert len(items) == 6
    assert [r.status for r in stac.requests if r.path.endswith("/search")] == [503, 503, 200]
    assert len(policy.asked) == 2


def test_a_status_outside_the_policy_is_not_retried(stac):
    policy = RecordingPolicy(statuses=frozenset({429}))
    stac.faults = FaultPlan(rate=1.0, kinds=["503"])
    with pytest.raises(StacApiError, match="503"):
        search_items(get_source("sentinel-2-l2a"), JULY, stac_url=stac.url, retry=policy)
    assert stac.count("/search") == 1 and policy.asked == []


def test_the_urllib3_translation_keeps_the_policy_across_retries():
    policy = RecordingPolicy(max_retries=4, timeout_retries=2, statuses=frozenset({503}))
    retry = stac_retry(policy)
    assert (retry.total, retry.read, set(retry.status_forcelist)) == (4, 2, {503})
    assert retry.new(total=3).policy is policy


@pytest.mark.parametrize("max_retries", [1, 3])
def test_build_collection_retries_searches_and_header_reads_by_one_fetch_config(tmp_path, stac, mirror, max_retries):
    config = FetchConfig(max_retries=max_retries, backoff_base=0.001, backoff_max=0.002)
    build = functools.partial(
        build_collection,
        "sentinel-2-l2a",
        "x",
        tmp_path,
        date_range=("2025-07-01", "2025-07-31"),
        bands=["red"],
        stac_url=stac.url,
        fetch_config=config,
        progress=False,
    )
    stac.faults = FaultPlan(rate=1.0, kinds=["503"])
    with pytest.raises(StacApiError, match="503"):
        build()
    assert stac.count("/search") == max_retries + 1
    stac.faults = None
    broken = sorted(i["id"] for i in july_2025_items())[0] + "/red.tif"
    mirror.cogs.faults = FaultPlan(rate=1.0, kinds=["503"], paths=broken)
    mirror.cogs.reset_log()
    report = build()
    assert [f"{f.item_id}/{f.band}.tif" for f in report.failed] == [broken]
    assert sum(r.path.lstrip("/") == broken for r in mirror.cogs.requests) == max_retries + 1
