"""NDVI from a read: ``(NIR - Red) / (NIR + Red)`` on physical surface reflectance.

The reader records what its numbers are in ``ds.attrs["values"]``:

* ``"raw"``: the stored digital numbers (DN),
* ``"native"``: the provider's own scaling, possibly without its offset,
* ``"reflectance"``: physical surface reflectance (scale *and* offset applied), e.g.
  Sentinel-2 L2A ``DN * 0.0001 - 0.1`` (or ``DN * 0.0001`` once Earth Search has applied the
  offset, ``earthsearch:boa_offset_applied``), Landsat Collection 2 Level-2 surface
  reflectance ``DN * 0.0000275 - 0.2``.

A pure scale cancels in the ratio, but an offset does not: Landsat DN red=8000, nir=9000
gives NDVI 0.0588 on DN and 0.4074 on reflectance. So :func:`compute_ndvi` refuses anything
but reflectance (:class:`~rasteret_pipelines.errors.ReflectanceRequiredError`) instead of
silently producing a wrong index: read with ``values="reflectance"``.

Usage, following the quick start of the original library::

    ds = collection.get_xarray(geometries, bands=["red", "nir"], values="reflectance")
    ndvi = ndvi_dataset(ds, red="red", nir="nir")      # xr.Dataset({"NDVI": ...})
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import xarray as xr

from rasteret_pipelines.errors import ProductInputError, ReflectanceRequiredError
from rasteret_pipelines.reading.indices import ndvi_values

NDVI_NAME = "NDVI"
OutOfRange = Literal["nan", "clip", "keep"]


def _check_inputs(ds: xr.Dataset, red: str, nir: str) -> None:
    if not isinstance(ds, xr.Dataset):
        raise ProductInputError(f"NDVI needs an xarray Dataset with bands {red!r} and {nir!r}, got {type(ds).__name__}")
    values = ds.attrs.get("values")
    if values != "reflectance":
        raise ReflectanceRequiredError(
            f"NDVI needs physical surface reflectance, but this Dataset holds values={values!r}: "
            'read it again with values="reflectance" (scale and offset applied). '
            "NDVI on raw or natively scaled numbers is wrong whenever the product has an offset "
            "(Sentinel-2 L2A -0.1, Landsat C2 L2 -0.2)."
        )
    missing = [b for b in (red, nir) if b not in ds.data_vars]
    if missing:
        raise ProductInputError(
            f"band(s) {missing} not in the Dataset; its variables are {sorted(map(str, ds.data_vars))}"
        )


def compute_ndvi(ds: xr.Dataset, red: str, nir: str, *, out_of_range: OutOfRange = "nan") -> xr.DataArray:
    """NDVI ``(NIR - Red) / (NIR + Red)`` of two reflectance bands of ``ds``.

    Args:
        ds: A read with ``ds.attrs["values"] == "reflectance"``.
        red: Name of the red band variable (e.g. ``"red"``, ``"B04"``, ``"B4"``).
        nir: Name of the near-infrared band variable (e.g. ``"nir"``, ``"B08"``, ``"B5"``).
        out_of_range: What to do with results outside ``[-1, 1]``, which only occur when an
            input reflectance is negative (dark pixels pushed below 0 by the provider's offset,
            or noise): ``"nan"`` (default) masks them as invalid, ``"clip"`` clips them to the
            range, ``"keep"`` returns the raw ratio.

    Returns:
        A float32 DataArray named ``"NDVI"`` with the dims and coordinates of the bands; NaN
        where either input is NaN or ``NIR + Red == 0``. Computed in float64, then rounded.
        No numpy divide warnings are emitted (also for dask-backed inputs).

    Raises:
        ReflectanceRequiredError: ``ds`` does not hold reflectance (a ``ValueError``).
        ProductInputError: a band is missing.
    """
    _check_inputs(ds, red, nir)
    if out_of_range not in ("nan", "clip", "keep"):
        raise ProductInputError(f"out_of_range must be 'nan', 'clip' or 'keep', not {out_of_range!r}")
    ndvi = xr.apply_ufunc(
        ndvi_values,
        ds[red],
        ds[nir],
        kwargs={"out_of_range": out_of_range},
        dask="parallelized",
        output_dtypes=[np.float32],
        keep_attrs=False,
    )
    ndvi.name = NDVI_NAME
    ndvi.attrs = {
        "long_name": "Normalized Difference Vegetation Index",
        "formula": f"({nir} - {red}) / ({nir} + {red})",
        "valid_range": [-1.0, 1.0],
        "units": "1",
    }
    return ndvi


def ndvi_dataset(ds: xr.Dataset, red: str, nir: str, *, out_of_range: OutOfRange = "nan") -> xr.Dataset:
    """``xr.Dataset({"NDVI": compute_ndvi(...)}, coords=ds.coords, attrs=ds.attrs)``.

    Unlike the bare DataArray, the Dataset keeps every coordinate of the read, including the
    per-geometry ``transform`` (whose ``affine`` dimension a DataArray of the bands cannot
    carry), so it can go straight to :func:`~rasteret_pipelines.products.save_per_geometry`.
    """
    ndvi = compute_ndvi(ds, red, nir, out_of_range=out_of_range)
    return xr.Dataset({NDVI_NAME: ndvi}, coords=ds.coords, attrs=dict(ds.attrs))
