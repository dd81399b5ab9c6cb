"""Collections are spec STAC-GeoParquet: the STAC tools read them back as the source items.

The oracle is the recorded real STAC items (Earth Search, USGS LandsatLook, Planetary Computer)
as JSON: what ``stac_geoparquet.arrow.stac_table_to_items``, DuckDB and rustac's DuckDB search
return from a month file must match them, and ``pystac.Item.from_dict`` must accept the items.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pystac
import pytest
import shapely.geometry
from fsspec.implementations.local import LocalFileSystem
from stac_geoparquet.arrow import stac_table_to_items

from rasteret_pipelines import Rasteret
from rasteret_pipelines.cog import CogHeader
from rasteret_pipelines.collections import build as build_module
from rasteret_pipelines.collections import build_collection, list_collections, load_collection, schema
from rasteret_pipelines.collections.build import MONTH_FILE, write_month
from rasteret_pipelines.errors import (
    CollectionNotFoundError,
    EmptySearchError,
    OutdatedCollectionError,
    StacApiError,
)
from rasteret_pipelines.storage import Storage
from rasteret_pipelines_tests.collections.conftest import (
    STAC_DIR,
    july_2025_items,
    recorded,
    shifted,
)
from rasteret_pipelines_tests.conftest import committed_fixtures

JULY = ("2025-07-01", "2025-07-31")
TIMESTAMPS = {"datetime", "start_datetime", "end_datetime", "created", "updated", "expires", "published", "unpublished"}
RECORDED_DIRS = sorted(
    {
        p.parent
        for p in committed_fixtures("stac")
        if len(p.relative_to(STAC_DIR).parts) == 3 and p.parent.name != "collections"
    }
)


def _instant(value) -> dt.datetime:
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _without_nulls(value):
    """``value`` without null object members, recursively (a struct column has every field)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def assert_same_item(got: dict, source: dict, *, links: bool = True) -> None:
    """``got`` (read back) is ``source``: id, datetimes, geometry, bbox, asset hrefs, properties."""
    assert got["type"] == "Feature" and got["id"] == source["id"]
    assert got["stac_version"] == source["stac_version"]
    assert got["stac_extensions"] == source["stac_extensions"]
    assert got["collection"] == source["collection"]
    assert got["geometry"] == source["geometry"]
    assert got["bbox"] == source["bbox"]
    assert {k: a["href"] for k, a in got["assets"].items()} == {k: a["href"] for k, a in source["assets"].items()}
    for key, asset in source["assets"].items():  # asset fields kept (others come back as None)
        assert _without_nulls(got["assets"][key]) == _without_nulls(asset)
    if links:
        assert [link["href"] for link in got["links"]] == [link["href"] for link in source["links"]]
    # A column holds every row: a property only other items of the month have comes back null.
    # A top-level key the STAC item spec does not define (USGS's "description") is a column like
    # the properties, and comes back as one.
    foreign = {k: v for k, v in source.items() if k not in schema.STAC_TOP_LEVEL + ("properties",)}
    want = {**source["properties"], **foreign}
    props = {k: v for k, v in got["properties"].items() if v is not None or k in want}
    assert set(props) == set(want)
    for key, value in want.items():
        if key in TIMESTAMPS and value is not None:
            assert _instant(props[key]) == _instant(value), key
        else:
            assert props[key] == value, key
    pystac.Item.from_dict(got)


@pytest.mark.filterwarnings("ignore:Could not parse bucket/account from href")  # pystac's storage-extension migration
@pytest.mark.parametrize("folder", RECORDED_DIRS, ids=lambda p: p.relative_to(STAC_DIR).as_posix())
def test_month_file_round_trips_every_recorded_item(tmp_path, folder):
    items = recorded(folder)
    table = schema.items_table(items)
    for name in (
        "type",
        "stac_version",
        "stac_extensions",
        "id",
        "geometry",
        "bbox",
        "collection",
        "links",
        "assets",
        "datetime",
    ):
        assert name in table.column_names, name
    assert table.schema.field("datetime").type == pa.timestamp("us", tz="UTC")
    store = Storage.from_uri(tmp_path)
    write_month(store, table, "c", "2025-07")
    path = tmp_path / "c" / "month=2025-07" / MONTH_FILE
    geo = json.loads(pq.read_schema(path).metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    back = list(stac_table_to_items(pq.read_table(path)))
    assert [b["id"] for b in back] == [i["id"] for i in items]
    for got, source in zip(back, items):
        assert_same_item(got, source)


@pytest.fixture
def july(mirror):
    return [mirror.publish(i) for i in july_2025_items()]


def build_s2(workspace, stac, name="brazil", date_range=JULY, bands=("B04", "B08"), **kwargs):
    return build_collection(
        "sentinel-2-l2a",
        name,
        workspace,
        date_range=date_range,
        bands=list(bands),
        stac_url=stac.url,
        progress=False,
        **kwargs,
    )


def test_built_month_reads_back_as_the_served_items(tmp_path, stac_for, july):
    stac = stac_for(july)
    build_s2(tmp_path, stac)
    path = tmp_path / "brazil" / "month=2025-07" / MONTH_FILE
    table = pq.read_table(path)
    assert sorted(schema.extra_columns(table.schema)) == sorted(
        c for b in ("red", "nir") for c in schema.band_columns(b)
    )
    by_id = {i["id"]: i for i in july}
    # Through the STAC view: exactly the items (the STAC API rewrote links to itself).
    back = list(stac_table_to_items(schema.stac_view(table)))
    assert sorted(b["id"] for b in back) == sorted(by_id)
    for got in back:
        assert_same_item(got, by_id[got["id"]], links=False)
    # The raw file: the same items, the header columns as extra properties and nothing else.
    for got in stac_table_to_items(table):
        extra = set(got["properties"]) - set(by_id[got["id"]]["properties"])
        assert extra == {c for b in ("red", "nir") for c in schema.band_columns(b)}
        header = CogHeader.from_dict(got["properties"]["red_header"])
        assert header.href == by_id[got["id"]]["assets"]["red"]["href"]
        pystac.Item.from_dict(got)
    # The library's own view, all months, filtered.
    collection = load_collection("brazil", tmp_path)
    items = collection.stac_items(cloud_cover_lt=30)
    want = sorted(i["id"] for i in july if i["properties"]["eo:cloud_cover"] < 30)
    assert sorted(i["id"] for i in items) == want and want
    for got in items:
        assert_same_item(got, by_id[got["id"]], links=False)


def test_duckdb_reads_a_month_file(tmp_path, stac_for, july):
    build_s2(tmp_path, stac_for(july))
    path = tmp_path / "brazil" / "month=2025-07" / MONTH_FILE
    rows = duckdb.sql(
        f"""select id, type, stac_version, datetime, "eo:cloud_cover", assets.red.href,
                   red_header.href, bbox.xmin
            from read_parquet('{path}') order by id"""
    ).fetchall()
    want = sorted(july, key=lambda i: i["id"])
    assert [r[0] for r in rows] == [i["id"] for i in want]
    for row, item in zip(rows, want):
        _, kind, version, when, cloud, href, header_href, xmin = row
        assert (kind, version) == ("Feature", item["stac_version"])
        assert when == _instant(item["properties"]["datetime"])
        assert cloud == item["properties"]["eo:cloud_cover"]
        assert href == header_href == item["assets"]["red"]["href"]
        assert xmin == item["bbox"][0]


def test_rustac_duckdb_search_reads_a_month_file(tmp_path, stac_for, july):
    import rustac  # test dependencies (pinned in pyproject.toml: DuckDB of the offline extensions)
    import rustac_duckdb_extensions

    build_s2(tmp_path, stac_for(july))
    path = str(tmp_path / "brazil" / "month=2025-07" / MONTH_FILE)
    client = rustac.DuckdbClient(
        extension_directory=str(rustac_duckdb_extensions.extension_directory()),
        install_extensions=False,
    )
    everything = client.search(path)
    assert sorted(i["id"] for i in everything) == sorted(i["id"] for i in july)
    mua = {
        "type": "Polygon",
        "coordinates": [[[-40.1, -4.1], [-39.9, -4.1], [-39.9, -3.9], [-40.1, -3.9], [-40.1, -4.1]]],
    }
    found = client.search(path, intersects=mua, datetime="2025-07-01T00:00:00Z/2025-07-31T23:59:59Z")
    assert [i["id"] for i in found] == ["S2B_24MUA_20250731_0_L2A"]
    by_id = {i["id"]: i for i in july}
    got = found[0]
    source = by_id[got["id"]]
    assert got["assets"]["red"]["href"] == source["assets"]["red"]["href"]
    assert got["geometry"] == source["geometry"]
    assert _instant(got["properties"]["datetime"]) == _instant(source["properties"]["datetime"])
    assert got["properties"]["eo:cloud_cover"] == source["properties"]["eo:cloud_cover"]


def test_months_with_different_assets_and_an_empty_month_read_as_one_dataset(tmp_path, mirror, stac_for):
    base = july_2025_items()[:2]
    may = [mirror.publish(shifted(i, 5)) for i in base]
    june = [mirror.publish(shifted(i, 6)) for i in base]
    for item in june:  # June's items lack some assets: another `assets` struct type
        for key in ("coastal", "visual", "thumbnail"):
            item["assets"].pop(key, None)
        item["properties"]["eo:cloud_cover"] = 7  # an integer: inferred int64 by itself
    stac = stac_for(may + june)
    report = build_s2(tmp_path, stac, date_range=("2025-05-01", "2025-07-31"))
    assert [m.items for m in report.months] == [2, 2, 0]
    collection = load_collection("brazil", tmp_path)
    table = collection.to_table(cloud_cover_lt=10)
    assert sorted(table.column("id").to_pylist()) == sorted(i["id"] for i in june)
    assert table.schema.field("eo:cloud_cover").type == pa.float64()
    assets = collection.to_table(columns=["id", "assets"]).to_pylist()
    assert {r["id"]: r["assets"]["coastal"] is None for r in assets} == {
        **{i["id"]: False for i in may},
        **{i["id"]: True for i in june},
    }
    projected = collection.to_table(columns=["red_header"], date_range=("2025-06-01", "2025-06-30"))
    assert projected.column_names == ["red_header"] and projected.num_rows == 2
    assert all(CogHeader.from_dict(h).width == 700 for h in projected.column("red_header").to_pylist())


def test_a_band_an_item_lacks_is_missing_not_failed(tmp_path, mirror, stac_for, july, caplog):
    items = copy.deepcopy(july)
    for item in items:
        del item["assets"]["coastal"]
    stac = stac_for(items)
    mirror.cogs.reset_log()
    with caplog.at_level(logging.INFO):
        report = build_s2(tmp_path, stac, bands=("B04", "B01"))
    assert report.failed == [] and report.months[0].headers_fetched == 6
    assert sorted((m.item_id, m.band) for m in report.missing) == sorted((i["id"], "coastal") for i in items)
    assert {r.path.rsplit("/", 1)[-1] for r in mirror.cogs.requests} == {"red.tif"}
    assert "failed" not in caplog.text and "no asset for coastal" in caplog.text
    manifest = json.loads((tmp_path / "brazil" / "_manifest.json").read_text())
    assert manifest["months"]["2025-07"]["missing_assets"] == 6
    assert manifest["months"]["2025-07"]["failed_headers"] == 0
    mirror.cogs.reset_log()
    again = build_s2(tmp_path, stac, bands=("B04", "B01"))
    assert mirror.cogs.requests == [] and again.months[0].headers_reused == 6


def _outdated_month(path, built) -> None:
    """Rewrite ``path`` in the layout before STAC-GeoParquet (item JSON in ``stac_item``)."""
    old = pa.table(
        {
            "id": built.column("id"),
            "collection": built.column("collection"),
            "datetime": built.column("datetime"),
            "geometry": pa.array(built.column("geometry").to_pylist(), pa.binary()),
            "bbox": built.column("bbox"),
            "eo:cloud_cover": built.column("eo:cloud_cover"),
            "platform": built.column("platform"),
            "updated": pa.array([v.isoformat().replace("+00:00", "Z") for v in built.column("updated").to_pylist()]),
            "stac_item": pa.array([json.dumps(i) for i in stac_table_to_items(schema.stac_view(built))]),
            **{c: built.column(c) for b in ("red", "nir") for c in schema.band_columns(b)},
        }
    )
    pq.write_table(old, path)


def test_an_outdated_collection_says_rebuild_and_a_rebuild_reuses_its_headers(tmp_path, mirror, stac_for, july):
    stac = stac_for(july)
    build_s2(tmp_path, stac)
    path = tmp_path / "brazil" / "month=2025-07" / MONTH_FILE
    _outdated_month(path, pq.read_table(path))
    collection = load_collection("brazil", tmp_path)
    with pytest.raises(OutdatedCollectionError, match=r"2025-07.*Rebuild them"):
        collection.to_table()
    with pytest.raises(OutdatedCollectionError):
        Rasteret.load_collection("brazil", workspace_dir=tmp_path).get_xarray(
            [shapely.geometry.box(-40.1, -4.1, -39.9, -3.9)], ["B04"]
        )
    mirror.cogs.reset_log()
    report = build_s2(tmp_path, stac)
    assert mirror.cogs.requests == [] and report.months[0].headers_reused == 12
    table = load_collection("brazil", tmp_path).to_table()
    assert table.num_rows == 6 and "stac_item" not in table.column_names
    assert table.schema.field("updated").type == pa.timestamp("us", tz="UTC")


def test_create_collection_that_finds_nothing_creates_nothing(tmp_path, stac_for, july, caplog):
    stac = stac_for(july)  # Sentinel-2 items only: a Landsat search finds nothing
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    processor = Rasteret(
        workspace_dir=workspace,
        custom_name="bangalore",
        data_source="LANDSAT",
        date_range=("2025-07-01", "2025-07-31"),
        stac_url=stac.url,
    )
    with caplog.at_level(logging.DEBUG, logger="rasteret_pipelines"):
        with pytest.raises(EmptySearchError, match="found no items.*was not created"):
            processor.create_collection(bbox=(77.55, 13.01, 77.59, 13.09), cloud_cover_lt=20)
    assert list(workspace.iterdir()) == [] and list_collections(workspace) == []
    # one message per outcome: nothing logged says a month was written or a build failed
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert not [m for m in said if "empty month" in m or "writing" in m or "failed" in m], said
    with pytest.raises(CollectionNotFoundError, match="no collection"):
        Rasteret.load_collection("bangalore_202507-07_landsat", workspace_dir=workspace)


def test_a_failed_new_build_leaves_no_collection_but_an_old_one_stays(tmp_path, mirror, stac_for, july, monkeypatch):
    stac = stac_for([mirror.publish(shifted(i, 6)) for i in july_2025_items()[:2]] + july)
    real = build_module.search_items
    calls = []

    def july_fails(source, month, **kwargs):  # June's search works and is written, July's fails
        calls.append(month.key)
        if month.key == "2025-07":
            raise StacApiError(f"STAC API {stac.url} answered 503 searching for {month.key}")
        return real(source, month, **kwargs)

    monkeypatch.setattr(build_module, "search_items", july_fails)
    workspace = tmp_path / "workspace"
    with pytest.raises(StacApiError):
        build_s2(workspace, stac, date_range=("2025-06-01", "2025-07-31"))
    assert calls == ["2025-06", "2025-07"] and not workspace.exists() or list(workspace.iterdir()) == []
    build_s2(workspace, stac, date_range=("2025-06-01", "2025-06-30"))
    with pytest.raises(StacApiError):
        build_s2(workspace, stac, date_range=("2025-07-01", "2025-07-31"))
    collection = load_collection("brazil", workspace)  # the existing collection is kept whole
    assert collection.months == ["2025-06"] and collection.to_table(columns=["id"]).num_rows == 2


class _CountingFS(LocalFileSystem):
    """Local files under another protocol, counting the bytes read: :class:`Storage` hands it
    to pyarrow wrapped in ``FSSpecHandler``, the path every ``s3://`` collection read takes."""

    protocol = "counting"
    cachable = False

    def __init__(self):
        super().__init__()
        self.bytes_read = 0

    def _open(self, path, mode="rb", **kwargs):
        f = super()._open(path, mode, **kwargs)
        fs, read = self, f.read

        def counted(*args):
            data = read(*args)
            fs.bytes_read += len(data)
            return data

        f.read = counted
        return f


def test_to_table_with_columns_reads_only_those_columns(tmp_path, mirror, stac_for):
    """What the read path asks for (ids, datetimes, footprints, two headers) costs a fraction of
    the column data: the hundreds of ``assets`` leaf columns are never read; and the footer, which
    lists every leaf column, is read once when the collection is opened, not again per scan."""
    items = [mirror.publish(shifted(i, 7, day)) for i in july_2025_items() for day in range(1, 6)]
    build_s2(tmp_path / "ws", stac_for(items))
    path = tmp_path / "ws" / "brazil" / "month=2025-07" / MONTH_FILE
    handler = _CountingFS()
    local = load_collection("brazil", tmp_path / "ws")
    store = Storage(local.storage.uri, handler, local.storage.base)
    assert isinstance(store.arrow_fs.handler, pafs.FSSpecHandler)
    collection = type(local)(name=local.name, storage=store, manifest=local.manifest)
    collection.dataset  # noqa: B018  (opening reads each month's footer, once)
    footers = handler.bytes_read
    handler.bytes_read = 0
    table = collection.to_table(columns=["id", "datetime", "geometry", "red_header", "nir_header"], cloud_cover_lt=50)
    assert table.num_rows == sum(1 for i in items if i["properties"]["eo:cloud_cover"] < 50)
    projected = handler.bytes_read
    handler.bytes_read = 0
    everything = collection.to_table(cloud_cover_lt=50)
    assert everything.num_rows == table.num_rows
    size = path.stat().st_size
    assert 0 < projected < 0.5 * handler.bytes_read < size, (projected, handler.bytes_read, size)
    assert footers + projected < size  # opening plus the projected scan: the footer read once
