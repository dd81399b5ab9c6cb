"""The code location loads with nothing configured (the offline demo) and from the environment."""

import importlib

import dagster as dg
import pytest

from rasteret_pipelines.defs import build_definitions
from rasteret_pipelines.defs.io_managers import RasteretIOManager
from rasteret_pipelines.defs.resources import LocalStorageResource, S3StorageResource
from rasteret_pipelines.defs.settings import Settings, SettingsError


def test_definitions_module_loads_offline(monkeypatch):
    for name in ("RASTERET_SOURCES", "RASTERET_STORAGE", "RASTERET_STAC_URL", "RASTERET_START_MONTH"):
        monkeypatch.delenv(name, raising=False)
    module = importlib.reload(importlib.import_module("rasteret_pipelines.definitions"))
    defs = module.defs
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert keys == {"collections/sentinel_2_l2a", "ndvi/sentinel_2_l2a", "ndvi_timeseries/sentinel_2_l2a"}
    checks = {k.name for c in defs.asset_checks for k in c.check_keys}
    assert checks == {"every_band_header_present", "ndvi_within_range", "geotiffs_reopen"}
    assert {j for j in ("collections_job", "ndvi_job", "ndvi_timeseries_job") if defs.resolve_job_def(j)}
    assert defs.resolve_schedule_def("monthly_collections").default_status == dg.DefaultScheduleStatus.RUNNING
    sensors = {s: defs.resolve_sensor_def(s).default_status for s in ("aoi_file_sensor", "stac_updates_sensor", "rasteret_automation")}
    assert sensors["aoi_file_sensor"] == dg.DefaultSensorStatus.RUNNING
    assert sensors["stac_updates_sensor"] == dg.DefaultSensorStatus.STOPPED
    resources = defs.resources
    assert isinstance(resources["storage"], LocalStorageResource) and resources["storage"].base_path == "./.rasteret_data"
    assert isinstance(resources["rasteret_io"], RasteretIOManager)
    assert resources["data_source"].stac_url == "demo"
    spec = defs.resolve_assets_def(dg.AssetKey(["collections", "sentinel_2_l2a"]))
    assert spec.partitions_def.get_first_partition_key() == "2024-01-01"
    assert spec.op.pool == "rasteret-sentinel-2-l2a"


def test_environment_selects_sources_storage_and_env_vars(monkeypatch):
    monkeypatch.setenv("RASTERET_SOURCES", "sentinel-2-l2a, LANDSAT")
    monkeypatch.setenv("RASTERET_STORAGE", "s3://bucket/prefix")
    monkeypatch.setenv("RASTERET_STAC_URL", "public")
    monkeypatch.setenv("RASTERET_HTTP_MAX_CONCURRENCY", "8")
    defs = build_definitions()
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert "collections/landsat_c2l2_sr" in keys and "ndvi/landsat_c2l2_sr" in keys
    resources = defs.resources
    assert isinstance(resources["storage"], S3StorageResource)
    # values set in the environment stay EnvVars: the UI shows where they came from
    assert isinstance(resources["storage"].base_path, dg.EnvVar)
    assert getattr(resources["http"].max_concurrency, "name", None) == "RASTERET_HTTP_MAX_CONCURRENCY"  # IntEnvVar
    assert resources["data_source"].stac_url == dg.EnvVar("RASTERET_STAC_URL")


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RASTERET_SOURCES": "modis"}, "unknown data source 'modis'"),
        ({"RASTERET_START_MONTH": "2024-13"}, "RASTERET_START_MONTH='2024-13' is not a month"),
        ({"RASTERET_DEMO_PORT": "80"}, "must be in 1024..65534"),
    ],
)
def test_bad_settings_are_named(env, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        settings = Settings.from_env(env)
        settings.demo_port  # noqa: B018  (validated on use)


def test_public_and_per_source_stac_urls(monkeypatch):
    from rasteret_pipelines.defs.resources import DataSourceResource

    monkeypatch.delenv("RASTERET_STAC_URL_SENTINEL_2_L2A", raising=False)
    assert DataSourceResource(stac_url="public").stac_url_for("sentinel-2-l2a") == "https://earth-search.aws.element84.com/v1"
    assert DataSourceResource(stac_url="http://x").stac_url_for("sentinel-2-l2a") == "http://x"
    monkeypatch.setenv("RASTERET_STAC_URL_SENTINEL_2_L2A", "http://mirror")
    assert DataSourceResource().stac_url_for("sentinel-2-l2a") == "http://mirror"


def test_instance_configuration(tmp_path):
    """The repository's dagster.yaml is a working local instance with the run queue and pools."""
    from rasteret_pipelines_tests.defs.conftest import local_instance

    instance = local_instance(tmp_path / "home")
    config = instance.get_concurrency_config()
    assert config.pool_config.default_pool_limit == 2
    assert config.pool_config.pool_granularity.value == "op"
    assert config.run_queue_config.max_concurrent_runs == 4
    assert config.run_queue_config.tag_concurrency_limits[0]["key"] == "rasteret/source"
    assert instance.run_retries_enabled and instance.run_retries_max_retries == 1
    assert not instance.run_retries_retry_on_asset_or_op_failure


def test_backfill_policy_from_the_environment():
    assert Settings.from_env({}).backfill_policy().max_partitions_per_run == 500
    assert Settings.from_env({"RASTERET_PARTITIONS_PER_RUN": "20"}).backfill_policy().max_partitions_per_run == 20
    assert Settings.from_env({"RASTERET_PARTITIONS_PER_RUN": "single"}).backfill_policy() == dg.BackfillPolicy.single_run()
    for bad in ("0", "many"):
        with pytest.raises(SettingsError, match="RASTERET_PARTITIONS_PER_RUN=.*use a positive number or 'single'"):
            Settings.from_env({"RASTERET_PARTITIONS_PER_RUN": bad}).backfill_policy()
    defs = build_definitions(Settings.from_env({"RASTERET_PARTITIONS_PER_RUN": "single"}))
    assert defs.resolve_assets_def(dg.AssetKey(["ndvi", "sentinel_2_l2a"])).backfill_policy == dg.BackfillPolicy.single_run()
    assert defs.resolve_assets_def(dg.AssetKey(["collections", "sentinel_2_l2a"])).backfill_policy is None
