"""The xarray model of a read: one Dataset, a ``geometry`` dimension, each geometry on its own grid.

Why this model: the original library's quick start does ``ds.B5 - ds.B4`` on one Dataset and
builds ``xr.Dataset({"NDVI": ndvi}, coords=ds.coords)``, so the result must be a single
Dataset with one variable per band. Putting every geometry on one shared x/y grid (the union
grid) would allocate the whole area between distant fields; a DataTree would break the quick
start. So each geometry keeps its own pixel window on the source grid, and the windows are
stacked along ``geometry`` with local ``row``/``col`` dimensions padded to the largest window.
Memory is ``geometries x dates x largest window``, never the bounding box of all geometries.

Layout::

    dims:    geometry, time, row, col
    data:    <band>(geometry, time, row, col)  one variable per requested band name
    coords:  geometry            ids (GeoDataFrame index, or 1..n)
             time                acquisition date (UTC midnight); same-date scenes are mosaicked
             x(geometry, col)    pixel-centre x in the geometry's CRS (NaN in padding)
             y(geometry, row)    pixel-centre y in the geometry's CRS (NaN in padding)
             crs(geometry)       CRS of the geometry's grid (``EPSG:<code>`` or WKT)
             transform(geometry) affine of the window as text "a b c d e f" (affine/rasterio
                                 order); text so that it survives band arithmetic on DataArrays
             height(geometry), width(geometry)  true window size (rows/cols beyond are padding)
             scene_id(geometry, time)  scene ids mosaicked into that layer ("" when none)
             spatial_ref         scalar, rioxarray's CRS convention, when all geometries share one CRS

:func:`geometry_dataset` turns one geometry back into an ordinary raster Dataset with 1-D
``x``/``y`` dimensions and a ``spatial_ref`` coordinate (what rioxarray and plotting expect).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr



def format_transform(transform) -> str:
    """Affine coefficients (a, b, c, d, e, f) as the text stored in the ``transform`` coord."""
    return " ".join(repr(float(v)) for v in tuple(transform)[:6])


def parse_transform(text) -> tuple[float, float, float, float, float, float]:
    """The inverse of :func:`format_transform` (also accepts a 6-sequence)."""
    values = str(text).split() if isinstance(text, (str, np.str_)) else list(text)
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def geometry_transform(ds, geometry_id) -> tuple[float, float, float, float, float, float]:
    """The window affine of one geometry of a read (or of a DataArray taken from it)."""
    return parse_transform(ds["transform"].sel(geometry=geometry_id).item())


@dataclass
class GeometryLayers:
    """The arrays read for one geometry, before stacking."""

    geometry_id: object
    crs: str
    transform: tuple[float, float, float, float, float, float]
    """Affine of the window's top-left pixel (affine/rasterio order a, b, c, d, e, f)."""
    height: int
    width: int
    dates: list[np.datetime64]
    """One per layer, sorted, unique."""
    bands: Mapping[str, np.ndarray]
    """Band name -> array (dates, height, width)."""
    scene_ids: list[str]
    """Comma-joined scene ids per date."""


def crs_wkt(crs: str) -> str:
    from pyproj import CRS

    return CRS.from_user_input(crs).to_wkt()


def stack_geometries(
    layers: Sequence[GeometryLayers], band_names: Sequence[str], dtype, fill, attrs: Mapping
) -> xr.Dataset:
    """Stack per-geometry windows into the model above (padding with ``fill``)."""
    times = sorted({d for g in layers for d in g.dates})
    t_index = {t: i for i, t in enumerate(times)}
    n, nt = len(layers), len(times)
    max_h = max((g.height for g in layers), default=0)
    max_w = max((g.width for g in layers), default=0)
    data = {b: np.full((n, nt, max_h, max_w), fill, dtype=dtype) for b in band_names}
    xs = np.full((n, max_w), np.nan)
    ys = np.full((n, max_h), np.nan)
    scene = np.full((n, nt), "", dtype=object)
    for gi, g in enumerate(layers):
        a, b, c, d, e, f = g.transform
        cols = np.arange(g.width) + 0.5
        rows = np.arange(g.height) + 0.5
        xs[gi, : g.width] = c + a * cols  # rotation terms are 0 on north-up grids
        ys[gi, : g.height] = f + e * rows
        for li, date in enumerate(g.dates):
            ti = t_index[date]
            scene[gi, ti] = g.scene_ids[li]
            for band in band_names:
                data[band][gi, ti, : g.height, : g.width] = g.bands[band][li]
    coords = {
        "geometry": [g.geometry_id for g in layers],
        "time": np.array(times, dtype="datetime64[ns]"),
        "x": (("geometry", "col"), xs),
        "y": (("geometry", "row"), ys),
        "crs": ("geometry", np.array([g.crs for g in layers], dtype=object)),
        "transform": ("geometry", np.array([format_transform(g.transform) for g in layers], dtype=object)),
        "height": ("geometry", np.array([g.height for g in layers], dtype=np.int64)),
        "width": ("geometry", np.array([g.width for g in layers], dtype=np.int64)),
        "scene_id": (("geometry", "time"), scene),
    }
    crss = {g.crs for g in layers}
    if len(crss) == 1:
        coords["spatial_ref"] = ((), 0, {"crs_wkt": crs_wkt(next(iter(crss)))})
    ds = xr.Dataset(
        {b: (("geometry", "time", "row", "col"), data[b]) for b in band_names},
        coords=coords,
        attrs=dict(attrs),
    )
    return ds


def geometry_dataset(ds: xr.Dataset, geometry_id) -> xr.Dataset:
    """One geometry as an ordinary raster Dataset: dims (time, y, x), its true window only.

    The result carries 1-D ``x``/``y`` coordinates and a ``spatial_ref`` coordinate with
    ``crs_wkt`` and ``GeoTransform`` attributes (rioxarray's convention).
    """
    one = ds.sel(geometry=geometry_id)
    height, width = int(one["height"]), int(one["width"])
    transform = parse_transform(one["transform"].item())
    crs = str(one["crs"].values)
    one = one.isel(row=slice(0, height), col=slice(0, width))
    keep = [v for v in one.data_vars]
    out = xr.Dataset(
        {v: (("time", "y", "x"), one[v].values) for v in keep},
        coords={
            "time": one["time"].values,
            "x": one["x"].values,
            "y": one["y"].values,
            "scene_id": ("time", one["scene_id"].values),
            "spatial_ref": (
                (),
                0,
                {
                    "crs_wkt": crs_wkt(crs),
                    "GeoTransform": " ".join(
                        repr(v) for v in (transform[2], transform[0], transform[1], transform[5], transform[3], transform[4])
                    ),
                },
            ),
        },
        attrs={**ds.attrs, "geometry_id": geometry_id, "crs": crs, "transform": transform},
    )
    for v in keep:
        out[v].attrs["grid_mapping"] = "spatial_ref"
    return out
