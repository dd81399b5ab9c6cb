"""s3:// reads: SigV4 through botocore's credential chain, requester pays, custom endpoints."""

from __future__ import annotations

import boto3
import numpy as np
import pytest
import rasterio
from moto.server import ThreadedMotoServer
from rasterio.windows import Window

from rasteret_pipelines.cog import FetchConfig, read_header, read_window
from rasteret_pipelines.errors import CogNotFoundError, FetchError
from rasteret_pipelines_demo.range_server import RangeServer
from rasteret_pipelines_tests.cog.cogs import s2_cog
from rasteret_pipelines_tests.conftest import free_port

ACCESS_KEY = "AKIDRASTERETTEST"
SECRET_KEY = "rasteret-secret-never-to-be-seen"
PAYS = FetchConfig(requester_pays=True)


@pytest.fixture(scope="module")
def cog(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3src")
    return s2_cog(root / "LC08_B4.TIF", blocksize=256, seed=5)


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Credentials only through the environment; no real AWS configuration is read."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none-credentials"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    return monkeypatch


@pytest.fixture(scope="module")
def moto_endpoint():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_read_through_moto_s3_equals_rasterio(aws_env, moto_endpoint, cog):
    aws_env.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-west-2")
    s3.create_bucket(Bucket="usgs-landsat", CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    key = "collection02/level-2/standard/oli-tirs/2023/033/032/LC08_B4.TIF"
    s3.upload_file(str(cog), "usgs-landsat", key)

    header = read_header(f"s3://usgs-landsat/{key}", config=PAYS)
    window = (300, 200, 700, 900)
    got = read_window(header, window, config=PAYS)
    with rasterio.open(cog) as src:
        assert (header.width, header.height, header.crs) == (src.width, src.height, "EPSG:32643")
        np.testing.assert_array_equal(got, src.read(window=Window(*window)))
    assert header.etag == s3.head_object(Bucket="usgs-landsat", Key=key)["ETag"]

    with pytest.raises(CogNotFoundError, match="s3://usgs-landsat/missing.TIF"):
        read_header("s3://usgs-landsat/missing.TIF", config=PAYS)


def test_requests_are_sigv4_signed_with_the_payer_header(aws_env, cog, tmp_path):
    """An S3-compatible endpoint (the range server, path style) sees what S3 would see."""
    bucket = tmp_path / "usgs-landsat" / "c2"
    bucket.mkdir(parents=True)
    (bucket / "B4.TIF").write_bytes(cog.read_bytes())
    with RangeServer(tmp_path) as srv:
        aws_env.setenv("AWS_ENDPOINT_URL_S3", srv.url)
        header = read_header("s3://usgs-landsat/c2/B4.TIF", config=PAYS)
        read_window(header, (0, 0, 300, 300), config=PAYS)
        records = srv.requests
    assert len(records) >= 2
    for record in records:
        headers = {k.lower(): v for k, v in record.headers.items()}
        assert record.path == "/usgs-landsat/c2/B4.TIF"
        assert headers["x-amz-request-payer"] == "requester"
        auth = headers["authorization"]
        assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
        assert "/us-west-2/s3/aws4_request" in auth
        signed = auth.split("SignedHeaders=", 1)[1].split(",", 1)[0].split(";")
        assert {"host", "range", "x-amz-date", "x-amz-request-payer", "x-amz-content-sha256"} <= set(signed)
        assert all(SECRET_KEY not in v for v in record.headers.values())


def test_without_requester_pays_no_payer_header_is_sent(aws_env, cog, tmp_path):
    (tmp_path / "public").mkdir()
    (tmp_path / "public" / "B4.TIF").write_bytes(cog.read_bytes())
    with RangeServer(tmp_path) as srv:
        aws_env.setenv("AWS_ENDPOINT_URL_S3", srv.url)
        read_header("s3://public/B4.TIF")
        headers = {k.lower() for k in srv.requests[0].headers}
    assert "x-amz-request-payer" not in headers
    assert "authorization" in headers


def test_unsigned_reads_send_no_credentials(aws_env, cog, tmp_path):
    (tmp_path / "public").mkdir()
    (tmp_path / "public" / "B4.TIF").write_bytes(cog.read_bytes())
    with RangeServer(tmp_path) as srv:
        aws_env.setenv("AWS_ENDPOINT_URL_S3", srv.url)
        read_header("s3://public/B4.TIF", config=FetchConfig(aws_unsigned=True))
        headers = {k.lower() for k in srv.requests[0].headers}
    assert "authorization" not in headers


def test_missing_credentials_is_a_clear_error(aws_env, cog, tmp_path):
    aws_env.delenv("AWS_ACCESS_KEY_ID")
    aws_env.delenv("AWS_SECRET_ACCESS_KEY")
    aws_env.setenv("AWS_EC2_METADATA_DISABLED", "true")
    aws_env.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    with pytest.raises(FetchError, match="no AWS credentials") as info:
        read_header("s3://usgs-landsat/c2/B4.TIF", config=PAYS)
    assert "s3://usgs-landsat/c2/B4.TIF" in str(info.value)


def test_missing_object_names_the_href_and_hides_the_secret(aws_env, tmp_path):
    with RangeServer(tmp_path) as srv:
        aws_env.setenv("AWS_ENDPOINT_URL_S3", srv.url)
        with pytest.raises(CogNotFoundError) as info:
            read_header("s3://nobucket/B4.TIF", config=PAYS)
    assert SECRET_KEY not in str(info.value)
    assert "s3://nobucket/B4.TIF" in str(info.value)
