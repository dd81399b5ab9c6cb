"""Storage on S3 (moto's server on 127.0.0.1): s3fs under the standard AWS configuration, whole
objects only, pyarrow reading through fsspec, credentials never in a log. boto3 is the oracle
for what the bucket holds."""

from __future__ import annotations

import logging

import boto3
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from rasteret_pipelines.errors import StoragePathError
from rasteret_pipelines.storage import Storage, s3_options

SECRET = "n0t-a-real-s3cr3t-but-distinctive"


@pytest.fixture
def bucket(moto_s3, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    s3 = boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1")
    s3.create_bucket(Bucket="lake")
    return s3


def keys(s3) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket="lake").get("Contents", []))


def test_the_s3_configuration_is_the_standard_aws_one(moto_s3, monkeypatch, tmp_path):
    (tmp_path / "no-aws-config").write_text("[profile lab]\nregion = eu-west-3\n")  # the environment's region wins
    monkeypatch.setenv("AWS_PROFILE", "lab")
    options = s3_options()
    assert options["endpoint_url"] == moto_s3 and options["client_kwargs"] == {"region_name": "us-east-1"}
    assert options["profile"] == "lab"
    store = Storage.from_uri("s3://lake/ws")
    assert store.storage_options["endpoint_url"] == moto_s3
    assert (store.base, store.uri_of("a", "b.json"), store.is_local) == ("lake/ws", "s3://lake/ws/a/b.json", False)


def test_writes_lists_reads_and_deletes_against_moto(bucket, tmp_path):
    store = Storage.from_uri("s3://lake/ws/")
    assert store.list_dirs() == [] and store.list_files() == [] and not store.exists("a.json")
    assert store.write_json({"a": 1}, "x", "a.json") == "s3://lake/ws/x/a.json"
    table = pa.table({"id": ["p", "q"], "v": [1.5, 2.5]})
    store.write_parquet(table, "x", "month=2024-01", "t.parquet")
    local = tmp_path / "f.tif"
    local.write_bytes(b"II*\x00" + bytes(100))
    store.upload_file(local, "y", "f.tif")
    assert keys(bucket) == ["ws/x/a.json", "ws/x/month=2024-01/t.parquet", "ws/y/f.tif"]
    assert bucket.get_object(Bucket="lake", Key="ws/y/f.tif")["Body"].read() == local.read_bytes()
    assert store.list_dirs() == ["x", "y"] and store.list_dirs("x") == ["month=2024-01"]
    assert store.list_files("x", suffix=".parquet") == ["lake/ws/x/month=2024-01/t.parquet"]
    assert store.read_json("x", "a.json") == {"a": 1} and store.exists("x", "a.json")
    # pyarrow reads the same filesystem through fsspec (the path of every s3:// collection read)
    assert isinstance(store.arrow_fs, pafs.PyFileSystem) and isinstance(store.arrow_fs.handler, pafs.FSSpecHandler)
    path = store.path("x", "month=2024-01", "t.parquet")
    assert pq.read_table(path, filesystem=store.arrow_fs, columns=["v"]).column("v").to_pylist() == [1.5, 2.5]
    store.delete("x")
    assert keys(bucket) == ["ws/y/f.tif"]
    with pytest.raises(StoragePathError):
        store.write_json({}, "..", "escaped.json")


def test_another_writer_is_seen_at_once(bucket):
    """Listings are never cached: an object another process puts is listed on the next call."""
    store = Storage.from_uri("s3://lake/ws")
    store.write_json({}, "m", "_manifest.json")
    assert store.list_files() == ["lake/ws/m/_manifest.json"] and store.list_dirs() == ["m"]
    bucket.put_object(Bucket="lake", Key="ws/m/items.parquet", Body=b"x")
    bucket.put_object(Bucket="lake", Key="ws/n/items.parquet", Body=b"x")
    assert store.list_files() == ["lake/ws/m/_manifest.json", "lake/ws/m/items.parquet", "lake/ws/n/items.parquet"]
    assert store.list_dirs() == ["m", "n"] and store.exists("n", "items.parquet")


def test_a_failed_write_puts_nothing_and_keeps_the_old_object(bucket):
    store = Storage.from_uri("s3://lake/ws")
    store.write_parquet(pa.table({"v": [1]}), "t.parquet")
    before = bucket.get_object(Bucket="lake", Key="ws/t.parquet")["Body"].read()

    def fails_halfway(sink):
        sink.write(b"PAR1 half of a file")
        raise ZeroDivisionError("the writer failed")

    for name in ("t.parquet", "new.parquet"):
        with pytest.raises(ZeroDivisionError):
            store._atomic(store.path(name), fails_halfway)
    assert keys(bucket) == ["ws/t.parquet"]
    assert bucket.get_object(Bucket="lake", Key="ws/t.parquet")["Body"].read() == before


def test_the_secret_key_never_reaches_a_log(bucket, caplog):
    caplog.set_level(logging.DEBUG)
    store = Storage.from_uri("s3://lake/ws")
    store.write_json({"a": 1}, "a.json")
    assert store.read_json("a.json") == {"a": 1}
    assert caplog.records, "the S3 clients logged nothing at DEBUG: the check would prove nothing"
    assert SECRET not in caplog.text


def test_an_unreachable_endpoint_is_an_os_error(moto_s3, monkeypatch):
    """Like every other storage fault (the field sensor and the resource checks catch OSError)."""
    from rasteret_pipelines_tests.conftest import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    store = Storage.from_uri("s3://lake/ws")
    with pytest.raises(OSError, match="storage s3://lake/ws: EndpointConnectionError"):
        store.read_bytes("a.json")
