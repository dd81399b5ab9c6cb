"""One S3 configuration: the environment (endpoint, region, profile, credentials) and requester
pays reach the COG reader (aiohttp, SigV4 by botocore) and storage (s3fs) the same way.

moto's server holds the bucket; a ``ScriptedServer`` forwarding to it is the endpoint the
environment names, so every request of both clients is seen with its headers. boto3 (straight
to moto) writes the objects, rasterio reads the COG's pixels."""

from __future__ import annotations

import http.client
import json
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlparse

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
from rasterio.windows import Window

from rasteret_pipelines.cog import FetchConfig, read_header, read_window
from rasteret_pipelines.errors import S3ConfigError
from rasteret_pipelines.s3config import s3_config
from rasteret_pipelines.storage import Storage, s3_options
from rasteret_pipelines_tests.cog.cogs import s2_cog
from rasteret_pipelines_tests.scripted_http import Route, ScriptedServer

KEY_ID = "AKIDONEENVIRONMENT"
REGION = "eu-central-1"


def forward_to(upstream: str) -> Route:
    """A route that passes every request on to ``upstream`` (moto) and its answer back."""
    target = urlparse(upstream)

    def route(h: BaseHTTPRequestHandler) -> None:
        headers = {k: v for k, v in h.headers.items() if k.lower() != "host"}
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        try:
            connection.request(h.command, h.path, headers=headers)
            answer = connection.getresponse()
            data = answer.read()
            h.send_response_only(answer.status)
            for key, value in answer.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    h.send_header(key, value)
            declared = answer.getheader("Content-Length")
            h.send_header("Content-Length", declared if h.command == "HEAD" and declared else str(len(data)))
            h.send_header("Connection", "close")
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(data)
        finally:
            connection.close()

    return route


@pytest.fixture(scope="module")
def cog(tmp_path_factory):
    return s2_cog(tmp_path_factory.mktemp("one-s3") / "B04.tif", width=600, height=500, blocksize=256, seed=7)


@pytest.fixture
def lake(moto_s3, cog):
    """Bucket ``lake`` (in :data:`REGION`) with a COG, a JSON file and a Parquet file, written
    with boto3 straight to moto; yields the recorder the environment now points at."""
    s3 = boto3.client("s3", endpoint_url=moto_s3, region_name=REGION)
    s3.create_bucket(Bucket="lake", CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.upload_file(str(cog), "lake", "scenes/B04.tif")
    s3.put_object(Bucket="lake", Key="ws/a.json", Body=json.dumps({"a": 1}).encode())
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"v": [1.5, 2.5]}), sink)
    s3.put_object(Bucket="lake", Key="ws/t.parquet", Body=sink.getvalue().to_pybytes())
    with ScriptedServer(forward_to(moto_s3)) as recorder:
        yield recorder


def _read_cog(cog, *, requester_pays: bool) -> None:
    """A header and a window through ``s3://``, the pixels checked against rasterio."""
    config = FetchConfig(requester_pays=requester_pays)
    header = read_header("s3://lake/scenes/B04.tif", config=config)
    pixels = read_window(header, (100, 50, 300, 200), config=config)
    with rasterio.open(cog) as src:
        np.testing.assert_array_equal(pixels, src.read(window=Window(100, 50, 300, 200)))


def _scope(headers: dict[str, str]) -> str:
    """``<key id>/<region>/s3`` of a SigV4 ``Authorization`` header."""
    credential = headers["authorization"].split("Credential=", 1)[1].split(",", 1)[0]
    key_id, _date, region, service, _ = credential.split("/")
    return f"{key_id}/{region}/{service}"


def _clients(seen) -> dict[str, list]:
    """The recorded requests by client: aiohttp (the COG reader) or botocore (s3fs)."""
    by: dict[str, list] = {"cog": [], "storage": []}
    for path, headers in seen:
        agent = headers.get("user-agent", "")
        by["storage" if "botocore" in agent.lower() else "cog"].append((path, headers))
    return by


def test_one_environment_reaches_the_cog_reader_and_storage_alike(lake, cog, monkeypatch):
    """``AWS_REGION`` alone (no ``AWS_DEFAULT_REGION``, which is all botocore reads), an
    endpoint, a key and requester pays: both clients send every request to that endpoint,
    path style, signed with that key for that region, with the payer header."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", lake.origin)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.delenv("AWS_DEFAULT_REGION")

    _read_cog(cog, requester_pays=True)
    cog_requests = len(lake.seen)
    store = Storage.from_uri("s3://lake/ws", requester_pays=True)
    assert store.read_json("a.json") == {"a": 1}
    assert pq.read_table(store.path("t.parquet"), filesystem=store.arrow_fs).column("v").to_pylist() == [1.5, 2.5]

    by = _clients(lake.seen)
    assert len(by["cog"]) == cog_requests >= 2 and len(by["storage"]) >= 2
    assert len(by["cog"]) + len(by["storage"]) == len(lake.seen)
    for client, requests in by.items():
        for path, headers in requests:
            assert path.startswith("/lake/"), (client, path)
            assert _scope(headers) == f"{KEY_ID}/{REGION}/s3", (client, path)
            assert headers.get("x-amz-request-payer") == "requester", (client, path)


def test_without_requester_pays_neither_client_sends_the_payer_header(lake, cog, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", lake.origin)
    _read_cog(cog, requester_pays=False)
    assert Storage.from_uri("s3://lake/ws").read_json("a.json") == {"a": 1}
    by = _clients(lake.seen)
    assert by["cog"] and by["storage"]
    assert all("x-amz-request-payer" not in headers for _, headers in lake.seen)
    # moto_s3's environment: us-east-1 in both AWS_REGION and AWS_DEFAULT_REGION
    assert {_scope(headers) for _, headers in lake.seen} == {"testing/us-east-1/s3"}


def test_a_profile_of_the_config_files_reaches_both(lake, cog, monkeypatch, tmp_path):
    """Endpoint, region and key from a named profile's files, nothing in the environment."""
    config = tmp_path / "aws-config"
    config.write_text(f"[profile lab]\nregion = {REGION}\nendpoint_url = {lake.origin}\n")
    credentials = tmp_path / "aws-credentials"
    credentials.write_text(f"[lab]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = lab-secret\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_PROFILE", "lab")
    for name in (
        "AWS_ENDPOINT_URL_S3",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ):
        monkeypatch.delenv(name)

    resolved = s3_config()
    assert (resolved.endpoint_url, resolved.region, resolved.profile) == (lake.origin, REGION, "lab")
    assert s3_options()["endpoint_url"] == lake.origin
    _read_cog(cog, requester_pays=False)
    assert Storage.from_uri("s3://lake/ws").read_json("a.json") == {"a": 1}
    by = _clients(lake.seen)
    assert by["cog"] and by["storage"]
    assert {_scope(headers) for _, headers in lake.seen} == {f"{KEY_ID}/{REGION}/s3"}


def test_an_unknown_profile_is_one_typed_error_for_both(moto_s3, monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(S3ConfigError, match="AWS_PROFILE='no-such-profile'"):
        Storage.from_uri("s3://lake/ws")
    with pytest.raises(S3ConfigError, match="AWS_PROFILE='no-such-profile'"):
        read_header("s3://lake/scenes/B04.tif")
