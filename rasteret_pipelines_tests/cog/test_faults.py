"""Faults on the wire: every read equals rasterio's pixels or raises the documented error."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from rasteret_pipelines.cog import FetchConfig, read_header, read_headers, read_window, read_windows
from rasteret_pipelines.errors import CogNotFoundError, FetchError, StaleHeaderError
from rasteret_pipelines_demo.range_server import FaultPlan, RangeServer
from rasteret_pipelines_tests.cog.cogs import s2_cog

FAST_RETRIES = FetchConfig(max_retries=8, backoff_base=0.001, backoff_max=0.01)
NAMES = [f"scene_{i}.tif" for i in range(6)]
WINDOWS = [(0, 0, 700, 600), (650, 500, 800, 900), (1500, 1400, 800, 800), (-50, 1800, 300, 300)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("faulty")
    for i, name in enumerate(NAMES):
        s2_cog(root / name, blocksize=256, seed=i + 10)
    return root


@pytest.fixture
def server(files):
    with RangeServer(files) as srv:
        yield srv


def oracle(path, window):
    with rasterio.open(path) as src:
        return src.read(window=Window(*window), boundless=True)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_reads_under_a_20_percent_fault_rate_equal_the_oracle(server, files, seed):
    server.faults = FaultPlan(rate=0.2, seed=seed)  # 500, 503, 429, resets, truncations
    urls = [server.url_for(n) for n in NAMES]
    headers = read_headers(urls, config=FAST_RETRIES)
    requests = [(h, w) for h in headers for w in WINDOWS]
    results = read_windows(requests, config=FETCH_SMALL)
    assert server.faults.injected > 0
    kinds = {r.fault for r in server.requests if r.fault}
    assert len(kinds) >= 3, kinds
    for (header, window), got in zip(requests, results):
        name = header.href.rsplit("/", 1)[1]
        np.testing.assert_array_equal(got, oracle(files / name, window))


# Small requests so that the batch makes many of them and faults hit pixel reads too.
FETCH_SMALL = FetchConfig(max_retries=8, backoff_base=0.001, backoff_max=0.01, coalesce_gap=-1, max_request_bytes=1)


@pytest.mark.parametrize("kind", ["500", "503", "429", "reset", "truncate"])
def test_each_fault_kind_is_retried(server, files, kind):
    url = server.url_for(NAMES[0])
    header = read_header(url)
    server.faults = FaultPlan(rate=1.0, kinds=[kind], max_faults=2)
    got = read_window(header, WINDOWS[1], config=FETCH_SMALL)
    assert server.faults.injected == 2
    np.testing.assert_array_equal(got, oracle(files / NAMES[0], WINDOWS[1]))


@pytest.mark.parametrize("kind", ["503", "reset", "truncate"])
def test_persistent_faults_raise_fetch_error_after_bounded_retries(server, kind):
    url = server.url_for(NAMES[1])
    header = read_header(url)
    server.reset_log()
    server.faults = FaultPlan(rate=1.0, kinds=[kind])
    config = FetchConfig(max_retries=3, backoff_base=0.001, backoff_max=0.01)
    with pytest.raises(FetchError, match=NAMES[1]) as info:
        read_window(header, (0, 0, 10, 10), config=config)
    assert "4 attempts" in str(info.value)
    # aiohttp itself re-sends an idempotent request once when a reused keep-alive connection
    # drops, so a reset can cost two requests per attempt; the total stays bounded.
    limit = 8 if kind == "reset" else 4
    assert 4 <= server.count("GET") <= limit


def test_header_read_under_persistent_faults_raises_fetch_error(server):
    server.faults = FaultPlan(rate=1.0, kinds=["500"])
    with pytest.raises(FetchError, match="HTTP 500"):
        read_header(server.url_for(NAMES[2]), config=FetchConfig(max_retries=2, backoff_base=0.001))
    assert server.count("GET") == 3


def test_changed_object_raises_stale_header_error(server, files, tmp_path):
    name = NAMES[3]
    header = read_header(server.url_for(name))
    replacement = s2_cog(tmp_path / "other.tif", blocksize=256, seed=99)
    server.replace_file(name, replacement.read_bytes())
    with pytest.raises(StaleHeaderError, match=name):
        read_window(header, (0, 0, 100, 100))


def test_same_size_rewrite_is_caught_by_etag(server, files):
    name = NAMES[4]
    header = read_header(server.url_for(name))
    data = bytearray((files / name).read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    server.replace_file(name, bytes(data))
    with pytest.raises(StaleHeaderError, match="ETag"):
        read_window(header, (0, 0, 100, 100))


def test_missing_object(server):
    with pytest.raises(CogNotFoundError, match="404"):
        read_header(server.url_for("nope.tif"))


def test_connection_refused_is_a_fetch_error():
    with pytest.raises(FetchError, match="127.0.0.1:9"):
        read_header("http://127.0.0.1:9/x.tif", config=FetchConfig(max_retries=1, backoff_base=0.001))
