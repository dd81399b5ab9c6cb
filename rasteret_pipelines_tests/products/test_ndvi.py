"""NDVI against hand-computed values on reflectance from the providers' documented formulas.

* Sentinel-2 L2A (processing baseline >= 04.00): reflectance = DN * 0.0001 - 0.1
  (BOA_ADD_OFFSET -1000); Earth Search items with ``earthsearch:boa_offset_applied: true`` have
  the offset already removed from the DN: reflectance = DN * 0.0001.
* Landsat Collection 2 Level-2 surface reflectance: reflectance = DN * 0.0000275 - 0.2.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

from rasteret_pipelines.errors import ProductInputError, RasteretError, ReflectanceRequiredError
from rasteret_pipelines.products import compute_ndvi, ndvi_dataset
from rasteret_pipelines.reading.model import GeometryLayers, stack_geometries

DATES = [np.datetime64("2024-03-01"), np.datetime64("2024-03-11")]


def s2_reflectance(dn, offset_applied=False):
    dn = np.asarray(dn, dtype=np.float64)
    return dn * 0.0001 if offset_applied else dn * 0.0001 - 0.1


def landsat_reflectance(dn):
    return np.asarray(dn, dtype=np.float64) * 0.0000275 - 0.2


def read_of(red, nir, values="reflectance", dtype=np.float32):
    """A 1-geometry, 1-date stacked read holding the given 2-D red/nir arrays."""
    red, nir = np.asarray(red, dtype=np.float64), np.asarray(nir, dtype=np.float64)
    h, w = red.shape
    layer = GeometryLayers(
        geometry_id=7,
        crs="EPSG:32643",
        transform=(10.0, 0.0, 399960.0, 0.0, -10.0, 3500040.0),
        height=h,
        width=w,
        dates=DATES[:1],
        bands={"red": red[None], "nir": nir[None]},
        scene_ids=["S2A_X"],
    )
    return stack_geometries([layer], ["red", "nir"], dtype, np.nan, {"values": values})


def ndvi_value(ds) -> float:
    return float(compute_ndvi(ds, "red", "nir").values.ravel()[0])


def test_landsat_example_from_the_documented_formula():
    red = landsat_reflectance([[8000]])
    nir = landsat_reflectance([[9000]])
    assert red[0, 0] == pytest.approx(0.02) and nir[0, 0] == pytest.approx(0.0475)
    ndvi = compute_ndvi(read_of(red, nir, dtype=np.float64), "red", "nir")
    assert ndvi.name == "NDVI" and ndvi.dtype == np.float32
    assert float(ndvi.values.ravel()[0]) == pytest.approx(0.0275 / 0.0675, abs=1e-6)  # 0.407407...
    assert float(ndvi.values.ravel()[0]) == pytest.approx(0.407407, abs=1e-6)

    # The same numbers taken as DN give a very different (wrong) NDVI: the offset does not cancel.
    on_dn = ndvi_value(read_of([[8000]], [[9000]], values="reflectance"))  # mislabelled on purpose
    assert on_dn == pytest.approx(1000 / 17000, abs=1e-6)  # 0.0588
    assert abs(on_dn - 0.407407) > 0.3


def test_sentinel2_with_and_without_the_boa_offset():
    dn_red, dn_nir = 1500, 4000
    with_offset = ndvi_value(read_of(s2_reflectance([[dn_red]]), s2_reflectance([[dn_nir]]), dtype=np.float64))
    assert with_offset == pytest.approx((0.30 - 0.05) / (0.30 + 0.05), abs=1e-6)  # 0.714286

    applied = ndvi_value(read_of(s2_reflectance([[dn_red]], True), s2_reflectance([[dn_nir]], True), dtype=np.float64))
    assert applied == pytest.approx((0.40 - 0.15) / (0.40 + 0.15), abs=1e-6)  # 0.454545
    # A pure scale cancels: NDVI on offset-free DN equals NDVI on its reflectance ...
    assert ndvi_value(read_of([[dn_red]], [[dn_nir]])) == pytest.approx(applied, abs=1e-6)
    # ... but not once the -0.1 offset applies.
    assert abs(with_offset - applied) > 0.2


def test_array_values_coords_and_float32():
    rng = np.random.default_rng(3)
    dn_red = rng.integers(7300, 20000, size=(4, 5))
    dn_nir = rng.integers(7300, 30000, size=(4, 5))
    red, nir = landsat_reflectance(dn_red), landsat_reflectance(dn_nir)
    red[0, 0] = np.nan  # NaN input
    nir[1, 1] = np.nan
    red[2, 2], nir[2, 2] = 0.0, 0.0  # 0 / 0
    red[3, 3], nir[3, 3] = 0.05, -0.05  # x / 0
    ds = read_of(red, nir, dtype=np.float32)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide / invalid warnings leak
        ndvi = compute_ndvi(ds, "red", "nir")

    assert ndvi.dtype == np.float32 and ndvi.name == "NDVI"
    assert ndvi.dims == ds["red"].dims
    for name in ("geometry", "time", "x", "y", "crs", "height", "width", "scene_id"):
        assert name in ndvi.coords and ndvi[name].equals(ds[name])
    got = ndvi.values[0, 0]
    r32, n32 = ds["red"].values[0, 0].astype(np.float64), ds["nir"].values[0, 0].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = ((n32 - r32) / (n32 + r32)).astype(np.float32)
    expected[(n32 + r32) == 0] = np.nan
    np.testing.assert_array_equal(got, expected)
    assert np.isnan(got[0, 0]) and np.isnan(got[1, 1]) and np.isnan(got[2, 2]) and np.isnan(got[3, 3])
    valid = got[~np.isnan(got)]
    assert valid.size == 16 and valid.min() >= -1 and valid.max() <= 1


def test_out_of_range_from_negative_reflectance():
    # Sentinel-2 DN 990 (< 1000) is a negative reflectance after the -0.1 offset.
    red, nir = s2_reflectance([[990]]), s2_reflectance([[1200]])
    raw = (nir - red) / (nir + red)
    assert raw[0, 0] > 1
    ds = read_of(red, nir, dtype=np.float64)
    assert np.isnan(ndvi_value(ds))
    assert float(compute_ndvi(ds, "red", "nir", out_of_range="clip").values.ravel()[0]) == 1.0
    assert float(compute_ndvi(ds, "red", "nir", out_of_range="keep").values.ravel()[0]) == pytest.approx(
        raw[0, 0], rel=1e-6
    )
    with pytest.raises(ProductInputError):
        compute_ndvi(ds, "red", "nir", out_of_range="wrap")


@pytest.mark.parametrize("values", ["raw", "native", None])
def test_refuses_anything_but_reflectance(values):
    ds = read_of([[8000]], [[9000]], values=values)
    if values is None:
        del ds.attrs["values"]
    with pytest.raises(ReflectanceRequiredError, match='values="reflectance"') as info:
        compute_ndvi(ds, "red", "nir")
    assert isinstance(info.value, ValueError) and isinstance(info.value, RasteretError)
    with pytest.raises(ReflectanceRequiredError):
        ndvi_dataset(ds, "red", "nir")


def test_missing_band():
    ds = read_of([[0.1]], [[0.2]])
    with pytest.raises(ProductInputError, match="B08"):
        compute_ndvi(ds, "red", "B08")


def test_ndvi_dataset_keeps_all_coords_and_attrs():
    ds = read_of(landsat_reflectance([[8000, 9000]]), landsat_reflectance([[9000, 8000]]))
    out = ndvi_dataset(ds, "red", "nir")
    assert isinstance(out, xr.Dataset) and list(out.data_vars) == ["NDVI"]
    assert set(out.coords) == set(ds.coords)  # including transform(geometry, affine)
    assert out["transform"].equals(ds["transform"])
    assert out.attrs == ds.attrs
    v = out["NDVI"].values[0, 0, 0]
    assert v[0] == pytest.approx(0.407407, abs=1e-6) and v[1] == pytest.approx(-0.407407, abs=1e-6)


def test_dask_backed_input():
    red, nir = landsat_reflectance([[8000, 0]]), landsat_reflectance([[9000, 0]])
    red[0, 1], nir[0, 1] = 0.0, 0.0
    ds = read_of(red, nir, dtype=np.float64).chunk({"col": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = compute_ndvi(ds, "red", "nir").compute().values.ravel()
    assert values[0] == pytest.approx(0.407407, abs=1e-6) and np.isnan(values[1])
