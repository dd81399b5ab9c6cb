"""Filtering a collection locally: push-down filters, exact geometry, no network, S3 workspaces."""

from __future__ import annotations

import boto3
import pytest
import shapely.geometry

from rasteret_pipelines.collections import build_collection, list_collections, load_collection
from rasteret_pipelines.errors import UnknownBandError
from rasteret_pipelines_tests.collections.conftest import july_2025_items, shifted

# Footprints of the recorded items (their STAC bboxes).
MUA_POINT = (-40.0, -4.0)  # only inside S2B_24MUA
OCEAN = (-30.0, -30.0)


@pytest.fixture
def built(tmp_path, mirror, stac_for):
    items = [mirror.publish(shifted(i, m)) for i in july_2025_items() for m in (6, 7)]
    stac = stac_for(items)
    build_collection(
        "sentinel-2-l2a",
        "brazil",
        tmp_path,
        date_range=("2025-06-01", "2025-07-31"),
        bands=["red", "nir"],
        stac_url=stac.url,
        progress=False,
    )
    mirror.cogs.reset_log()
    return load_collection("brazil", tmp_path), items, mirror, stac


def recorded_cloud(items, month):
    return {
        i["id"]: i["properties"]["eo:cloud_cover"] for i in items if f"-{month:02d}-" in i["properties"]["datetime"]
    }


def test_filters_match_the_recorded_items_without_network(built):
    collection, items, mirror, stac = built
    search_before = stac.count("/search")
    assert len(collection) == 12 and collection.months == ["2025-06", "2025-07"]

    june = collection.to_table(date_range=("2025-06-01", "2025-06-30"))
    assert sorted(june.column("id").to_pylist()) == sorted(recorded_cloud(items, 6))

    clear = collection.to_table(cloud_cover_lt=30)
    expected = sorted(i["id"] for i in items if i["properties"]["eo:cloud_cover"] < 30)
    assert sorted(clear.column("id").to_pylist()) == expected and expected

    point = shapely.geometry.Point(*MUA_POINT).buffer(0.01)
    hit = collection.to_table(geometry=point)
    assert sorted(hit.column("id").to_pylist()) == sorted(i["id"] for i in items if "24MUA" in i["id"])
    assert collection.to_table(geometry=shapely.geometry.Point(*OCEAN).buffer(0.01)).num_rows == 0

    by_bbox = collection.to_table(bbox=(-40.36, -4.7, -40.35, -4.6))  # overlaps MUA and MUV boxes
    assert {i.split("_")[1] for i in by_bbox.column("id").to_pylist()} == {"24MUA", "24MUV"}

    tile = collection.to_table(properties={"mgrs:grid_square": "VV"})
    assert sorted(tile.column("id").to_pylist()) == sorted(i["id"] for i in items if "24MVV" in i["id"])
    assert collection.to_table(platform={"in": ["sentinel-2a"]}).num_rows == 0
    assert collection.to_table(platform="sentinel-2b").num_rows == 12

    light = collection.to_table(cloud_cover_lt=30, columns=["eo:cloud_cover"])
    assert light.column_names == ["eo:cloud_cover"] and light.num_rows == len(expected)
    headers = collection.headers(collection.to_table(date_range=("2025-07-01", "2025-07-31")), "red")
    assert len(headers) == 6 and all(h is not None and h.width == 700 for h in headers)

    assert mirror.cogs.count(None) == 0
    assert stac.count("/search") == search_before


def test_scenes_of_many_geometries_are_those_their_union_touches(built):
    """``select_scenes`` takes the union of many geometries (overlapping, touching, apart, one
    in the ocean) the fast way: the scenes equal those whose recorded footprint intersects
    shapely's plain ``union_all`` of them."""
    from rasteret_pipelines.reading.plan import select_scenes

    collection, items, _, _ = built
    x, y = MUA_POINT
    boxes = [shapely.geometry.box(x + dx, y + dy, x + dx + 0.02, y + dy + 0.02) for dx, dy in ((0, 0), (0.01, 0.01))]
    boxes += [shapely.geometry.box(x + 0.02, y, x + 0.04, y + 0.02)]  # touches the first along an edge
    boxes += [shapely.geometry.box(x - 0.36 + 0.3 * k, y - 0.6, x - 0.35 + 0.3 * k, y - 0.59) for k in range(4)]
    boxes += [shapely.geometry.Point(*OCEAN).buffer(0.01)]
    oracle = shapely.union_all(boxes)
    expected = sorted(i["id"] for i in items if shapely.geometry.shape(i["geometry"]).intersects(oracle))
    scenes = select_scenes(collection, list(enumerate(boxes)), None, None, None, ["red"])
    assert expected and len(expected) < len(items)
    assert sorted(s.id for s in scenes) == expected


def test_geodataframe_view(built):
    collection, items, _, _ = built
    gdf = collection.to_geodataframe(cloud_cover_lt=50)
    assert gdf.crs.to_epsg() == 4326
    assert "red_header" not in gdf.columns and "red_href" in gdf.columns
    assert len(gdf) == sum(i["properties"]["eo:cloud_cover"] < 50 for i in items)


def test_bands_not_in_the_collection(built):
    collection, *_ = built
    assert collection.resolve_band("B04") == "red"
    with pytest.raises(UnknownBandError, match="holds"):
        collection.resolve_band("B11")


def test_collections_on_s3(tmp_path, mirror, stac_for, moto_s3):
    endpoint = moto_s3
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="lake")
    items = [mirror.publish(i) for i in july_2025_items()]
    stac = stac_for(items)
    report = build_collection(
        "sentinel-2-l2a",
        "brazil",
        "s3://lake/ws",
        date_range=("2025-07-01", "2025-07-31"),
        bands=["red"],
        stac_url=stac.url,
        progress=False,
    )
    assert report.location == "s3://lake/ws/brazil"
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket="lake")["Contents"]]
    assert sorted(keys) == ["ws/brazil/_manifest.json", "ws/brazil/month=2025-07/items.parquet"]
    assert list_collections("s3://lake/ws")[0]["size"] == 6
    collection = load_collection("brazil", "s3://lake/ws")
    assert collection.to_table(cloud_cover_lt=30).num_rows == sum(i["properties"]["eo:cloud_cover"] < 30 for i in items)
    mirror.cogs.reset_log()
    build_collection(
        "sentinel-2-l2a",
        "brazil",
        "s3://lake/ws",
        date_range=("2025-07-01", "2025-07-31"),
        bands=["red"],
        stac_url=stac.url,
        progress=False,
    )
    assert mirror.cogs.count(None) == 0  # headers reused from the S3 copy


FILTER_CASES = [
    {"date_range": ("2025-06-01", "2025-06-30")},
    {"date_range": ("2025-06-20", "2025-07-31"), "cloud_cover_lt": 40},
    {"cloud_cover_lt": 30, "platform": "sentinel-2b"},
    {"bbox": (-40.36, -4.7, -40.35, -4.6)},
    {"properties": {"mgrs:grid_square": ["VV", "UA"]}, "platform": {"in": ["sentinel-2a", "sentinel-2b"]}},
    {"properties": {"mgrs:grid_square": "VV"}, "cloud_cover_lt": 100},
]


@pytest.mark.parametrize("filters", FILTER_CASES)
def test_to_table_selects_the_rows_arrows_dataset_scanner_selects(built, filters):
    """The oracle: pyarrow.dataset evaluating :meth:`filter_expression` over the same files."""
    collection = built[0]
    expected = collection.dataset.to_table(filter=collection.filter_expression(**filters))
    expected = expected.sort_by([("datetime", "ascending"), ("id", "ascending")])
    got = collection.to_table(**filters)
    assert 0 < expected.num_rows < 12  # every case selects some rows, not all
    assert got.column("id").to_pylist() == expected.column("id").to_pylist()
    assert got.schema.names == expected.schema.names
    for name in ("datetime", "eo:cloud_cover", "red_header", "assets", "month"):
        assert got.column(name).equals(expected.column(name).cast(got.schema.field(name).type)), name


def test_unknown_filter_or_column_is_a_clear_error(built):
    from rasteret_pipelines.errors import InvalidSearchError

    collection = built[0]
    with pytest.raises(InvalidSearchError, match="no column 'no:such'"):
        collection.to_table(properties={"no:such": 1})
    with pytest.raises(InvalidSearchError, match="no column 'nope'"):
        collection.to_table(columns=["id", "nope"])


def test_a_filtered_projected_read_loads_neither_pyarrow_dataset_nor_pandas(built, tmp_path):
    """A read's collection query must not import pandas before the first request (xarray's
    background import brings it during the fetch)."""
    import json
    import subprocess
    import sys

    code = (
        "import sys, shapely.geometry\n"
        "from rasteret_pipelines.collections import load_collection\n"
        "from rasteret_pipelines.reading.plan import select_scenes\n"
        f"c = load_collection('brazil', {str(tmp_path)!r})\n"
        "t = c.to_table(date_range=('2025-06-01', '2025-07-31'), cloud_cover_lt=90, bbox=(-41, -5, -40, -4),"
        " geometry=shapely.geometry.Point(-40.0, -4.0).buffer(0.01), platform='sentinel-2b',"
        " properties={'mgrs:grid_square': ['UA', 'VV']}, columns=['id', 'red_header'])\n"
        "assert t.num_rows > 0\n"
        "s = select_scenes(c, [(1, shapely.geometry.Point(-40.0, -4.0).buffer(0.01))], ('2025-06-01', '2025-07-31'),"
        " 90, None, ['red'])\n"
        "assert s and s[0].headers['red'].href\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json\n" + code], capture_output=True, text=True, check=True, timeout=120
    )
    modules = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert {"pyarrow.dataset", "pyarrow._dataset", "pandas", "xarray"} & modules == set()
