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
from dataclasses import dataclass, field
from functools import lru_cache

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
class GeometryGrid:
    """The pixel window of one geometry: where its layers sit."""

    geometry_id: object
    crs: str
    transform: tuple[float, float, float, float, float, float]
    """Affine of the window's top-left pixel (affine/rasterio order a, b, c, d, e, f)."""
    height: int
    width: int


@dataclass
class GeometryLayers(GeometryGrid):
    """The arrays read for one geometry, before stacking."""

    dates: list[np.datetime64] = field(default_factory=list)
    """One per layer, sorted, unique."""
    bands: Mapping[str, np.ndarray] = field(default_factory=dict)
    """Band name -> array (dates, height, width)."""
    scene_ids: list[str] = field(default_factory=list)
    """Comma-joined scene ids per date."""


@lru_cache(maxsize=256)
def crs_wkt(crs: str) -> str:
    """WKT of a CRS given as ``EPSG:<code>`` or WKT (cached: geometries share a few CRSs)."""
    from pyproj import CRS

    return CRS.from_user_input(crs).to_wkt()


def empty_stack(
    grids: Sequence[GeometryGrid], times, band_names: Sequence[str], dtype, fill, attrs: Mapping
) -> xr.Dataset:
    """The model Dataset for ``grids`` x ``times``, every pixel ``fill``, to be filled in place.

    Readers write each geometry's layers straight into ``ds[band].values[g, t, :h, :w]`` and
    ``ds["scene_id"].values[g, t]``, so no per-geometry copy is kept alongside the stack.
    """
    n, nt = len(grids), len(times)
    max_h = max((g.height for g in grids), default=0)
    max_w = max((g.width for g in grids), default=0)
    data = {b: np.full((n, nt, max_h, max_w), fill, dtype=dtype) for b in band_names}
    return dataset_from_arrays(grids, times, data, np.full((n, nt), "", dtype=object), attrs)


def dataset_from_arrays(
    grids: Sequence[GeometryGrid], times, data: Mapping[str, np.ndarray], scene_ids: np.ndarray, attrs: Mapping
) -> xr.Dataset:
    """The model Dataset around arrays already laid out as ``(geometry, time, row, col)`` (no copy).

    Args:
        grids: One per geometry, in the arrays' order.
        times: Sorted dates of the time axis.
        data: Band name -> array ``(len(grids), len(times), max height, max width)``.
        scene_ids: Object array ``(len(grids), len(times))`` of comma-joined scene ids.
        attrs: The Dataset's attributes.
    """
    n = len(grids)
    max_h = max((g.height for g in grids), default=0)
    max_w = max((g.width for g in grids), default=0)
    xs = np.full((n, max_w), np.nan)
    ys = np.full((n, max_h), np.nan)
    for gi, g in enumerate(grids):
        a, _, c, _, e, f = g.transform
        xs[gi, : g.width] = c + a * (np.arange(g.width) + 0.5)  # north-up grids
        ys[gi, : g.height] = f + e * (np.arange(g.height) + 0.5)
    coords, indexes = _dimension_coords(
        {"geometry": [g.geometry_id for g in grids], "time": np.array(sorted(times), dtype="datetime64[ns]")}
    )
    coords.update(
        {
            "x": _variable(("geometry", "col"), xs),
            "y": _variable(("geometry", "row"), ys),
            "crs": _variable(("geometry",), np.array([g.crs for g in grids], dtype=object)),
            "transform": _variable(
                ("geometry",), np.array([format_transform(g.transform) for g in grids], dtype=object)
            ),
            "height": _variable(("geometry",), np.array([g.height for g in grids], dtype=np.int64)),
            "width": _variable(("geometry",), np.array([g.width for g in grids], dtype=np.int64)),
            "scene_id": _variable(("geometry", "time"), scene_ids),
        }
    )
    crss = {g.crs for g in grids}
    if len(crss) == 1:
        coords["spatial_ref"] = _variable((), np.array(0), {"crs_wkt": crs_wkt(next(iter(crss)))})
    variables = {b: _variable(("geometry", "time", "row", "col"), arr) for b, arr in data.items()}
    return xr.Dataset(variables, coords=xr.Coordinates(coords, indexes=indexes), attrs=dict(attrs))


def _dimension_coords(values: Mapping[str, Sequence]) -> tuple[dict, dict]:
    """(variables, indexes) of the indexed coordinates ``{dimension: values}``.

    The index is built from a ``pandas.Index`` (what xarray builds from plain values itself,
    but without its duck-array check; see :func:`_variable`). Values numpy cannot hold as one
    plain 1-D array (mixed Python objects) go through xarray's own conversion instead.
    """
    import pandas as pd
    from xarray.indexes import PandasIndex

    variables: dict = {}
    indexes: dict = {}
    for dim, raw in values.items():
        array = np.asarray(raw)
        if array.ndim != 1 or array.dtype.kind == "O":
            index = PandasIndex.from_variables({dim: xr.Variable(dim, raw)}, options={})
        else:
            index = PandasIndex(pd.Index(array), dim, coord_dtype=array.dtype)
        indexes[dim] = index
        variables.update(index.create_variables())
    return variables, indexes


def _variable(dims, values: np.ndarray, attrs=None) -> xr.Variable:
    """A Variable around ``values`` as they are (already numpy, of their final dtype).

    ``fastpath`` skips xarray's conversion of arbitrary input, whose duck-array check imports
    dask (when it is installed) on the first Variable a process builds; a read hands xarray
    plain numpy arrays, so it has nothing to convert.
    """
    return xr.Variable(dims, values, attrs, fastpath=True)


def stack_geometries(
    layers: Sequence[GeometryLayers], band_names: Sequence[str], dtype, fill, attrs: Mapping
) -> xr.Dataset:
    """Stack per-geometry windows into the model above (padding with ``fill``)."""
    times = sorted({d for g in layers for d in g.dates})
    t_index = {t: i for i, t in enumerate(times)}
    ds = empty_stack(layers, times, band_names, dtype, fill, attrs)
    scene = ds["scene_id"].values
    for gi, g in enumerate(layers):
        for li, date in enumerate(g.dates):
            ti = t_index[date]
            scene[gi, ti] = g.scene_ids[li]
            for band in band_names:
                ds[band].values[gi, ti, : g.height, : g.width] = g.bands[band][li]
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
                        repr(v)
                        for v in (transform[2], transform[0], transform[1], transform[5], transform[3], transform[4])
                    ),
                },
            ),
        },
        attrs={**ds.attrs, "geometry_id": geometry_id, "crs": crs, "transform": transform},
    )
    for v in keep:
        out[v].attrs["grid_mapping"] = "spatial_ref"
    return out
