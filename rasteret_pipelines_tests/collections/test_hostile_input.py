"""Hostile catalogs and arguments at build time: local hrefs never opened unless the caller opts
in, typed errors (``ValueError`` subclasses) for bad arguments, collections kept inside their
workspace, and the manifest saying when stale-object detection is blind."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math

import pyarrow.parquet as pq
import pytest

from rasteret_pipelines import Rasteret
from rasteret_pipelines.cog.fetch import ObjectVersion, check_version
from rasteret_pipelines.collections import build_collection, load_collection
from rasteret_pipelines.errors import (
    CollectionNotFoundError,
    InvalidCollectionNameError,
    InvalidSearchError,
    StacApiError,
    StaleHeaderError,
    UnknownBandError,
    UnsafeHrefError,
)
from rasteret_pipelines.hrefs import check_href
from rasteret_pipelines_tests.collections.conftest import july_2025_items
from rasteret_pipelines_tests.scripted_http import ScriptedServer, serve_folder

JULY = ("2025-07-01", "2025-07-31")
UNREACHABLE = "http://127.0.0.1:9/v1"  # nothing listens: an argument error must come first


def build(workspace, stac_url, name="hostile", **kwargs):
    kwargs.setdefault("bands", ["B04", "B08"])
    return build_collection(
        "sentinel-2-l2a", name, workspace, date_range=JULY, stac_url=stac_url, progress=False, **kwargs
    )


@pytest.fixture
def items(mirror):
    return [mirror.publish(i) for i in july_2025_items()[:4]]


def test_local_hrefs_from_a_remote_catalog_are_never_opened(tmp_path, mirror, stac_for, items, caplog):
    caplog.set_level(logging.DEBUG)
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:TOP-SECRET-CONTENT\n")
    local_tiff = mirror.path_of(items[1]["assets"]["red"]["href"])  # a real, readable COG
    hostile = {
        0: str(secret),
        1: str(local_tiff),
        2: f"file://{local_tiff}",
        3: str(tmp_path / "does-not-exist.tif"),
    }
    for i, href in hostile.items():
        items[i]["assets"]["red"]["href"] = href
    items[3]["assets"]["nir"]["href"] = "ftp://example.com/B08.tif"
    report = build(tmp_path / "ws", stac_for(items).url)
    failed = {(f.item_id, f.band): f for f in report.failed}
    assert len(failed) == 5
    messages = set()
    for i, href in hostile.items():
        f = failed[(items[i]["id"], "red")]
        assert f.href == href
        assert "local paths and file:// hrefs are not read from a catalog" in f.error
        messages.add(f.error.replace(href, "<href>"))
    assert len(messages) == 1  # existing, readable and missing files are refused alike
    assert "unsupported URL scheme 'ftp'" in failed[(items[3]["id"], "nir")].error
    table = pq.read_table(report.months[0].path)
    text = json.dumps(table.select([c for c in table.column_names if c.endswith("_error")]).to_pylist())
    assert "TOP-SECRET" not in text and "TOP-SECRET" not in caplog.text
    assert "II*" not in text and "not a TIFF" not in text
    # The remote hrefs of the same items were read as usual.
    assert report.months[0].headers_fetched == 3
    manifest = json.loads((tmp_path / "ws" / "hostile" / "_manifest.json").read_text())
    assert manifest["allow_local_hrefs"] is False
    assert load_collection("hostile", tmp_path / "ws").allow_local_hrefs is False


def test_a_local_catalog_reads_local_hrefs_when_the_caller_opts_in(tmp_path, mirror, stac_for, items):
    for item in items:
        for band in ("red", "nir"):
            path = mirror.path_of(item["assets"][band]["href"])
            item["assets"][band]["href"] = str(path) if band == "red" else path.as_uri()
    report = build(tmp_path / "ws", stac_for(items).url, allow_local_hrefs=True)
    assert report.failed == [] and report.months[0].headers_fetched == 8
    collection = load_collection("hostile", tmp_path / "ws")
    assert collection.allow_local_hrefs is True
    headers = collection.headers(collection.to_table(), "red")
    assert all(h is not None and h.href.startswith("/") for h in headers)


def test_check_href_policy():
    assert check_href("https://e/x.tif") == "https://e/x.tif"
    assert check_href("S3://bucket/x.tif") == "S3://bucket/x.tif"
    assert check_href("/data/x.tif", allow_local=True) == "/data/x.tif"
    for bad in ("/etc/passwd", "file:///etc/passwd", "x.tif", "../x.tif"):
        with pytest.raises(UnsafeHrefError, match="local paths and file:// hrefs are not read"):
            check_href(bad)
    for bad in (None, 42, "", "https://e/x\x00.tif"):
        with pytest.raises(UnsafeHrefError, match="asset href must"):
            check_href(bad)


# -- argument errors before any request --------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"cloud_cover_lt": "abc"}, InvalidSearchError, "cloud_cover_lt must be a number (a percentage), got 'abc'"),
        (
            {"cloud_cover_lt": math.nan},
            InvalidSearchError,
            "cloud_cover_lt must be a finite number (a percentage), got nan",
        ),
        ({"cloud_cover_lt": math.inf}, InvalidSearchError, "cloud_cover_lt must be a finite number"),
        ({"cloud_cover_lt": 120}, InvalidSearchError, "cloud_cover_lt is a percentage between 0 and 100, got 120"),
        ({"bands": [None]}, UnknownBandError, "band names must be non-empty strings, got None"),
        (
            {"bbox": (77.5, 13.0, math.nan, 13.1)},
            InvalidSearchError,
            "must be four finite numbers (no NaN or infinity)",
        ),
        (
            {"geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, float("nan")], [1, 1], [0, 0]]]}},
            InvalidSearchError,
            "geometry has NaN or infinite coordinates",
        ),
        ({"name": "bad\x00name"}, InvalidCollectionNameError, "contains control characters (NUL)"),
        ({"name": "n" * 300}, InvalidCollectionNameError, "is 300 bytes long; at most 255 are allowed"),
        ({"name": "../escape"}, InvalidCollectionNameError, "contains a path separator"),
        ({"name": ".."}, InvalidCollectionNameError, "must not start with '.'"),
        ({"name": ""}, InvalidCollectionNameError, "must not be empty"),
    ],
)
def test_bad_build_arguments_are_typed_value_errors(tmp_path, kwargs, error, message):
    with pytest.raises(error) as info:
        build(tmp_path / "ws", UNREACHABLE, **kwargs)
    assert isinstance(info.value, ValueError)
    assert message in str(info.value)
    assert not (tmp_path / "ws").exists() or not any((tmp_path / "ws").iterdir())


def test_the_rasteret_api_refuses_bad_names_and_filters(tmp_path):
    processor = Rasteret(
        workspace_dir=tmp_path,
        custom_name="x" * 300,
        data_source="sentinel-2-l2a",
        date_range=JULY,
        stac_url=UNREACHABLE,
    )
    with pytest.raises(InvalidCollectionNameError, match="at most 255"):
        processor.create_collection(bbox=(77.5, 13.0, 77.6, 13.1))
    processor = Rasteret(
        workspace_dir=tmp_path, custom_name="ok", data_source="sentinel-2-l2a", date_range=JULY, stac_url=UNREACHABLE
    )
    with pytest.raises(InvalidSearchError, match="finite"):
        processor.create_collection(bbox=(77.5, 13.0, 77.6, 13.1), cloud_cover_lt=float("nan"))


def test_load_collection_stays_inside_its_workspace(tmp_path):
    outside = tmp_path / "x"
    outside.mkdir()
    (outside / "_manifest.json").write_text(
        json.dumps({"name": "x", "data_source": "sentinel-2-l2a", "date_range": ["2025-07-01", "2025-07-31"]})
    )
    workspace = tmp_path / "a" / "b"
    workspace.mkdir(parents=True)
    for name in ("../../x", "../x", str(outside), "x/../../../x"):
        with pytest.raises(InvalidCollectionNameError, match="path separator"):
            load_collection(name, workspace)
        with pytest.raises(InvalidCollectionNameError):
            Rasteret.load_collection(name, workspace_dir=workspace)
    with pytest.raises(CollectionNotFoundError):
        load_collection("x", workspace)


# -- stale-object detection ----------------------------------------------------------------------


def test_manifest_counts_headers_without_a_version_marker(tmp_path, mirror, stac_for, items, caplog):
    with ScriptedServer(serve_folder(mirror.root, etag=None)) as plain:  # neither ETag nor Last-Modified
        for item in items[:2]:
            path = mirror.path_of(item["assets"]["red"]["href"]).relative_to(mirror.root).as_posix()
            item["assets"]["red"]["href"] = f"{plain.origin}/{path}"
        report = build(tmp_path / "ws", stac_for(items).url)
        assert report.failed == [] and report.months[0].headers_without_version == 2
        manifest = json.loads((tmp_path / "ws" / "hostile" / "_manifest.json").read_text())
        assert manifest["months"]["2025-07"]["headers_without_version"] == 2
        assert manifest["headers_without_version"] == 2
        assert "2025-07: 2 headers come from objects with neither ETag nor Last-Modified" in caplog.text
        # A rebuild reuses the cached headers and still counts them.
        again = build(tmp_path / "ws", stac_for(items).url)
        assert again.months[0].headers_reused == 8 and again.months[0].headers_without_version == 2


def test_what_stale_detection_sees():
    """The documented limits (README, "What stale-object detection can see")."""
    cached = ObjectVersion(size=1000, etag=None, last_modified=None)
    check_version("h", cached, ObjectVersion(1000, None, None))  # same-size rewrite: invisible
    with pytest.raises(StaleHeaderError, match="now 1001 bytes"):
        check_version("h", cached, ObjectVersion(1001, None, None))
    tagged = ObjectVersion(size=1000, etag='"a"', last_modified=None)
    with pytest.raises(StaleHeaderError, match="ETag changed"):
        check_version("h", tagged, ObjectVersion(1000, '"b"', None))
    dated = ObjectVersion(size=1000, etag=None, last_modified="Tue, 01 Jul 2025 00:00:00 GMT")
    with pytest.raises(StaleHeaderError, match="modified"):
        check_version("h", dated, ObjectVersion(1000, None, "Wed, 02 Jul 2025 00:00:00 GMT"))


def test_rasteret_without_a_name_or_dates_is_a_typed_error(tmp_path):
    with pytest.raises(InvalidCollectionNameError, match="custom_name and date_range are needed"):
        _ = Rasteret(workspace_dir=tmp_path).name
    with pytest.raises(InvalidSearchError, match="date_range is needed to create a collection"):
        Rasteret(workspace_dir=tmp_path, custom_name="x").create_collection(bbox=(0, 0, 1, 1))


def test_a_silent_stac_api_costs_a_bounded_number_of_attempts():
    from rasteret_pipelines.collections.search import Month, search_items
    from rasteret_pipelines.collections.sources import get_source
    from rasteret_pipelines_tests.cog.test_fetch_security import SilentServer

    silent = SilentServer()
    with silent as url:
        with pytest.raises(StacApiError, match="unreachable"):
            search_items(
                get_source("sentinel-2-l2a"),
                Month("2025-07", dt.date(2025, 7, 1), dt.date(2025, 7, 31)),
                stac_url=url,
                timeout=0.5,
            )
    assert 1 <= len(silent.accepted) <= 2  # the landing page: one try and one read-timeout retry
