"""The same pipeline against Earth Search: opt-in with RASTERET_LIVE_TESTS=1 (skipped by default)."""

import os

import dagster as dg
import pytest

from rasteret_pipelines_tests.defs.conftest import local_instance, make_project

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(os.environ.get("RASTERET_LIVE_TESTS") != "1", reason="set RASTERET_LIVE_TESTS=1 to run"),
]


def test_quick_start_month_on_earth_search(tmp_path):
    p = make_project(
        str(tmp_path / "data"), "public", str(tmp_path / "aois.geojson"), instance=local_instance(tmp_path / "home")
    )
    p.register_fields()
    result = p.run("collections_job", "2024-01-01")
    (event,) = result.get_asset_materialization_events()
    meta = {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}
    assert meta["stac_url"] == "https://earth-search.aws.element84.com/v1"
    assert meta["items"] >= 4 and meta["failed_assets"] == 0
    result = p.run("field_stats_job", dg.MultiPartitionKey({"month": "2024-01-01", "group": "g_13.0_77.5"}))
    assert all(e.passed for e in result.get_asset_check_evaluations())
