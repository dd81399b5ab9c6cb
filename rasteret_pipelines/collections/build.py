"""Build a collection: STAC search, COG headers read once, one GeoParquet file per month.

Layout under the workspace::

    <workspace>/<collection>/_manifest.json
    <workspace>/<collection>/month=2024-01/items.parquet
    <workspace>/<collection>/month=2024-02/items.parquet

Each month file is STAC-GeoParquet written by the ``stac-geoparquet`` library, plus the band
columns of :mod:`~rasteret_pipelines.collections.schema`. Rebuilding a month reuses the cached
header of every (item, band) whose href and ``updated`` time are unchanged (also from a month
file of the layout before STAC-GeoParquet, which the rebuild replaces), and fetches only what is
new, changed or failed before. A header that cannot be read is recorded in ``<band>_error`` and
in the report's ``failed``; the next build retries it. A band the item has no asset for is
reported in ``missing`` instead: no retry can fix that. A header read with a
:class:`~rasteret_pipelines.errors.GeoreferenceWarning` keeps the warning's text; the report's
``georeference_warnings`` and the manifest's month entry list each one under its band and item.

Asset hrefs pass :func:`~rasteret_pipelines.hrefs.check_href`: from a remote STAC API only
``http(s)://`` and ``s3://`` are read; local paths and ``file://`` only with
``allow_local_hrefs=True`` (a local catalog). A refused href is recorded as a failed asset
without being opened.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import pyarrow as pa
import pyarrow.parquet as pq
import shapely
import shapely.geometry

from rasteret_pipelines import __version__
from rasteret_pipelines.cog import ByteReader, FetchConfig, RangeFetcher, run_sync
from rasteret_pipelines.cog.header import HEADER_FORMAT_VERSION
from rasteret_pipelines.cog.read import fetch_header
from rasteret_pipelines.collections import schema
from rasteret_pipelines.collections.names import check_collection_name
from rasteret_pipelines.collections.search import (
    CheckedSearch,
    Month,
    SearchSpec,
    check_date_range,
    months_between,
    search_items,
    with_keywords,
)
from rasteret_pipelines.collections.sources import DataSource, get_source
from rasteret_pipelines.errors import (
    EmptySearchError,
    InconsistentCollectionError,
    InvalidSearchError,
    RasteretError,
    UnsafeHrefError,
)
from rasteret_pipelines.hrefs import check_href
from rasteret_pipelines.storage import Storage

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
"""Leading underscore: pyarrow.dataset and Spark skip it when reading the folder."""
MONTH_FILE = "items.parquet"
FORMAT = "stac-geoparquet-1.0"
"""The month layout, recorded in the manifest (``format``)."""


@dataclass(frozen=True)
class FailedAsset:
    """A band asset whose header could not be read (retried by the next build)."""

    item_id: str
    band: str
    href: str | None
    error: str


@dataclass(frozen=True)
class GeoreferenceNote:
    """A band asset whose header was read with a
    :class:`~rasteret_pipelines.errors.GeoreferenceWarning` (its georeferencing is not GDAL's
    exactly: ground control points, a geocentric CRS, GeoKeys of the wrong type)."""

    item_id: str
    band: str
    warning: str


@dataclass(frozen=True)
class MissingAsset:
    """A requested band the STAC item has no asset for (nothing to fetch, nothing to retry)."""

    item_id: str
    band: str


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
    """Headers that could not be read: the next build retries them."""
    missing: list[MissingAsset] = field(default_factory=list)
    """Requested bands the items have no asset for."""
    georeference_warnings: list[GeoreferenceNote] = field(default_factory=list)
    """Every georeference warning of the month's headers (fetched or reused), per asset."""
    headers_without_version: int = 0
    """Headers whose object gave neither an ETag nor a Last-Modified time (see the README,
    "What stale-object detection can see"): only a size change is detected for them."""
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
    def missing(self) -> list[MissingAsset]:
        return [a for m in self.months for a in m.missing]

    @property
    def georeference_warnings(self) -> list[GeoreferenceNote]:
        return [w for m in self.months for w in m.georeference_warnings]

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
    source: str | DataSource | SearchSpec,
    name: str,
    workspace,
    *,
    fetch_config: FetchConfig | None = None,
    progress: bool | None = None,
    require_items: bool = False,
    allow_local_hrefs: bool = False,
    reader: ByteReader | None = None,
    **search,
) -> BuildReport:
    """Search ``source`` and index every band header into ``workspace/name``, month by month.

    Args:
        source: Source id or alias (see :data:`~rasteret_pipelines.collections.sources.SOURCES`),
            or the whole search as a :class:`~rasteret_pipelines.collections.search.SearchSpec`.
        name: Collection name (a folder under ``workspace``).
        workspace: Local folder or ``s3://bucket/prefix``.
        search: The other fields of :class:`~rasteret_pipelines.collections.search.SearchSpec`
            as keywords: ``date_range`` (``(start, end)`` dates, inclusive; needed), ``bbox``,
            ``geometry``, ``bands``, ``cloud_cover_lt``, ``platform``, ``query``, ``stac_url``.
        fetch_config: Transport settings for header reads and the retries of the STAC search.
        progress: Show a progress bar (default: when stderr is a terminal).
        require_items: Refuse to create a collection the search finds no item for
            (:class:`EmptySearchError`) instead of writing empty months.
        allow_local_hrefs: Also read asset hrefs that are local paths or ``file://`` URLs (a
            local catalog you trust). Off by default: a remote catalog's items are read only
            through ``http(s)://`` and ``s3://`` hrefs, so they cannot open local files.
        reader: Where header bytes come from (a :class:`~rasteret_pipelines.cog.ByteReader`);
            None reads through the default aiohttp/local reader configured by ``fetch_config``.
            Asset hrefs pass the href policy either way.

    Returns:
        A :class:`BuildReport`; failed headers are listed there and in the month files.

    Raises:
        EmptySearchError: ``require_items`` and the collection is new and the search found nothing.
        InvalidSearchError: a search keyword that is unknown, not valid, or also in the spec
            with another value (before any request).

    A new collection whose build fails (or finds nothing with ``require_items``) is removed:
    no half-built collection is left for later runs to trip on.
    """
    spec = source if isinstance(source, SearchSpec) else SearchSpec(source, search.pop("date_range", None))
    checked = with_keywords(spec, search, InvalidSearchError, "build_collection").checked()
    src, start, end = checked.source, checked.start, checked.end
    check_collection_name(name)
    config = replace(fetch_config or FetchConfig(), requester_pays=src.requester_pays, local_files=allow_local_hrefs)
    store = Storage.from_uri(workspace)
    manifest = store.read_json(name, MANIFEST) if store.exists(name, MANIFEST) else {}
    if manifest and manifest.get("data_source") != src.id:
        raise InconsistentCollectionError(
            f"collection {name!r} in {store.uri} holds {manifest.get('data_source')} items, not {src.id}"
        )
    new = not store.exists(name, MANIFEST)
    report = BuildReport(name=name, source=src.id, location=store.uri_of(name))
    try:
        for month in months_between(start, end):
            if month.end < dt.date.fromisoformat(src.start_date):
                continue
            report.months.append(_build_and_write_month(checked, store, name, month, config, progress, reader))
        if require_items and new and report.items == 0:
            raise EmptySearchError(
                f"the {src.id} search at {checked.stac_url} found no items for "
                f"{start}..{end}"
                + (f" in bbox {list(checked.bbox)}" if checked.bbox is not None else "")
                + (" intersecting the geometry" if checked.geometry is not None else "")
                + (f" with {checked.stac_query}" if checked.stac_query else "")
                + f"; collection {name!r} was not created"
            )
        empty = [m.month for m in report.months if m.items == 0]
        if empty:  # said once the outcome is known: an empty search of a new collection raised above
            log.warning(
                "%s: no %s items for %s; wrote %s",
                name,
                src.id,
                ", ".join(empty),
                "an empty month" if len(empty) == 1 else "empty months",
            )
        manifest = {**manifest, "allow_local_hrefs": bool(allow_local_hrefs)}
        _write_manifest(store, name, manifest, checked, report)
    except BaseException as exc:
        if new:
            _remove_new_months(store, name, [m.month for m in report.months], quiet=isinstance(exc, EmptySearchError))
        raise
    return report


def _remove_new_months(store: Storage, name: str, months: Sequence[str], *, quiet: bool = False) -> None:
    """Undo a failed build of a new collection: its month files, then the folder if empty.

    Only what this build wrote is removed (another process may be building other months).
    ``quiet``: the caller's error already says that nothing was created (an empty search).
    """
    for month in months:
        store.delete(name, f"month={month}")
    if not store.list_files(name):
        store.delete(name)
    if not quiet:
        log.info("removed the months of the failed new collection %s", store.uri_of(name))


def _build_and_write_month(
    search: CheckedSearch, store, name, month: Month, config, progress, reader=None
) -> MonthReport:
    t0 = time.perf_counter()
    src, keys = search.source, search.keys
    items = search_items(
        src,
        month,
        stac_url=search.spec.stac_url,
        bbox=search.bbox,
        geometry=search.geometry,
        query=search.stac_query,
        retry=config.retry_policy,
    )
    previous = _previous_headers(store, name, month.key, keys)
    month_report, table = run_sync(_build_month(src, keys, items, previous, config, month, name, progress, reader))
    month_report.path = write_month(store, table, name, month.key)
    month_report.seconds = time.perf_counter() - t0
    if month_report.headers_without_version:
        log.warning(
            "%s %s: %d headers come from objects with neither ETag nor Last-Modified; a "
            "same-size rewrite of those objects cannot be detected (docs/trust.md)",
            name,
            month.key,
            month_report.headers_without_version,
        )
    if month_report.failed:
        log.warning(
            "%s %s: %d band headers failed (recorded; the next build retries them)",
            name,
            month.key,
            len(month_report.failed),
        )
    if month_report.missing:
        bands = sorted({a.band for a in month_report.missing})
        log.info(
            "%s %s: %d items have no asset for %s (nothing to fetch or retry)",
            name,
            month.key,
            len({a.item_id for a in month_report.missing}),
            ", ".join(bands),
        )
    return month_report


def write_month(store: Storage, table: pa.Table, name: str, month: str) -> str:
    """Write one month file through ``stac_geoparquet.arrow.to_parquet``, atomically.

    Returns the user-facing location of ``<name>/month=<month>/items.parquet``.
    """
    from stac_geoparquet.arrow import to_parquet

    with tempfile.TemporaryDirectory(prefix="rasteret-month-") as tmp:
        local = os.path.join(tmp, MONTH_FILE)
        to_parquet(table, local, compression="zstd")
        return store.upload_file(local, name, f"month={month}", MONTH_FILE)


async def _build_month(
    src: DataSource,
    keys: list[str],
    items: list[dict],
    previous: dict[tuple[str, str], tuple[str | None, dt.datetime | None, dict]],
    config: FetchConfig,
    month: Month,
    name: str,
    progress: bool | None,
    reader: ByteReader | None = None,
) -> tuple[MonthReport, pa.Table]:
    result = MonthReport(month=month.key)
    checked: list[tuple[dict, dt.datetime]] = []
    for item in items:
        good, reason = _check_item(item)
        if good is None:
            result.skipped_items.append((str(item.get("id")), reason))
            log.warning("%s %s: skipped item %s: %s", name, month.key, item.get("id"), reason)
            continue
        checked.append((good, _parse_datetime(good["properties"]["datetime"])))
    checked.sort(key=lambda pair: (pair[1], pair[0]["id"]))
    table, good_items = _stac_table(src, [item for item, _ in checked], month, name, result)
    rows: list[dict] = []
    to_fetch: list[tuple[dict, str, str]] = []  # row, band, href
    for item in good_items:
        row = {"id": item["id"]}
        stamp = _stamp(item["properties"].get("updated") or item["properties"].get("created"))
        for band in keys:
            href_col, header_col, error_col = schema.band_columns(band)
            asset = item["assets"].get(band)
            href = src.asset_href(asset) if isinstance(asset, Mapping) else None
            row[href_col] = href
            row[header_col] = None
            row[error_col] = None
            if href is None:
                row[error_col] = schema.missing_asset_error(band)
                result.missing.append(MissingAsset(row["id"], band))
                continue
            try:
                check_href(href, allow_local=config.local_files)
            except UnsafeHrefError as exc:  # never opened: no bytes, no existence probe
                row[error_col] = str(exc)
                result.failed.append(FailedAsset(row["id"], band, str(href), str(exc)))
                continue
            old = previous.get((row["id"], band))
            if old is not None and old[0] == href and old[1] == stamp:
                row[header_col] = old[2]
                result.headers_reused += 1
                for text in old[2].get("georeference_warnings") or ():
                    result.georeference_warnings.append(GeoreferenceNote(row["id"], band, text))
                if not (old[2].get("etag") or old[2].get("last_modified")):
                    result.headers_without_version += 1
            else:
                to_fetch.append((row, band, href))
        rows.append(row)

    async with RangeFetcher(config, reader=reader) as fetcher:
        bar = _progress_bar(len(to_fetch), f"{name} {month.key} headers", progress)

        async def one(row: dict, band: str, href: str) -> None:
            _, header_col, error_col = schema.band_columns(band)
            try:
                header = await fetch_header(fetcher, href)
                row[header_col] = header.to_dict()
                result.headers_fetched += 1
                for text in header.georeference_warnings:
                    result.georeference_warnings.append(GeoreferenceNote(row["id"], band, text))
                if not (header.etag or header.last_modified):
                    result.headers_without_version += 1
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
    values = {c: [r[c] for r in rows] for b in keys for c in schema.band_columns(b)}
    return result, schema.with_band_columns(table, keys, values)


def _stac_table(
    src: DataSource, items: list[dict], month: Month, name: str, result: MonthReport
) -> tuple[pa.Table, list[dict]]:
    """The month's STAC-GeoParquet table (through stac-geoparquet) and the items it holds.

    An item that cannot be stored on its own (say an unparseable timestamp) is moved to
    ``result.skipped_items``; items that can each be stored but not together are an error.
    """
    if not items:
        return schema.empty_month_table(src), []
    try:
        return schema.items_table(items, src), items
    except (pa.ArrowException, ValueError, TypeError) as whole:
        keep = []
        for item in items:
            try:
                schema.items_table([item], src)
            except (pa.ArrowException, ValueError, TypeError) as exc:
                reason = f"item cannot be stored as STAC-GeoParquet: {exc}"
                result.skipped_items.append((item["id"], reason))
                log.warning("%s %s: skipped item %s: %s", name, month.key, item["id"], reason)
            else:
                keep.append(item)
        if len(keep) == len(items):
            raise InconsistentCollectionError(
                f"the {month.key} items of collection {name!r} cannot be stored in one "
                f"STAC-GeoParquet table (do their properties disagree in type?): {whole}"
            ) from whole
        return _stac_table(src, keep, month, name, result)


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


def _stamp(value) -> dt.datetime | None:
    """An item's ``updated`` (or ``created``) time as a datetime, whatever form it is stored in."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    return _parse_datetime(value)


def _check_item(item: Mapping) -> tuple[dict | None, str]:
    """A storable copy of ``item`` (missing ``type``, ``bbox``, ``links``, ``assets`` and
    ``stac_extensions`` filled in), or (None, reason) when it is malformed."""
    if not isinstance(item, Mapping):
        return None, "item is not a JSON object"
    item_id = item.get("id")
    if not item_id or not isinstance(item_id, str):
        return None, "item has no id"
    props = item.get("properties")
    if not isinstance(props, Mapping):
        return None, "item has no properties"
    if _parse_datetime(props.get("datetime")) is None:
        return None, "item has no valid datetime"
    try:
        geom = shapely.geometry.shape(item["geometry"])
    except Exception:
        return None, "item has no valid geometry"
    if geom.is_empty:
        return None, "item geometry is empty"
    if not isinstance(item.get("assets") or {}, Mapping):
        return None, "item assets are not an object"
    out = dict(item)
    out.setdefault("type", "Feature")
    bounds = item.get("bbox")
    if not (isinstance(bounds, (list, tuple)) and len(bounds) in (4, 6)):
        out["bbox"] = [float(v) for v in geom.bounds]
    for key, empty in (("links", []), ("assets", {}), ("stac_extensions", [])):
        if out.get(key) is None:
            out[key] = empty
    return out, ""


def _previous_headers(
    store: Storage, name: str, month: str, keys: Sequence[str]
) -> dict[tuple[str, str], tuple[str | None, dt.datetime | None, dict]]:
    """(item id, band) -> (href, updated, header dict) from the month's existing file.

    Works on outdated month files too (``updated`` as text there), so rebuilding one into
    STAC-GeoParquet costs no header request.
    """
    if not store.exists(name, f"month={month}", MONTH_FILE):
        return {}
    path = store.path(name, f"month={month}", MONTH_FILE)
    available = set(pq.read_schema(path, filesystem=store.arrow_fs).names)
    out: dict = {}
    bands = [b for b in keys if schema.band_columns(b)[1] in available]
    stamps = [c for c in ("updated", "created") if c in available]
    columns = ["id"] + stamps + [c for b in bands for c in schema.band_columns(b)[:2]]
    table = pq.read_table(path, columns=columns, filesystem=store.arrow_fs)
    ids = table.column("id").to_pylist()
    updated = [None] * table.num_rows
    for column in reversed(stamps):  # updated wins over created
        updated = [v if v is not None else u for v, u in zip(table.column(column).to_pylist(), updated)]
    updated = [_stamp(u) for u in updated]
    for band in bands:
        href_col, header_col, _ = schema.band_columns(band)
        for item_id, upd, href, header in zip(
            ids, updated, table.column(href_col).to_pylist(), table.column(header_col).to_pylist()
        ):
            # A header cached by another layout version is fetched again, never reused.
            if header is not None and header.get("format_version") == HEADER_FORMAT_VERSION:
                out[(item_id, band)] = (href, upd, header)
    return out


def _warnings_by_band(notes: Sequence[GeoreferenceNote]) -> dict[str, list[dict[str, str]]]:
    """``{band: [{"item": id, "warning": text}, ...]}``, bands and items sorted."""
    out: dict[str, list[dict[str, str]]] = {}
    for note in sorted(notes, key=lambda n: (n.band, n.item_id, n.warning)):
        out.setdefault(note.band, []).append({"item": note.item_id, "warning": note.warning})
    return out


def _write_manifest(store, name, manifest, search: CheckedSearch, report: BuildReport) -> None:
    src, keys, spec = search.source, search.keys, search.spec
    bbox, geom, date_range = search.bbox, search.geometry, (search.start, search.end)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    manifest = dict(manifest)
    months = dict(manifest.get("months") or {})
    for m in report.months:
        months[m.month] = {
            "items": m.items,
            "format": FORMAT,
            "failed_headers": len(m.failed),
            "missing_assets": len(m.missing),
            "skipped_items": len(m.skipped_items),
            "headers_without_version": m.headers_without_version,
            "georeference_warnings": _warnings_by_band(m.georeference_warnings),
            "built_at": now,
        }
    old_range = manifest.get("date_range") or [date_range[0].isoformat(), date_range[1].isoformat()]
    manifest.update(
        {
            "name": name,
            "format": FORMAT,
            "data_source": src.id,
            "stac_url": search.stac_url,
            "bands": sorted(set(manifest.get("bands") or []) | set(keys)),
            "bbox": list(bbox) if bbox is not None else manifest.get("bbox"),
            "geometry": shapely.geometry.mapping(geom) if geom is not None else manifest.get("geometry"),
            "date_range": [
                min(old_range[0], date_range[0].isoformat()),
                max(old_range[1], date_range[1].isoformat()),
            ],
            "filters": {"cloud_cover_lt": spec.cloud_cover_lt, "platform": spec.platform, "query": spec.query},
            "months": dict(sorted(months.items())),
            "size": sum(v["items"] for v in months.values()),
            "headers_without_version": sum(v.get("headers_without_version", 0) for v in months.values()),
            "built_at": now,
            "library_version": __version__,
        }
    )
    store.write_json(manifest, name, MANIFEST)
