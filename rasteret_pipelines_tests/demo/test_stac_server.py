"""The local STAC API server, driven through pystac-client with recorded real items.

Expected results are computed independently from the recorded item JSON (shapely for space,
``datetime.fromisoformat`` for time, plain Python for properties) and, where the recording has
one, checked against what the real Earth Search API answered.
"""

from __future__ import annotations

import json
import warnings
from datetime import datetime, timedelta, timezone

import pytest
import requests
import shapely.geometry
from pystac_client import Client
from pystac_client.exceptions import APIError

from rasteret_pipelines_demo.range_server import FaultPlan
from rasteret_pipelines_demo.stac_server import (
    StacServer,
    load_collections,
    load_items,
    rewrite_hrefs,
)
from rasteret_pipelines_tests.conftest import STAC_DIR, committed_fixtures

EARTH_SEARCH = STAC_DIR / "earth-search-v1"

pytestmark = [
    pytest.mark.timeout(60),
    # pystac's storage-extension migration warns about the recorded https asset hrefs.
    pytest.mark.filterwarnings("ignore:Could not parse bucket:UserWarning"),
]


# --- oracles ---------------------------------------------------------------------------------


def parse_dt(s: str) -> datetime:
    dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def item_dt(item: dict) -> datetime:
    return parse_dt(item["properties"]["datetime"])


def default_order(items: list[dict]) -> list[str]:
    """Ids in the server's default order: datetime ascending, then id, then collection."""
    return [i["id"] for i in sorted(items, key=lambda i: (item_dt(i), i["id"], i["collection"]))]


def ids_where(items: list[dict], pred) -> set[str]:
    return {i["id"] for i in items if pred(i)}


def geom(item: dict):
    return shapely.geometry.shape(item["geometry"])


def make_many(recorded: list[dict], n: int) -> list[dict]:
    """``n`` copies of the recorded items with new ids, dates two by two (ties) and cloud cover."""
    base = datetime(2024, 1, 1, tzinfo=timezone.utc)
    out = []
    for i in range(n):
        item = json.loads(json.dumps(recorded[i % len(recorded)]))
        item["id"] = f"dup-{i:04d}-{item['id']}"
        item["properties"]["datetime"] = (base + timedelta(hours=i // 2)).isoformat().replace("+00:00", "Z")
        item["properties"]["eo:cloud_cover"] = (i * 37) % 100
        out.append(item)
    return out


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded() -> list[dict]:
    missing = [p for p in committed_fixtures("stac") if not p.is_file()]  # named by the manifest
    assert missing == [], f"committed STAC fixtures missing: {missing}"
    items = load_items(STAC_DIR)
    assert len(items) >= 20
    return items


@pytest.fixture(scope="module")
def recorded_collections() -> list[dict]:
    return load_collections(EARTH_SEARCH / "collections")


@pytest.fixture(scope="module")
def stac(recorded, recorded_collections):
    """A server over the recorded items (read-only tests share it)."""
    with StacServer(recorded, collections=recorded_collections) as srv:
        yield srv


@pytest.fixture
def client(stac) -> Client:
    stac.faults = None
    stac.latency = 0.0
    return Client.open(stac.url)


@pytest.fixture(scope="module")
def many(recorded) -> list[dict]:
    return make_many(recorded, 250)


@pytest.fixture(scope="module")
def big(many):
    with StacServer(many) as srv:
        yield srv


def search_ids(client: Client, method: str = "POST", **kwargs) -> list[str]:
    return [i["id"] for i in client.search(method=method, **kwargs).items_as_dicts()]


def raw(stac: StacServer, path: str, *, params=None, body=None) -> requests.Response:
    url = stac.url + path
    if body is not None:
        return requests.post(url, json=body, timeout=10)
    return requests.get(url, params=params, timeout=10)


# --- landing page, conformance, collections ----------------------------------------------------


def test_landing_page_and_conformance(stac, client):
    for cls in ("CORE", "COLLECTIONS", "FEATURES", "ITEM_SEARCH", "QUERY", "SORT"):
        assert client.conforms_to(cls), cls
    assert not client.conforms_to("FILTER")
    landing = raw(stac, "/").json()
    searches = {(l["rel"], l.get("method")) for l in landing["links"] if l["rel"] == "search"}
    assert searches == {("search", "GET"), ("search", "POST")}
    assert {l["rel"] for l in landing["links"]} >= {"self", "root", "conformance", "data"}
    conf = raw(stac, "/conformance").json()["conformsTo"]
    assert "https://api.stacspec.org/v1.0.0/item-search" in conf
    assert not [c for c in conf if "filter" in c or "cql2" in c], "no filter extension"


def test_collections_recorded_and_synthesised(stac, client, recorded, recorded_collections):
    ids = sorted(c.id for c in client.get_collections())
    # 4 recorded Earth Search collections + the USGS one, which only the items name.
    assert ids == sorted({c["id"] for c in recorded_collections} | {i["collection"] for i in recorded})

    s2 = client.get_collection("sentinel-2-l2a")
    rec = next(c for c in recorded_collections if c["id"] == "sentinel-2-l2a")
    assert s2.description == rec["description"]
    assert s2.get_self_href() == f"{stac.url}/collections/sentinel-2-l2a"
    assert s2.get_single_link("items").href == f"{stac.url}/collections/sentinel-2-l2a/items"
    assert s2.license == rec["license"]

    usgs = client.get_collection("landsat-c2l2-sr")
    members = [i for i in recorded if i["collection"] == "landsat-c2l2-sr"]
    bbox = usgs.extent.spatial.bboxes[0]
    assert bbox[0] == pytest.approx(min(i["bbox"][0] for i in members))
    assert bbox[3] == pytest.approx(max(i["bbox"][3] for i in members))
    start, end = usgs.extent.temporal.intervals[0]
    assert start == min(item_dt(i) for i in members)
    assert end == max(item_dt(i) for i in members)


def test_unknown_collection_is_404(stac, client):
    assert client.get_collection("no-such-collection") is None
    r = raw(stac, "/collections/no-such-collection")
    assert r.status_code == 404
    assert r.json()["code"] == "NotFound" and r.json()["description"]
    assert raw(stac, "/collections/sentinel-2-l2a/items/no-such-item").status_code == 404
    assert raw(stac, "/no/such/endpoint").status_code == 404


def test_collection_items_and_get_item(stac, client, recorded):
    col = client.get_collection("sentinel-2-c1-l2a")
    expected = default_order([i for i in recorded if i["collection"] == "sentinel-2-c1-l2a"])
    assert [i.id for i in col.get_items()] == expected
    item = col.get_item(expected[0])
    assert item is not None and item.id == expected[0]
    assert col.get_item("nope") is None


def test_items_keep_assets_and_point_links_here(stac, client, recorded):
    by_key = {(i["collection"], i["id"]): i for i in recorded}
    served = list(client.search(max_items=None).items_as_dicts())
    assert len(served) == len(recorded)
    for item in served:
        orig = by_key[(item["collection"], item["id"])]
        assert item["assets"] == orig["assets"]
        assert item["properties"] == orig["properties"]
        assert item["geometry"] == orig["geometry"]
        links = {l["rel"]: l["href"] for l in item["links"]}
        coll = f"{stac.url}/collections/{item['collection']}"
        assert links["self"] == f"{coll}/items/{item['id']}"
        assert links["parent"] == links["collection"] == coll
        assert links["root"] == stac.url
        # other links (license, canonical, via, thumbnail ...) are kept as recorded
        others = [l for l in orig["links"] if l["rel"] not in ("self", "parent", "collection", "root")]
        assert [l for l in item["links"] if l["rel"] not in ("self", "parent", "collection", "root")] == others
    # pystac accepts them as Items whose collection resolves to this server
    first = next(client.search(collections=["sentinel-2-l2a"], max_items=1).items())
    assert first.get_collection().id == "sentinel-2-l2a"


def test_items_served_verbatim_without_link_rewriting(recorded):
    with StacServer(recorded, rewrite_links=False) as srv:
        served = list(Client.open(srv.url).search(limit=100).items_as_dicts())
    assert sorted(served, key=lambda i: (i["collection"], i["id"])) == sorted(
        recorded, key=lambda i: (i["collection"], i["id"])
    )


# --- paging ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_paging_walks_every_page(big, many, method):
    client = Client.open(big.url)
    big.reset_log()
    search = client.search(method=method, limit=20)
    pages = list(search.pages_as_dicts())
    assert [len(p["features"]) for p in pages] == [20] * 12 + [10]
    ids = [f["id"] for p in pages for f in p["features"]]
    assert ids == default_order(many)  # datetime ascending, ties broken by id, no repeats
    assert all(p["numberMatched"] == 250 for p in pages)
    assert search.matched() == 250

    log = [r for r in big.requests if r.path == "/search"]
    assert len(log) == 13 + 1  # 13 pages, then matched() with limit=1
    assert all(r.method == method and r.status == 200 for r in log)
    assert [r.token is None for r in log[:13]] == [True] + [False] * 12
    assert [r.returned for r in log[:13]] == [20] * 12 + [10]
    if method == "POST":
        nxt = next(l for l in pages[0]["links"] if l["rel"] == "next")
        assert nxt["method"] == "POST" and nxt["merge"] is False
        assert nxt["body"]["limit"] == 20 and "token" in nxt["body"]
    else:
        nxt = next(l for l in pages[0]["links"] if l["rel"] == "next")
        assert "token=" in nxt["href"] and "limit=20" in nxt["href"]
    assert not any(l["rel"] == "next" for l in pages[-1]["links"])


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_paging_keeps_the_search_parameters(big, many, method):
    client = Client.open(big.url)
    search = client.search(
        method=method,
        limit=7,
        collections=["sentinel-2-l2a", "sentinel-2-l1c"],
        query={"eo:cloud_cover": {"lt": 60}},
        sortby="-datetime",
    )
    ids = [i["id"] for i in search.items_as_dicts()]
    want = [
        i
        for i in many
        if i["collection"] in ("sentinel-2-l2a", "sentinel-2-l1c") and i["properties"]["eo:cloud_cover"] < 60
    ]
    # -datetime, then the implicit id ascending tie-breaker
    want.sort(key=lambda i: i["id"])
    want.sort(key=item_dt, reverse=True)
    assert ids == [i["id"] for i in want]
    assert len(ids) > 14  # at least three pages
    assert search.matched() == len(want)


def test_limit_default_and_cap(stac, big):
    assert raw(big, "/search").json()["numberReturned"] == 10
    capped = raw(big, "/search", params={"limit": 1000}).json()
    assert capped["numberReturned"] == 100 and capped["context"]["limit"] == 100
    with StacServer(make_many(load_items(STAC_DIR), 30), page_limit_max=8) as small:
        client = Client.open(small.url)
        pages = list(client.search(limit=50).pages_as_dicts())
        assert [len(p["features"]) for p in pages] == [8, 8, 8, 6]


def test_collection_items_endpoint_pages(big, many):
    client = Client.open(big.url)
    col = client.get_collection("sentinel-2-l1c")
    want = default_order([i for i in many if i["collection"] == "sentinel-2-l1c"])
    big.reset_log()
    assert [i.id for i in col.get_items()] == want
    assert big.count("/collections/sentinel-2-l1c/items") == -(-len(want) // 10)


# --- filters ---------------------------------------------------------------------------------------


def test_recorded_earth_search_query_gives_the_recorded_answer(client):
    """The search recorded against Earth Search (intersects + datetime + collections)."""
    recorded = json.loads((EARTH_SEARCH / "search-response-sample.json").read_text())
    body = next(l for l in recorded["links"] if l["rel"] == "next")["body"]
    kwargs = {k: body[k] for k in ("datetime", "intersects", "collections")}
    want = {f["id"] for f in recorded["features"]}
    for method in ("GET", "POST"):
        search = client.search(method=method, **kwargs)
        assert set(search_ids(client, method, **kwargs)) == want
        assert search.matched() == recorded["numberMatched"]


@pytest.mark.parametrize(
    "bbox",
    [
        [-106.0, 39.0, -104.0, 41.0],  # Colorado: one Sentinel-2 and one Landsat scene
        [-41.0, -6.0, -37.0, -3.0],  # north-east Brazil: the 2025 Sentinel-2 tiles
        [-40.0, -4.6, -39.95, -4.55],  # a small box inside the overlap of two tiles
        [150.0, -13.0, -170.0, -10.0],  # crosses the antimeridian: LC09 over the Coral Sea
        [0.0, 0.0, 1.0, 1.0],  # nothing
    ],
)
def test_bbox(client, recorded, bbox):
    minx, miny, maxx, maxy = bbox
    if minx > maxx:
        box = shapely.geometry.box(minx, miny, 180, maxy).union(shapely.geometry.box(-180, miny, maxx, maxy))
    else:
        box = shapely.geometry.box(*bbox)
    want = ids_where(recorded, lambda i: box.intersects(geom(i)))
    assert set(search_ids(client, "GET", bbox=bbox)) == want
    assert set(search_ids(client, "POST", bbox=bbox)) == want
    if bbox[0] > 0 and bbox[0] < bbox[2]:
        assert want == set()


def test_intersects(client, recorded):
    polygon = {
        "type": "Polygon",
        "coordinates": [[[-40.2, -4.7], [-38.5, -4.7], [-38.5, -4.6], [-40.2, -4.6], [-40.2, -4.7]]],
    }
    shape = shapely.geometry.shape(polygon)
    want = ids_where(recorded, lambda i: shape.intersects(geom(i)))
    assert 3 <= len(want) < len(recorded)
    for method in ("GET", "POST"):
        assert set(search_ids(client, method, intersects=polygon)) == want


@pytest.mark.parametrize(
    "dt",
    [
        "2023-10-08T18:02:55.276Z",  # an instant (recorded as ...55.276000Z)
        "2025-07-31T00:00:00Z/2025-07-31T23:59:59Z",
        "../2020-12-31T00:00:00Z",
        "2023-06-01T00:00:00Z/..",
        "2021-03-29T17:57:33.490812Z/2023-10-08T17:37:26.656958Z",  # both ends are items
    ],
)
def test_datetime(client, recorded, dt):
    if "/" in dt:
        lo_s, hi_s = dt.split("/")
        lo = None if lo_s == ".." else parse_dt(lo_s)
        hi = None if hi_s == ".." else parse_dt(hi_s)
    else:
        lo = hi = parse_dt(dt)
    want = ids_where(recorded, lambda i: (lo is None or item_dt(i) >= lo) and (hi is None or item_dt(i) <= hi))
    assert want
    for method in ("GET", "POST"):
        assert set(search_ids(client, method, datetime=dt)) == want


def test_datetime_against_start_end_datetime(recorded):
    item = json.loads(json.dumps(recorded[0]))
    item["id"] = "composite"
    item["properties"]["datetime"] = None
    item["properties"]["start_datetime"] = "2020-01-01T00:00:00Z"
    item["properties"]["end_datetime"] = "2020-12-31T23:59:59Z"
    with StacServer([item]) as srv:
        client = Client.open(srv.url)
        assert search_ids(client, datetime="2020-06-01T00:00:00Z") == ["composite"]
        assert search_ids(client, datetime="2019-01-01T00:00:00Z/2020-01-01T00:00:00Z") == ["composite"]
        assert search_ids(client, datetime="2021-01-01T00:00:00Z/..") == []


def test_query_extension(client, recorded):
    cases = [
        ({"eo:cloud_cover": {"lt": 20}}, lambda p: p.get("eo:cloud_cover", 1e9) < 20),
        ({"eo:cloud_cover": {"gte": 25, "lte": 45}}, lambda p: 25 <= p.get("eo:cloud_cover", -1) <= 45),
        ({"platform": {"in": ["LANDSAT_8", "LANDSAT_9"]}}, lambda p: p.get("platform") in ("LANDSAT_8", "LANDSAT_9")),
        (
            {"platform": {"eq": "sentinel-2b"}, "eo:cloud_cover": {"lt": 30}},
            lambda p: p.get("platform") == "sentinel-2b" and p.get("eo:cloud_cover", 1e9) < 30,
        ),
        ({"platform": {"neq": "sentinel-2b"}}, lambda p: "platform" in p and p["platform"] != "sentinel-2b"),
        ({"platform": {"startsWith": "LANDSAT"}}, lambda p: str(p.get("platform", "")).startswith("LANDSAT")),
        (
            {"datetime": {"gt": "2023-10-08T18:00:00Z"}},
            lambda p: parse_dt(p["datetime"]) > parse_dt("2023-10-08T18:00:00Z"),
        ),
    ]
    for query, pred in cases:
        want = ids_where(recorded, lambda i: pred(i["properties"]))
        assert want, query
        for method in ("GET", "POST"):
            assert set(search_ids(client, method, query=query)) == want, (query, method)


def test_ids_and_collections(client, recorded):
    some = [recorded[0]["id"], recorded[5]["id"], "not-an-id"]
    assert set(search_ids(client, "GET", ids=some)) == set(some[:2])
    assert set(search_ids(client, "POST", ids=some)) == set(some[:2])
    usgs = ids_where(recorded, lambda i: i["collection"] == "landsat-c2l2-sr")
    assert len(usgs) == 3
    assert set(search_ids(client, collections=["landsat-c2l2-sr"])) == usgs
    assert search_ids(client, "GET", collections=["no-such-collection"]) == []
    assert client.search(collections=["no-such-collection"]).matched() == 0


def test_sortby(client, recorded):
    by_cloud = search_ids(client, "GET", sortby="-eo:cloud_cover")
    clouds = {i["id"]: i["properties"]["eo:cloud_cover"] for i in recorded}
    assert [clouds[i] for i in by_cloud] == sorted(clouds.values(), reverse=True)
    post = search_ids(client, "POST", sortby=[{"field": "properties.eo:cloud_cover", "direction": "desc"}])
    assert post == by_cloud
    newest = search_ids(client, "GET", sortby=["-datetime", "+id"])
    want = sorted(recorded, key=lambda i: i["id"])
    want.sort(key=item_dt, reverse=True)  # stable: id ascending within one datetime
    assert newest == [i["id"] for i in want]


# --- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"bbox": "1,2,3"},
        {"bbox": "a,b,c,d"},
        {"bbox": "0,10,1,5"},  # south of north
        {"bbox": "0,0,1,1", "intersects": '{"type":"Point","coordinates":[0,0]}'},
        {"intersects": '{"type":"Nonsense"}'},
        {"datetime": "yesterday"},
        {"datetime": "2024-01-02T00:00:00Z/2024-01-01T00:00:00Z"},
        {"datetime": "../.."},
        {"limit": "0"},
        {"limit": "ten"},
        {"query": '{"eo:cloud_cover": {"less": 5}}'},
        {"query": "not json"},
        {"sortby": "datetime", "token": "garbage"},
    ],
)
def test_bad_requests_are_400(stac, params):
    r = raw(stac, "/search", params=params)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["code"] == "BadRequest" and body["description"]
    rec = stac.requests[-1]
    assert rec.status == 400 and rec.query == {k: str(v) for k, v in params.items()}


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize(
    "flt",
    [
        "platform = 'sentinel-2b'",
        {"op": "=", "args": [{"property": "platform"}, "sentinel-2b"]},
    ],
)
def test_filter_is_refused_not_ignored(stac, method, flt):
    """The server has no filter extension: a search carrying ``filter`` answers 400 saying so."""
    value = json.dumps(flt) if method == "GET" and not isinstance(flt, str) else flt
    for path in ("/search", "/collections/sentinel-2-l2a/items"):
        if method == "POST" and path != "/search":
            continue
        r = raw(stac, path, params={"filter": value}) if method == "GET" else raw(stac, path, body={"filter": value})
        assert r.status_code == 400, r.text
        assert r.json()["code"] == "BadRequest"
        assert "filter" in r.json()["description"] and "not supported" in r.json()["description"]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_filter_through_pystac_client_is_an_error(client, method):
    with pytest.warns(UserWarning, match="FILTER"), pytest.raises(APIError, match="not supported") as err:
        search = client.search(
            method=method, collections=["sentinel-2-l2a"], filter="platform = 'sentinel-2b'", filter_lang="cql2-text"
        )
        list(search.items())
    assert err.value.status_code == 400


def test_bad_post_bodies_are_400(stac, client):
    assert raw(stac, "/search", body={"bbox": [1, 2, 3]}).status_code == 400
    assert raw(stac, "/search", body=[1, 2]).status_code == 400
    r = requests.post(stac.search_url, data=b"{not json", headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 400 and r.json()["code"] == "BadRequest"
    with pytest.raises(APIError) as err:
        list(client.search(bbox=[1, 2, 3]).items())
    assert err.value.status_code == 400
    # a token from another sort order is rejected rather than silently misused
    page = raw(stac, "/search", body={"limit": 2}).json()
    token = next(l for l in page["links"] if l["rel"] == "next")["body"]["token"]
    assert raw(stac, "/search", body={"limit": 2, "token": token}).status_code == 200
    assert (
        raw(
            stac, "/search", body={"limit": 2, "token": token, "sortby": [{"field": "id", "direction": "desc"}]}
        ).status_code
        == 400
    )


# --- changing items while serving ----------------------------------------------------------------------


def test_add_replace_remove(recorded):
    first, second = recorded[0], recorded[1]
    with StacServer([first]) as srv:
        client = Client.open(srv.url)
        assert search_ids(client) == [first["id"]]
        srv.add_items([second])
        assert set(search_ids(client)) == {first["id"], second["id"]}
        with pytest.raises(ValueError, match="is already present"):
            srv.add_items([second])

        changed = json.loads(json.dumps(second))
        changed["properties"]["eo:cloud_cover"] = 99.5
        old = srv.replace_item(changed)
        assert old["properties"]["eo:cloud_cover"] == second["properties"]["eo:cloud_cover"]
        assert search_ids(client, query={"eo:cloud_cover": {"eq": 99.5}}) == [second["id"]]

        srv.remove_item(first["collection"], first["id"])
        assert search_ids(client) == [second["id"]]
        assert client.get_collection(first["collection"]).get_item(first["id"]) is None
        with pytest.raises(KeyError, match="no item"):
            srv.remove_item(first["collection"], first["id"])
        with pytest.raises(KeyError, match="no item .* to replace"):
            srv.replace_item(first)
    # the caller's dicts are never touched
    assert "eo:cloud_cover" in second["properties"] and second["properties"]["eo:cloud_cover"] != 99.5


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_paging_while_items_change(recorded, method):
    """Keyset tokens: removing seen items does not skip unseen ones; late items are found."""
    items = make_many(recorded, 40)
    with StacServer(items) as srv:
        client = Client.open(srv.url)
        pages = client.search(method=method, limit=10).pages_as_dicts()
        seen = [f["id"] for f in next(pages)["features"]]
        for item in items:
            if item["id"] in seen[:5]:
                srv.remove_item(item["collection"], item["id"])
        late = json.loads(json.dumps(recorded[0]))
        late["id"] = "late-arrival"
        late["properties"]["datetime"] = "2030-01-01T00:00:00Z"
        srv.add_items([late])
        for page in pages:
            seen += [f["id"] for f in page["features"]]
        assert seen == default_order(items) + ["late-arrival"]


# --- faults and latency ---------------------------------------------------------------------------------


def test_faults_503_post_fails_and_is_logged(stac, client):
    stac.reset_log()
    stac.faults = FaultPlan(rate=1.0, kinds=["503"], max_faults=1)
    try:
        with pytest.raises(APIError) as err:
            list(client.search(method="POST", limit=5).items())
        assert err.value.status_code == 503
        assert [(r.method, r.path, r.status, r.fault) for r in stac.requests] == [("POST", "/search", 503, "503")]
        # the plan is spent: the same search now works
        assert len(search_ids(client, "POST", limit=5)) == len(load_items(STAC_DIR))
        assert stac.count("/search", "POST") == 1 + 5
    finally:
        stac.faults = None


def test_faults_get_is_retried_by_pystac_client(stac, client, recorded):
    """pystac-client's urllib3 Retry repeats a GET answered 503/429 with Retry-After."""
    stac.reset_log()
    stac.faults = FaultPlan(rate=1.0, kinds=["503", "429"], max_faults=2, seed=3)
    try:
        assert len(search_ids(client, "GET", limit=10)) == len(recorded)
        statuses = [r.status for r in stac.requests]
        assert statuses[:2] in ([503, 503], [503, 429], [429, 503], [429, 429])
        assert statuses[2:] == [200, 200, 200]
        assert stac.faults.injected == 2
    finally:
        stac.faults = None


def test_faults_only_hit_search_by_default(stac):
    stac.faults = FaultPlan(rate=1.0, kinds=["500"])
    try:
        client = Client.open(stac.url)  # landing page unaffected
        assert client.get_collection("sentinel-2-l2a") is not None
        with pytest.raises(APIError) as err:
            client.search(method="GET").matched()  # 500 is not retried
        assert err.value.status_code == 500
        stac.faults = FaultPlan(rate=1.0, kinds=["500"], paths="collections/*")
        assert raw(stac, "/collections/sentinel-2-l2a").status_code == 500
        assert raw(stac, "/search").status_code == 200
    finally:
        stac.faults = None


def test_fault_reset_and_truncate(stac):
    stac.reset_log()
    stac.faults = FaultPlan(rate=1.0, kinds=["reset"], max_faults=1)
    try:
        with pytest.raises(requests.ConnectionError):
            requests.post(stac.search_url, json={}, timeout=10)
        stac.faults = FaultPlan(rate=1.0, kinds=["truncate"], max_faults=1)
        with pytest.raises(requests.exceptions.RequestException):
            requests.post(stac.search_url, json={}, timeout=10)
        assert [(r.status, r.fault) for r in stac.requests] == [(None, "reset"), (200, "truncate")]
    finally:
        stac.faults = None


def test_latency(stac, server_waits):
    stac.latency = 0.2
    try:
        assert raw(stac, "/search", params={"limit": 1}).status_code == 200
        assert server_waits == [0.2]
    finally:
        stac.latency = 0.0


# --- helpers ---------------------------------------------------------------------------------------------


def test_load_items_and_collections():
    items = load_items(STAC_DIR)
    files = [p for p in STAC_DIR.rglob("*.json") if json.loads(p.read_text()).get("type") == "Feature"]
    assert len(items) == len(files)
    sample = load_items(EARTH_SEARCH / "search-response-sample.json")  # an ItemCollection
    assert [i["id"] for i in sample] == ["S2A_13TDE_20231008_0_L2A", "LC08_L2SP_033032_20231008_02_T1"]
    with pytest.raises(ValueError, match="landing-page.json: not a STAC Item or ItemCollection"):
        load_items(EARTH_SEARCH / "landing-page.json")
    with pytest.raises(FileNotFoundError):
        load_items(STAC_DIR / "nope")
    assert len(load_collections(EARTH_SEARCH / "collections.json")) == 9
    assert {c["id"] for c in load_collections(STAC_DIR)} == {
        "landsat-c2-l2",
        "sentinel-2-c1-l2a",
        "sentinel-2-l1c",
        "sentinel-2-l2a",
    }


def test_rewrite_hrefs(recorded):
    usgs = next(i for i in recorded if i["id"].startswith("LC09_L2SP_092068"))
    seen = []

    def to_local(key: str, href: str) -> str | None:
        seen.append(key)
        if key == "thumbnail":
            return None  # keep
        return "http://127.0.0.1:9/" + href.split("://", 1)[1]

    before = json.dumps(usgs, sort_keys=True)
    out = rewrite_hrefs(usgs, to_local)
    assert json.dumps(usgs, sort_keys=True) == before  # input untouched
    blue = out["assets"]["blue"]
    assert blue["href"].startswith("http://127.0.0.1:9/landsatlook.usgs.gov/")
    assert (
        blue["alternate"]["s3"]["href"]
        == "http://127.0.0.1:9/usgs-landsat/"
        + usgs["assets"]["blue"]["alternate"]["s3"]["href"].split("s3://usgs-landsat/", 1)[1]
    )
    assert out["assets"]["thumbnail"]["href"] == usgs["assets"]["thumbnail"]["href"]
    assert out["links"] == usgs["links"]
    n_alternates = sum(len(a.get("alternate", {})) for a in usgs["assets"].values())
    assert len(seen) == len(usgs["assets"]) + n_alternates


def test_bad_items_are_rejected(recorded):
    item = json.loads(json.dumps(recorded[0]))
    with pytest.raises(ValueError, match="is already present"):
        StacServer([item, item])
    for breaker, message in (
        (lambda i: i.pop("collection"), "has no string 'collection'"),
        (lambda i: i["properties"].update(datetime="not a date"), "bad datetime"),
        (lambda i: i.update(geometry={"type": "Polygon", "coordinates": "x"}), "bad geometry"),
    ):
        bad = json.loads(json.dumps(recorded[0]))
        breaker(bad)
        with pytest.raises(ValueError, match=message):
            StacServer([bad])


def test_no_warnings_from_pystac_client(stac, client):
    """The landing page advertises what pystac-client checks, so it does not warn."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", "Could not parse bucket", UserWarning)
        c = Client.open(stac.url)
        search = c.search(
            collections=["sentinel-2-l2a"],
            query={"eo:cloud_cover": {"lt": 50}},
            sortby="-datetime",
            max_items=3,
        )
        assert len(list(search.items())) == 3
