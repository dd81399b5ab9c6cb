"""Bad input fails the run with a message naming the fault, and loses nothing already written."""

import json

import dagster as dg
import pytest
import shapely.geometry

from rasteret_pipelines_tests.conftest import free_port
from rasteret_pipelines_tests.defs.conftest import AOIS, GROUP, failure_messages, file_digests, make_project

MONTH = "2024-01-01"


@pytest.fixture
def built(project):
    """One month and its group's statistics already materialised."""
    project.run("collections_job", MONTH)
    project.run("field_stats_job", f"{GROUP}|{MONTH}")
    return project


def bowtie():
    return shapely.geometry.Polygon([(77.55, 13.01), (77.58, 13.08), (77.58, 13.01), (77.55, 13.08)])


def feature(props, geom):
    return {"type": "Feature", "properties": props, "geometry": shapely.geometry.mapping(geom)}


BAD_FIELD_FILES = {
    # a bad row is skipped with its reason (test_fields.py); a file of nothing but bad rows has no
    # usable field, and the run fails naming the first
    "invalid geometry": ([feature({"id": "1"}, bowtie())], "row 1 (id '1'): invalid geometry: Self-intersection"),
    "missing id": ([feature({"name": "no id"}, AOIS["1"])], "row 1: no id"),
    "duplicate ids": (
        [feature({"id": "1"}, AOIS["1"]), feature({"id": "1"}, AOIS["2"])],
        "duplicate id '1' (rows 1, 2)",
    ),
    "wrong CRS": (
        [feature({"id": "1"}, shapely.geometry.box(776510, 1439620, 779860, 1447410))],
        "are not longitude/latitude in EPSG:4326",
    ),
    "not GeoJSON": ("{not json", "is neither GeoJSON nor GeoParquet"),
}


@pytest.mark.parametrize("case", sorted(BAD_FIELD_FILES))
def test_an_unusable_field_file_fails_the_run_and_keeps_outputs(built, case, tmp_path):
    features, message = BAD_FIELD_FILES[case]
    before = file_digests(built.storage)
    with open(built.aoi_file, "w") as fh:
        if isinstance(features, str):
            fh.write(features)
        else:
            json.dump({"type": "FeatureCollection", "features": features}, fh)
    for job, key in (
        ("collections_job", MONTH),
        ("field_stats_job", dg.MultiPartitionKey({"month": MONTH, "group": GROUP})),
    ):
        result = built.run(job, key, raise_on_error=False)
        assert not result.success
        text = failure_messages(result)
        assert message in text and built.aoi_file in text, text
    assert file_digests(built.storage) == before


def test_unreachable_stac_api(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    p = make_project(str(tmp_path / "data"), dead, str(tmp_path / "aois.geojson"))
    result = p.run("collections_job", MONTH, raise_on_error=False)
    assert not result.success
    text = failure_messages(result)
    assert f"STAC API {dead} unreachable" in text and "2024-01" in text, text
    assert not (tmp_path / "data" / "collections").exists()


def test_unreachable_stac_api_is_retried_as_transient(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    p = make_project(
        str(tmp_path / "data"), dead, str(tmp_path / "aois.geojson"), extra={"RASTERET_TRANSIENT_RETRIES": "1"}
    )
    result = p.run("collections_job", MONTH, raise_on_error=False)
    assert not result.success
    assert any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)
    assert "unreachable" in failure_messages(result)


def test_missing_s3_credentials(monkeypatch, tmp_path, clean_mirror):
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask an instance metadata service
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    p = make_project("s3://rasteret-test/pipelines", clean_mirror.stac_url, str(tmp_path / "aois.geojson"))
    result = p.run("collections_job", MONTH, raise_on_error=False)
    assert not result.success
    text = failure_messages(result)
    assert "no AWS credentials found for s3://rasteret-test/pipelines" in text, text


def test_missing_bucket(moto_s3, clean_mirror, tmp_path):
    p = make_project("s3://no-such-bucket/x", clean_mirror.stac_url, str(tmp_path / "aois.geojson"))
    result = p.run("collections_job", MONTH, raise_on_error=False)
    assert not result.success
    assert "bucket 'no-such-bucket' of s3://no-such-bucket/x does not exist" in failure_messages(result)


def test_month_before_the_source_starts(tmp_path, clean_mirror):
    p = make_project(
        str(tmp_path / "data"), clean_mirror.stac_url, str(tmp_path / "aois.geojson"), start_month="2015-01"
    )
    result = p.run("collections_job", "2015-03-01", raise_on_error=False)
    assert not result.success
    text = failure_messages(result)
    assert "month 2015-03 is before sentinel-2-l2a starts (2015-06-27)" in text, text
    assert clean_mirror.stac.count("/search") == 0


def test_statistics_of_a_month_never_built(project):
    result = project.run(
        "field_stats_job", dg.MultiPartitionKey({"month": "2024-02-01", "group": GROUP}), raise_on_error=False
    )
    assert not result.success
    text = failure_messages(result)
    assert "materialise collections/sentinel_2_l2a first" in text or "has no month 2024-02" in text, text


def test_a_field_outside_the_indexed_area_is_left_out_and_named(built):
    far = shapely.geometry.box(77.595, 13.02, 77.597, 13.022)  # the same group, outside the months' search bbox
    from rasteret_pipelines.aois import write_aois_geojson

    write_aois_geojson({**AOIS, "3": far}, built.aoi_file)
    result = built.run("field_stats_job", dg.MultiPartitionKey({"month": MONTH, "group": GROUP}))
    (event,) = result.get_asset_materialization_events()
    assert event.materialization.metadata["fields_not_indexed"].value == 1
    logs = "\n".join(e.message for e in built.instance.all_logs(result.run_id) if e.message)
    assert "1 fields lie outside the area the collection month was indexed for" in logs and ": 3" in logs, logs
    # rebuilding the month over the new field set takes it in
    built.run("collections_job", MONTH)
    result = built.run("field_stats_job", dg.MultiPartitionKey({"month": MONTH, "group": GROUP}))
    (event,) = result.get_asset_materialization_events()
    assert event.materialization.metadata["fields_not_indexed"].value == 0
