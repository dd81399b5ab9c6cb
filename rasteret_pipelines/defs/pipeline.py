"""What the assets do, as plain functions over the library (the assets only wire them up).

* :func:`build_month`: one month of a source's collection (STAC search over the AOIs' bounds,
  every band header cached), incrementally through
  :func:`~rasteret_pipelines.collections.build_collection`.
* :func:`ndvi_batch`: several AOIs in one month with ONE read (tiles shared by neighbours
  fetched once), in batches bounded by :func:`chunk_aois`; :func:`ndvi_month` is one AOI:
  read through the cached headers
  (:func:`~rasteret_pipelines.reading.read_geometries`, surface reflectance, cloud-masked),
  NDVI, one GeoTIFF per date (:func:`~rasteret_pipelines.products.save_per_geometry`) and a
  manifest with per-date statistics.
* :func:`timeseries_table`: the manifests of one AOI as a table of dates.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from rasteret_pipelines.collections import MonthReport, build_collection, get_source
from rasteret_pipelines.aois import AoiSet
from rasteret_pipelines.defs.io_managers import COLLECTIONS, CollectionMonth, CollectionSlice
from rasteret_pipelines.defs.partitions import month_bounds
from rasteret_pipelines.errors import AoiNotIndexedError, InvalidSearchError, NoScenesError

def collection_bands(source_id: str) -> list[str]:
    """Asset keys a source's collection indexes: red, NIR and the quality band (cloud mask)."""
    source = get_source(source_id)
    return list(dict.fromkeys([*source.ndvi_bands, source.quality_band]))


def check_month_in_source(source_id: str, month: str) -> None:
    """Refuse a month that ends before the source's first data.

    Raises:
        InvalidSearchError: naming the month, the source and its first date.
    """
    source = get_source(source_id)
    _, last = month_bounds(month)
    first = dt.date.fromisoformat(source.start_date)
    if last < first:
        raise InvalidSearchError(
            f"month {month} is before {source.id} starts ({first}): nothing to index; "
            "choose a later partition (or a later RASTERET_START_MONTH)"
        )


@dataclass
class MonthBuild:
    """Result of :func:`build_month`."""

    output: CollectionMonth
    report: MonthReport
    stac_url: str


def build_month(
    source_id: str,
    name: str,
    month: str,
    *,
    storage_uri: str,
    aois: AoiSet,
    stac_url: str | None,
    cloud_cover_lt: float | None = None,
    fetch_config=None,
) -> MonthBuild:
    """Build (or incrementally rebuild) month ``YYYY-MM`` of collection ``name``.

    Raises:
        InvalidSearchError: the month is before the source's start.
        StacApiError: the STAC API is unreachable or keeps failing.
    """
    check_month_in_source(source_id, month)
    first, last = month_bounds(month)
    workspace = storage_uri.rstrip("/") + "/" + COLLECTIONS
    report = build_collection(
        source_id,
        name,
        workspace,
        date_range=(first, last),
        bbox=aois.bbox,
        bands=collection_bands(source_id),
        cloud_cover_lt=cloud_cover_lt,
        stac_url=stac_url,
        fetch_config=fetch_config,
        progress=False,
    )
    month_report = report.months[0]
    effective = get_source(source_id).effective_stac_url(stac_url)
    search = {
        "bbox": [round(v, 7) for v in aois.bbox],
        "aoi_ids": aois.ids,
        "stac_url": effective,
        "cloud_cover_lt": cloud_cover_lt,
        "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return MonthBuild(CollectionMonth(name, month, month_report.path, search), month_report, effective)


def covers(search: dict, geometry) -> bool:
    """True when the search bbox of a collection month contains ``geometry`` (lon/lat)."""
    bbox = search.get("bbox")
    if not bbox:
        return False
    minx, miny, maxx, maxy = geometry.bounds
    eps = 1e-6
    return bbox[0] - eps <= minx and bbox[1] - eps <= miny and maxx <= bbox[2] + eps and maxy <= bbox[3] + eps


BYTES_PER_PIXEL_DATE = 16
"""Estimated bytes held per pixel and date of a read: red, NIR and NDVI as float32 plus masks."""


def check_aoi_indexed(collection: CollectionSlice, month: str, aoi_id: str, geometry) -> None:
    """Refuse an AOI outside the area a collection month was indexed for.

    Raises:
        AoiNotIndexedError: naming the month, its search bbox and the AOI.
    """
    search = collection.searches.get(month, {})
    if search and not covers(search, geometry):
        raise AoiNotIndexedError(
            f"collection {collection.name} month {month} was indexed for bbox {search.get('bbox')} "
            f"(AOIs {', '.join(search.get('aoi_ids', []))}), which does not contain AOI {aoi_id}: "
            f"materialise that collection month again (the AOI sensor requests it)"
        )


def window_bytes(geometry, n_dates: int, pixel_size: float = 10.0) -> tuple[int, int, int]:
    """(rows, cols, bytes) estimated for one AOI's window over ``n_dates`` dates.

    From the geometry's lon/lat bounds (metres per degree at its latitude) and the pixel size;
    good to a few percent for field-sized areas, which is all a memory budget needs.
    """
    minx, miny, maxx, maxy = geometry.bounds
    lat = math.radians((miny + maxy) / 2)
    rows = int(math.ceil((maxy - miny) * 110_574 / pixel_size)) + 1
    cols = int(math.ceil((maxx - minx) * 111_320 * max(math.cos(lat), 0.01) / pixel_size)) + 1
    return rows, cols, rows * cols * max(n_dates, 1) * BYTES_PER_PIXEL_DATE


def chunk_aois(
    aois: AoiSet,
    ids,
    *,
    max_aois: int,
    max_bytes: int,
    n_dates: int,
    pixel_size: float = 10.0,
) -> list[list[str]]:
    """Split ``ids`` into read batches that each hold at most ``max_aois`` AOIs and at most
    ``max_bytes`` estimated bytes.

    A batch is read as one stacked Dataset padded to its largest window, so a batch costs
    ``len(batch) x max rows x max cols x dates x`` :data:`BYTES_PER_PIXEL_DATE`. AOIs are taken
    in spatial order (rows of 0.05 degrees, then longitude) so neighbours, which share tiles,
    share a batch. An AOI larger than the budget on its own is a batch of one.
    """
    max_aois = max(1, int(max_aois))
    order = sorted(
        ids, key=lambda a: (math.floor(aois.geometry(a).centroid.y / 0.05), aois.geometry(a).centroid.x, a)
    )
    batches: list[list[str]] = []
    current: list[str] = []
    rows = cols = 0
    for aoi_id in order:
        r, c, _ = window_bytes(aois.geometry(aoi_id), n_dates, pixel_size)
        nr, nc = max(rows, r), max(cols, c)
        cost = (len(current) + 1) * nr * nc * max(n_dates, 1) * BYTES_PER_PIXEL_DATE
        if current and (len(current) >= max_aois or cost > max_bytes):
            batches.append(current)
            current, nr, nc = [], r, c
        current.append(aoi_id)
        rows, cols = nr, nc
    if current:
        batches.append(current)
    return batches


def _manifest_base(source_id: str, collection: CollectionSlice, month: str, aoi_id: str, aois: AoiSet) -> dict:
    source = get_source(source_id)
    return {
        "source": source_id,
        "collection": collection.name,
        "aoi": aoi_id,
        "aoi_name": aois.frame.loc[aoi_id, "name"],
        "month": month,
        "bands": {**source.ndvi_bands._asdict(),
                  "cloud_mask": source.quality_band if source.quality_band in collection.bands else None},
        "dates": [],
        "files": [],
    }


def ndvi_batch(
    source_id: str,
    collection: CollectionSlice,
    month: str,
    aoi_ids,
    aois: AoiSet,
    *,
    output_uri: str,
    fetch_config=None,
) -> dict[str, dict]:
    """NDVI GeoTIFFs and manifests of several AOIs in one month, from ONE read.

    All AOIs go to :func:`~rasteret_pipelines.reading.read_geometries` together, so a tile
    shared by neighbouring AOIs is fetched and decoded once. The caller checks that each AOI
    lies inside the indexed area (:func:`check_aoi_indexed`) and bounds the batch's memory
    (:func:`chunk_aois`).

    Returns:
        ``{aoi id: manifest}`` for every AOI (see :func:`ndvi_month`); each manifest's
        ``reads`` are the batch's requests, shared by ``reads["batch_aois"]`` AOIs.

    Raises:
        RasteretError: the read or a GeoTIFF write failed for the batch as a whole.
    """
    from rasteret_pipelines.products import ndvi_dataset, save_per_geometry
    from rasteret_pipelines.reading import geometry_dataset, read_geometries

    ids = [str(a) for a in aoi_ids]
    manifests = {a: _manifest_base(source_id, collection, month, a, aois) for a in ids}
    source = get_source(source_id)
    red, nir = source.ndvi_bands
    first, last = month_bounds(month)
    try:
        ds = read_geometries(
            collection,
            aois.subset(ids),
            [red, nir],
            date_range=(first, last),
            values="reflectance",
            cloud_mask=source.quality_band in collection.bands,
            fetch_config=fetch_config,
        )
    except NoScenesError as exc:
        for manifest in manifests.values():
            manifest["note"] = str(exc).replace("the geometries", f"AOI {manifest['aoi']}")
        return manifests
    reads = {k: int(ds.attrs[k]) for k in ("requests", "header_requests", "bytes_read")}
    reads["batch_aois"] = len(ids)
    uncovered = {str(g) for g in ds.attrs.get("geometries_without_scenes", [])}
    ndvi = ndvi_dataset(ds, red, nir)
    del ds
    paths = {str(k): v for k, v in save_per_geometry(ndvi, output_uri, file_prefix="ndvi", data_var="NDVI").items()}
    gids = {str(g): g for g in ndvi["geometry"].values}
    for aoi_id, manifest in manifests.items():
        manifest["reads"] = dict(reads)
        if aoi_id in uncovered or aoi_id not in gids:
            manifest["note"] = f"no scene of collection {collection.name!r} covers AOI {aoi_id} between {first} and {last}"
            continue
        one = geometry_dataset(ndvi, gids[aoi_id])
        manifest["crs"] = one.attrs["crs"]
        manifest["shape"] = [int(one.sizes["y"]), int(one.sizes["x"])]
        manifest["transform"] = [float(v) for v in one.attrs["transform"]]
        by_stem = {os.path.basename(p)[5:13]: p for p in paths.get(aoi_id, [])}
        for entry in layer_stats(one, aois.geometry(aoi_id)):
            entry["path"] = by_stem.get(entry["date"].replace("-", ""))
            manifest["dates"].append(entry)
        manifest["files"] = [e["path"] for e in manifest["dates"] if e["path"]]
        if manifest["dates"] and not manifest["files"]:
            manifest["note"] = (f"no valid (cloud-free, in-footprint) pixel of AOI {aoi_id} on any of its "
                                f"{len(manifest['dates'])} dates")
    return manifests


def ndvi_month(
    source_id: str,
    collection: CollectionSlice,
    month: str,
    aoi_id: str,
    aois: AoiSet,
    *,
    output_uri: str,
    fetch_config=None,
) -> dict:
    """NDVI GeoTIFFs of one AOI for every date of one month, and their manifest.

    Returns:
        The manifest: ``source``, ``collection``, ``aoi``, ``month``, ``crs``, ``shape``,
        ``dates`` (``date``, ``path`` or None when no valid pixel, ``valid_fraction``,
        ``mean_ndvi``, ``median_ndvi``, ``scenes``), ``files`` and ``reads`` (GETs and bytes),
        or ``note`` instead of ``crs``/``shape``/``reads`` when no scene covers it.

    Raises:
        AoiNotIndexedError: the month was indexed for an area not containing the AOI.
    """
    check_aoi_indexed(collection, month, aoi_id, aois.geometry(aoi_id))
    return ndvi_batch(source_id, collection, month, [aoi_id], aois, output_uri=output_uri,
                      fetch_config=fetch_config)[str(aoi_id)]


def layer_stats(one, geometry_4326) -> list[dict]:
    """Per date of a one-geometry NDVI Dataset: valid fraction inside the AOI, mean, median."""
    import rasterio.features
    from affine import Affine

    from rasteret_pipelines.reading.read import reproject_geometry

    local = reproject_geometry(geometry_4326, "EPSG:4326", one.attrs["crs"])
    height, width = int(one.sizes["y"]), int(one.sizes["x"])
    inside = rasterio.features.geometry_mask(
        [local], out_shape=(height, width), transform=Affine(*one.attrs["transform"][:6]), invert=True
    )
    n_inside = int(inside.sum())
    out = []
    for ti, t in enumerate(one["time"].values):
        layer = one["NDVI"].values[ti]
        values = layer[inside & ~np.isnan(layer)]
        out.append(
            {
                "date": str(np.datetime64(t, "D")),
                "valid_fraction": round(float(values.size / n_inside), 6) if n_inside else 0.0,
                "mean_ndvi": round(float(values.mean()), 6) if values.size else None,
                "median_ndvi": round(float(np.median(values)), 6) if values.size else None,
                "valid_pixels": int(values.size),
                "scenes": str(one["scene_id"].values[ti] or ""),
            }
        )
    return out


TIMESERIES_SCHEMA = pa.schema(
    [
        ("date", pa.date32()),
        ("month", pa.string()),
        ("mean_ndvi", pa.float64()),
        ("median_ndvi", pa.float64()),
        ("valid_fraction", pa.float64()),
        ("valid_pixels", pa.int64()),
        ("scenes", pa.string()),
        ("path", pa.string()),
    ]
)


def timeseries_table(manifests: dict) -> pa.Table:
    """One row per date of every manifest (``{partition key: manifest}``), sorted by date."""
    rows = []
    for manifest in manifests.values():
        for e in manifest.get("dates", []):
            rows.append(
                {
                    "date": dt.date.fromisoformat(e["date"]),
                    "month": manifest["month"],
                    "mean_ndvi": e.get("mean_ndvi"),
                    "median_ndvi": e.get("median_ndvi"),
                    "valid_fraction": e.get("valid_fraction"),
                    "valid_pixels": e.get("valid_pixels"),
                    "scenes": e.get("scenes"),
                    "path": e.get("path"),
                }
            )
    rows.sort(key=lambda r: r["date"])
    return pa.Table.from_pylist(rows, schema=TIMESERIES_SCHEMA)


def updated_items(
    source_id: str,
    stac_url: str | None,
    months: list[str],
    bbox,
    since: str,
) -> dict[str, str]:
    """``{YYYY-MM: latest updated}`` of items in ``months`` updated (or added) after ``since``.

    One STAC search over the span of ``months`` (``query: updated > since``), grouped by month
    of acquisition; months outside ``months`` are dropped.

    Raises:
        StacApiError: the STAC API is unreachable or keeps failing.
    """
    from rasteret_pipelines.collections.search import Month, search_items

    first, _ = month_bounds(min(months))
    _, last = month_bounds(max(months))
    span = Month(f"{min(months)}..{max(months)}", first, last)
    items = search_items(get_source(source_id), span, stac_url=stac_url, bbox=bbox,
                         query={"updated": {"gt": since}})
    wanted = set(months)
    out: dict[str, str] = {}
    for item in items:
        props = item.get("properties") or {}
        when = str(props.get("datetime") or props.get("start_datetime") or "")[:7]
        stamp = str(props.get("updated") or props.get("created") or "")
        if when in wanted and stamp > since:
            out[when] = max(out.get(when, ""), stamp)
    return out
