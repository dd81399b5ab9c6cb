"""The read as a GeoDataFrame: one row per geometry x date x band."""

from __future__ import annotations

import numpy as np
import xarray as xr

from rasteret_pipelines.reading.model import geometry_dataset


def dataset_to_gdf(ds: xr.Dataset, geometries: dict):
    """Rows of (geometry_id, date, band, array, transform, crs, scene_id, geometry).

    Args:
        ds: A read in the :mod:`rasteret_pipelines.reading.model` layout.
        geometries: ``{geometry id: shapely geometry in EPSG:4326}`` for the geometry column.

    Returns:
        A GeoDataFrame (EPSG:4326) whose ``array`` column holds each layer's 2-D array on
        the geometry's own grid (``transform``, ``crs``), cropped to its window.
    """
    import geopandas as gpd

    rows = []
    for gid in ds["geometry"].values.tolist():
        one = geometry_dataset(ds, gid)
        transform = tuple(one.attrs["transform"])
        for ti, when in enumerate(one["time"].values):
            for band in one.data_vars:
                rows.append(
                    {
                        "geometry_id": gid,
                        "date": np.datetime64(when, "D").astype(object),
                        "band": band,
                        "array": one[band].values[ti],
                        "transform": transform,
                        "crs": one.attrs["crs"],
                        "scene_id": str(one["scene_id"].values[ti]),
                        "geometry": geometries[gid],
                    }
                )
    columns = ["geometry_id", "date", "band", "array", "transform", "crs", "scene_id", "geometry"]
    if not rows:
        return gpd.GeoDataFrame(columns=columns, geometry="geometry", crs="EPSG:4326")
    return gpd.GeoDataFrame(rows, columns=columns, geometry="geometry", crs="EPSG:4326")
