"""Step retries under the assets' RetryPolicy, the blocking header check (issue 11, item 7).

Transient faults (the STAC API or the COG server failing) are retried by Dagster and then
succeed; bad input fails in one attempt; a failing header check holds the month's statistics back.
"""

import json

import dagster as dg

from rasteret_pipelines.defs.assets import collection_key, field_stats_key
from rasteret_pipelines_demo.range_server import FaultPlan
from rasteret_pipelines_tests.defs.conftest import AOIS, GROUP, failure_messages, make_project

S2 = "sentinel-2-l2a"
JAN = "2024-01-01"
FEB = "2024-02-01"


def retries(result: dg.ExecuteInProcessResult) -> int:
    return sum(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)


def step_failures(result: dg.ExecuteInProcessResult) -> int:
    return sum(e.is_step_failure for e in result.all_events)


def retrying_project(tmp_path, mirror, retries_: int = 1, **extra):
    """A project whose request-sending steps are retried ``retries_`` times (0.1 s base delay)."""
    return make_project(
        str(tmp_path / "data"),
        mirror.stac_url,
        str(tmp_path / "aois.geojson"),
        instance=dg.DagsterInstance.ephemeral(),
        extra={"RASTERET_TRANSIENT_RETRIES": str(retries_), "RASTERET_HTTP_MAX_RETRIES": "0", **extra},
    )


def test_a_transient_stac_fault_is_retried_then_the_month_is_built(tmp_path, clean_mirror):
    # how many faults one attempt meets at a STAC API that keeps failing: the same HTTP settings
    # as the retrying project (they govern the search's own retries too), no step retry
    once = make_project(
        str(tmp_path / "probe"),
        clean_mirror.stac_url,
        str(tmp_path / "aois.geojson"),
        extra={"RASTERET_TRANSIENT_RETRIES": "0", "RASTERET_HTTP_MAX_RETRIES": "0"},
    )
    clean_mirror.stac.faults = FaultPlan(rate=1.0, kinds=["503"])
    assert not once.run("collections_job", JAN, raise_on_error=False).success
    per_attempt = clean_mirror.stac.faults.injected  # the faults one failing attempt meets
    assert per_attempt >= 1
    # exactly that many faults: the first attempt fails, the retry succeeds
    clean_mirror.stac.reset_log()
    clean_mirror.stac.faults = FaultPlan(rate=1.0, kinds=["503"], max_faults=per_attempt)
    p = retrying_project(tmp_path, clean_mirror, 2)
    result = p.run("collections_job", JAN)
    assert result.success and retries(result) == 1
    assert clean_mirror.stac.faults.injected == per_attempt
    assert p.instance.get_materialized_partitions(collection_key(S2)) == {JAN}


def test_a_transient_fault_fails_after_the_policy_s_retries(tmp_path, clean_mirror):
    clean_mirror.stac.faults = FaultPlan(rate=1.0, kinds=["503"])
    result = retrying_project(tmp_path, clean_mirror, 2).run("collections_job", JAN, raise_on_error=False)
    assert not result.success
    assert retries(result) == 2 and step_failures(result) == 1
    assert "sentinel-2-l2a collection month 2024-01" in failure_messages(result)


def test_failed_header_reads_retry_the_month_which_rereads_only_them(tmp_path, clean_mirror):
    clean_mirror.cogs.faults = FaultPlan(rate=1.0, kinds=["503"], max_faults=1, paths="*/B08.tif")
    p = retrying_project(tmp_path, clean_mirror)
    result = p.run("collections_job", JAN)
    assert result.success and retries(result) == 1
    (mat,) = result.get_asset_materialization_events()
    meta = {k: getattr(v, "value", v) for k, v in mat.materialization.metadata.items()}
    assert meta["failed_assets"] == 0 and meta["missing_headers"] == 0
    assert meta["headers_fetched"] == 1, "the retry re-read the one failed header, nothing else"
    assert meta["headers_reused"] == meta["items"] * 3 - 1


def test_bad_input_fails_in_one_attempt_despite_the_retry_policy(tmp_path, clean_mirror):
    p = retrying_project(tmp_path, clean_mirror, 3, RASTERET_START_MONTH="2015-01")
    assert p.defs.resolve_assets_def(collection_key(S2)).op.retry_policy.max_retries == 3
    before_source = p.run("collections_job", "2015-03-01", raise_on_error=False)
    assert not before_source.success and retries(before_source) == 0 and step_failures(before_source) == 1
    assert "before sentinel-2-l2a starts" in failure_messages(before_source)

    with open(p.aoi_file, "w") as fh:
        json.dump(
            {
                "type": "FeatureCollection",
                "features": [{"type": "Feature", "properties": {}, "geometry": AOIS["1"].__geo_interface__}],
            },
            fh,
        )
    bad_file = p.run("collections_job", JAN, raise_on_error=False)
    assert not bad_file.success and retries(bad_file) == 0
    assert "row 1: no id" in failure_messages(bad_file)


def test_a_retry_after_a_transient_fault_redoes_only_the_failed_month(tmp_path, clean_mirror):
    p = retrying_project(tmp_path, clean_mirror, RASTERET_FIELD_GEOTIFFS="none")
    p.register_fields()
    p.run("collections_job", JAN)
    p.run("collections_job", FEB)
    clean_mirror.cogs.faults = FaultPlan(rate=1.0, kinds=["503"], max_faults=1, paths="*/B08.tif")
    result = p.run_range("field_stats_job", f"{GROUP}|{JAN}", f"{GROUP}|{FEB}")
    assert result.success and retries(result) == 1
    done = [e.materialization.partition for e in result.get_asset_materialization_events()]
    assert sorted(done) == [f"{GROUP}|{JAN}", f"{GROUP}|{FEB}"], "each partition materialised once: the retry redid one"


def test_a_partition_that_cannot_succeed_fails_once_and_is_not_retried(tmp_path, clean_mirror):
    p = retrying_project(tmp_path, clean_mirror, 2)
    p.register_fields()
    p.run("collections_job", JAN)  # February is never built
    result = p.run_range("field_stats_job", f"{GROUP}|{JAN}", f"{GROUP}|{FEB}", raise_on_error=False)
    assert not result.success and retries(result) == 0 and step_failures(result) == 1
    assert [e.materialization.partition for e in result.get_asset_materialization_events()] == [f"{GROUP}|{JAN}"]
    assert "has no month 2024-02" in failure_messages(result)


def test_the_blocking_header_check_holds_the_month_s_statistics_back(project, clean_mirror):
    specs = {s.name: s.blocking for s in project.defs.resolve_assets_def(collection_key(S2)).check_specs}
    assert specs == {"every_band_header_present": True}
    cursor = dg.evaluate_automation_conditions(defs=project.defs, instance=project.instance).cursor
    # every nir header of February fails (no step retry in this project): the month is written,
    # its header check fails
    clean_mirror.cogs.faults = FaultPlan(rate=1.0, kinds=["503"], paths="*/B08.tif")
    built = project.run("collections_job", FEB, raise_on_error=False)
    (check,) = built.get_asset_check_evaluations()
    assert not check.passed and check.metadata["missing_headers"].value == 2
    result = dg.evaluate_automation_conditions(defs=project.defs, instance=project.instance, cursor=cursor)
    assert result.get_num_requested(field_stats_key(S2)) == 0, "no statistics from a month with missing headers"
    # the month rebuilt with the server healthy: the check passes and the statistics follow
    clean_mirror.cogs.faults = None
    project.run("collections_job", FEB)
    result = dg.evaluate_automation_conditions(defs=project.defs, instance=project.instance, cursor=result.cursor)
    assert result.get_requested_partitions(field_stats_key(S2)) == {f"{GROUP}|{FEB}"}


def test_a_band_an_item_lacks_is_counted_not_an_error(project, clean_mirror):
    import copy

    jan = sorted(
        (i for i in clean_mirror.stac.items if i["properties"]["datetime"].startswith("2024-01")), key=lambda i: i["id"]
    )
    lacking = copy.deepcopy(jan[0])
    del lacking["assets"]["nir"]
    clean_mirror.stac.replace_item(lacking)
    result = project.run("collections_job", JAN)
    (check,) = result.get_asset_check_evaluations()
    assert check.passed, check.metadata
    assert check.metadata["missing_headers"].value == 0 and check.metadata["lacked_bands"].value == 1
    (mat,) = result.get_asset_materialization_events()
    meta = mat.materialization.metadata
    assert meta["missing_headers"].value == 0 and meta["lacked_bands"].value == 1
    assert meta["items"].value == len(jan)
