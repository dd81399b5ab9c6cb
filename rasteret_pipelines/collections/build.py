"""Build a collection: STAC search, COG headers read once, one GeoParquet file per month.

Layout under the workspace::

    <workspace>/<collection>/_manifest.json
    <workspace>/<collection>/month=2024-01/items.parquet
    <workspace>/<collection>/month=2024-02/items.parquet

Rebuilding a month reuses the cached header of every (item, band) whose href and ``updated``
time are unchanged, and fetches only what is new, changed or failed before. A header that
cannot be read is recorded in ``<band>_error`` and in the report; the next build retries it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import pyarrow as pa
import pyarrow.parquet as pq
import shapely
import shapely.geometry

from rasteret_pipelines import __version__
from rasteret_pipelines.cog import FetchConfig, RangeFetcher
from rasteret_pipelines.cog.read import fetch_header
from rasteret_pipelines.collections import schema
from rasteret_pipelines.collections.search import (
    Month,
    build_query,
    check_bbox,
    check_date_range,
    check_geometry,
    months_between,
    search_items,
)
from rasteret_pipelines.collections.sources import DataSource, get_source
from rasteret_pipelines.errors import CollectionError, RasteretError
from rasteret_pipelines.storage import Storage

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
"""Leading underscore: pyarrow.dataset and Spark skip it when reading the folder."""
MONTH_FILE = "items.parquet"


@dataclass(frozen=True)
class FailedAsset:
    """A band asset whose header could not be read (retried by the next build)."""

    item_id: str
    band: str
    href: str | None
    error: str


@dataclass
class MonthReport:
    """What building one month did."""

    month: str
    path: str = ""
    items: int = 0
    skipped_items: list[tuple[str, str]] = field(default_factory=list)
    """(item id, reason) of items left out as malformed."""
    headers_reused: int = 0
    headers_fetched: int = 0
    failed: list[FailedAsset] = field(default_factory=list)
    header_requests: int = 0
    bytes: int = 0
    seconds: float = 0.0


@dataclass
class BuildReport:
    """What a :func:`build_collection` call did, month by month."""

    name: str
    source: str
    location: str
    months: list[MonthReport] = field(default_factory=list)

    @property
    def items(self) -> int:
        return sum(m.items for m in self.months)

    @property
    def failed(self) -> list[FailedAsset]:
        return [f for m in self.months for f in m.failed]

    @property
    def header_requests(self) -> int:
        return sum(m.header_requests for m in self.months)


def collection_name(custom_name: str, date_range, source: str | DataSource) -> str:
    """The original library's naming: ``<custom_name>_<YYYYMM>-<MM or YYYYMM>_<source>``."""
    src = get_source(source)
    start, end = check_date_range(date_range)
    tail = f"{end:%m}" if end.year == start.year else f"{end:%Y%m}"
    return f"{custom_name}_{start:%Y%m}-{tail}_{src.short_name}"


def build_collection(
    source: str | DataSource,
    name: str,
    workspace,
    *,
    date_range,
    bbox=None,
    geometry=None,
    bands=None,
    cloud_cover_lt: float | None = None,
    platform=None,
    query: Mapping | None = None,
    stac_url: str | None = None,
    fetch_config: FetchConfig | None = None,
    progress: bool | None = None,
) -> BuildReport:
    """Search ``source`` and index every band header into ``workspace/name``, month by month.

    Args:
        source: Source id or alias (see :data:`~rasteret_pipelines.collections.sources.SOURCES`).
        name: Collection name (a folder under ``workspace``).
        workspace: Local folder or ``s3://bucket/prefix``.
        date_range: ``(start, end)`` dates, inclusive.
        bbox: ``(min lon, min lat, max lon, max lat)``.
        geometry: Shapely geometry or GeoJSON (EPSG:4326) the items must intersect.
        bands: Band codes or asset keys; None indexes every band of the source.
        cloud_cover_lt: Keep items with ``eo:cloud_cover`` below this.
        platform: ``"LANDSAT_8"``, a list, or a query object such as ``{"in": [...]}``.
        query: Further STAC query-extension filters.
        stac_url: STAC API root overriding the source's default and the environment.
        fetch_config: Transport settings for header reads.
        progress: Show a progress bar (default: when stderr is a terminal).

    Returns:
        A :class:`BuildReport`; failed headers are listed there and in the month files.
    """
    src = get_source(source)
    keys = src.resolve_bands(bands)
    start, end = check_date_range(date_range, src)
    bbox = check_bbox(bbox)
    geom = check_geometry(geometry)
    if not name or "/" in name or name.startswith("."):
        raise CollectionError(f"collection name {name!r} is not a valid folder name")
    search_query = build_query(cloud_cover_lt, platform, query)
    config = replace(fetch_config or FetchConfig(), requester_pays=src.requester_pays)
    store = Storage.from_uri(workspace)
    manifest = store.read_json(name, MANIFEST) if store.exists(name, MANIFEST) else {}
    if manifest and manifest.get("data_source") != src.id:
        raise CollectionError(
            f"collection {name!r} in {store.uri} holds {manifest.get('data_source')} items, "
            f"not {src.id}"
        )
    report = BuildReport(name=name, source=src.id, location=store.uri_of(name))
    for month in months_between(start, end):
        if month.end < dt.date.fromisoformat(src.start_date):
            continue
        t0 = time.perf_counter()
        items = search_items(
            src, month, stac_url=stac_url, bbox=bbox, geometry=geom, query=search_query
        )
        previous = _previous_headers(store, name, month.key, keys)
        month_report, table = asyncio.run(
            _build_month(src, keys, items, previous, config, month, name, progress)
        )
        table = table.replace_schema_metadata({b"geo": _geo(table)})
        if table.num_rows == 0:
            log.warning("%s: no %s items for %s; writing an empty month", name, src.id, month.key)
        month_report.path = store.write_parquet(table, name, f"month={month.key}", MONTH_FILE)
        month_report.seconds = time.perf_counter() - t0
        report.months.append(month_report)
        if month_report.failed:
            log.warning(
                "%s %s: %d band headers failed (recorded; the next build retries them)",
                name, month.key, len(month_report.failed),
            )
    _write_manifest(store, name, manifest, src, keys, (start, end), bbox, geom, cloud_cover_lt,
                    platform, query, stac_url, report)
    return report


async def _build_month(
    src: DataSource,
    keys: list[str],
    items: list[dict],
    previous: dict[tuple[str, str], tuple[str | None, str | None, dict]],
    config: FetchConfig,
    month: Month,
    name: str,
    progress: bool | None,
) -> tuple[MonthReport, pa.Table]:
    result = MonthReport(month=month.key)
    rows: list[dict] = []
    to_fetch: list[tuple[dict, str, str]] = []  # row, band, href
    for item in sorted(items, key=lambda i: (str(i.get("properties", {}).get("datetime")), str(i.get("id")))):
        row, reason = _item_row(src, item)
        if row is None:
            result.skipped_items.append((str(item.get("id")), reason))
            log.warning("%s %s: skipped item %s: %s", name, month.key, item.get("id"), reason)
            continue
        for band in keys:
            href_col, header_col, error_col = schema.band_columns(band)
            asset = (item.get("assets") or {}).get(band)
            href = src.asset_href(asset) if asset else None
            row[href_col] = href
            row[header_col] = None
            row[error_col] = None
            if href is None:
                row[error_col] = f"item has no {band!r} asset"
                result.failed.append(FailedAsset(row["id"], band, None, row[error_col]))
                continue
            old = previous.get((row["id"], band))
            if old is not None and old[0] == href and old[1] == row["updated"]:
                row[header_col] = old[2]
                result.headers_reused += 1
            else:
                to_fetch.append((row, band, href))
        rows.append(row)

    async with RangeFetcher(config) as fetcher:
        bar = _progress_bar(len(to_fetch), f"{name} {month.key} headers", progress)

        async def one(row: dict, band: str, href: str) -> None:
            _, header_col, error_col = schema.band_columns(band)
            try:
                header = await fetch_header(fetcher, href)
                row[header_col] = header.to_dict()
                result.headers_fetched += 1
            except Exception as exc:  # noqa: BLE001 - one bad asset never aborts the month
                # Engine failures are RasteretErrors; anything else is still recorded per asset.
                if not isinstance(exc, RasteretError):
                    exc = f"{type(exc).__name__}: {exc}"
                row[error_col] = str(exc)
                result.failed.append(FailedAsset(row["id"], band, href, str(exc)))
            finally:
                if bar is not None:
                    bar.update(1)

        try:
            await asyncio.gather(*(one(*job) for job in to_fetch))
        finally:
            if bar is not None:
                bar.close()
        result.header_requests = fetcher.stats.header_requests
        result.bytes = fetcher.stats.bytes
    result.items = len(rows)
    return result, pa.Table.from_pylist(rows, schema=schema.month_schema(src, keys))


def _progress_bar(total: int, desc: str, progress: bool | None):
    if total == 0 or progress is False or (progress is None and not sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="header", leave=False)


def _parse_datetime(value) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _item_row(src: DataSource, item: Mapping) -> tuple[dict | None, str]:
    """The typed columns of one item, or (None, reason) when it is malformed."""
    item_id = item.get("id")
    if not item_id:
        return None, "item has no id"
    props = item.get("properties") or {}
    when = _parse_datetime(props.get("datetime") or props.get("start_datetime"))
    if when is None:
        return None, "item has no valid datetime"
    try:
        geom = shapely.geometry.shape(item["geometry"])
    except Exception:
        return None, "item has no valid geometry"
    if geom.is_empty:
        return None, "item geometry is empty"
    epsg = props.get("proj:epsg")
    if epsg is None:
        code = props.get("proj:code")
        if isinstance(code, str) and code.upper().startswith("EPSG:"):
            epsg = int(code.split(":", 1)[1])
    bounds = item.get("bbox")
    minx, miny, maxx, maxy = (
        (float(v) for v in bounds) if bounds and len(bounds) == 4 else geom.bounds
    )
    row = {
        "id": str(item_id),
        "collection": item.get("collection"),
        "datetime": when,
        "geometry": shapely.to_wkb(geom),
        "bbox": {"xmin": minx, "ymin": miny, "xmax": maxx, "ymax": maxy},
        "eo:cloud_cover": _float(props.get("eo:cloud_cover")),
        "platform": props.get("platform"),
        "proj:epsg": int(epsg) if epsg is not None else None,
        "updated": str(props.get("updated") or props.get("created") or ""),
        schema.ITEM_JSON: json.dumps(item, separators=(",", ":")),
    }
    for prop in src.properties:
        value = props.get(prop)
        dtype = schema.PROPERTY_TYPES.get(prop)
        if value is None or dtype is None:
            row[prop] = None if value is None else str(value)
        elif pa.types.is_boolean(dtype):
            row[prop] = bool(value)
        elif pa.types.is_integer(dtype):
            row[prop] = int(value)
        else:
            row[prop] = _float(value)
    return row, ""


def _float(value) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _geo(table: pa.Table) -> bytes:
    types: list[str] = []
    bbox = None
    if table.num_rows:
        geoms = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
        types = [g.geom_type for g in geoms]
        b = shapely.total_bounds(geoms)
        bbox = [float(v) for v in b]
    return schema.geo_metadata(types, bbox)


def _previous_headers(
    store: Storage, name: str, month: str, keys: Sequence[str]
) -> dict[tuple[str, str], tuple[str | None, str | None, dict]]:
    """(item id, band) -> (href, updated, header dict) from the month's existing file."""
    if not store.exists(name, f"month={month}", MONTH_FILE):
        return {}
    path = store.path(name, f"month={month}", MONTH_FILE)
    available = set(pq.read_schema(path, filesystem=store.fs).names)
    out: dict = {}
    bands = [b for b in keys if schema.band_columns(b)[1] in available]
    columns = ["id", "updated"] + [c for b in bands for c in schema.band_columns(b)[:2]]
    table = pq.read_table(path, columns=columns, filesystem=store.fs)
    ids = table.column("id").to_pylist()
    updated = table.column("updated").to_pylist()
    for band in bands:
        href_col, header_col, _ = schema.band_columns(band)
        for item_id, upd, href, header in zip(
            ids, updated, table.column(href_col).to_pylist(), table.column(header_col).to_pylist()
        ):
            if header is not None:
                out[(item_id, band)] = (href, upd, header)
    return out


def _write_manifest(store, name, manifest, src, keys, date_range, bbox, geom, cloud_cover_lt,
                    platform, query, stac_url, report: BuildReport) -> None:
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    manifest = dict(manifest)
    months = dict(manifest.get("months") or {})
    for m in report.months:
        months[m.month] = {
            "items": m.items,
            "failed_headers": len(m.failed),
            "skipped_items": len(m.skipped_items),
            "built_at": now,
        }
    old_range = manifest.get("date_range") or [date_range[0].isoformat(), date_range[1].isoformat()]
    manifest.update(
        {
            "name": name,
            "data_source": src.id,
            "stac_url": src.effective_stac_url(stac_url),
            "bands": sorted(set(manifest.get("bands") or []) | set(keys)),
            "bbox": list(bbox) if bbox is not None else manifest.get("bbox"),
            "geometry": shapely.geometry.mapping(geom) if geom is not None else manifest.get("geometry"),
            "date_range": [
                min(old_range[0], date_range[0].isoformat()),
                max(old_range[1], date_range[1].isoformat()),
            ],
            "filters": {"cloud_cover_lt": cloud_cover_lt, "platform": platform, "query": query},
            "months": dict(sorted(months.items())),
            "size": sum(v["items"] for v in months.values()),
            "built_at": now,
            "library_version": __version__,
        }
    )
    store.write_json(manifest, name, MANIFEST)
