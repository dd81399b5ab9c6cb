"""Bad input fails the run with a message naming the fault, and loses nothing already written."""

import json

import dagster as dg
import pytest
import shapely.geometry

from rasteret_pipelines_tests.conftest import free_port
from rasteret_pipelines_tests.defs.conftest import AOIS, failure_messages, file_digests, make_project

MONTH = "2024-01-01"


@pytest.fixture
def built(project):
    """One month and both AOIs' NDVI already materialised."""
    project.run("collections_job", MONTH)
    project.run_range("ndvi_job", f"1|{MONTH}", f"2|{MONTH}")
    return project


def bowtie():
    return shapely.geometry.Polygon([(77.55, 13.01), (77.58, 13.08), (77.58, 13.01), (77.55, 13.08)])


def feature(props, geom):
    return {"type": "Feature", "properties": props, "geometry": shapely.geometry.mapping(geom)}


BAD_AOI_FILES = {
    "invalid geometry": ([feature({"id": "1"}, bowtie())], "geometry 1 is invalid: Self-intersection"),
    "missing id": ([feature({"name": "no id"}, AOIS["1"])], "feature 1 has no id"),
    "duplicate ids": ([feature({"id": "1"}, AOIS["1"]), feature({"id": "1"}, AOIS["2"])],
                      "duplicate id '1' (features 1 and 2)"),
    "wrong CRS": ([feature({"id": "1"}, shapely.geometry.box(776510, 1439620, 779860, 1447410))],
                  "geometry 1 has bounds"),
}


@pytest.mark.parametrize("case", sorted(BAD_AOI_FILES))
def test_malformed_aoi_file_fails_the_run_and_keeps_outputs(built, case, tmp_path):
    features, message = BAD_AOI_FILES[case]
    before = file_digests(built.storage)
    with open(built.aoi_file, "w") as fh:
        json.dump({"type": "FeatureCollection", "features": features}, fh)
    for job, key in (("collections_job", MONTH), ("ndvi_job", dg.MultiPartitionKey({"month": MONTH, "aoi": "1"}))):
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
    p = make_project(str(tmp_path / "data"), dead, str(tmp_path / "aois.geojson"),
                     extra={"RASTERET_TRANSIENT_RETRIES": "1"})
    result = p.run("collections_job", MONTH, raise_on_error=False)
    assert not result.success
    assert any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)
    assert "unreachable" in failure_messages(result)


def test_missing_s3_credentials(monkeypatch, tmp_path, clean_mirror):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE"):
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
    p = make_project(str(tmp_path / "data"), clean_mirror.stac_url, str(tmp_path / "aois.geojson"),
                     start_month="2015-01")
    result = p.run("collections_job", "2015-03-01", raise_on_error=False)
    assert not result.success
    text = failure_messages(result)
    assert "month 2015-03 is before sentinel-2-l2a starts (2015-06-27)" in text, text
    assert clean_mirror.stac.count("/search") == 0


def test_ndvi_of_a_month_never_built(project):
    result = project.run("ndvi_job", dg.MultiPartitionKey({"month": "2024-02-01", "aoi": "1"}), raise_on_error=False)
    assert not result.success
    text = failure_messages(result)
    assert "materialise collections/sentinel_2_l2a first" in text or "has no month 2024-02" in text, text


def test_ndvi_of_an_aoi_outside_the_indexed_area(built):
    far = shapely.geometry.box(77.70, 13.20, 77.72, 13.22)  # same tile, outside the months' search bbox
    from rasteret_pipelines.aois import write_aois_geojson

    write_aois_geojson({**AOIS, "3": far}, built.aoi_file)
    built.register_aois(["3"])
    result = built.run("ndvi_job", dg.MultiPartitionKey({"month": MONTH, "aoi": "3"}), raise_on_error=False)
    assert not result.success
    text = failure_messages(result)
    assert "does not contain AOI 3" in text and "materialise that collection month again" in text, text
    # rebuilding the month over the new AOI set fixes it
    built.run("collections_job", MONTH)
    built.run("ndvi_job", dg.MultiPartitionKey({"month": MONTH, "aoi": "3"}))
