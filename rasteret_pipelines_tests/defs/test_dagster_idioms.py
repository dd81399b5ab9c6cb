"""The Dagster layer as Dagster means it: definitions that load, resources that start nothing,
sensors and schedules that use public run requests only, and each check declared once."""

import datetime as dt
import threading
from pathlib import Path

import dagster as dg
import pytest

from rasteret_pipelines.aois import write_aois_geojson
from rasteret_pipelines.collections import get_source
from rasteret_pipelines.defs import build_definitions
from rasteret_pipelines.defs.assets import collection_key
from rasteret_pipelines.defs.resources import DataSourceResource
from rasteret_pipelines.defs.settings import Settings
from rasteret_pipelines.errors import LocalServerDownError
from rasteret_pipelines_demo.demo_mirror import free_port_pair, port_state
from rasteret_pipelines_tests.defs.conftest import AOIS, local_instance, make_project

DEFS_DIR = Path(__file__).resolve().parents[2] / "rasteret_pipelines" / "defs"


def _child_processes() -> set[int]:
    """Pids of this process's children (every thread's), from /proc."""
    return {int(pid) for task in Path("/proc/self/task").iterdir() for pid in (task / "children").read_text().split()}


def test_with_no_setting_the_sources_own_stac_apis_apply():
    settings = Settings.from_env({})
    assert not settings.uses_demo
    resource = build_definitions(settings).resources["data_source"]
    assert resource.stac_url_for("sentinel-2-l2a") == get_source("sentinel-2-l2a").stac_url
    assert "public STAC API" in settings.stac_url_label("sentinel-2-l2a")


def test_definitions_load_and_no_resource_starts_the_mirror(tmp_path):
    """The demo selected, its mirror down: the resources say how to start it and start nothing
    (no child process, no server thread, no world written, the ports still free)."""
    port = free_port_pair()
    world = tmp_path / "demo_world"
    settings = Settings.from_env(
        {
            "RASTERET_STAC_URL": "demo",
            "RASTERET_DEMO_DIR": str(world),
            "RASTERET_DEMO_PORT": str(port),
            "RASTERET_STORAGE": str(tmp_path / "data"),
        }
    )
    defs = build_definitions(settings)
    for job in ("collections_job", "field_stats_job", "field_timeseries_job"):
        defs.resolve_job_def(job)
    resource = defs.resources["data_source"]
    assert isinstance(resource, DataSourceResource) and resource.uses_demo
    children, threads = _child_processes(), threading.active_count()

    with pytest.raises(
        LocalServerDownError, match=r"not running .*rasteret-pipelines demo --serve.*rasteret-pipelines ui"
    ):
        resource.stac_url_for("sentinel-2-l2a")
    with pytest.raises(LocalServerDownError, match=rf"nothing listens at http://127.0.0.1:{port + 1}.*demo --serve"):
        resource.ensure_cog_servers([f"http://127.0.0.1:{port + 1}/cogs/x/B04.tif"], "collection month 2024-01")

    assert _child_processes() == children, "a resource started a process"
    assert threading.active_count() == threads, "a resource started a server in this process"
    assert not world.exists(), "a resource wrote the demo world"
    assert port_state(world, port).kind == "free"


def test_sensor_and_schedule_requests_carry_no_internal_tags(tmp_path):
    """The field sensor's and the schedule's run requests name their partition with the public
    ``partition_key``; the only ``dagster/`` tags on them are those Dagster adds itself."""
    p = make_project(
        str(tmp_path / "data"),
        "http://127.0.0.1:9",  # never contacted: the sensor reads the field file and the instance only
        str(tmp_path / "aois.geojson"),
        instance=local_instance(tmp_path / "home"),
    )
    month = "2024-01-01"
    # a collection month indexed for another area: the quick start's fields lie outside it
    p.instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key=collection_key("sentinel-2-l2a"), partition=month, metadata={"search_bbox": [10, 10, 11, 11]}
        )
    )
    write_aois_geojson(AOIS, p.aoi_file)
    sensor = p.defs.resolve_sensor_def("field_file_sensor")
    with dg.build_sensor_context(
        instance=p.instance, instance_ref=p.instance.get_ref(), resources=p.resources, definitions=p.defs
    ) as context:
        data = sensor.evaluate_tick(context)
    assert [r.partition_key for r in data.run_requests] == [month], data.skip_message

    schedule = p.defs.resolve_schedule_def("monthly_collections")
    context = dg.build_schedule_context(
        instance=p.instance,
        scheduled_execution_time=dt.datetime(2024, 2, 2, 3, tzinfo=dt.timezone.utc),
        repository_def=p.defs.get_repository_def(),
    )
    ticked = schedule.evaluate_tick(context)
    assert [r.partition_key for r in ticked.run_requests] == [month]

    for request in [*data.run_requests, *ticked.run_requests]:
        internal = {k for k in request.tags if k.startswith("dagster/")}
        # what Dagster itself adds when it resolves a request of a partition of a sensor or schedule
        assert internal <= {
            "dagster/partition",
            "dagster/partition_set",
            "dagster/sensor_name",
            "dagster/schedule_name",
        }, request.tags
        assert not any(k.startswith("dagster/asset_partition_range") for k in request.tags)
        assert request.tags.get("dagster/partition", month) == month
        assert request.tags["rasteret/source"] == "sentinel-2-l2a"


def test_the_dagster_layer_uses_no_internal_dagster_api_outside_location_runs():
    """``dagster._*`` modules and Dagster's ``dagster/`` run tags are internal: the sensors, schedules,
    assets and resources use neither. The demo's in-process runs with a code-location origin have no
    public equivalent (location_runs.py says why), and only that module names them."""
    offenders = []
    for path in sorted(DEFS_DIR.rglob("*.py")):
        if path.name == "location_runs.py":
            continue
        text = path.read_text()
        if "dagster._" in text or "dagster/asset_partition_range" in text or "dagster/partition" in text:
            offenders.append(path.name)
    assert offenders == []


def test_each_check_is_declared_once():
    """Every asset check appears once in the definitions, as one check of one asset (the UI lists
    what the asset graph holds), and the field-statistics asset itself evaluates its checks."""
    defs = build_definitions(Settings.from_env({"RASTERET_SOURCES": "sentinel-2-l2a,landsat"}))
    graph = defs.resolve_asset_graph()
    keys = list(graph.asset_check_keys)
    assert len(keys) == len(set(keys))
    names = sorted((k.asset_key.to_user_string(), k.name) for k in keys)
    assert names == sorted(
        [(f"collections/{slug}", "every_band_header_present") for slug in ("sentinel_2_l2a", "landsat_c2l2_sr")]
        + [
            (f"field_stats/{slug}_field_stats", check)
            for slug in ("sentinel_2_l2a", "landsat_c2l2_sr")
            for check in ("geotiffs_reopen", "stats_in_range")
        ]
    )
    # declared once: as check specs of the asset that evaluates them, never as separate check definitions
    assert not defs.asset_checks
    for assets_def in defs.assets:
        if isinstance(assets_def, dg.AssetsDefinition):
            specs = list(assets_def.check_specs)
            assert len({s.key for s in specs}) == len(specs)
