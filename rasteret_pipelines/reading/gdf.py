"""The read as a GeoDataFrame: one row per geometry x date x band."""

from __future__ import annotations

import numpy as np

from rasteret_pipelines.reading.model import parse_transform

COLUMNS = ["geometry_id", "date", "band", "array", "transform", "crs", "scene_id", "geometry"]


def dataset_to_gdf(ds, geometries: dict):
    """Rows of (geometry_id, date, band, array, transform, crs, scene_id, geometry).

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
    return gpd.GeoDataFrame(columns, columns=COLUMNS, geometry="geometry", crs="EPSG:4326")
