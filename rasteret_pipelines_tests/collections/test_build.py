"""Building collections from a local STAC API over recorded items and served COGs."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path

import duckdb
import geopandas as gpd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import rasterio

from rasteret_pipelines.cog import CogHeader, MemoryReader
from rasteret_pipelines.collections import (
    build_collection,
    collection_name,
    list_collections,
    load_collection,
)
from rasteret_pipelines.collections.schema import HEADER_TYPE
from rasteret_pipelines.errors import (
    CollectionNotFoundError,
    InvalidSearchError,
    StacApiError,
    UnknownBandError,
    UnknownSourceError,
)
from rasteret_pipelines_demo.range_server import FaultPlan
from rasteret_pipelines_tests.collections.conftest import (
    LANDSAT_BANDS,
    USGS_DIR,
    july_2025_items,
    recorded,
    shifted,
)

JULY = ("2025-07-01", "2025-07-31")


def build_s2(workspace, stac, name="brazil", date_range=JULY, **kwargs):
    return build_collection(
        "sentinel-2-l2a",
        name,
        workspace,
        date_range=date_range,
        bands=["B04", "B08"],
        stac_url=stac.url,
        progress=False,
        **kwargs,
    )


@pytest.fixture
def july(mirror):
    return [mirror.publish(i) for i in july_2025_items()]


def test_build_writes_geoparquet_with_every_header(tmp_path, mirror, stac_for, july):
    stac = stac_for(july)
    report = build_s2(tmp_path, stac)
    month = report.months[0]
    assert (month.month, month.items, month.headers_fetched, month.failed) == ("2025-07", 6, 12, [])
    assert mirror.cogs.count("GET") <= 1.1 * 12
    assert report.header_requests == mirror.cogs.count("GET")

    path = tmp_path / "brazil" / "month=2025-07" / "items.parquet"
    table = pq.read_table(path)
    assert table.schema.field("red_header").type == HEADER_TYPE
    assert sorted(table.column("id").to_pylist()) == sorted(i["id"] for i in july)
    for row in table.to_pylist():
        item = next(i for i in july if i["id"] == row["id"])
        assert row["eo:cloud_cover"] == item["properties"]["eo:cloud_cover"]
        assert row["proj:epsg"] == item["properties"]["proj:epsg"]
        assert row["platform"] == "sentinel-2b"
        assert row["mgrs:grid_square"] == item["properties"]["mgrs:grid_square"]
        assert row["s2:processing_baseline"] == "05.11"
        assert row["earthsearch:boa_offset_applied"] is True
        assert row["type"] == "Feature" and row["stac_version"] == item["stac_version"]
        assert row["assets"]["red"]["href"] == item["assets"]["red"]["href"]
        header = CogHeader.from_dict(row["red_header"])
        assert header.href == item["assets"]["red"]["href"] == row["red_href"]
        with rasterio.open(mirror.path_of(header.href)) as src:
            assert (header.width, header.height, header.dtype) == (src.width, src.height, "uint16")
            assert header.size == mirror.path_of(header.href).stat().st_size

    # Readable unchanged by the tools people use.
    gdf = gpd.read_parquet(path)
    assert gdf.crs.to_epsg() == 4326 and len(gdf) == 6  # stac-geoparquet writes WGS 84 as PROJJSON
    assert gdf.geometry.iloc[0].is_valid
    geo = json.loads(pq.read_schema(path).metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["columns"]["geometry"]["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    dataset = ds.dataset(tmp_path / "brazil", format="parquet", partitioning="hive")
    assert dataset.to_table(columns=["id", "month"]).num_rows == 6
    rows = duckdb.sql(
        f"select month, count(*) from read_parquet('{tmp_path}/brazil/*/*.parquet', hive_partitioning=true) group by month"
    ).fetchall()
    assert rows == [("2025-07", 6)]

    manifest = json.loads((tmp_path / "brazil" / "_manifest.json").read_text())
    assert manifest["data_source"] == "sentinel-2-l2a" and manifest["bands"] == ["nir", "red"]
    assert manifest["months"]["2025-07"]["items"] == 6 and manifest["size"] == 6


def test_headers_come_through_the_reader_passed_in(tmp_path, mirror, stac_for, july):
    """build_collection(reader=): every header byte from the reader, none from the COG server,
    and the same headers (ETag aside: each store names versions its own way) as over HTTP."""
    hrefs = [i["assets"][b]["href"] for i in july for b in ("red", "nir")]
    reader = MemoryReader({h: mirror.path_of(h).read_bytes() for h in hrefs})
    report = build_s2(tmp_path / "memory", stac_for(july), reader=reader)
    assert mirror.cogs.count(None) == 0
    assert report.months[0].headers_fetched == 12 and report.months[0].failed == []
    assert report.header_requests == reader.count() == 12
    over_http = build_s2(tmp_path / "http", stac_for(july))
    assert over_http.header_requests == mirror.cogs.count("GET") == 12

    def headers(root):
        table = pq.read_table(root / "brazil" / "month=2025-07" / "items.parquet")
        return {h["href"]: CogHeader.from_dict(h) for h in table.column("red_header").to_pylist()}

    from_memory, from_http = headers(tmp_path / "memory"), headers(tmp_path / "http")
    assert from_memory.keys() == from_http.keys() and len(from_memory) == 6
    for href, header in from_memory.items():
        assert header.etag == reader.etag_for(href)
        assert dataclasses.replace(header, etag=None, last_modified=None) == dataclasses.replace(
            from_http[href], etag=None, last_modified=None
        )


def test_rebuild_unchanged_costs_no_header_request(tmp_path, mirror, stac_for, july):
    stac = stac_for(july)
    build_s2(tmp_path, stac)
    mirror.cogs.reset_log()
    report = build_s2(tmp_path, stac)
    assert mirror.cogs.count(None) == 0
    assert report.months[0].headers_reused == 12 and report.months[0].headers_fetched == 0


def test_rebuild_refetches_headers_cached_by_an_older_header_layout(tmp_path, mirror, stac_for, july):
    """Version-1 headers hold CRSs built before GDAL's GeoKey rules: never reused."""
    import pyarrow as pa

    stac = stac_for(july)
    first = build_s2(tmp_path, stac)
    path = Path(first.months[0].path)
    table = pq.read_table(path)
    i = table.schema.get_field_index("red_header")
    old = [dict(h, format_version=1) for h in table.column(i).to_pylist()]
    table = table.set_column(i, table.schema.field(i), pa.array(old, HEADER_TYPE))
    pq.write_table(table, path)
    mirror.cogs.reset_log()
    report = build_s2(tmp_path, stac)
    assert report.months[0].headers_fetched == 6 and report.months[0].headers_reused == 6
    assert {r.path for r in mirror.cogs.requests} == {f"/{item['id']}/red.tif" for item in july}
    rebuilt = pq.read_table(path, columns=["red_header"]).column(0).to_pylist()
    assert all(CogHeader.from_dict(h).href for h in rebuilt)


LOCAL_CS = (
    'LOCAL_CS["Cartesian (Meter)",LOCAL_DATUM["Unknown",32767],UNIT["metre",1],'
    'AXIS["Easting",EAST],AXIS["Northing",NORTH]]'
)


@pytest.mark.parametrize(("crs", "said"), [(None, "no CRS"), (LOCAL_CS, "only a local")], ids=["none", "local"])
def test_a_cached_header_without_crs_is_a_typed_error_naming_the_href(tmp_path, mirror, stac_for, july, crs, said):
    """A COG whose GeoKeys define no CRS, or only GDAL's LOCAL_CS (nothing on the Earth), is
    indexed (with a warning) but never read as if placed."""
    import pyarrow as pa
    import shapely

    from rasteret_pipelines.collections import load_collection
    from rasteret_pipelines.errors import GeoreferenceError
    from rasteret_pipelines.reading import read_geometries

    first = build_s2(tmp_path, stac_for(july))
    path = Path(first.months[0].path)
    table = pq.read_table(path)
    i = table.schema.get_field_index("red_header")
    cleared = [dict(h, crs=crs) for h in table.column(i).to_pylist()]
    table = table.set_column(i, table.schema.field(i), pa.array(cleared, HEADER_TYPE))
    pq.write_table(table, path)
    area = shapely.geometry.shape(july[0]["geometry"]).centroid.buffer(0.01)
    mirror.cogs.reset_log()
    with pytest.raises(GeoreferenceError, match=rf"band red: .*red\.tif has {said}"):
        read_geometries(load_collection("brazil", tmp_path), [area], ["red", "nir"])
    assert mirror.cogs.count(None) == 0


def test_rebuild_after_one_item_changed_fetches_only_that_item(tmp_path, mirror, stac_for, july):
    stac = stac_for(july)
    build_s2(tmp_path, stac)
    changed = copy.deepcopy(july[2])
    changed["properties"]["updated"] = "2025-09-01T00:00:00Z"  # reprocessed in place
    stac.replace_item(changed)
    mirror.cogs.reset_log()
    report = build_s2(tmp_path, stac)
    assert report.months[0].headers_fetched == 2 and report.months[0].headers_reused == 10
    paths = {r.path for r in mirror.cogs.requests}
    assert paths == {f"/{changed['id']}/red.tif", f"/{changed['id']}/nir.tif"}


def test_months_are_separate_files_and_one_rebuilds_alone(tmp_path, mirror, stac_for):
    base = july_2025_items()[:3]
    items = [mirror.publish(shifted(i, m)) for i in base for m in (5, 6, 7)]
    stac = stac_for(items)
    report = build_s2(tmp_path, stac, date_range=("2025-05-01", "2025-07-31"))
    assert [m.month for m in report.months] == ["2025-05", "2025-06", "2025-07"]
    assert [m.items for m in report.months] == [3, 3, 3]
    before = {
        m: (tmp_path / "brazil" / f"month={m}" / "items.parquet").stat().st_mtime_ns for m in ("2025-05", "2025-07")
    }
    report = build_s2(tmp_path, stac, date_range=("2025-06-01", "2025-06-30"))
    assert [m.month for m in report.months] == ["2025-06"]
    after = {
        m: (tmp_path / "brazil" / f"month={m}" / "items.parquet").stat().st_mtime_ns for m in ("2025-05", "2025-07")
    }
    assert before == after
    collection = load_collection("brazil", tmp_path)
    assert len(collection) == 9 and collection.date_range == ("2025-05-01", "2025-07-31")
    assert collection.dataset.to_table(columns=["id"]).num_rows == 9


def test_paging_through_every_page(tmp_path, mirror, stac_for):
    base = july_2025_items()
    items = [mirror.publish(shifted(i, 7, day)) for i in base for day in range(1, 8)]
    stac = stac_for(items, page_limit_max=5)
    report = build_s2(tmp_path, stac)
    assert report.months[0].items == len(items) == 42
    assert stac.count("/search") >= 9


def test_permanently_failing_headers_are_recorded_then_completed(tmp_path, mirror, stac_for):
    base = july_2025_items()
    items = [mirror.publish(shifted(i, 7, day)) for i in base for day in range(1, 6)]  # 60 COGs
    broken = sorted(f"{i['id']}/red.tif" for i in items)[:6]  # 10% of the header GETs
    stac = stac_for(items)
    mirror.cogs.faults = FaultPlan(rate=1.0, kinds=["503"], paths=broken)
    report = build_s2(tmp_path, stac, fetch_config=_fast_retries())
    failed = sorted(f"{f.item_id}/{f.band}.tif" for f in report.failed)
    assert failed == broken
    table = pq.read_table(tmp_path / "brazil" / "month=2025-07" / "items.parquet")
    errors = {r["id"]: r["red_error"] for r in table.to_pylist() if r["red_error"]}
    assert sorted(f"{k}/red.tif" for k in errors) == broken
    assert all("HTTP 503" in e for e in errors.values())
    assert all(r["red_header"] is None for r in table.to_pylist() if r["red_error"])

    mirror.cogs.faults = None
    mirror.cogs.reset_log()
    report = build_s2(tmp_path, stac)
    assert report.failed == [] and report.months[0].headers_fetched == 6
    assert sorted(r.path.lstrip("/") for r in mirror.cogs.requests) == broken


def _fast_retries():
    from rasteret_pipelines.cog import FetchConfig

    return FetchConfig(max_retries=2, backoff_base=0.001, backoff_max=0.01)


def test_landsat_reads_requester_pays_s3_alternates(tmp_path, mirror, stac_for, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDLANDSATTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "landsat-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", mirror.cogs.url)
    items = [mirror.publish(i, bands=LANDSAT_BANDS, alternate="s3") for i in recorded(USGS_DIR)]
    stac = stac_for(items)
    report = build_collection(
        "LANDSAT",
        "usgs",
        tmp_path,
        date_range=("2020-01-01", "2020-01-31"),
        bands=["B4", "B5"],
        platform={"in": ["LANDSAT_8"]},
        stac_url=stac.url,
        progress=False,
    )
    assert report.items == 1 and report.failed == []
    requests = mirror.cogs.requests
    assert len(requests) == 2
    for r in requests:
        headers = {k.lower(): v for k, v in r.headers.items()}
        assert r.path.startswith("/usgs-landsat/LC08_L2SP_028030_20200114")
        assert headers["x-amz-request-payer"] == "requester"
        assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDLANDSATTEST/")
    row = pq.read_table(tmp_path / "usgs" / "month=2020-01" / "items.parquet").to_pylist()[0]
    assert row["red_href"].startswith("s3://usgs-landsat/") and row["landsat:wrs_path"] == "028"
    search = [r for r in stac.requests if r.path.endswith("/search")]
    assert search, "no search request"


def test_empty_search_writes_an_empty_month_with_the_full_schema(tmp_path, stac_for, july, caplog):
    stac = stac_for(july)
    with caplog.at_level(logging.WARNING):
        report = build_s2(tmp_path, stac, date_range=("2025-03-01", "2025-03-31"))
    assert report.items == 0 and "no sentinel-2-l2a items" in caplog.text
    table = pq.read_table(tmp_path / "brazil" / "month=2025-03" / "items.parquet")
    assert table.num_rows == 0 and "red_header" in table.column_names and "geometry" in table.column_names


def test_malformed_items_are_recorded_not_silently_dropped(tmp_path, mirror, stac_for, july, caplog):
    no_asset = copy.deepcopy(july[0])
    del no_asset["assets"]["nir"]
    no_geometry = copy.deepcopy(july[1])
    no_geometry["id"] = "no-geometry"
    no_geometry["geometry"] = None
    stac = stac_for([no_asset, no_geometry] + july[2:])
    with caplog.at_level(logging.WARNING):
        report = build_s2(tmp_path, stac)
    month = report.months[0]
    assert month.skipped_items == [("no-geometry", "item has no valid geometry")]
    assert month.failed == []  # a band the item lacks is no failure: no retry could fix it
    assert [(m.item_id, m.band) for m in month.missing] == [(no_asset["id"], "nir")]
    assert "band headers failed" not in caplog.text
    row = next(
        r
        for r in pq.read_table(tmp_path / "brazil" / "month=2025-07" / "items.parquet").to_pylist()
        if r["id"] == no_asset["id"]
    )
    assert row["nir_error"] == "item has no 'nir' asset" and row["red_header"] is not None
    assert "no-geometry" in caplog.text


def test_stac_api_5xx_is_retried_then_a_clear_error(tmp_path, stac_for, july):
    stac = stac_for(july)
    stac.faults = FaultPlan(rate=1.0, kinds=["503"], max_faults=2)
    assert build_s2(tmp_path, stac).items == 6  # two 503s, then success
    stac.faults = FaultPlan(rate=1.0, kinds=["503"])
    with pytest.raises(StacApiError, match="503"):
        build_s2(tmp_path, stac)


def test_unreachable_stac_api(tmp_path):
    with pytest.raises(StacApiError, match="127.0.0.1:9 unreachable"):
        build_collection("sentinel-2-l2a", "x", tmp_path, date_range=JULY, stac_url="http://127.0.0.1:9")


def test_stac_url_from_the_environment(tmp_path, stac_for, july, monkeypatch):
    stac = stac_for(july)
    monkeypatch.setenv("RASTERET_STAC_URL_SENTINEL_2_L2A", stac.url)
    report = build_collection("sentinel-2-l2a", "env", tmp_path, date_range=JULY, bands=["red"], progress=False)
    assert report.items == 6


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"source": "sentinel-3"}, UnknownSourceError, "landsat-c2l2-sr, sentinel-2-c1-l2a"),
        ({"bands": ["B99"]}, UnknownBandError, "B04"),
        ({"date_range": ("2025-07-31", "2025-07-01")}, InvalidSearchError, "inverted"),
        ({"date_range": ("2025-07-01",)}, InvalidSearchError, "start, end"),
        ({"date_range": ("2001-01-01", "2001-12-31")}, InvalidSearchError, "before sentinel-2-l2a starts"),
        ({"bbox": (39.66, -106.18, 40.65, -104.88)}, InvalidSearchError, "lat, lon"),
        ({"bbox": (77.58, 13.01, 77.55, 13.08)}, InvalidSearchError, "inverted"),
        ({"bbox": (190, 13.01, 191, 13.08)}, InvalidSearchError, "out of range"),
    ],
)
def test_bad_input_is_refused_before_any_request(tmp_path, kwargs, error, match):
    args = {"source": "sentinel-2-l2a", "date_range": JULY, "bands": ["red"], **kwargs}
    source = args.pop("source")
    with pytest.raises(error, match=match):
        build_collection(source, "bad", tmp_path, stac_url="http://127.0.0.1:9", **args)


def test_a_crash_while_writing_leaves_the_previous_month_intact(tmp_path, mirror, stac_for, july, monkeypatch):
    stac = stac_for(july)
    build_s2(tmp_path, stac)
    path = tmp_path / "brazil" / "month=2025-07" / "items.parquet"
    before = path.read_bytes()

    def crash(src, dst):  # the new month is written in full, then moving it into place fails
        assert Path(src).stat().st_size > 0 and Path(dst).name == "items.parquet"
        raise OSError("disk full")

    monkeypatch.setattr("rasteret_pipelines.storage.os.replace", crash)
    with pytest.raises(OSError, match="disk full"):
        build_s2(tmp_path, stac)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["items.parquet"]


def test_list_and_load_collections(tmp_path, stac_for, july):
    stac = stac_for(july)
    name = collection_name("brazil", JULY, "sentinel-2-l2a")
    assert name == "brazil_202507-07_sentinel"
    build_s2(tmp_path, stac, name=name)
    assert list_collections(tmp_path) == [
        {"name": name, "data_source": "sentinel-2-l2a", "date_range": JULY, "size": 6}
    ]
    with pytest.raises(CollectionNotFoundError, match=str(tmp_path)):
        load_collection("nope", tmp_path)
    with pytest.raises(CollectionNotFoundError):
        load_collection("nope", tmp_path)
    assert collection_name("bangalore", ("2024-01-01", "2024-12-31"), "LANDSAT") == "bangalore_202401-12_landsat"
    assert collection_name("x", ("2023-11-01", "2024-02-28"), "sentinel-2-l2a") == "x_202311-202402_sentinel"


def test_build_collection_rejects_another_sources_collection(tmp_path, stac_for, july, mirror):
    stac = stac_for(july)
    build_s2(tmp_path, stac)
    from rasteret_pipelines.errors import InconsistentCollectionError

    with pytest.raises(InconsistentCollectionError, match="holds sentinel-2-l2a"):
        build_collection(
            "sentinel-2-c1-l2a", "brazil", tmp_path, date_range=JULY, bands=["red"], stac_url=stac.url, progress=False
        )


def test_search_by_geometry_and_bbox_keeps_only_intersecting_items(tmp_path, stac_for, july):
    stac = stac_for(july)
    mua_only = {
        "type": "Polygon",
        "coordinates": [[[-40.1, -4.1], [-39.9, -4.1], [-39.9, -3.9], [-40.1, -3.9], [-40.1, -4.1]]],
    }
    report = build_s2(tmp_path, stac, name="by-geometry", geometry=mua_only)
    table = pq.read_table(tmp_path / "by-geometry" / "month=2025-07" / "items.parquet")
    assert table.column("id").to_pylist() == ["S2B_24MUA_20250731_0_L2A"] and report.items == 1
    search = [r for r in stac.requests if r.path.endswith("/search")]
    assert search and all("intersects" in (r.params or {}) for r in search)

    report = build_s2(tmp_path, stac, name="by-bbox", bbox=(-39.5, -5.0, -38.5, -4.6))
    ids = pq.read_table(tmp_path / "by-bbox" / "month=2025-07" / "items.parquet").column("id").to_pylist()
    assert sorted(ids) == ["S2B_24MVV_20250731_0_L2A", "S2B_24MWV_20250731_0_L2A"]
    manifest = json.loads((tmp_path / "by-geometry" / "_manifest.json").read_text())
    assert manifest["geometry"]["type"] == "Polygon"


def test_georeference_warnings_are_recorded_per_band_in_the_manifest(tmp_path, mirror, stac_for, july):
    """A red COG georeferenced by ground control points only (GDAL: GCPs, no geotransform, no
    dataset CRS) is indexed with a GeoreferenceWarning: the report and the manifest record it
    under its band and item, on the first build and when a rebuild reuses the header."""
    import rasterio.control
    import rasterio.shutil

    from rasteret_pipelines.errors import GeoreferenceWarning

    target = mirror.path_of(july[2]["assets"]["red"]["href"])
    gcps = [rasterio.control.GroundControlPoint(0, 0, 699960.0, 1500000.0)]
    gcp_file = tmp_path / "gcp.tif"
    with rasterio.open(target) as src:
        profile = dict(src.profile, driver="GTiff", tiled=True, blockxsize=256, blockysize=256)
        profile.pop("transform")
        data = src.read()
    with rasterio.open(gcp_file, "w", **profile, gcps=gcps) as dst:
        dst.write(data)
    with rasterio.open(gcp_file) as src:  # the oracle: GCPs, no geotransform, no dataset CRS
        assert src.gcps[0] and src.crs is None
    target.write_bytes(gcp_file.read_bytes())
    stac = stac_for(july)
    with pytest.warns(GeoreferenceWarning, match="ground control point"):
        report = build_s2(tmp_path, stac)
    notes = report.georeference_warnings
    assert [(n.item_id, n.band) for n in notes] == [(july[2]["id"], "red")]
    assert "ground control point" in notes[0].warning and "red.tif" in notes[0].warning
    manifest = json.loads((tmp_path / "brazil" / "_manifest.json").read_text())
    recorded_warnings = manifest["months"]["2025-07"]["georeference_warnings"]
    assert recorded_warnings == {"red": [{"item": july[2]["id"], "warning": notes[0].warning}]}
    again = build_s2(tmp_path, stac)  # the header is reused, its warning still recorded
    assert again.months[0].headers_fetched == 0
    assert again.georeference_warnings == notes
    manifest = json.loads((tmp_path / "brazil" / "_manifest.json").read_text())
    assert manifest["months"]["2025-07"]["georeference_warnings"] == recorded_warnings


@pytest.mark.parametrize("failure", ["unreachable", "503"])
def test_a_stac_api_errors_printed_traceback_shows_no_token(tmp_path, stac_for, july, failure):
    """The chained causes (requests' and pystac-client's exceptions quote the URL with its
    query string) are redacted too: a printed traceback never carries the token."""
    import traceback

    secret = "s3cr3t-t0ken-22"
    if failure == "unreachable":
        url = f"http://127.0.0.1:9/v1?token={secret}"
    else:
        stac = stac_for(july)
        stac.faults = FaultPlan(rate=1.0, kinds=["503"])
        url = f"{stac.url}?token={secret}"
    with pytest.raises(StacApiError) as info:
        build_collection("sentinel-2-l2a", "x", tmp_path, date_range=JULY, stac_url=url, progress=False)
    printed = "".join(traceback.format_exception(info.value))
    assert "token=REDACTED" in printed  # the URL is named, its token is not
    assert secret not in printed
    assert info.value.__cause__ is not None  # the cause is kept, redacted
    cause, seen = info.value, 0
    while cause is not None:
        assert secret not in str(cause)
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    assert seen >= 2
