"""The schedule, the sensors and the automation conditions, tick by tick."""

import copy
import datetime as dt

import dagster as dg
import pytest
import shapely.geometry

from rasteret_pipelines.aois import write_aois_geojson
from rasteret_pipelines.defs.assets import collection_key, field_stats_key, field_timeseries_key
from rasteret_pipelines_tests.defs.conftest import AOIS, GROUP, MONTHS, tick

S2 = "sentinel-2-l2a"
MONTH_KEYS = [f"{m}-01" for m in MONTHS]
INSIDE = shapely.geometry.box(77.565, 13.03, 77.575, 13.05)  # inside the months' search bbox
OUTSIDE = shapely.geometry.box(77.70, 13.20, 77.72, 13.22)  # same tile, outside it


def requested(data) -> list[tuple[str, str, str]]:
    """(job, asset, partition) of each run request (a single-job sensor leaves job_name empty)."""
    return sorted(
        (r.job_name or "collections_job", "/".join(r.asset_selection[0].path), str(r.partition_key))
        for r in data.run_requests
    )


def test_field_sensor(project):
    """The former AOI-sensor test in the new model: a changed group, not a new partition per field."""
    from rasteret_pipelines.defs.assets import FIELDS_KEY

    for key in MONTH_KEYS:
        project.run("collections_job", key)
    first = tick(project, "field_file_sensor")
    assert not first.run_requests and not first.asset_events and "no group changed" in first.skip_message
    again = tick(project, "field_file_sensor", first.cursor)
    assert not again.asset_events and again.skip_message.startswith("field file unchanged (2 fields in 1 groups)")

    write_aois_geojson({**AOIS, "3": INSIDE, "4": OUTSIDE}, project.aoi_file)
    added = tick(project, "field_file_sensor", again.cursor)
    (request,) = added.dynamic_partitions_requests
    # field 3 joins the quick start's group; field 4 starts a group of its own
    assert request.partitions_def_name == "field_group" and list(request.partition_keys) == ["g_13.2_77.7"]
    assert sorted((e.asset_key, e.partition) for e in added.asset_events) == [
        (FIELDS_KEY, GROUP),
        (FIELDS_KEY, "g_13.2_77.7"),
    ]
    # field 4 lies outside the area every month was indexed for: the months are indexed again
    assert requested(added) == [("collections_job", "collections/sentinel_2_l2a", k) for k in MONTH_KEYS]
    assert all(r.tags["rasteret/source"] == S2 for r in added.run_requests)
    assert len({r.run_key for r in added.run_requests}) == len(added.run_requests)
    # the cursor makes it idempotent
    project.instance.add_dynamic_partitions("field_group", ["g_13.2_77.7"])
    same = tick(project, "field_file_sensor", added.cursor)
    assert not same.asset_events and same.skip_message.startswith("field file unchanged")

    write_aois_geojson({"1": AOIS["1"], "3": INSIDE, "4": OUTSIDE}, project.aoi_file)
    removed = tick(project, "field_file_sensor", same.cursor)
    (event,) = removed.asset_events
    assert event.partition == GROUP and event.metadata["removed"].value == "2"
    assert event.metadata["removed_fields"].value == 1 and not removed.run_requests

    with open(project.aoi_file, "w") as fh:
        fh.write('{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": null}]}')
    broken = tick(project, "field_file_sensor", removed.cursor)
    assert (
        not broken.asset_events and "no usable field" in broken.skip_message and "row 1: no id" in broken.skip_message
    )
    assert broken.cursor in (None, removed.cursor), "a broken file leaves the cursor, so the fix is picked up"


def test_field_sensor_before_any_month(project):
    write_aois_geojson({**AOIS, "3": OUTSIDE}, project.aoi_file)
    data = tick(project, "field_file_sensor")
    assert list(data.dynamic_partitions_requests[0].partition_keys) == ["g_13.2_77.7"] and not data.run_requests
    assert [e.partition for e in data.asset_events] == ["g_13.2_77.7"]


def test_stac_sensor_requests_updated_and_late_months(project, clean_mirror):
    for key in MONTH_KEYS:
        project.run("collections_job", key)
    first = tick(project, "stac_updates_sensor")
    assert not first.run_requests and first.skip_message == "no item added or updated in a materialised month"

    now = dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    item = clean_mirror.stac.get_item(S2, "S2B_43PGQ_20240210_0_L2A")
    item["properties"]["updated"] = now  # reprocessed
    clean_mirror.stac.replace_item(item)
    data = tick(project, "stac_updates_sensor", first.cursor)
    assert requested(data) == [("collections_job", "collections/sentinel_2_l2a", "2024-02-01")]
    assert data.run_requests[0].tags["rasteret/trigger"] == "stac-updated"
    same = tick(project, "stac_updates_sensor", data.cursor)
    assert not same.run_requests

    late = copy.deepcopy(clean_mirror.stac.get_item(S2, "S2A_43PGQ_20240105_0_L2A"))
    late["id"] = "S2A_43PGQ_20240120_0_L2A"
    late["properties"]["datetime"] = "2024-01-20T05:16:12.024000Z"
    late["properties"]["updated"] = dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    clean_mirror.stac.add_items([late])
    data = tick(project, "stac_updates_sensor", same.cursor)
    assert requested(data) == [("collections_job", "collections/sentinel_2_l2a", "2024-01-01")]

    # materialising that month takes the late scene in, and the next tick is quiet
    project.run("collections_job", "2024-01-01")
    quiet = tick(project, "stac_updates_sensor", data.cursor)
    assert not quiet.run_requests


def test_stac_sensor_skips_when_the_api_is_down(tmp_path, clean_mirror):
    from rasteret_pipelines_tests.conftest import free_port
    from rasteret_pipelines_tests.defs.conftest import local_instance, make_project

    p = make_project(
        str(tmp_path / "data"),
        clean_mirror.stac_url,
        str(tmp_path / "aois.geojson"),
        instance=local_instance(tmp_path / "home"),
    )
    p.run("collections_job", MONTH_KEYS[0])
    down = make_project(p.storage, f"http://127.0.0.1:{free_port()}", p.aoi_file, instance=p.instance)
    data = tick(down, "stac_updates_sensor")
    assert not data.run_requests and "unreachable" in data.skip_message


@pytest.mark.parametrize("retries", [0, 2])
def test_stac_sensor_retries_its_search_by_the_project_s_http_policy(tmp_path, clean_mirror, retries):
    """The sensor's STAC search is retried by the ``http`` resource's policy
    (``RASTERET_HTTP_MAX_RETRIES``; the library's default is 5), as a collection month's search
    is: counted at the STAC server under a fault that lasts, then under one that ends in time."""
    from rasteret_pipelines_demo.range_server import FaultPlan
    from rasteret_pipelines_tests.defs.conftest import local_instance, make_project

    p = make_project(
        str(tmp_path / "data"),
        clean_mirror.stac_url,
        str(tmp_path / "aois.geojson"),
        instance=local_instance(tmp_path / "home"),
        extra={"RASTERET_HTTP_MAX_RETRIES": str(retries)},
    )
    p.run("collections_job", MONTH_KEYS[0])
    stac = clean_mirror.stac

    def searches() -> list[int]:
        return [r.status for r in stac.requests if r.path.endswith("/search")]

    stac.reset_log()
    stac.faults = FaultPlan(rate=1.0, kinds=["503"], paths="*search")
    down = tick(p, "stac_updates_sensor")
    assert not down.run_requests and "503" in down.skip_message
    assert searches() == [503] * (retries + 1)

    stac.reset_log()
    stac.faults = FaultPlan(rate=1.0, kinds=["503"], max_faults=retries, paths="*search")
    up = tick(p, "stac_updates_sensor")
    assert up.skip_message == "no item added or updated in a materialised month"
    assert searches() == [503] * retries + [200]


def test_monthly_schedule(project):
    schedule = project.defs.resolve_schedule_def("monthly_collections")
    assert schedule.cron_schedule == "0 3 2 * *" and schedule.execution_timezone == "UTC"
    context = dg.build_schedule_context(
        instance=project.instance,
        scheduled_execution_time=dt.datetime(2024, 3, 2, 3, tzinfo=dt.timezone.utc),
        repository_def=project.defs.get_repository_def(),
    )
    data = schedule.evaluate_tick(context)
    (request,) = data.run_requests
    assert (request.partition_key, request.asset_selection) == ("2024-02-01", [collection_key(S2)])
    assert request.tags["rasteret/source"] == S2 and request.run_key == "monthly:sentinel-2-l2a:2024-02"
    context = dg.build_schedule_context(
        instance=project.instance,
        scheduled_execution_time=dt.datetime(2024, 1, 2, 3, tzinfo=dt.timezone.utc),
        repository_def=project.defs.get_repository_def(),
    )
    data = schedule.evaluate_tick(context)
    assert not data.run_requests and "before the first partition" in data.skip_message


def test_downstream_follows_collection_updates(project):
    """What the schedule and the STAC sensor rely on: the statistics of every group of a month, and
    then the groups' time series, follow a collection month."""
    result = dg.evaluate_automation_conditions(defs=project.defs, instance=project.instance)
    assert result.total_requested == 0
    project.run("collections_job", MONTH_KEYS[1])
    result = dg.evaluate_automation_conditions(defs=project.defs, instance=project.instance, cursor=result.cursor)
    assert result.get_requested_partitions(field_stats_key(S2)) == {f"{GROUP}|{MONTH_KEYS[1]}"}
    assert result.total_requested == 1
    project.run("field_stats_job", dg.MultiPartitionKey({"month": MONTH_KEYS[1], "group": GROUP}))
    result = dg.evaluate_automation_conditions(defs=project.defs, instance=project.instance, cursor=result.cursor)
    assert result.get_requested_partitions(field_timeseries_key(S2)) == {GROUP}
    assert result.get_num_requested(field_stats_key(S2)) == 0


def test_automation_launches_many_partitions_as_backfills(project):
    """Automation sensors cannot be ticked outside the daemon; what makes a rebuilt month's
    statistics one run is configuration: the sensor emits backfills (the requested subset, checked
    in test_downstream_follows_collection_updates) and the assets' backfill policy groups them
    (the runs it makes: test_fields.py)."""
    sensor = project.defs.resolve_sensor_def("rasteret_automation")
    assert sensor.emit_backfills
    for key in (field_stats_key(S2), field_timeseries_key(S2)):
        policy = project.defs.resolve_assets_def(key).backfill_policy
        assert policy is not None and policy.max_partitions_per_run == 500


def test_monthly_schedule_of_the_demo_stops_at_its_last_month(tmp_path, demo_world):
    """The demo's partitions end with its last month: a later tick requests nothing (a request
    for a month outside the partitions would fail the tick)."""
    from rasteret_pipelines_tests.defs.conftest import make_project

    demo = make_project(
        str(tmp_path / "data"),
        "demo",
        str(tmp_path / "aois.geojson"),
        extra={"RASTERET_DEMO_DIR": str(demo_world), "RASTERET_DEMO_MONTHS": ",".join(MONTHS)},
    )
    schedule = demo.defs.resolve_schedule_def("monthly_collections")

    def tick(when):
        context = dg.build_schedule_context(
            instance=demo.instance, scheduled_execution_time=when, repository_def=demo.defs.get_repository_def()
        )
        return schedule.evaluate_tick(context)

    last = tick(dt.datetime(2024, 3, 2, 3, tzinfo=dt.timezone.utc))
    assert [r.partition_key for r in last.run_requests] == ["2024-02-01"]
    later = tick(dt.datetime(2026, 12, 2, 3, tzinfo=dt.timezone.utc))
    assert not later.run_requests and "after the last partition (2024-02" in later.skip_message
