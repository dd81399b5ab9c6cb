"""Materialising partitions end to end: local folder and S3 (moto's server on 127.0.0.1)."""

import io
import json
from pathlib import Path

import boto3
import dagster as dg
import pyarrow.parquet as pq

from rasteret_pipelines.defs.assets import collection_key, ndvi_key, timeseries_key
from rasteret_pipelines_tests.defs.conftest import MONTHS, make_project

S2 = "sentinel-2-l2a"
MONTH_KEYS = [f"{m}-01" for m in MONTHS]


def metadata(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict:
    (event,) = [m for m in result.get_asset_materialization_events() if m.asset_key == key]
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}


def checks_passed(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_collections_ndvi_and_timeseries_over_partitions(project, clean_mirror):
    for key in MONTH_KEYS:
        result = project.run("collections_job", key)
        meta = metadata(result, collection_key(S2))
        # two scenes a month, three bands (red, nir, scl): one header GET each
        assert (meta["items"], meta["headers_fetched"], meta["header_gets"], meta["failed_assets"]) == (2, 6, 6, 0)
        assert meta["bytes"] > 0 and meta["duration_s"] > 0
        assert meta["search_bbox"] == [77.55, 13.01, 77.59, 13.09]
        assert checks_passed(result) == {"every_band_header_present": True}
    data = Path(project.storage)
    for month in MONTHS:
        assert (data / "collections/sentinel_2_l2a" / f"month={month}" / "items.parquet").exists()
        assert json.loads((data / "collections/sentinel_2_l2a" / f"month={month}" / "_search.json").read_text())["aoi_ids"] == ["1", "2"]
    geo = pq.read_schema(data / "collections/sentinel_2_l2a/month=2024-01/items.parquet").metadata[b"geo"]
    assert json.loads(geo)["primary_column"] == "geometry"

    clean_mirror.cogs.reset_log()
    clean_mirror.stac.reset_log()
    reported_gets = 0
    for key in MONTH_KEYS:  # one run per month over both AOIs, read together
        result = project.run_range("ndvi_job", f"1|{key}", f"2|{key}")
        evaluations = [(e.partition, e.check_name, e.passed) for e in result.get_asset_check_evaluations()]
        assert sorted(evaluations) == sorted((f"{a}|{key}", c, True) for a in "12" for c in ("ndvi_within_range", "geotiffs_reopen"))
        by_partition = {e.materialization.partition: {k: getattr(v, "value", v) for k, v in e.materialization.metadata.items()}
                        for e in result.get_asset_materialization_events()}
        assert sorted(by_partition) == [f"1|{key}", f"2|{key}"]
        for meta in by_partition.values():
            assert meta["dates"] == 2 and meta["files"] == 2 and meta["read_batch_aois"] == 2
            assert -1 <= meta["mean_ndvi"] <= 1 and 0 < meta["mean_valid_fraction"] <= 1
            assert meta["header_get_requests"] == 0 and meta["tile_get_requests"] > 0
        (batch_gets,) = {m["tile_get_requests"] for m in by_partition.values()}  # one read, shared
        reported_gets += batch_gets
    assert reported_gets == clean_mirror.cogs.count("GET")  # the metadata agrees with the server
    requests = clean_mirror.cogs.requests
    assert requests, "the NDVI reads fetched tiles"
    # zero header GETs: no request starts at byte 0 (header reads do), nothing but ranged GETs
    assert all(r.method == "GET" and r.range is not None and r.range[0] > 0 for r in requests)
    assert clean_mirror.stac.count("/search") == 0, "NDVI reads the collection, not the STAC API"

    tifs = sorted((data / "ndvi/sentinel_2_l2a_ndvi/tif").rglob("*.tif"))
    assert [str(p.relative_to(data / "ndvi/sentinel_2_l2a_ndvi/tif")) for p in tifs] == [
        f"geometry_{a}/ndvi_{d}.tif" for a in ("1", "2") for d in ("20240105", "20240110", "20240205", "20240210")
    ]
    manifest = json.loads((data / "ndvi/sentinel_2_l2a_ndvi/aoi=2/month=2024-02.json").read_text())
    assert [d["date"] for d in manifest["dates"]] == ["2024-02-05", "2024-02-10"]
    assert manifest["crs"] == "EPSG:32643" and manifest["files"] == [d["path"] for d in manifest["dates"]]
    assert all(0 < d["valid_fraction"] <= 1 and -1 <= d["mean_ndvi"] <= 1 for d in manifest["dates"])

    result = project.run("ndvi_timeseries_job", "1")
    meta = metadata(result, timeseries_key(S2))
    assert meta["dates"] == 4 and meta["months"] == 2
    assert meta["plot"].startswith("![NDVI of AOI 1](data:image/svg+xml;base64,")
    table = pq.read_table(data / "ndvi_timeseries/sentinel_2_l2a_ndvi_timeseries/aoi=1.parquet")
    assert table.column_names[:5] == ["date", "month", "mean_ndvi", "median_ndvi", "valid_fraction"]
    assert [str(d) for d in table.column("date").to_pylist()] == ["2024-01-05", "2024-01-10", "2024-02-05", "2024-02-10"]
    assert (data / "ndvi_timeseries/sentinel_2_l2a_ndvi_timeseries/aoi=1.svg").read_text().startswith("<svg")
    # the UI shows Markdown metadata in place only below 1000 characters: the plot is, with one
    # dot per date at the table's mean NDVI and one bar per date at its valid fraction
    assert len(meta["plot"]) < 1000
    import base64
    import re

    from rasteret_pipelines.defs.plot import spark_y

    svg = base64.b64decode(re.search(r"base64,([^)]+)\)", meta["plot"]).group(1)).decode()
    ys = [int(y) for y in re.findall(r"M\d+ (\d+)h0", svg)]
    assert ys == [spark_y(v) for v in table.column("mean_ndvi").to_pylist()]
    bars = [int(y) for y in re.findall(r"M\d+ \d+V(\d+)", re.search(r'd="([^"]+)" stroke="#ccc"', svg).group(1))]
    assert bars == [spark_y(f) for f in table.column("valid_fraction").to_pylist()]
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

    io_manager = project.resources["rasteret_io"]
    months_def = project.defs.resolve_assets_def(collection_key(S2)).partitions_def

    def load(first, last):
        return io_manager.load_input(
            dg.build_input_context(
                asset_key=collection_key(S2),
                asset_partitions_def=months_def,
                asset_partition_key_range=dg.PartitionKeyRange(first, last),
                upstream_output=dg.build_output_context(definition_metadata={"rasteret/io": "collection"}),
            )
        )

    sliced = load(MONTH_KEYS[1], MONTH_KEYS[1])
    assert isinstance(sliced, CollectionSlice)
    assert sliced.months == ["2024-02"] and len(sliced.files) == 1
    assert {str(d)[:7] for d in sliced.to_table(columns=["datetime"]).column("datetime").to_pylist()} == {"2024-02"}
    assert sliced.searches["2024-02"]["aoi_ids"] == ["1", "2"]
    both = load(MONTH_KEYS[0], MONTH_KEYS[1])
    assert both.months == ["2024-01", "2024-02"] and len(both.files) == 2 and both.to_table().num_rows == 4


def test_s3_backend_against_moto_server(moto_s3, clean_mirror, tmp_path):
    s3 = boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1")
    s3.create_bucket(Bucket="rasteret-test")
    p = make_project("s3://rasteret-test/pipelines", clean_mirror.stac_url, "s3://rasteret-test/config/aois.geojson")
    p.register_aois()
    result = p.run("collections_job", MONTH_KEYS[0])
    assert metadata(result, collection_key(S2))["items"] == 2
    assert checks_passed(result) == {"every_band_header_present": True}
    result = p.run("ndvi_job", dg.MultiPartitionKey({"month": MONTH_KEYS[0], "aoi": "1"}))
    assert checks_passed(result) == {"ndvi_within_range": True, "geotiffs_reopen": True}
    files = metadata(result, ndvi_key(S2))
    assert files["files"] == 2
    p.run("ndvi_timeseries_job", "1")

    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="rasteret-test")["Contents"])
    assert keys == [
        "config/aois.geojson",
        "pipelines/collections/sentinel_2_l2a/_manifest.json",
        "pipelines/collections/sentinel_2_l2a/month=2024-01/_search.json",
        "pipelines/collections/sentinel_2_l2a/month=2024-01/items.parquet",
        "pipelines/ndvi/sentinel_2_l2a_ndvi/aoi=1/month=2024-01.json",
        "pipelines/ndvi/sentinel_2_l2a_ndvi/tif/geometry_1/ndvi_20240105.tif",
        "pipelines/ndvi/sentinel_2_l2a_ndvi/tif/geometry_1/ndvi_20240110.tif",
        "pipelines/ndvi_timeseries/sentinel_2_l2a_ndvi_timeseries/aoi=1.parquet",
        "pipelines/ndvi_timeseries/sentinel_2_l2a_ndvi_timeseries/aoi=1.svg",
    ]
    manifest = json.loads(s3.get_object(Bucket="rasteret-test", Key=keys[4])["Body"].read())
    assert manifest["files"] == [f"s3://rasteret-test/{k}" for k in keys[5:7]]
    table = pq.read_table(io.BytesIO(s3.get_object(Bucket="rasteret-test", Key=keys[7])["Body"].read()))
    assert table.num_rows == 2


def test_a_month_without_scenes(project):
    """A month the source has no scene for: an empty collection month and an empty NDVI manifest."""
    result = project.run("collections_job", "2024-03-01")
    assert metadata(result, collection_key(S2))["items"] == 0
    assert checks_passed(result) == {"every_band_header_present": True}
    result = project.run("ndvi_job", dg.MultiPartitionKey({"month": "2024-03-01", "aoi": "1"}))
    meta = metadata(result, ndvi_key(S2))
    assert (meta["dates"], meta["files"]) == (0, 0) and "no scene" in meta["note"]
    assert checks_passed(result) == {"ndvi_within_range": True, "geotiffs_reopen": True}
