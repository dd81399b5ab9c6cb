"""Materialising partitions end to end: local folder and S3 (moto's server on 127.0.0.1)."""

import io
import json
from pathlib import Path

import boto3
import dagster as dg
import pyarrow.parquet as pq

from rasteret_pipelines.defs.assets import collection_key, field_stats_key, field_timeseries_key
from rasteret_pipelines_tests.defs.conftest import GROUP, MONTHS, make_project

S2 = "sentinel-2-l2a"
MONTH_KEYS = [f"{m}-01" for m in MONTHS]


def metadata(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict:
    (event,) = [m for m in result.get_asset_materialization_events() if m.asset_key == key]
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}


def checks_passed(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_collections_field_stats_and_timeseries_over_partitions(project, clean_mirror):
    for key in MONTH_KEYS:
        result = project.run("collections_job", key)
        meta = metadata(result, collection_key(S2))
        # two scenes a month, three bands (red, nir, scl): one header GET each
        assert (meta["items"], meta["headers_fetched"], meta["header_gets"], meta["failed_assets"]) == (2, 6, 6, 0)
        assert meta["bytes"] > 0 and meta["duration_s"] > 0
        assert meta["search_bbox"] == [77.55, 13.01, 77.59, 13.09]
        assert (meta["fields"], meta["field_groups"]) == (2, 1)
        assert checks_passed(result) == {"every_band_header_present": True}
    data = Path(project.storage)
    for month in MONTHS:
        assert (data / "collections/sentinel_2_l2a" / f"month={month}" / "items.parquet").exists()
        search = json.loads((data / "collections/sentinel_2_l2a" / f"month={month}" / "_search.json").read_text())
        assert (search["fields"], search["groups"]) == (2, [GROUP])
    geo = pq.read_schema(data / "collections/sentinel_2_l2a/month=2024-01/items.parquet").metadata[b"geo"]
    assert json.loads(geo)["primary_column"] == "geometry"

    clean_mirror.cogs.reset_log()
    clean_mirror.stac.reset_log()
    # ONE run over both months of the group (the two fields read together, month by month)
    result = project.run_range("field_stats_job", f"{GROUP}|{MONTH_KEYS[0]}", f"{GROUP}|{MONTH_KEYS[-1]}")
    evaluations = [(e.partition, e.check_name, e.passed) for e in result.get_asset_check_evaluations()]
    assert sorted(evaluations) == sorted(
        (f"{GROUP}|{k}", c, True) for k in MONTH_KEYS for c in ("stats_in_range", "geotiffs_reopen")
    )
    by_partition = {
        e.materialization.partition: {k: getattr(v, "value", v) for k, v in e.materialization.metadata.items()}
        for e in result.get_asset_materialization_events()
    }
    assert sorted(by_partition) == [f"{GROUP}|{k}" for k in MONTH_KEYS]
    reported_gets = 0
    for meta in by_partition.values():
        assert (meta["fields"], meta["fields_with_data"], meta["rows"], len(meta["dates"]), meta["geotiffs"]) == (
            2,
            2,
            4,
            2,
            2,
        )
        assert -1 <= meta["mean_ndvi"] <= 1 and 0 < meta["mean_valid_fraction"] <= 1
        assert meta["header_get_requests"] == 0 and meta["tile_get_requests"] > 0 and meta["read_fields"] == 2
        reported_gets += meta["tile_get_requests"] + meta["geotiff_get_requests"]
    assert reported_gets == clean_mirror.cogs.count("GET")  # the metadata agrees with the server
    requests = clean_mirror.cogs.requests
    assert requests, "the reads fetched tiles"
    # zero header GETs: no request starts at byte 0 (header reads do), nothing but ranged GETs
    assert all(r.method == "GET" and r.range is not None and r.range[0] > 0 for r in requests)
    assert clean_mirror.stac.count("/search") == 0, "the statistics read the collection, not the STAC API"

    tifs = sorted((data / "field_ndvi/sentinel_2_l2a").rglob("*.tif"))
    assert [str(p.relative_to(data / "field_ndvi/sentinel_2_l2a")) for p in tifs] == [
        f"geometry_{GROUP}/ndvi_{d}.tif" for d in ("20240105", "20240110", "20240205", "20240210")
    ]
    table = pq.read_table(data / f"field_stats/sentinel_2_l2a/month=2024-02/group={GROUP}.parquet")
    assert sorted({str(d) for d in table.column("date").to_pylist()}) == ["2024-02-05", "2024-02-10"]
    assert sorted(set(table.column("id").to_pylist())) == ["1", "2"] and set(table.column("month").to_pylist()) == {
        "2024-02"
    }
    rows = table.to_pylist()
    assert all(0 < r["ndvi_valid_fraction"] <= 1 and -1 <= r["ndvi_mean"] <= 1 and r["scene_ids"] for r in rows)

    result = project.run("field_timeseries_job", GROUP)
    meta = metadata(result, field_timeseries_key(S2))
    assert meta["dates"] == 4 and meta["months"] == ["2024-01", "2024-02"] and meta["fields"] == 2
    assert meta["plot"].startswith(f"![median NDVI of group {GROUP}](data:image/svg+xml;base64,")
    table = pq.read_table(data / f"field_timeseries/sentinel_2_l2a/group={GROUP}.parquet")
    assert table.column_names[:3] == ["id", "date", "ndvi_mean"] and "ndvi_valid_fraction" in table.column_names
    assert [(r["id"], str(r["date"])) for r in table.to_pylist()] == [
        (f, d) for f in "12" for d in ("2024-01-05", "2024-01-10", "2024-02-05", "2024-02-10")
    ]
    assert (data / f"field_timeseries/sentinel_2_l2a/group={GROUP}.svg").read_text().startswith("<svg")
    # the UI shows Markdown metadata in place only below 1000 characters: the plot is, with one
    # dot per date at the fields' median mean NDVI and one bar per date at their mean valid fraction
    assert len(meta["plot"]) < 1000
    import base64
    import re

    from rasteret_pipelines.defs.plot import spark_y

    svg = base64.b64decode(re.search(r"base64,([^)]+)\)", meta["plot"]).group(1)).decode()
    by_date: dict = {}
    fractions: dict = {}
    for r in table.to_pylist():
        by_date.setdefault(r["date"], []).append(r["ndvi_mean"])
        fractions.setdefault(r["date"], []).append(r["ndvi_valid_fraction"])
    medians = [sorted(v)[len(v) // 2] for _, v in sorted(by_date.items())]
    ys = [int(y) for y in re.findall(r"M\d+ (\d+)h0", svg)]
    assert ys == [spark_y(v) for v in medians]
    bars = [int(y) for y in re.findall(r"M\d+ \d+V(\d+)", re.search(r'd="([^"]+)" stroke="#ccc"', svg).group(1))]
    assert bars == [spark_y(sum(f) / len(f)) for _, f in sorted(fractions.items())]
    assert ">2024-01-05</text>" in svg and ">2024-02-10</text>" in svg

    # rebuilding a month is incremental: every header reused, no header GET
    result = project.run("collections_job", MONTH_KEYS[0])
    meta = metadata(result, collection_key(S2))
    assert (meta["headers_reused"], meta["headers_fetched"], meta["header_gets"]) == (6, 0, 0)


def test_a_partition_range_loads_only_its_months(project):
    """The IO manager hands downstream a collection restricted to the input partitions."""
    for key in MONTH_KEYS:
        project.run("collections_job", key)
    from rasteret_pipelines.defs.io_managers import CollectionSlice

    io_manager = project.resources["collection_io_manager"].create_io_manager(dg.build_init_resource_context())
    months_def = project.defs.resolve_assets_def(collection_key(S2)).partitions_def

    def load(first, last):
        return io_manager.load_input(
            dg.build_input_context(
                asset_key=collection_key(S2),
                asset_partitions_def=months_def,
                asset_partition_key_range=dg.PartitionKeyRange(first, last),
            )
        )

    sliced = load(MONTH_KEYS[1], MONTH_KEYS[1])
    assert isinstance(sliced, CollectionSlice)
    assert sliced.months == ["2024-02"] and len(sliced.files) == 1
    assert {str(d)[:7] for d in sliced.to_table(columns=["datetime"]).column("datetime").to_pylist()} == {"2024-02"}
    assert sliced.searches["2024-02"]["groups"] == [GROUP]
    both = load(MONTH_KEYS[0], MONTH_KEYS[1])
    assert both.months == ["2024-01", "2024-02"] and len(both.files) == 2 and both.to_table().num_rows == 4


def test_s3_backend_against_moto_server(moto_s3, clean_mirror, tmp_path):
    s3 = boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1")
    s3.create_bucket(Bucket="rasteret-test")
    p = make_project("s3://rasteret-test/pipelines", clean_mirror.stac_url, "s3://rasteret-test/config/aois.geojson")
    p.register_fields()
    result = p.run("collections_job", MONTH_KEYS[0])
    assert metadata(result, collection_key(S2))["items"] == 2
    assert checks_passed(result) == {"every_band_header_present": True}
    result = p.run("field_stats_job", dg.MultiPartitionKey({"month": MONTH_KEYS[0], "group": GROUP}))
    assert checks_passed(result) == {"stats_in_range": True, "geotiffs_reopen": True}
    assert metadata(result, field_stats_key(S2))["geotiffs"] == 2
    p.run("field_timeseries_job", GROUP)

    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="rasteret-test")["Contents"])
    assert keys == [
        "config/aois.geojson",
        "pipelines/collections/sentinel_2_l2a/_manifest.json",
        "pipelines/collections/sentinel_2_l2a/month=2024-01/_search.json",
        "pipelines/collections/sentinel_2_l2a/month=2024-01/items.parquet",
        f"pipelines/field_ndvi/sentinel_2_l2a/geometry_{GROUP}/ndvi_20240105.tif",
        f"pipelines/field_ndvi/sentinel_2_l2a/geometry_{GROUP}/ndvi_20240110.tif",
        f"pipelines/field_stats/sentinel_2_l2a/month=2024-01/group={GROUP}.parquet",
        f"pipelines/field_timeseries/sentinel_2_l2a/group={GROUP}.parquet",
        f"pipelines/field_timeseries/sentinel_2_l2a/group={GROUP}.svg",
    ]
    table = pq.read_table(io.BytesIO(s3.get_object(Bucket="rasteret-test", Key=keys[6])["Body"].read()))
    assert table.num_rows == 4 and b"geo" in table.schema.metadata
    series = pq.read_table(io.BytesIO(s3.get_object(Bucket="rasteret-test", Key=keys[7])["Body"].read()))
    assert series.num_rows == 4
    # the tables load back through the table IO manager (a UPathIOManager over s3fs), equal to
    # what boto3 reads from the bucket
    stats_key = dg.MultiPartitionKey({"month": MONTH_KEYS[0], "group": GROUP})
    loaded = p.defs.load_asset_value(field_stats_key(S2), partition_key=stats_key, instance=p.instance)
    assert loaded.equals(table)
    loaded = p.defs.load_asset_value(field_timeseries_key(S2), partition_key=GROUP, instance=p.instance)
    assert loaded.equals(series)


def test_a_month_without_scenes(project):
    """A month the source has no scene for: an empty collection month and an empty statistics table."""
    result = project.run("collections_job", "2024-03-01")
    assert metadata(result, collection_key(S2))["items"] == 0
    assert checks_passed(result) == {"every_band_header_present": True}
    result = project.run("field_stats_job", dg.MultiPartitionKey({"month": "2024-03-01", "group": GROUP}))
    meta = metadata(result, field_stats_key(S2))
    assert (meta["dates"], meta["rows"], meta["geotiffs"]) == ([], 0, 0) and "no scene" in meta["note"]
    assert checks_passed(result) == {"stats_in_range": True, "geotiffs_reopen": True}
    table = pq.read_table(Path(project.storage) / f"field_stats/sentinel_2_l2a/month=2024-03/group={GROUP}.parquet")
    assert table.num_rows == 0 and "ndvi_mean" in table.column_names
