"""Checks against the real public endpoints: opt-in with RASTERET_LIVE_TESTS=1 (skipped by default)."""

from __future__ import annotations

import os

import pytest

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(os.environ.get("RASTERET_LIVE_TESTS") != "1", reason="set RASTERET_LIVE_TESTS=1 to run"),
]

EARTH_SEARCH_B04 = (
    "https://sentinel-cogs.s3.us-west-2.amazonaws.com/sentinel-s2-l2a-cogs/43/P/GQ/2024/1/"
    "S2A_43PGQ_20240105_0_L2A/B04.tif"
)


def test_earth_search_header_in_one_request_and_window_equals_rasterio():
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    from rasteret_pipelines.cog import RangeFetcher, read_header_async, read_window, run_sync

    async def header_with_stats():
        async with RangeFetcher() as fetcher:
            return await read_header_async(EARTH_SEARCH_B04, fetcher=fetcher), fetcher.stats

    header, stats = run_sync(header_with_stats())
    assert stats.requests == 1 and (header.width, header.height) == (10980, 10980)
    window = (7655, 5259, 335, 779)
    with rasterio.open(EARTH_SEARCH_B04) as src:
        expected = src.read(window=Window(*window))
    np.testing.assert_array_equal(read_window(header, window), expected)


def test_earth_search_collection_for_the_quick_start(tmp_path):
    from rasteret_pipelines.collections import build_collection, load_collection

    report = build_collection(
        "sentinel-2-l2a",
        "blr",
        tmp_path,
        date_range=("2024-01-01", "2024-01-31"),
        bbox=(77.55, 13.01, 77.59, 13.09),
        bands=["red", "nir"],
        cloud_cover_lt=30,
        progress=False,
    )
    assert report.items > 0 and report.failed == []
    assert report.header_requests <= 1.1 * 2 * report.items
    assert len(load_collection("blr", tmp_path).to_table()) == report.items
