"""Partition keys and group names become paths only when they are safe names, and stay under storage."""

import os
from pathlib import Path

import dagster as dg
import pytest

from rasteret_pipelines.defs.assets import field_stats_key, field_timeseries_key
from rasteret_pipelines.defs.io_managers import value_parts
from rasteret_pipelines.defs.partitions import UnsafePartitionKeyError, check_aoi_id, split_month_group
from rasteret_pipelines.errors import RasteretError
from rasteret_pipelines.storage import Storage
from rasteret_pipelines_tests.defs.conftest import failure_messages

JAN = "2024-01-01"
EVIL = "../../../../../escaped"
"""As a path part (``group=../../../../../escaped.parquet``) it would leave the storage folder."""


def tree(root: Path) -> set[str]:
    """Files and folders below ``root`` (the Dagster instance's own files left out)."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if "dagster_home" not in p.parts}


def test_a_dynamic_key_with_dotdot_is_refused_and_writes_nothing_outside(project, tmp_path):
    project.run("collections_job", JAN)
    project.instance.add_dynamic_partitions("field_group", [EVIL])
    storage = Path(project.storage)
    outside_before = tree(tmp_path) - {f"data/{p}" for p in tree(storage)} - {"data"}
    for job, key in (("field_stats_job", f"{EVIL}|{JAN}"), ("field_timeseries_job", EVIL)):
        result = project.run(job, key, raise_on_error=False)
        assert not result.success
        text = failure_messages(result)
        assert "UnsafePartitionKeyError" in text or f"{EVIL!r} is refused" in text, text
        assert f"{EVIL!r} is refused" in text, text
    outside_after = tree(tmp_path) - {f"data/{p}" for p in tree(storage)} - {"data"}
    assert outside_after == outside_before
    assert not any("escaped" in p for p in tree(tmp_path))
    assert not project.instance.get_materialized_partitions(field_stats_key("sentinel-2-l2a"))
    assert not project.instance.get_materialized_partitions(field_timeseries_key("sentinel-2-l2a"))


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "", "x" * 65, "a\\b", "a b", ".hidden"])
def test_unsafe_ids_raise_a_typed_error(bad):
    with pytest.raises(UnsafePartitionKeyError) as info:
        check_aoi_id(bad)
    assert isinstance(info.value, RasteretError) and isinstance(info.value, ValueError)
    with pytest.raises(UnsafePartitionKeyError):
        split_month_group(f"{bad}|{JAN}")


def test_paths_stay_under_the_storage_root(tmp_path):
    months = dg.MonthlyPartitionsDefinition(start_date="2024-01-01")
    multi = dg.MultiPartitionsDefinition({"month": months, "group": dg.DynamicPartitionsDefinition(name="field_group")})
    store = Storage.from_uri(tmp_path / "data")
    key = dg.AssetKey(["ndvi", "s2"])
    assert value_parts(store, key, multi, f"7|{JAN}", ".json") == ["ndvi", "s2", "month=2024-01", "group=7.json"]
    assert value_parts(store, key, multi, f"7|{JAN}", ".parquet", "field_stats/s2") == [
        "field_stats",
        "s2",
        "month=2024-01",
        "group=7.parquet",
    ]
    with pytest.raises(UnsafePartitionKeyError):
        value_parts(store, key, multi, f"{EVIL}|{JAN}", ".json")
    with pytest.raises(UnsafePartitionKeyError):
        value_parts(store, key, months, "2024-01-01/../../x", ".json")
    # a folder below the root that is a link leading out of it is refused too
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "data").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "data" / "ndvi")
    with pytest.raises(UnsafePartitionKeyError, match="outside the storage folder"):
        value_parts(store, key, multi, f"7|{JAN}", ".json")


@pytest.mark.parametrize("key, error", [("2024-02", "MissingPartitionError"), ("..", "UnsafePartitionKeyError")])
def test_an_input_that_cannot_exist_fails_the_step_without_retries(tmp_path, key, error):
    """A missing upstream partition or an unsafe key is not transient: dagster.Failure with
    allow_retries=False (the step's RetryPolicy would otherwise retry it), naming the cause."""
    from rasteret_pipelines.defs.io_managers import TableIOManager

    manager = TableIOManager(base_path=str(tmp_path / "data")).create_io_manager(dg.build_init_resource_context())
    asset_key = dg.AssetKey(["ndvi", "s2"])
    context = dg.build_input_context(
        asset_key=asset_key,
        partition_key=key,
        asset_partitions_def=dg.StaticPartitionsDefinition(["2024-01", "2024-02", ".."]),
        upstream_output=dg.build_output_context(asset_key=asset_key),
    )
    with pytest.raises(dg.Failure) as info:
        manager.load_input(context)
    assert info.value.allow_retries is False
    assert info.value.description.startswith(error), info.value.description
    assert (
        repr(key) in info.value.description
        if error == "UnsafePartitionKeyError"
        else "ndvi/s2" in info.value.description
    )
