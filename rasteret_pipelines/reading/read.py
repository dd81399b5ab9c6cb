"""Read geometries from a collection: select scenes, plan windows, fetch every tile once, mask, mosaic.

The read is four steps, one module each:

1. :mod:`~rasteret_pipelines.reading.plan`: the scenes covering the geometries (only the
   needed columns of the collection), each geometry's reference grid and mask
   (:mod:`~rasteret_pipelines.reading.mask`), one window per (scene, band).
2. :mod:`~rasteret_pipelines.reading.fetch`: all windows of all geometries, bands and scenes
   as one concurrent batch, so a tile shared by several of them is fetched and decoded once.
3. :mod:`~rasteret_pipelines.reading.assemble`: each scene's windows, as soon as they land,
   masked and converted straight into the output (allocated once), combined per date by a
   :mod:`~rasteret_pipelines.reading.mosaic` method.
4. :mod:`~rasteret_pipelines.reading.model`: the arrays wrapped as one xarray Dataset
   (xarray is imported in a background thread while the tiles are in flight).

For each geometry the reference grid is the grid of its first covering scene (earliest, then
by id) at the finest requested band. Every (scene, band) whose grid is that grid, shifted by a
whole number of pixels, is read directly (no resampling); any other (another CRS, another
resolution such as a 20 m band beside 10 m ones) is read in its own grid and warped onto the
reference window with rasterio's ``reproject`` (nearest neighbour unless asked otherwise).

Pixels outside a geometry follow rasterio's rule (pixel centres inside, or ``all_touched``),
so a single-scene read equals ``rasterio.mask.mask(..., crop=True)`` on the same file. Where
several scenes of one date cover a geometry they are mosaicked: by default, for each band, the
first scene (by datetime, then id) with a valid pixel there wins.

Heavy modules load only when a read needs them: rasterio only to warp or for ``all_touched``
masks, GeoPandas only for GeoPandas input, and xarray is imported in the background while the
tiles are in flight.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

# _run_sync_with: the engine's synchronous runner, which releases a network reader's
# connections when the call's event loop ends.
from rasteret_pipelines.cog import FetchConfig, _run_sync_with
from rasteret_pipelines.errors import InvalidReadArgumentError
from rasteret_pipelines.reading.assemble import Assembly
from rasteret_pipelines.reading.fetch import check_plan_hrefs, fetch_plans
from rasteret_pipelines.reading.geometries import normalize_geometries
from rasteret_pipelines.reading.memory import check_plans
from rasteret_pipelines.reading.mosaic import mosaic_method
from rasteret_pipelines.reading.options import ReadOptions
from rasteret_pipelines.reading.plan import (
    check_date_range,
    cloud_mask_rule,
    crs_of,
    plan_geometries,
    read_attrs,
    reproject_geometry,
    requested_bands,
    select_scenes,
)

log = logging.getLogger(__name__)

VALUE_MODES = ("float", "native", "reflectance")

__all__ = ["VALUE_MODES", "read_geometries", "reproject_geometry"]


def read_geometries(
    collection,
    geometries,
    bands: Sequence[str],
    *,
    date_range=None,
    cloud_cover_lt: float | None = None,
    filters: dict | None = None,
    id_column: str = "id",
    keep: Sequence[str] = (),
    options: ReadOptions | None = None,
    planned=None,
    **option_keywords,
):
    """Read ``bands`` for every geometry from the collection's scenes (see module docs).

    ``values`` to ``reader`` below are the fields of ``options``
    (:class:`~rasteret_pipelines.reading.options.ReadOptions`), also accepted as keywords.

    Args:
        collection: An opened :class:`~rasteret_pipelines.collections.Collection`.
        geometries: Shapely geometries, a GeoSeries or a GeoDataFrame (EPSG:4326 unless it
            says otherwise); ids from the GeoDataFrame's ``id_column``, else the index, else 1..n.
        bands: Band names as the user calls them (``B04``, ``red``); variables keep them.
        date_range: ``(start, end)`` dates, inclusive; must overlap the collection's.
        cloud_cover_lt: Scene-level cloud cover filter.
        values: ``"float"`` (file values as float32, NaN where masked), ``"native"`` (the
            file's dtype, masked pixels set to nodata, or 0 when none is set), or
            ``"reflectance"`` (float32 physical reflectance with the source's scale and
            offset, ``earthsearch:boa_offset_applied`` respected).
        cloud_mask: Also read the source's quality band and mask cloudy pixels.
        all_touched: Include every pixel the geometry touches, not only pixel centres inside.
        resampling: A ``rasterio.enums.Resampling`` (or its name) used only where a band must
            be warped onto the reference grid; default nearest.
        crs: Put every geometry on a grid in this CRS instead of its first scene's; pixels
            are then warped with ``resampling``.
        resolution: Pixel size of that grid in ``crs`` units (default: the finest requested
            band's pixel size, which must then be in the same units).
        fetch_config: Transport settings.
        filters: Extra ``{column: value}`` collection filters (platform, MGRS tile, ...).
        mosaic: How same-date scenes combine: ``"first"`` (default), ``"last"`` or a
            :class:`~rasteret_pipelines.reading.mosaic.MosaicMethod` subclass.
        reader: Where the tiles' bytes come from: any
            :class:`~rasteret_pipelines.cog.ByteReader` (a
            :class:`~rasteret_pipelines.cog.MemoryReader`, an object store client, ...). None
            reads through the default aiohttp/local reader configured by ``fetch_config``.
            Every href passes the same policy either way (``http(s)://`` and ``s3://``; local
            paths and ``file://`` only when the collection allows local hrefs), before any
            request. A reader passed in is not closed (its owner closes it), except that a
            network reader releases the connections of this call's event loop.
        id_column: The GeoDataFrame column holding the geometry ids (default ``"id"``, when
            the frame has it); the ids become the ``geometry`` coordinate.
        keep: GeoDataFrame columns carried into the Dataset as coordinates on ``geometry``.
        options: The read options as one value; a keyword may add to them, not contradict them.
        planned: The :class:`~rasteret_pipelines.reading.explain.ReadPlan` that
            :func:`~rasteret_pipelines.reading.explain.explain` returned for this read (``"get_xarray"``
            or ``"get_gdf"``, the same collection object and equal arguments): the read runs its
            planned windows instead of planning them again, so a dry run followed by its read
            plans once. ``resampling`` and ``reader`` are the read's own and may differ.

    Returns:
        The Dataset described in :mod:`rasteret_pipelines.reading.model`.

    Raises:
        UnknownBandError, MissingAssetError (the items have no asset for a band), DateRangeError,
        InvalidGeometryError, NoScenesError (with the collection's extent and the geometries' bounds),
        UnsafeHrefError (an href the collection's policy refuses; nothing was requested),
        InvalidReadArgumentError (an unknown option, or one given twice with two values; a
        ``planned`` that is not this read's plan).
    """
    opts = ReadOptions.resolve(options, option_keywords)
    values, cloud_mask, all_touched, resampling = opts.values, opts.cloud_mask, opts.all_touched, opts.resampling
    crs, resolution, mosaic = opts.crs, opts.resolution, opts.mosaic
    fetch_config, reader = opts.fetch_config, opts.reader
    arguments = dict(
        geometries=geometries,
        bands=bands,
        date_range=date_range,
        cloud_cover_lt=cloud_cover_lt,
        values=values,
        cloud_mask=cloud_mask,
        all_touched=all_touched,
        crs=crs,
        resolution=resolution,
        fetch_config=fetch_config,
        filters=filters,
        mosaic=mosaic,
        id_column=id_column,
        keep=keep,
    )
    if planned is None:
        planned = plan_read(collection, **arguments)
    else:
        from rasteret_pipelines.reading.explain import reuse_plan

        planned = reuse_plan(planned, ("get_xarray", "get_gdf"), collection, plan_read, arguments)
    plans, uncovered, keys, bands, rule, config, kept = (
        planned.plans,
        planned.uncovered,
        planned.keys,
        planned.bands,
        planned.rule,
        planned.config,
        planned.kept,
    )
    check_plans(plans, bands, values, config)  # MemoryLimitError before any request
    check_plan_hrefs(plans, collection.allow_local_hrefs)  # UnsafeHrefError before any request
    out = Assembly(plans, keys, bands, rule, values, resampling, planned.mosaic)
    # xarray (and pandas under it) is only needed to wrap the result: import it in the
    # background once the last bytes have arrived, while blocks are still decoding (outside the
    # GIL). Not earlier: the import holds the GIL most of its time, and would slow the
    # planning, the first requests and the receiving of every response (which feeds decoding).
    preload = _Preload("xarray")
    try:
        stats = _run_sync_with(reader, fetch_plans(plans, config, out.add_scene, reader, on_fetched=preload.start))
    finally:
        preload.join()
    attrs = {
        **read_attrs(collection, bands, keys, values, cloud_mask),
        "all_touched": int(bool(all_touched)),
        "requests": stats.requests,
        "header_requests": stats.header_requests,
        "bytes_read": stats.bytes,
    }
    if uncovered:
        attrs["geometries_without_scenes"] = [str(g) for g in uncovered]
        log.warning("geometries %s are covered by no scene; they are left out", uncovered)
    ds = out.dataset(attrs)
    if kept:
        ds = ds.assign_coords({c: ("geometry", [v[p.gid] for p in plans]) for c, v in kept.items()})
    return ds


def kept_columns(geometries, geoms, keep: Sequence[str]) -> dict[str, dict]:
    """``{column: {geometry id: value}}`` of the ``keep`` columns of a GeoDataFrame input.

    Raises:
        InvalidReadArgumentError: ``keep`` without a GeoDataFrame, or naming a missing column.
    """
    keep = [keep] if isinstance(keep, str) else list(keep)
    if not keep:
        return {}
    columns = getattr(geometries, "columns", None)
    if columns is None:
        raise InvalidReadArgumentError(f"keep={keep} needs a GeoDataFrame (plain geometries have no columns)")
    missing = [c for c in keep if c not in columns]
    if missing:
        raise InvalidReadArgumentError(f"keep names columns the geometries do not have: {missing}")
    ids = [gid for gid, _ in geoms]
    return {c: dict(zip(ids, geometries[c].tolist())) for c in keep}


@dataclass
class PlannedRead:
    """A read planned from the cached headers alone (no request): what it will fetch."""

    plans: list
    """One :class:`~rasteret_pipelines.reading.plan.GeometryPlan` per covered geometry."""
    uncovered: list
    keys: dict[str, str]
    bands: list[str]
    rule: object
    config: FetchConfig
    kept: dict
    mosaic: type


def plan_read(
    collection,
    geometries,
    bands,
    *,
    date_range=None,
    cloud_cover_lt=None,
    values="float",
    cloud_mask=False,
    all_touched=False,
    crs=None,
    resolution=None,
    fetch_config=None,
    filters=None,
    mosaic="first",
    id_column="id",
    keep=(),
) -> PlannedRead:
    """Check the arguments of :func:`read_geometries` and plan it: scenes, grids, windows.

    Shared by the read and by its dry run (:mod:`~rasteret_pipelines.reading.explain`), so both
    see the same windows. Raises what :func:`read_geometries` raises before any request.
    """
    if values not in VALUE_MODES:
        raise InvalidReadArgumentError(f"values must be one of {VALUE_MODES}, got {values!r}")
    method = mosaic_method(mosaic)
    bands, keys = requested_bands(collection, bands)
    rule = cloud_mask_rule(collection, cloud_mask)
    quality = rule.band if rule is not None else None
    check_date_range(collection, date_range)
    geoms = normalize_geometries(geometries, id_column=id_column)
    kept = kept_columns(geometries, geoms, keep)
    data_keys = sorted(set(keys.values()))
    read_keys = data_keys + ([quality] if quality and quality not in data_keys else [])
    scenes = select_scenes(
        collection,
        geoms,
        date_range,
        cloud_cover_lt,
        filters,
        sorted(set(read_keys)),
        {key: name for name, key in keys.items()},
    )
    target = None if crs is None else (crs if isinstance(crs, str) else _parse_crs(crs).to_wkt())
    if target is not None:
        crs_of(target)  # a bad CRS fails here, before any planning
    plans, uncovered = plan_geometries(geoms, scenes, data_keys, read_keys, all_touched, target, resolution)
    if not plans:
        from rasteret_pipelines.reading.coverage import no_scenes_error

        raise no_scenes_error(collection, geoms, date_range, cloud_cover_lt, filters)
    config = replace(
        fetch_config or FetchConfig(),
        requester_pays=collection.source.requester_pays,
        local_files=collection.allow_local_hrefs,
    )
    return PlannedRead(plans, uncovered, keys, bands, rule, config, kept, method)


def _parse_crs(crs):
    from pyproj import CRS

    return CRS.from_user_input(crs)


class _Preload:
    """Import a module in a background thread from :meth:`start` on (a no-op when it is
    already imported, or when it was never started: the caller's own import then does it)."""

    def __init__(self, name: str):
        self._name = name
        self._thread = None

    def start(self) -> None:
        if self._thread is None and self._name not in sys.modules:
            # Not a daemon: an interpreter exiting (after an error) waits for the import to end
            # instead of tearing modules down under it.
            self._thread = threading.Thread(
                target=_quiet_import, args=(self._name,), daemon=False, name=f"preload-{self._name}"
            )
            self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()


def _quiet_import(name: str) -> None:
    try:
        importlib.import_module(name)
    except Exception:  # the real import, in the caller's thread, reports it
        pass
