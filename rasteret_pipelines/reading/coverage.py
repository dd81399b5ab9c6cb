"""Why no scene covers the geometries: the collection's extent beside the geometries' bounds.

:func:`no_scenes_error` builds the :class:`~rasteret_pipelines.errors.NoScenesError` of a read
that selected nothing. It names the collection's extent (the bbox of its item footprints in
EPSG:4326, the CRS of its scenes' grids when the items record it, its months) and the
geometries' bounds, and says what most likely went wrong: the geometries lie outside the
collection (suggesting swapped axes when (lat, lon) order would fit), or inside it but outside
the date range or filters. It reads only the collection's small columns, never a COG.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import shapely

from rasteret_pipelines.errors import NoScenesError

_CRS_PROPERTIES = ("proj:code", "proj:epsg")


def collection_extent(collection) -> tuple[float, float, float, float] | None:
    """``(min lon, min lat, max lon, max lat)`` of every item footprint, or None when empty."""
    if "bbox" not in collection.schema.names:
        return None
    table = collection.to_table(columns=["bbox"], sort=False)
    if not table.num_rows:
        return None
    boxes = [b for b in table.column("bbox").to_pylist() if b]
    if not boxes:
        return None
    return (
        min(b["xmin"] for b in boxes),
        min(b["ymin"] for b in boxes),
        max(b["xmax"] for b in boxes),
        max(b["ymax"] for b in boxes),
    )


def scene_crs_names(collection) -> list[str]:
    """The CRSs of the scenes' grids as the items record them (``proj:code`` / ``proj:epsg``)."""
    names = set(collection.schema.names)
    found: set[str] = set()
    for prop in _CRS_PROPERTIES:
        if prop not in names:
            continue
        for value in collection.to_table(columns=[prop], sort=False).column(prop).to_pylist():
            if value is None:
                continue
            found.add(f"EPSG:{int(value)}" if prop == "proj:epsg" else str(value))
    return sorted(found)


def _fmt(bounds: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in bounds) + "]"


def _overlaps(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def no_scenes_error(collection, geoms, date_range=None, cloud_cover_lt=None, filters=None) -> NoScenesError:
    """The error of a read whose geometries no scene covers (see the module docs).

    Args:
        collection: The opened collection.
        geoms: ``(id, EPSG:4326 geometry)`` pairs, as the read normalised them.
        date_range, cloud_cover_lt, filters: The read's selection.
    """
    what = (
        f"no scene of collection {collection.name!r} covers the geometries"
        + (f" between {date_range[0]} and {date_range[1]}" if date_range else "")
        + (f" with cloud cover below {cloud_cover_lt}" if cloud_cover_lt is not None else "")
        + (f" with {dict(filters)}" if filters else "")
    )
    bounds = tuple(float(v) for v in shapely.total_bounds([g for _, g in geoms]))
    extent = collection_extent(collection)
    crs = scene_crs_names(collection)
    months = collection.months
    parts = [f"geometries' bounds (lon/lat, EPSG:4326): {_fmt(bounds)}"]
    if extent is None:
        parts.append("the collection holds no scene")
        return NoScenesError(f"{what}. {'; '.join(parts)}")
    parts.append(
        f"collection extent: bbox {_fmt(extent)} (lon/lat, EPSG:4326)"
        + (f", scenes on {', '.join(crs)}" if crs else "")
        + (f", months {months[0]}..{months[-1]}" if months else "")
        + f", dates {collection.date_range[0]}..{collection.date_range[1]}"
    )
    if not _overlaps(bounds, extent):
        swapped = (bounds[1], bounds[0], bounds[3], bounds[2])
        if _overlaps(swapped, extent) and all(np.isfinite(swapped)):
            parts.append(
                "with x and y swapped the geometries would fall inside the collection: were "
                "latitude and longitude given in the wrong order? Geometries take (lon, lat)"
            )
        else:
            parts.append(
                "the geometries lie outside the collection's extent: build a collection over "
                "their area, or check their CRS"
            )
    else:
        parts.append(
            "the geometries overlap the collection's extent, so the date range or the "
            "filters (or a gap between its footprints) leave no scene"
        )
    return NoScenesError(f"{what}. {'; '.join(parts)}")
