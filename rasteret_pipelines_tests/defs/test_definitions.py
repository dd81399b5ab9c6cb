"""The code location loads with nothing configured (the offline demo) and from the environment."""

import importlib

import dagster as dg
import pytest

from rasteret_pipelines.defs import build_definitions
from rasteret_pipelines.defs.io_managers import CollectionIOManager, TableIOManager
from rasteret_pipelines.defs.resources import LocalStorageResource, S3StorageResource
from rasteret_pipelines.defs.settings import ENV_VARS, Settings, SettingsError


def test_definitions_module_loads_offline(monkeypatch):
    for name in ("RASTERET_SOURCES", "RASTERET_STORAGE", "RASTERET_STAC_URL", "RASTERET_START_MONTH"):
        monkeypatch.delenv(name, raising=False)
    module = importlib.reload(importlib.import_module("rasteret_pipelines.definitions"))
    defs = module.defs
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert keys == {
        "fields",
        "collections/sentinel_2_l2a",
        "field_stats/sentinel_2_l2a_field_stats",
        "field_timeseries/sentinel_2_l2a_field_timeseries",
    }
    assert not defs.asset_checks  # every check is a check_spec of its asset
    collection = defs.resolve_assets_def(dg.AssetKey(["collections", "sentinel_2_l2a"]))
    assert {k.name for k in collection.check_keys} == {"every_band_header_present"}
    stats = defs.resolve_assets_def(dg.AssetKey(["field_stats", "sentinel_2_l2a_field_stats"]))
    assert {k.name for k in stats.check_keys} == {"stats_in_range", "geotiffs_reopen"}
    assert {j for j in ("collections_job", "field_stats_job", "field_timeseries_job") if defs.resolve_job_def(j)}
    assert defs.resolve_schedule_def("monthly_collections").default_status == dg.DefaultScheduleStatus.RUNNING
    sensors = {
        s: defs.resolve_sensor_def(s).default_status
        for s in ("field_file_sensor", "stac_updates_sensor", "rasteret_automation")
    }
    assert sensors["field_file_sensor"] == dg.DefaultSensorStatus.RUNNING
    assert sensors["stac_updates_sensor"] == dg.DefaultSensorStatus.STOPPED
    resources = defs.resources
    assert (
        isinstance(resources["storage"], LocalStorageResource) and resources["storage"].base_path == "./.rasteret_data"
    )
    assert isinstance(resources["collection_io_manager"], CollectionIOManager)
    assert isinstance(resources["table_io_manager"], TableIOManager)
    assert resources["data_source"].stac_url == "public", "with nothing set, never the demo"
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
    assert "collections/landsat_c2l2_sr" in keys and "field_stats/landsat_c2l2_sr_field_stats" in keys
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
    assert (
        DataSourceResource(stac_url="public").stac_url_for("sentinel-2-l2a")
        == "https://earth-search.aws.element84.com/v1"
    )
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


def test_field_settings_from_the_environment():
    assert (Settings.from_env({}).field_geotiffs, Settings.from_env({}).group_cell_deg) == ("group", 0.1)
    settings = Settings.from_env({"RASTERET_FIELD_GEOTIFFS": "Fields", "RASTERET_GROUP_CELL_DEG": "0.05"})
    assert (settings.field_geotiffs, settings.group_cell_deg) == ("fields", 0.05)
    resources = build_definitions(settings).resources
    assert resources["aois"].cell_deg == 0.05 and resources["batching"].geotiffs == "fields"
    with pytest.raises(SettingsError, match="RASTERET_FIELD_GEOTIFFS='tiles': use group, fields or none"):
        Settings.from_env({"RASTERET_FIELD_GEOTIFFS": "tiles"}).field_geotiffs  # noqa: B018
    with pytest.raises(SettingsError, match="RASTERET_GROUP_CELL_DEG=0.0"):
        Settings.from_env({"RASTERET_GROUP_CELL_DEG": "0"}).group_cell_deg  # noqa: B018


def test_backfill_policy_from_the_environment():
    assert Settings.from_env({}).backfill_policy().max_partitions_per_run == 500
    assert Settings.from_env({"RASTERET_PARTITIONS_PER_RUN": "20"}).backfill_policy().max_partitions_per_run == 20
    assert (
        Settings.from_env({"RASTERET_PARTITIONS_PER_RUN": "single"}).backfill_policy() == dg.BackfillPolicy.single_run()
    )
    for bad in ("0", "many"):
        with pytest.raises(SettingsError, match="RASTERET_PARTITIONS_PER_RUN=.*use a positive number or 'single'"):
            Settings.from_env({"RASTERET_PARTITIONS_PER_RUN": bad}).backfill_policy()
    defs = build_definitions(Settings.from_env({"RASTERET_PARTITIONS_PER_RUN": "single"}))
    for key in (["field_stats", "sentinel_2_l2a_field_stats"], ["field_timeseries", "sentinel_2_l2a_field_timeseries"]):
        assert defs.resolve_assets_def(dg.AssetKey(key)).backfill_policy == dg.BackfillPolicy.single_run()
    assert defs.resolve_assets_def(dg.AssetKey(["collections", "sentinel_2_l2a"])).backfill_policy is None


# --- Dagster idioms (issue 11 item 7) --------------------------------------------------------------

DEFS_DIR = importlib.import_module("rasteret_pipelines.defs").__path__[0]


def test_request_sending_steps_have_a_retry_policy_with_backoff_and_jitter():
    settings = Settings.from_env({"RASTERET_TRANSIENT_RETRIES": "3", "RASTERET_TRANSIENT_RETRY_SECONDS": "5"})
    defs = build_definitions(settings)
    for key in (
        dg.AssetKey(["collections", "sentinel_2_l2a"]),
        dg.AssetKey(["field_stats", "sentinel_2_l2a_field_stats"]),
    ):
        policy = defs.resolve_assets_def(key).op.retry_policy
        assert policy == dg.RetryPolicy(
            max_retries=3, delay=5.0, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
        ), key
    # the default: 2 retries, 30 s base delay; 0 retries: no policy at all
    assert Settings.from_env({}).retry_policy().max_retries == 2
    assert Settings.from_env({}).retry_policy().delay == 30.0
    assert Settings.from_env({"RASTERET_TRANSIENT_RETRIES": "0"}).retry_policy() is None
    with pytest.raises(SettingsError, match="RASTERET_TRANSIENT_RETRIES='x'"):
        Settings.from_env({"RASTERET_TRANSIENT_RETRIES": "x"}).retry_policy()


def test_no_hand_rolled_retries_and_no_blanket_warning_filters_in_defs():
    import pathlib
    import re

    sources = {p: p.read_text() for p in pathlib.Path(DEFS_DIR).rglob("*.py")}
    assert not [p for p, text in sources.items() if "RetryRequested" in text]
    for path, text in sources.items():
        for call in re.findall(r"filterwarnings\((.*?)\)", text, flags=re.S):
            assert "message=" in call, f"{path}: a warning filter without a message is a blanket: {call}"


def test_building_the_definitions_warns_nothing():
    """Building the definitions and resolving the jobs emits no warning of any kind: a new beta
    or preview API, a deprecation or any other warning shows here. The two deliberate filters
    cannot hide one (see the next test)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        defs = build_definitions(Settings.from_env({"RASTERET_SOURCES": "sentinel-2-l2a,landsat"}))
        for job in ("collections_job", "field_stats_job", "field_timeseries_job"):
            defs.resolve_job_def(job)
    assert [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught] == []


@pytest.mark.parametrize(
    "context, silenced",
    [
        (
            "beta_backfill_policy",
            (dg.BetaWarning, "Parameter `backfill_policy` of function `asset` is currently in beta"),
        ),
        (
            "preview_partitioned_checks",
            (dg.PreviewWarning, "Specifying a partitions_def on an AssetCheckSpec is currently in preview"),
        ),
    ],
)
def test_the_deliberate_warning_filters_silence_their_one_message(context, silenced):
    """Each filter silences its own message and nothing else: another beta or preview warning,
    or the same category with another message, still shows."""
    import warnings

    from rasteret_pipelines.defs import checks
    from rasteret_pipelines.defs.assets import _common

    filtered = getattr(_common, context, None) or getattr(checks, context)
    category, message = silenced
    others = [
        (dg.BetaWarning, "Parameter `other` of function `asset` is currently in beta"),
        (dg.PreviewWarning, "Some other feature is currently in preview"),
        (DeprecationWarning, message),
        (UserWarning, "anything else"),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with filtered():
            for cat, text in [(category, message), *others]:
                warnings.warn(text, cat, stacklevel=1)
    assert [(w.category, str(w.message)) for w in caught] == others


def test_asset_nodes_have_distinct_labels():
    """The UI titles an asset node with its key's last part."""
    defs = build_definitions(Settings.from_env({"RASTERET_SOURCES": "sentinel-2-l2a,landsat"}))
    labels = [k.path[-1] for k in defs.resolve_all_asset_keys()]
    assert len(labels) == 7 and len(set(labels)) == len(labels), sorted(labels)


def test_descriptions_show_placeholders_as_code():
    """Markdown would swallow a bare ``<group>`` as an HTML tag: every one is inside backticks."""
    import re

    defs = build_definitions(Settings.from_env({}))
    for key in defs.resolve_all_asset_keys():
        text = defs.resolve_assets_def(key).descriptions_by_key[key]
        outside_code = re.sub(r"`[^`]*`", "", text)
        assert "<" not in outside_code, (key, text)
    key = dg.AssetKey(["field_stats", "sentinel_2_l2a_field_stats"])
    text = defs.resolve_assets_def(key).descriptions_by_key[key]
    assert "`field_stats/sentinel_2_l2a/month=YYYY-MM/group=<group>.parquet`" in text
    assert "`field_ndvi/sentinel_2_l2a/geometry_<group>/ndvi_YYYYMMDD.tif`" in text


def test_collection_description_names_the_stac_api_searched(monkeypatch):
    monkeypatch.delenv("RASTERET_STAC_URL_SENTINEL_2_L2A", raising=False)
    key = dg.AssetKey(["collections", "sentinel_2_l2a"])

    def description(env):
        defs = build_definitions(Settings.from_env(env))
        return defs.resolve_assets_def(key).descriptions_by_key[key]

    demo = description({"RASTERET_STAC_URL": "demo", "RASTERET_DEMO_PORT": "47700"})
    assert "offline demo mirror's STAC API at http://127.0.0.1:47700" in demo and "Earth Search" not in demo
    mirror = description({"RASTERET_STAC_URL": "public", "RASTERET_STAC_URL_SENTINEL_2_L2A": "http://127.0.0.1:9/stac"})
    assert "http://127.0.0.1:9/stac" in mirror and "Earth Search" not in mirror
    public = description({"RASTERET_STAC_URL": "public"})
    assert "Earth Search" in public and "https://earth-search.aws.element84.com/v1" in public


def test_demo_partitions_are_the_demo_months():
    """With the offline demo selected the months are exactly the mirror's: the UI's materialise
    dialog offers no empty month."""
    demo = build_definitions(
        Settings.from_env({"RASTERET_STAC_URL": "demo", "RASTERET_DEMO_MONTHS": "2024-03,2024-04,2024-05"})
    )
    months = demo.resolve_assets_def(dg.AssetKey(["collections", "sentinel_2_l2a"])).partitions_def
    assert months.get_partition_keys() == ["2024-03-01", "2024-04-01", "2024-05-01"]
    default = Settings.from_env({"RASTERET_STAC_URL": "demo"})
    assert (default.start_month, default.end_month) == ("2024-01", "2024-03")
    assert (Settings.from_env({}).start_month, Settings.from_env({}).end_month) == ("2024-01", None)
    # another STAC API: from RASTERET_START_MONTH to the last complete month
    public = Settings.from_env({"RASTERET_STAC_URL": "public", "RASTERET_START_MONTH": "2023-06"})
    assert (public.start_month, public.end_month) == ("2023-06", None)
    with pytest.raises(SettingsError, match="after the last demo month 2024-03"):
        Settings.from_env({"RASTERET_STAC_URL": "demo", "RASTERET_START_MONTH": "2024-05"})


def test_the_instance_file_is_the_repository_root_s_dagster_yaml():
    """`dagster dev` from the root (DAGSTER_HOME unset) and the demo's seeded instance read the same file."""
    from rasteret_pipelines.defs.instance_home import REPO_DAGSTER_YAML as SEEDED
    from rasteret_pipelines_tests.defs.conftest import REPO, REPO_DAGSTER_YAML

    assert REPO_DAGSTER_YAML == REPO / "dagster.yaml" == SEEDED
    assert REPO_DAGSTER_YAML.exists()


def test_the_http_resource_holds_every_transport_setting_with_the_engines_defaults():
    """Before: read_timeout 60 s (the engine's is 30 s) and no idle_timeout, timeout_retries
    or max_redirects: a silent server held a step for minutes."""
    import dataclasses

    from rasteret_pipelines.cog import FetchConfig
    from rasteret_pipelines.defs.resources import resources_from_settings

    http = resources_from_settings(Settings.from_env({}))["http"]
    assert http.fetch_config() == FetchConfig()
    env = {
        "RASTERET_HTTP_MAX_CONCURRENCY": "8",
        "RASTERET_HTTP_MAX_RETRIES": "2",
        "RASTERET_HTTP_CONNECT_TIMEOUT": "3.5",
        "RASTERET_HTTP_READ_TIMEOUT": "12",
        "RASTERET_HTTP_IDLE_TIMEOUT": "2.5",
        "RASTERET_HTTP_TIMEOUT_RETRIES": "0",
        "RASTERET_HTTP_MAX_REDIRECTS": "1",
    }
    assert set(env) <= set(ENV_VARS)
    config = resources_from_settings(Settings.from_env(env))["http"].fetch_config()
    assert config == dataclasses.replace(
        FetchConfig(),
        max_concurrency=8,
        max_retries=2,
        connect_timeout=3.5,
        read_timeout=12.0,
        idle_timeout=2.5,
        timeout_retries=0,
        max_redirects=1,
    )
