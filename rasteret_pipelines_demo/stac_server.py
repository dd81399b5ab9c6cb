"""A small, real STAC API server on 127.0.0.1, for tests, benchmarks and offline demos.

It serves a fixed (but mutable) set of STAC Item dicts through the endpoints a STAC client
uses, so ``pystac_client.Client.open(stac.url).search(...)`` works against it, GET and POST,
through every page:

* STAC API core, collections, OGC API Features and item search: ``GET /``,
  ``/conformance``, ``/collections``, ``/collections/{id}``, ``/collections/{id}/items``
  (paged), ``/collections/{id}/items/{item_id}``, and ``GET``/``POST /search``.
* Search parameters: ``collections``, ``ids``, ``bbox`` (4 or 6 numbers; ``minx > maxx``
  crosses the antimeridian), ``intersects`` (any GeoJSON geometry), ``datetime`` (an instant,
  a closed interval, or one open end ``../b`` / ``a/..``), ``limit`` (default 10, capped at
  ``page_limit_max``), the ``query`` extension, ``sortby``. ``fields`` is accepted and
  ignored (whole items are returned).
* No filter extension: a search carrying ``filter`` (CQL2) answers ``400`` saying so, rather
  than ignoring it (the library searches with the ``query`` extension).
* Paging by keyset tokens, like Earth Search / stac-server: a page ends with a ``next`` link
  holding an opaque ``token`` that names the last item returned; the next page starts strictly
  after it in the sort order. Items added or removed between pages therefore neither shift nor
  repeat the remaining ones (an item inserted *before* the cursor is simply not seen by that
  walk, as with a real server). GET pages link to a URL with ``token=...``; POST pages link with
  ``"method": "POST"``, ``"body": {<the original body>, "token": ...}`` and
  ``"merge": false``. Responses carry ``numberMatched``, ``numberReturned`` and the
  ``context`` object that ``ItemSearch.matched()`` reads first.
* Items are served unchanged except for their ``self``, ``parent``, ``collection`` and ``root``
  links, which are rewritten to this server (``rewrite_links=False`` keeps them). Asset hrefs are served as given; use
  :func:`rewrite_hrefs` to point them at a :class:`~rasteret_pipelines_demo.range_server.RangeServer`
  before adding them.
* Bad input answers ``400`` with ``{"code": "BadRequest", "description": ...}``; an unknown
  collection or item ``404`` with ``{"code": "NotFound", ...}``.
* Injected latency and faults (:class:`~rasteret_pipelines_demo.range_server.FaultPlan`),
  and a request log, like the range server. A plan whose ``paths`` is ``None`` applies to
  ``/search`` only (GET and POST), so ``Client.open`` and ``get_collection`` keep working; give
  ``paths`` (globs matched against the path without its leading ``/``, e.g.
  ``"collections/*/items"``) to fail other endpoints. ``"truncate"`` sends half of the JSON body.

Usage::

    items = [rewrite_hrefs(i, to_local) for i in load_items(STAC_DIR)]
    with StacServer(items, collections=load_collections(STAC_DIR)) as stac:
        client = pystac_client.Client.open(stac.url)
        found = list(client.search(collections=["sentinel-2-l2a"], bbox=[...]).items())
        stac.add_items([late_item])                   # visible to the next request
        stac.faults = FaultPlan(rate=1.0, kinds=["503"], max_faults=1)
        assert stac.count("/search") == 2
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import copy
import fnmatch
import functools
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import shapely
import shapely.geometry
from aiohttp import web

from rasteret_pipelines_demo._server import BackgroundServer, abort_connection
from rasteret_pipelines_demo.range_server import FaultPlan

__all__ = [
    "CONFORMS_TO",
    "StacRequestRecord",
    "StacServer",
    "load_collections",
    "load_items",
    "rewrite_hrefs",
]

_log = logging.getLogger(__name__)

STAC_VERSION = "1.0.0"

CONFORMS_TO: tuple[str, ...] = (
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/item-search#query",
    "https://api.stacspec.org/v1.0.0/item-search#sort",
    "https://api.stacspec.org/v1.0.0/ogcapi-features#query",
    "https://api.stacspec.org/v1.0.0/ogcapi-features#sort",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
)
"""Conformance classes announced on ``/`` and ``/conformance``."""

_GEOJSON = "application/geo+json"
_JSON = "application/json"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)
# Link relations of a collection document that point into its original API; replaced.
_COLLECTION_API_RELS = {
    "self",
    "root",
    "parent",
    "items",
    "child",
    "aggregate",
    "aggregations",
    "queryables",
    "http://www.opengis.net/def/rel/ogc/1.0/queryables",
}


# =============================================================================================
# Helpers: loading and rewriting items
# =============================================================================================


def _json_paths(paths_or_dir: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]):
    """Yield ``(path, from_directory)`` for a file, a directory (recursive ``*.json``) or many."""
    if isinstance(paths_or_dir, (str, os.PathLike)):
        paths_or_dir = [paths_or_dir]
    for p in paths_or_dir:
        path = Path(p)
        if path.is_dir():
            for f in sorted(path.rglob("*.json")):
                if f.is_file():
                    yield f, True
        elif path.is_file():
            yield path, False
        else:
            raise FileNotFoundError(f"no such file or directory: {path}")


def load_items(
    paths_or_dir: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> list[dict]:
    """Load STAC Items from JSON files.

    Args:
        paths_or_dir: A file, a directory, or an iterable of files and directories.
            A directory is searched recursively for ``*.json`` (in sorted path order); of
            those, STAC Items (``"type": "Feature"``) are loaded and every other document
            (collections, landing pages, recorded search responses, error bodies) is skipped.
            A file named explicitly must be an Item or an ItemCollection
            (``"type": "FeatureCollection"``, whose ``features`` are loaded).

    Returns:
        The items, in file order. Duplicates are not removed.

    Raises:
        FileNotFoundError: A path does not exist.
        ValueError: An explicitly named file is neither an Item nor an ItemCollection.
    """
    items: list[dict] = []
    for path, from_dir in _json_paths(paths_or_dir):
        doc = json.loads(path.read_text(encoding="utf-8"))
        kind = doc.get("type") if isinstance(doc, dict) else None
        if kind == "Feature":
            items.append(doc)
        elif from_dir:
            continue
        elif kind == "FeatureCollection":
            items.extend(f for f in doc.get("features", []) if isinstance(f, dict))
        else:
            raise ValueError(f"{path}: not a STAC Item or ItemCollection (type={kind!r})")
    return items


def load_collections(
    paths_or_dir: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> list[dict]:
    """Load STAC Collection documents (``"type": "Collection"``) from files or directories.

    Directories are searched recursively for ``*.json``; other documents there are skipped,
    and so is a ``{"collections": [...]}`` listing, unless the file is named explicitly, in
    which case its ``collections`` are loaded.

    Raises:
        FileNotFoundError: A path does not exist.
        ValueError: An explicitly named file is neither a Collection nor a listing.
    """
    out: list[dict] = []
    for path, from_dir in _json_paths(paths_or_dir):
        doc = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(doc, dict) and doc.get("type") == "Collection":
            out.append(doc)
        elif from_dir:
            continue
        elif isinstance(doc, dict) and isinstance(doc.get("collections"), list):
            out.extend(c for c in doc["collections"] if isinstance(c, dict))
        else:
            raise ValueError(f"{path}: not a STAC Collection or a /collections listing")
    return out


def rewrite_hrefs(item: Mapping[str, Any], fn: Callable[[str, str], str | None]) -> dict:
    """Return a deep copy of ``item`` with its asset hrefs passed through ``fn``.

    ``fn(asset_key, href)`` is called for every ``assets.<key>.href`` and for every
    ``assets.<key>.alternate.<name>.href`` (with the same ``asset_key``); it returns the new
    href, or ``None`` to keep the old one. Links and everything else are left as they are.
    """
    out = copy.deepcopy(dict(item))
    assets = out.get("assets")
    if not isinstance(assets, dict):
        return out
    for key, asset in assets.items():
        if not isinstance(asset, dict):
            continue
        href = asset.get("href")
        if isinstance(href, str):
            new = fn(key, href)
            if new is not None:
                asset["href"] = new
        alternates = asset.get("alternate")
        if isinstance(alternates, dict):
            for alt in alternates.values():
                if isinstance(alt, dict) and isinstance(alt.get("href"), str):
                    new = fn(key, alt["href"])
                    if new is not None:
                        alt["href"] = new
    return out


# =============================================================================================
# Request log
# =============================================================================================


@dataclass
class StacRequestRecord:
    """One request the server answered (or deliberately failed).

    Attributes:
        method: ``"GET"``, ``"POST"``, ...
        path: URL path, percent-decoded, with its leading ``/`` (``"/search"``).
        query: Query string parameters (a repeated name keeps its last value).
        body: The parsed JSON body of a POST (``None`` for none, or if it was not JSON).
        status: HTTP status sent; ``None`` for a ``"reset"`` fault.
        fault: The injected fault kind, or ``None``.
        returned: ``numberReturned`` of a search / items page, else ``None``.
        matched: ``numberMatched`` of a search / items page, else ``None``.
        headers: All request headers.
    """

    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int | None
    fault: str | None = None
    returned: int | None = None
    matched: int | None = None
    headers: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def params(self) -> dict[str, Any]:
        """The search parameters whichever way they came: the POST body or the query."""
        return self.body if isinstance(self.body, dict) else dict(self.query)

    @property
    def token(self) -> str | None:
        """The paging token sent with this request, if any."""
        value = self.params.get("token", self.params.get("next"))
        return value if isinstance(value, str) else None


# =============================================================================================
# Errors
# =============================================================================================


class _HttpError(Exception):
    def __init__(self, status: int, code: str, description: str):
        super().__init__(description)
        self.status = status
        self.code = code
        self.description = description


def _bad(description: str) -> _HttpError:
    return _HttpError(400, "BadRequest", description)


def _not_found(description: str) -> _HttpError:
    return _HttpError(404, "NotFound", description)


# =============================================================================================
# Time
# =============================================================================================


@dataclass(frozen=True, order=True)
class _Instant:
    """A point in time, as integer microseconds since the Unix epoch (UTC)."""

    us: int


def _parse_us(text: Any) -> int:
    """Parse an RFC 3339 date-time (or a date) to microseconds since the epoch (UTC)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"not a date-time: {text!r}")
    t = text.strip()
    if t[-1] in "zZ":
        t = t[:-1] + "+00:00"
    dt = datetime.fromisoformat(t.replace("t", "T"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return (dt - _EPOCH) // _US


def _format_us(us: int) -> str:
    dt = _EPOCH + timedelta(microseconds=us)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_interval_text(text: Any, what: str = "datetime") -> tuple[int | None, int | None]:
    """Parse a ``datetime`` parameter: ``t``, ``a/b``, ``../b``, ``a/..``, ``/b``, ``a/``."""
    if not isinstance(text, str) or not text.strip():
        raise _bad(f"{what} must be an RFC 3339 date-time or interval string")
    text = text.strip()
    try:
        if "/" not in text:
            t = _parse_us(text)
            return t, t
        parts = text.split("/")
        if len(parts) != 2:
            raise ValueError("more than one '/'")
        lo_s, hi_s = (p.strip() for p in parts)
        lo = None if lo_s in ("", "..") else _parse_us(lo_s)
        hi = None if hi_s in ("", "..") else _parse_us(hi_s)
    except ValueError as exc:
        raise _bad(f"invalid {what} {text!r}: {exc}") from None
    if lo is None and hi is None:
        raise _bad(f"invalid {what} {text!r}: both ends open")
    if lo is not None and hi is not None and lo > hi:
        raise _bad(f"invalid {what} {text!r}: start after end")
    return lo, hi


def _is_datetime_name(name: str) -> bool:
    return name in ("datetime", "created", "updated", "published", "expires", "unpublished") or (
        name.endswith("datetime")
    )


# =============================================================================================
# Stored items
# =============================================================================================


@dataclass(eq=False)
class _Entry:
    item: dict
    collection: str
    id: str
    geom: Any  # shapely geometry or None
    start: int  # us; equal to end for a single datetime
    end: int
    dt: int  # the instant items are sorted by: datetime, else start_datetime


def _make_entry(item: Any) -> _Entry:
    if not isinstance(item, Mapping):
        raise ValueError(f"an item must be a dict, got {type(item).__name__}")
    # A JSON round trip is a fast deep copy and proves the item is serialisable.
    item = json.loads(json.dumps(item))
    iid, coll = item.get("id"), item.get("collection")
    if not isinstance(iid, str) or not iid:
        raise ValueError("item has no string 'id'")
    if not isinstance(coll, str) or not coll:
        raise ValueError(f"item {iid!r} has no string 'collection'")
    if item.get("type") != "Feature":
        raise ValueError(f"item {coll}/{iid}: type must be 'Feature', got {item.get('type')!r}")
    props = item.get("properties")
    if not isinstance(props, dict):
        raise ValueError(f"item {coll}/{iid} has no 'properties' object")
    try:
        dt_s = props.get("datetime")
        start_s, end_s = props.get("start_datetime"), props.get("end_datetime")
        dt = _parse_us(dt_s) if dt_s is not None else None
        if start_s is not None and end_s is not None:
            start, end = _parse_us(start_s), _parse_us(end_s)
        elif dt is not None:
            start = end = dt
        else:
            raise ValueError("needs 'datetime', or 'start_datetime' and 'end_datetime'")
    except ValueError as exc:
        raise ValueError(f"item {coll}/{iid}: bad datetime: {exc}") from None
    geometry = item.get("geometry")
    geom = None
    if geometry is not None:
        try:
            geom = shapely.geometry.shape(geometry)
        except Exception as exc:  # shapely raises several types for bad GeoJSON
            raise ValueError(f"item {coll}/{iid}: bad geometry: {exc}") from None
        shapely.prepare(geom)
    elif isinstance(item.get("bbox"), list) and len(item["bbox"]) in (4, 6):
        b = item["bbox"]
        geom = _bbox_geometry(b[:2] + b[3:5] if len(b) == 6 else b)
    return _Entry(item, coll, iid, geom, start, end, dt if dt is not None else start)


def _bbox_geometry(b: list[float]):
    minx, miny, maxx, maxy = b
    if minx > maxx:  # crosses the antimeridian
        return shapely.geometry.MultiPolygon(
            [shapely.geometry.box(minx, miny, 180.0, maxy), shapely.geometry.box(-180.0, miny, maxx, maxy)]
        )
    return shapely.geometry.box(minx, miny, maxx, maxy)


def _prop(entry: _Entry, name: str) -> Any:
    """Value of a property for the ``query`` extension: ``id``, ``collection``, ``geometry`` or a property.

    Date-time properties come back as :class:`_Instant` when they parse.
    """
    if name.startswith("properties."):
        name = name[len("properties.") :]
    if name == "id":
        return entry.id
    if name == "collection":
        return entry.collection
    if name == "geometry":
        return entry.geom
    value = entry.item["properties"].get(name)
    if isinstance(value, str) and _is_datetime_name(name):
        try:
            return _Instant(_parse_us(value))
        except ValueError:
            return value
    return value


# =============================================================================================
# Sorting and paging tokens
# =============================================================================================


def _sort_component(value: Any) -> list:
    """A JSON-friendly, totally ordered ``[rank, value]`` for one sort field."""
    if value is None:
        return [9, 0]
    if isinstance(value, _Instant):
        return [2, value.us]
    if isinstance(value, bool):
        return [0, int(value)]
    if isinstance(value, (int, float)):
        return [1, value]
    if isinstance(value, str):
        return [3, value]
    return [4, json.dumps(value, sort_keys=True)]


def _sort_value(entry: _Entry, field_name: str) -> list:
    if field_name in ("datetime", "properties.datetime"):
        return [2, entry.dt]
    return _sort_component(_prop(entry, field_name))


def _make_comparator(directions: list[str]) -> Callable[[list, list], int]:
    def cmp(a: list, b: list) -> int:
        for x, y, d in zip(a, b, directions, strict=True):
            if x != y:
                r = -1 if x < y else 1
                return r if d == "asc" else -r
        return 0

    return cmp


def _normalise_sortby(sortby: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Append the ``id``, ``collection`` tie-breakers so the order is total and stable."""
    names = {f for f, _ in sortby}
    out = list(sortby)
    for tie in ("id", "collection"):
        if tie not in names:
            out.append((tie, "asc"))
    return out


_DEFAULT_SORT = (("datetime", "asc"), ("id", "asc"), ("collection", "asc"))


def _encode_token(sortby: list[tuple[str, str]], key: list) -> str:
    raw = json.dumps({"s": [list(s) for s in sortby], "k": key}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_token(token: Any, sortby: list[tuple[str, str]]) -> list:
    if not isinstance(token, str) or not token:
        raise _bad("token must be a non-empty string")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        doc = json.loads(raw)
        s, k = doc["s"], doc["k"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise _bad(f"invalid paging token {token!r}") from None
    if [tuple(x) for x in s] != list(sortby) or not isinstance(k, list) or len(k) != len(sortby):
        raise _bad("paging token does not belong to this search (sortby differs)")
    if not all(isinstance(c, list) and len(c) == 2 and isinstance(c[0], int) for c in k):
        raise _bad(f"invalid paging token {token!r}")
    return k


# =============================================================================================
# Value comparison of the `query` extension
# =============================================================================================


def _coerce(a: Any, b: Any) -> tuple[Any, Any] | None:
    """Make two values comparable, or ``None`` (SQL unknown) when they are not."""
    if a is None or b is None:
        return None
    if isinstance(a, _Instant) or isinstance(b, _Instant):
        try:
            a = a if isinstance(a, _Instant) else _Instant(_parse_us(a))
            b = b if isinstance(b, _Instant) else _Instant(_parse_us(b))
        except (ValueError, TypeError):
            return None
        return a, b
    if isinstance(a, bool) or isinstance(b, bool):
        return (a, b) if isinstance(a, bool) and isinstance(b, bool) else None
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a, b
    if isinstance(a, str) and isinstance(b, str):
        return a, b
    if isinstance(a, list) and isinstance(b, list):
        return a, b
    return None


def _compare(op: str, a: Any, b: Any) -> bool | None:
    pair = _coerce(a, b)
    if pair is None:
        return None
    x, y = pair
    try:
        if op == "=":
            return x == y
        if op == "<>":
            return x != y
        if op == "<":
            return x < y
        if op == "<=":
            return x <= y
        if op == ">":
            return x > y
        if op == ">=":
            return x >= y
    except TypeError:  # e.g. ordering lists of mixed types
        return None
    raise AssertionError(op)


# =============================================================================================
# The `query` extension
# =============================================================================================

_QUERY_CMP = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


def _compile_query(query: Any) -> Callable[[_Entry], bool]:
    if not isinstance(query, dict):
        raise _bad("query must be an object: {property: {operator: value}}")
    preds: list[Callable[[_Entry], bool | None]] = []
    for name, ops in query.items():
        if not isinstance(ops, dict):
            ops = {"eq": ops}
        for op, value in ops.items():
            preds.append(_query_pred(str(name), op, value))

    def pred(entry: _Entry) -> bool:
        return all(p(entry) is True for p in preds)

    return pred


def _query_pred(name: str, op: str, value: Any) -> Callable[[_Entry], bool | None]:
    if op in _QUERY_CMP:
        cmp_op = _QUERY_CMP[op]
        return lambda e: _compare(cmp_op, _prop(e, name), value)
    if op == "in":
        if not isinstance(value, list):
            raise _bad(f"query {name}.in must be a list")
        return lambda e: _in(_prop(e, name), value)
    if op in ("startsWith", "endsWith", "contains"):
        if not isinstance(value, str):
            raise _bad(f"query {name}.{op} must be a string")

        def str_op(e: _Entry) -> bool | None:
            v = _prop(e, name)
            if not isinstance(v, str):
                return None
            if op == "startsWith":
                return v.startswith(value)
            if op == "endsWith":
                return v.endswith(value)
            return value in v

        return str_op
    raise _bad(
        f"unknown query operator {op!r} for {name!r}; "
        "known: eq, neq, lt, lte, gt, gte, in, startsWith, endsWith, contains"
    )


def _in(v: Any, values: list) -> bool | None:
    if v is None:
        return None
    unknown = False
    for candidate in values:
        r = _compare("=", v, candidate)
        if r is True:
            return True
        if r is None:
            unknown = True
    return None if unknown else False


# =============================================================================================
# Search parameters
# =============================================================================================

_GEOJSON_TYPES = {
    "Point",
    "LineString",
    "Polygon",
    "MultiPoint",
    "MultiLineString",
    "MultiPolygon",
    "GeometryCollection",
}


def _check_bbox(value: Any, what: str = "bbox") -> list[float]:
    if isinstance(value, str):
        try:
            value = [float(v) for v in value.split(",")]
        except ValueError:
            raise _bad(f"{what} must be 4 or 6 comma-separated numbers, got {value!r}") from None
    if (
        not isinstance(value, (list, tuple))
        or len(value) not in (4, 6)
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise _bad(f"{what} must be 4 or 6 numbers, got {value!r}")
    b = [float(v) for v in value]
    if len(b) == 6:
        b = [b[0], b[1], b[3], b[4]]
    minx, miny, maxx, maxy = b
    if not all(map(lambda v: v == v and abs(v) != float("inf"), b)):
        raise _bad(f"{what} must be finite numbers, got {value!r}")
    if miny > maxy:
        raise _bad(f"{what}: south ({miny}) is north of north ({maxy})")
    if not (-180 <= minx <= 180 and -180 <= maxx <= 180 and -90 <= miny <= 90 and -90 <= maxy <= 90):
        raise _bad(f"{what} out of range (longitude -180..180, latitude -90..90): {value!r}")
    return b


def _string_list(value: Any, what: str) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise _bad(f"{what} must be a list of strings or a comma-separated string")


def _json_param(value: Any, what: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError as exc:
            raise _bad(f"{what} is not valid JSON: {exc}") from None
    return value


def _parse_sortby(value: Any) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    if isinstance(value, str):
        for part in value.split(","):
            part = part.strip() if not part.startswith(" ") else "+" + part.strip()
            if not part:
                continue
            if part[0] in "+-":
                items.append((part[1:].strip(), "asc" if part[0] == "+" else "desc"))
            else:
                items.append((part, "asc"))
    elif isinstance(value, list):
        for s in value:
            if not isinstance(s, dict) or not isinstance(s.get("field"), str):
                raise _bad("sortby must be a list of {field, direction} objects")
            direction = str(s.get("direction", "asc")).lower()
            if direction not in ("asc", "desc"):
                raise _bad(f"sortby direction must be 'asc' or 'desc', got {s.get('direction')!r}")
            items.append((s["field"], direction))
    else:
        raise _bad("sortby must be a string like '-datetime,id' or a list of objects")
    out = []
    for name, direction in items:
        if not name:
            raise _bad("sortby has an empty field name")
        if name.startswith("properties."):
            name = name[len("properties.") :]
        out.append((name, direction))
    return out


@dataclass
class _Search:
    preds: list[Callable[[_Entry], bool]]
    limit: int
    sortby: list[tuple[str, str]]
    token: list | None


def _parse_limit(value: Any, page_limit_max: int, default_limit: int) -> int:
    if value is None or value == "":
        return min(default_limit, page_limit_max)
    if isinstance(value, bool):
        raise _bad("limit must be a positive integer")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise _bad(f"limit must be a positive integer, got {value!r}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or value < 1:
        raise _bad(f"limit must be a positive integer, got {value!r}")
    return min(value, page_limit_max)


def _parse_search(params: Mapping[str, Any], server: StacServer) -> _Search:
    preds: list[Callable[[_Entry], bool]] = []
    get = params.get

    if get("collections") not in (None, ""):
        wanted_c = set(_string_list(get("collections"), "collections"))
        preds.append(lambda e: e.collection in wanted_c)
    if get("ids") not in (None, ""):
        wanted_i = set(_string_list(get("ids"), "ids"))
        preds.append(lambda e: e.id in wanted_i)

    bbox, intersects = get("bbox"), get("intersects")
    if bbox not in (None, "") and intersects not in (None, ""):
        raise _bad("bbox and intersects cannot be used together")
    if bbox not in (None, ""):
        qgeom = _bbox_geometry(_check_bbox(bbox))
        shapely.prepare(qgeom)
        preds.append(lambda e: e.geom is not None and bool(shapely.intersects(qgeom, e.geom)))
    if intersects not in (None, ""):
        geo = _json_param(intersects, "intersects")
        if not isinstance(geo, dict) or geo.get("type") not in _GEOJSON_TYPES:
            raise _bad("intersects must be a GeoJSON geometry object")
        try:
            igeom = shapely.geometry.shape(geo)
        except Exception as exc:
            raise _bad(f"intersects is not a valid GeoJSON geometry: {exc}") from None
        shapely.prepare(igeom)
        preds.append(lambda e: e.geom is not None and bool(shapely.intersects(igeom, e.geom)))

    if get("datetime") not in (None, ""):
        lo, hi = _parse_interval_text(get("datetime"))
        preds.append(lambda e: (lo is None or e.end >= lo) and (hi is None or e.start <= hi))

    if get("query") not in (None, ""):
        preds.append(_compile_query(_json_param(get("query"), "query")))

    if get("filter") not in (None, ""):  # answered, never silently ignored
        raise _bad(
            "filter (the CQL2 filter extension) is not supported by this server; use the query "
            "extension (query), collections, ids, bbox, intersects or datetime"
        )

    limit = _parse_limit(get("limit"), server.page_limit_max, server.default_limit)
    sortby = (
        _normalise_sortby(_parse_sortby(get("sortby"))) if get("sortby") not in (None, "", []) else list(_DEFAULT_SORT)
    )
    token_value = get("token", get("next"))
    token = _decode_token(token_value, sortby) if token_value not in (None, "") else None
    return _Search(preds, limit, sortby, token)


# =============================================================================================
# The server
# =============================================================================================


class StacServer(BackgroundServer[StacRequestRecord]):
    """Serve STAC Items as a STAC API on ``127.0.0.1`` (ephemeral port).

    Args:
        items: STAC Item dicts. Each needs ``id``, ``collection``, ``properties`` with a
            ``datetime`` (or ``start_datetime`` and ``end_datetime``) and a ``geometry``
            (or ``null``). They are copied; the caller's dicts are never modified. The pair
            ``(collection, id)`` must be unique.
        collections: Collection documents to serve (e.g. recorded ones). Their navigation
            links (self, root, parent, items, ...) are rewritten to this server, other links
            kept. A collection id that items use but that is not given here is synthesised
            (id, description, license ``"various"``, extent from its current items, links);
            it stays served after its last item is removed.
        page_limit_max: The largest page a client gets, whatever ``limit`` it asks for.
        default_limit: Page size when the request gives no ``limit``.
        faults: A :class:`FaultPlan`, or ``None``; also settable through ``faults``. With
            ``paths=None`` it applies to ``/search`` only.
        latency: Seconds to wait before every response; also settable through ``latency``.
        title: Title of the landing page.
        landing_extra: Further fields of the landing page (the demo mirror's identity).
        rewrite_links: Point each served item's ``self``, ``parent``, ``collection`` and
            ``root`` links at this server (default). ``False`` serves the items byte-for-byte
            as given, links included (then ``Item.get_collection()`` and friends follow the
            original, probably unreachable, hrefs). Also settable through ``rewrite_links``.

    Raises:
        ValueError: An item is malformed, or two items share ``(collection, id)``.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. All methods are
    thread-safe; changes to the items are visible to the next request.
    """

    def __init__(
        self,
        items: Iterable[Mapping[str, Any]] = (),
        *,
        collections: Iterable[Mapping[str, Any]] | None = None,
        page_limit_max: int = 100,
        default_limit: int = 10,
        faults: FaultPlan | None = None,
        latency: float = 0.0,
        title: str = "Local STAC API (rasteret_pipelines_demo.stac_server)",
        rewrite_links: bool = True,
        port: int = 0,
        landing_extra: Mapping[str, Any] | None = None,
    ):
        if page_limit_max < 1 or default_limit < 1:
            raise ValueError("page_limit_max and default_limit must be >= 1")
        super().__init__(latency=latency, faults=faults, port=port)
        self.page_limit_max = page_limit_max
        self.default_limit = default_limit
        self.title = title
        self.landing_extra = dict(landing_extra or {})
        self.rewrite_links = rewrite_links
        self._lock = threading.RLock()
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._version = 0
        self._sorted_cache: dict[tuple, tuple[list[_Entry], list[list]]] = {}
        self._collections: dict[str, dict] = {}
        self._seen_collections: set[str] = set()  # every collection id items have used
        for c in collections or ():
            if not isinstance(c, Mapping) or not isinstance(c.get("id"), str):
                raise ValueError("every collection needs a string 'id'")
            if c["id"] in self._collections:
                raise ValueError(f"duplicate collection {c['id']!r}")
            self._collections[c["id"]] = json.loads(json.dumps(c))
        self.add_items(items)

    # --- lifecycle (start, stop, port, url: see BackgroundServer) ----------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    # --- addresses ---------------------------------------------------------------------------

    @property
    def search_url(self) -> str:
        """``<url>/search``."""
        return f"{self.url}/search"

    def collection_url(self, collection_id: str) -> str:
        return f"{self.url}/collections/{quote(collection_id, safe='')}"

    def item_url(self, collection_id: str, item_id: str) -> str:
        return f"{self.collection_url(collection_id)}/items/{quote(item_id, safe='')}"

    # --- the items -----------------------------------------------------------------------------

    def add_items(self, items: Iterable[Mapping[str, Any]]) -> None:
        """Add items (all or none: nothing is added if any item is bad or already present).

        Raises:
            ValueError: An item is malformed, or its ``(collection, id)`` is already served
                (use :meth:`replace_item`) or repeated in ``items``.
        """
        entries = [_make_entry(i) for i in items]
        with self._lock:
            keys: set[tuple[str, str]] = set()
            for e in entries:
                key = (e.collection, e.id)
                if key in self._entries or key in keys:
                    raise ValueError(f"item {e.collection}/{e.id} is already present")
                keys.add(key)
            for e in entries:
                self._entries[(e.collection, e.id)] = e
                self._seen_collections.add(e.collection)
            self._changed()

    def replace_item(self, item: Mapping[str, Any]) -> dict:
        """Replace the served item with the same ``(collection, id)``; returns the old one.

        Raises:
            KeyError: No such item is served.
            ValueError: The item is malformed.
        """
        entry = _make_entry(item)
        key = (entry.collection, entry.id)
        with self._lock:
            old = self._entries.get(key)
            if old is None:
                raise KeyError(f"no item {key[0]}/{key[1]} to replace")
            self._entries[key] = entry
            self._changed()
        return json.loads(json.dumps(old.item))

    def remove_item(self, collection: str, item_id: str) -> dict:
        """Stop serving an item; returns it.

        Raises:
            KeyError: No such item is served.
        """
        with self._lock:
            old = self._entries.pop((collection, item_id), None)
            if old is None:
                raise KeyError(f"no item {collection}/{item_id}")
            self._changed()
        return old.item

    def get_item(self, collection: str, item_id: str) -> dict | None:
        """A copy of a served item as stored (links not rewritten), or ``None``."""
        with self._lock:
            e = self._entries.get((collection, item_id))
        return None if e is None else json.loads(json.dumps(e.item))

    @property
    def items(self) -> list[dict]:
        """Copies of the served items (as stored), in the default sort order."""
        entries, _ = self._sorted(list(_DEFAULT_SORT))
        return [json.loads(json.dumps(e.item)) for e in entries]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _changed(self) -> None:
        self._version += 1
        self._sorted_cache.clear()

    def _sorted(self, sortby: list[tuple[str, str]]) -> tuple[list[_Entry], list[list]]:
        """All entries in ``sortby`` order, with their sort keys (cached per version)."""
        ckey = tuple(sortby)
        with self._lock:
            cached = self._sorted_cache.get(ckey)
            if cached is not None:
                return cached
            entries = list(self._entries.values())
            version = self._version
        keyed = [([_sort_value(e, f) for f, _ in sortby], e) for e in entries]
        cmp = _make_comparator([d for _, d in sortby])
        keyed.sort(key=functools.cmp_to_key(lambda a, b: cmp(a[0], b[0])))
        result = ([e for _, e in keyed], [k for k, _ in keyed])
        with self._lock:
            if self._version == version:
                if len(self._sorted_cache) > 16:
                    self._sorted_cache.clear()
                self._sorted_cache[ckey] = result
        return result

    # --- collections ---------------------------------------------------------------------------

    def collection_ids(self) -> list[str]:
        """Ids of the served collections (given ones and those the items use), sorted."""
        with self._lock:
            return sorted(set(self._collections) | self._seen_collections)

    def _collection_doc(self, cid: str) -> dict | None:
        with self._lock:
            given = self._collections.get(cid)
            if given is not None:
                doc = copy.deepcopy(given)
            else:
                if cid not in self._seen_collections:
                    return None
                members = [e for (c, _), e in self._entries.items() if c == cid]
                doc = _synthesise_collection(cid, members)
        curl = self.collection_url(cid)
        links = [
            link
            for link in doc.get("links", [])
            if isinstance(link, dict) and link.get("rel") not in _COLLECTION_API_RELS
        ]
        doc["links"] = [
            {"rel": "self", "type": _JSON, "href": curl},
            {"rel": "root", "type": _JSON, "href": self.url},
            {"rel": "parent", "type": _JSON, "href": self.url},
            {"rel": "items", "type": _GEOJSON, "href": f"{curl}/items"},
            *links,
        ]
        return doc

    # --- request log (requests, reset_log: see BackgroundServer) ----------------------------

    def count(self, path: str | None = None, method: str | None = None) -> int:
        """Number of logged requests with this path and method (``None``: any).

        ``path`` may omit its leading ``/`` and may be a glob (``"/collections/*/items"``).
        """
        want = None if path is None else "/" + path.lstrip("/")
        return sum(
            1
            for r in self.requests
            if (method is None or r.method == method.upper())
            and (want is None or r.path == want or fnmatch.fnmatchcase(r.path, want))
        )

    # --- request handling --------------------------------------------------------------------

    def _fault_applies(self, plan: FaultPlan, relpath: str) -> bool:
        if plan.paths is None:
            return relpath == "search"
        return plan.matches(relpath)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method = request.method
        path = request.path
        query = {k: v for k, v in request.query.items()}
        headers = dict(request.headers)
        body: Any = None
        body_error: str | None = None
        if request.body_exists:
            raw = await request.read()
            if raw.strip():
                try:
                    body = json.loads(raw)
                except ValueError as exc:
                    body_error = f"request body is not valid JSON: {exc}"

        def record(status: int | None, fault: str | None = None, returned=None, matched=None):
            return self._record(StacRequestRecord(method, path, query, body, status, fault, returned, matched, headers))

        relpath = path.strip("/")
        fault = await self._delay_and_draw_fault(relpath)
        if fault in ("500", "503", "429"):
            record(int(fault), fault=fault)
            return _error_response(
                int(fault),
                {"500": "InternalServerError", "503": "ServiceUnavailable", "429": "TooManyRequests"}[fault],
                f"injected fault {fault}",
                headers={"Retry-After": "0"},
            )
        if fault == "reset":
            record(None, fault="reset")
            abort_connection(request)
            return web.Response(status=500)  # never sent: the transport is gone

        loop = asyncio.get_running_loop()
        try:
            if body_error is not None:
                raise _bad(body_error)
            # Searching and serialising run off the event loop, so a big page does not
            # hold up other requests (or their injected latency).
            status, data, ctype, returned, matched = await loop.run_in_executor(
                None, self._dispatch_json, method, relpath, query, body
            )
        except _HttpError as err:
            record(err.status)
            return _error_response(err.status, err.code, err.description)
        except Exception as exc:  # a bug: report it like a real server would
            _log.exception("StacServer: error handling %s %s", method, path)
            record(500)
            return _error_response(500, "InternalServerError", repr(exc))

        if fault == "truncate":
            record(status, fault="truncate", returned=returned, matched=matched)
            response = web.StreamResponse(status=status, headers={"Content-Type": ctype})
            response.content_length = len(data)
            await response.prepare(request)
            try:
                await response.write(data[: len(data) // 2])
            except ConnectionError:
                return response
            if request.transport is not None:
                request.transport.close()  # flushes what was written, then closes
            return response
        record(status, returned=returned, matched=matched)
        return web.Response(status=status, body=data, headers={"Content-Type": ctype})

    def _dispatch_json(
        self, method: str, relpath: str, query: dict[str, str], body: Any
    ) -> tuple[int, bytes, str, int | None, int | None]:
        status, payload, ctype, returned, matched = self._dispatch(method, relpath, query, body)
        return status, json.dumps(payload, separators=(",", ":")).encode(), ctype, returned, matched

    def _dispatch(
        self, method: str, relpath: str, query: dict[str, str], body: Any
    ) -> tuple[int, Any, str, int | None, int | None]:
        """Answer one request: ``(status, payload, content type, returned, matched)``."""
        parts = [p for p in relpath.split("/") if p] if relpath else []

        def only(*methods: str) -> None:
            if method not in methods:
                raise _HttpError(
                    405, "MethodNotAllowed", f"{method} is not allowed on /{relpath}; use {', '.join(methods)}"
                )

        if not parts:
            only("GET")
            return 200, self._landing_page(), _JSON, None, None
        if parts == ["conformance"]:
            only("GET")
            return 200, {"conformsTo": list(CONFORMS_TO)}, _JSON, None, None
        if parts == ["search"]:
            only("GET", "POST")
            if method == "POST":
                if not isinstance(body, dict):
                    raise _bad("the POST /search body must be a JSON object")
                params: Mapping[str, Any] = body
            else:
                params = query
            page = self._search(params, method, self.search_url, None)
            return 200, page, _GEOJSON, page["numberReturned"], page["numberMatched"]
        if parts[0] == "collections":
            only("GET")
            if len(parts) == 1:
                ids = self.collection_ids()
                cols = [c for c in (self._collection_doc(i) for i in ids) if c is not None]
                return (
                    200,
                    {
                        "collections": cols,
                        "links": [
                            {"rel": "self", "type": _JSON, "href": f"{self.url}/collections"},
                            {"rel": "root", "type": _JSON, "href": self.url},
                            {"rel": "parent", "type": _JSON, "href": self.url},
                        ],
                        "numberMatched": len(cols),
                        "numberReturned": len(cols),
                    },
                    _JSON,
                    None,
                    None,
                )
            cid = parts[1]
            doc = self._collection_doc(cid)
            if doc is None:
                raise _not_found(f"Collection {cid!r} not found")
            if len(parts) == 2:
                return 200, doc, _JSON, None, None
            if parts[2] == "items" and len(parts) == 3:
                params = {**query, "collections": cid}
                page = self._search(params, "GET", f"{self.collection_url(cid)}/items", cid)
                return 200, page, _GEOJSON, page["numberReturned"], page["numberMatched"]
            if parts[2] == "items" and len(parts) == 4:
                with self._lock:
                    entry = self._entries.get((cid, parts[3]))
                if entry is None:
                    raise _not_found(f"Item {parts[3]!r} not found in collection {cid!r}")
                return 200, self._served_item(entry), _GEOJSON, None, None
        raise _not_found(f"no such endpoint: /{relpath}")

    # --- documents -----------------------------------------------------------------------------

    def _landing_page(self) -> dict:
        base = self.url
        links = [
            {"rel": "self", "type": _JSON, "href": base},
            {"rel": "root", "type": _JSON, "href": base},
            {"rel": "conformance", "type": _JSON, "href": f"{base}/conformance"},
            {"rel": "data", "type": _JSON, "href": f"{base}/collections"},
            {"rel": "search", "type": _GEOJSON, "href": f"{base}/search", "method": "GET"},
            {"rel": "search", "type": _GEOJSON, "href": f"{base}/search", "method": "POST"},
        ]
        links += [
            {"rel": "child", "type": _JSON, "href": self.collection_url(cid), "title": cid}
            for cid in self.collection_ids()
        ]
        return {
            "type": "Catalog",
            "stac_version": STAC_VERSION,
            "id": "rasteret-local-stac",
            "title": self.title,
            "description": "A local STAC API serving recorded and synthetic items for tests.",
            "conformsTo": list(CONFORMS_TO),
            "links": links,
            **self.landing_extra,
        }

    def _served_item(self, entry: _Entry) -> dict:
        item = entry.item
        if not self.rewrite_links:
            return item
        wanted = {
            "self": (self.item_url(entry.collection, entry.id), _GEOJSON),
            "parent": (self.collection_url(entry.collection), _JSON),
            "collection": (self.collection_url(entry.collection), _JSON),
            "root": (self.url, _JSON),
        }
        links: list[dict] = []
        seen: set[str] = set()
        for link in item.get("links", []):
            rel = link.get("rel") if isinstance(link, dict) else None
            if rel in wanted:
                if rel in seen:
                    continue
                seen.add(rel)
                href, mtype = wanted[rel]
                links.append({**link, "href": href, "type": mtype})
            else:
                links.append(link)
        for rel, (href, mtype) in wanted.items():
            if rel not in seen:
                links.append({"rel": rel, "type": mtype, "href": href})
        return {**item, "links": links}

    # --- search --------------------------------------------------------------------------------

    def _search(self, params: Mapping[str, Any], method: str, href: str, items_of: str | None) -> dict:
        search = _parse_search(params, self)
        entries, keys = self._sorted(search.sortby)
        matched_idx = [i for i, e in enumerate(entries) if all(p(e) for p in search.preds)]
        number_matched = len(matched_idx)
        start = 0
        if search.token is not None:
            cmp = _make_comparator([d for _, d in search.sortby])
            k = functools.cmp_to_key(cmp)
            start = bisect.bisect_right(matched_idx, k(search.token), key=lambda i: k(keys[i]))
        page_idx = matched_idx[start : start + search.limit]
        features = [self._served_item(entries[i]) for i in page_idx]
        links: list[dict] = [{"rel": "root", "type": _JSON, "href": self.url}]
        if items_of is not None:
            links.append({"rel": "collection", "type": _JSON, "href": self.collection_url(items_of)})
            links.append({"rel": "parent", "type": _JSON, "href": self.collection_url(items_of)})
        if method == "GET":
            self_q = {k: v for k, v in params.items() if not (items_of and k == "collections")}
            links.append({"rel": "self", "type": _GEOJSON, "href": href + ("?" + urlencode(self_q) if self_q else "")})
        if start + search.limit < number_matched and page_idx:
            token = _encode_token(search.sortby, keys[page_idx[-1]])
            if method == "GET":
                next_q = {
                    k: v
                    for k, v in params.items()
                    if k not in ("token", "next") and not (items_of and k == "collections")
                }
                next_q["token"] = token
                links.append(
                    {
                        "rel": "next",
                        "type": _GEOJSON,
                        "title": "Next page of Items",
                        "method": "GET",
                        "href": f"{href}?{urlencode(next_q)}",
                    }
                )
            else:
                next_body = {k: v for k, v in params.items() if k not in ("token", "next")}
                next_body["token"] = token
                links.append(
                    {
                        "rel": "next",
                        "type": _GEOJSON,
                        "title": "Next page of Items",
                        "method": "POST",
                        "href": href,
                        "body": next_body,
                        "merge": False,
                    }
                )
        return {
            "type": "FeatureCollection",
            "stac_version": STAC_VERSION,
            "stac_extensions": [],
            "context": {"limit": search.limit, "matched": number_matched, "returned": len(features)},
            "numberMatched": number_matched,
            "numberReturned": len(features),
            "features": features,
            "links": links,
        }


def _synthesise_collection(cid: str, members: list[_Entry]) -> dict:
    """A minimal valid collection; the extent covers ``members`` (unbounded if none)."""
    bounds = [e.geom.bounds for e in members if e.geom is not None and not e.geom.is_empty]
    if bounds:
        bbox = [
            min(b[0] for b in bounds),
            min(b[1] for b in bounds),
            max(b[2] for b in bounds),
            max(b[3] for b in bounds),
        ]
    else:
        bbox = [-180.0, -90.0, 180.0, 90.0]
    interval = (
        [_format_us(min(e.start for e in members)), _format_us(max(e.end for e in members))]
        if members
        else [None, None]
    )
    return {
        "type": "Collection",
        "id": cid,
        "stac_version": STAC_VERSION,
        "stac_extensions": [],
        "title": cid,
        "description": f"Items of collection {cid!r} served by a local StacServer.",
        "license": "various",
        "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [interval]}},
        "links": [],
    }


def _error_response(status: int, code: str, description: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps({"code": code, "description": description}).encode(),
        headers={"Content-Type": _JSON, **(headers or {})},
    )
