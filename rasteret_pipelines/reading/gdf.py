"""The read as a GeoDataFrame: one row per geometry x date x band."""

from __future__ import annotations

import numpy as np

from rasteret_pipelines.reading.model import parse_transform

COLUMNS = ["geometry_id", "date", "band", "array", "transform", "crs", "scene_id", "geometry"]
_MODEL_COORDS = {"geometry", "crs", "transform", "height", "width"}


def dataset_to_gdf(ds, geometries: dict):
    """Rows of (geometry_id, kept columns, date, band, array, transform, crs, scene_id, geometry).

    Args:
        ds: A read in the :mod:`rasteret_pipelines.reading.model` layout.
        geometries: ``{geometry id: shapely geometry in EPSG:4326}`` for the geometry column.

    Returns:
        A GeoDataFrame (EPSG:4326) whose ``array`` column holds each layer's 2-D array on
        the geometry's own grid (``transform``, ``crs``), cropped to its window (a view of
        the read's arrays, not a copy).
    """
    import geopandas as gpd

    columns: dict[str, list] = {c: [] for c in COLUMNS}
    # Columns the caller kept (``keep=``): every other coordinate on the geometry dimension.
    extra = [str(c) for c, v in ds.coords.items() if v.dims == ("geometry",) and c not in _MODEL_COORDS]
    kept = {c: ds[c].values.tolist() for c in extra}
    columns.update({c: [] for c in extra})
    ids = ds["geometry"].values.tolist()
    heights, widths = ds["height"].values, ds["width"].values
    transforms, crss = ds["transform"].values, ds["crs"].values
    scene_ids = ds["scene_id"].values
    dates = [np.datetime64(t, "D").astype(object) for t in ds["time"].values]
    bands = [str(b) for b in ds.data_vars]
    arrays = {b: ds[b].values for b in bands}
    for gi, gid in enumerate(ids):
        h, w = int(heights[gi]), int(widths[gi])
        transform = parse_transform(transforms[gi])
        crs = str(crss[gi])
        for ti, date in enumerate(dates):
            scene = str(scene_ids[gi, ti])
            for band in bands:
                columns["geometry_id"].append(gid)
                columns["date"].append(date)
                columns["band"].append(band)
                columns["array"].append(arrays[band][gi, ti, :h, :w])
                columns["transform"].append(transform)
                columns["crs"].append(crs)
                columns["scene_id"].append(scene)
                columns["geometry"].append(geometries[gid])
                for c in extra:
                    columns[c].append(kept[c][gi])
    order = COLUMNS[:1] + extra + COLUMNS[1:]
    return gpd.GeoDataFrame(columns, columns=order, geometry="geometry", crs="EPSG:4326")
