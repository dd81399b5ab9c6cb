"""Per-geometry COGs: grid, values, layout, naming, atomicity, S3."""

from __future__ import annotations

import logging
import os

import boto3
import numpy as np
import pytest
import rasterio
import rasterio.transform
from pyproj import CRS

from rasteret_pipelines.cog import read_header, read_window
from rasteret_pipelines.errors import ProductInputError, ProductWriteError
from rasteret_pipelines.products import geotiff, save_per_geometry, write_cog
from rasteret_pipelines.reading.model import GeometryLayers, stack_geometries

D1, D2 = np.datetime64("2024-03-01"), np.datetime64("2024-03-11")
# Geometry 3: Sentinel-2-like 10 m grid, UTM 43N, larger than one 256 tile (gets overviews).
# Geometry 17: Landsat-like 30 m grid, UTM 44N, small window, no scene on D1 (all-NaN layer).
A_TRANSFORM = (10.0, 0.0, 399960.0 + 1230.0, 0.0, -10.0, 3500040.0 - 870.0)
B_TRANSFORM = (30.0, 0.0, 271785.0, 0.0, -30.0, 3101415.0)


def known_values(seed, shape):
    rng = np.random.default_rng(seed)
    values = rng.uniform(-1, 1, size=shape).astype(np.float32)
    values[..., :3, :4] = np.nan  # cloud-masked corner
    return values


@pytest.fixture
def layers():
    a_vals = known_values(1, (2, 300, 517))
    b_vals = known_values(2, (1, 23, 37))
    a = GeometryLayers(
        3,
        "EPSG:32643",
        A_TRANSFORM,
        300,
        517,
        [D1, D2],
        {"NDVI": a_vals},
        ["S2A_43RGQ_20240301", "S2B_43RGQ_20240311,S2B_43RGP_20240311"],
    )
    b = GeometryLayers(17, "EPSG:32644", B_TRANSFORM, 23, 37, [D2], {"NDVI": b_vals}, ["LC09_145040_20240311"])
    return a, b


@pytest.fixture
def ds(layers):
    return stack_geometries(list(layers), ["NDVI"], np.float32, np.nan, {"values": "reflectance"})


def expected_layer(layer: GeometryLayers, date):
    return layer.bands["NDVI"][layer.dates.index(date)]


def test_one_cog_per_geometry_and_date(tmp_path, ds, layers, caplog):
    with caplog.at_level(logging.INFO, logger=geotiff.__name__):
        paths = save_per_geometry(ds, tmp_path / "out")
    out = (tmp_path / "out").resolve()
    assert paths == {
        3: [str(out / "geometry_3/ndvi_20240301.tif"), str(out / "geometry_3/ndvi_20240311.tif")],
        17: [str(out / "geometry_17/ndvi_20240311.tif")],  # D1 had no scene: all NaN, skipped
    }
    assert "17" in caplog.text and "2024-03-01" in caplog.text
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "geometry_17",
        "geometry_17/ndvi_20240311.tif",
        "geometry_3",
        "geometry_3/ndvi_20240301.tif",
        "geometry_3/ndvi_20240311.tif",
    ]  # no temporary or .aux.xml files left

    for gi, layer in enumerate(layers):
        for path, date in zip(paths[layer.geometry_id], [d for d in (D1, D2) if d in layer.dates]):
            with rasterio.open(path) as src:
                assert CRS.from_user_input(src.crs.to_wkt()) == CRS.from_user_input(layer.crs)
                assert src.crs.to_epsg() == int(layer.crs.split(":")[1])
                assert tuple(src.transform)[:6] == layer.transform
                assert (src.height, src.width) == (layer.height, layer.width)  # padding excluded
                assert src.count == 1 and src.dtypes == ("float32",)
                assert np.isnan(src.nodata)
                np.testing.assert_array_equal(src.read(1), expected_layer(layer, date))  # NaN where NaN
                assert src.descriptions == ("NDVI",)

                # COG layout as GDAL reports it.
                structure = src.tags(ns="IMAGE_STRUCTURE")
                assert structure["LAYOUT"] == "COG"
                assert structure["COMPRESSION"] in ("DEFLATE", "ZSTD")
                assert structure["PREDICTOR"] == "3"
                assert src.profile["tiled"] and src.block_shapes == [(256, 256)]
                overviews = src.overviews(1)
                if max(layer.height, layer.width) > 256:  # halvings down to one tile
                    assert overviews == [2**k for k in range(1, len(overviews) + 1)]
                    assert (
                        max(layer.height, layer.width) / overviews[-1]
                        <= 256
                        < max(layer.height, layer.width) / overviews[-1] * 2
                    )
                else:
                    assert overviews == []

                tags = src.tags()
                ti = layer.dates.index(date)
                assert tags["DATE"] == str(date) and tags["DATETIME"] == f"{date}T00:00:00Z"
                assert tags["GEOMETRY_ID"] == str(layer.geometry_id)
                assert tags["SCENE_IDS"] == layer.scene_ids[ti]
                assert tags["DATA_VAR"] == "NDVI" and tags["VALUES"] == "reflectance"

                # Every output pixel sits where its source pixel was: same centre x/y as the Dataset.
                rows, cols = np.meshgrid(np.arange(src.height), np.arange(src.width), indexing="ij")
                xs, ys = rasterio.transform.xy(src.transform, rows.ravel(), cols.ravel(), offset="center")
                x_model = ds["x"].values[gi, : layer.width]
                y_model = ds["y"].values[gi, : layer.height]
                np.testing.assert_array_equal(np.reshape(xs, rows.shape), np.broadcast_to(x_model, rows.shape))
                np.testing.assert_array_equal(np.reshape(ys, rows.shape), np.broadcast_to(y_model[:, None], rows.shape))
                assert src.xy(5, 7) == (x_model[7], y_model[5])

            # This project's own (GDAL-free) COG engine reads the product back too.
            header = read_header(path)
            pixels = read_window(header, (0, 0, layer.width, layer.height))
            np.testing.assert_array_equal(pixels[0], expected_layer(layer, date))


def test_dataarray_input_and_other_variable(tmp_path, ds, layers):
    # A DataArray loses the (geometry, affine) transform coord: it is rebuilt from x/y exactly.
    paths = save_per_geometry(ds["NDVI"], tmp_path, file_prefix="index")
    assert [os.path.basename(p) for p in paths[3]] == ["index_20240301.tif", "index_20240311.tif"]
    for layer in layers:
        with rasterio.open(paths[layer.geometry_id][-1]) as src:
            assert tuple(src.transform)[:6] == layer.transform
            np.testing.assert_array_equal(src.read(1), expected_layer(layer, D2))

    unnamed = ds["NDVI"] * 1.0
    unnamed.name = None
    assert save_per_geometry(unnamed, tmp_path / "u", data_var="NDVI").keys() == {3, 17}
    with pytest.raises(ProductInputError, match="data_var='NDVI'"):
        save_per_geometry(ds["NDVI"], tmp_path / "x", data_var="EVI")
    with pytest.raises(ProductInputError, match="EVI"):
        save_per_geometry(ds, tmp_path / "x", data_var="EVI")

    # Other bands of a Dataset are ignored; integer data is written as float32.
    two = ds.assign(red=(ds["NDVI"].dims, np.full(ds["NDVI"].shape, 5, dtype=np.int16)))
    red_paths = save_per_geometry(two, tmp_path / "red", file_prefix="red", data_var="red")
    with rasterio.open(red_paths[17][0]) as src:
        assert src.dtypes == ("float32",) and src.tags()["DATA_VAR"] == "red"
        assert (src.read(1) == 5).all()


def test_all_nan_geometry_maps_to_no_files(tmp_path):
    field = GeometryLayers(
        "field-a", "EPSG:32643", A_TRANSFORM, 4, 5, [D1, D2], {"NDVI": known_values(4, (2, 4, 5))}, ["s1", "s2"]
    )
    empty = GeometryLayers("empty", "EPSG:32644", B_TRANSFORM, 4, 4, [D1], {"NDVI": np.full((1, 4, 4), np.nan)}, [""])
    ds = stack_geometries([field, empty], ["NDVI"], np.float32, np.nan, {})
    paths = save_per_geometry(ds, tmp_path)
    assert paths["empty"] == [] and len(paths["field-a"]) == 2
    assert not (tmp_path / "geometry_empty").exists()
    with rasterio.open(paths["field-a"][0]) as src:
        assert "VALUES" not in src.tags() and src.tags()["GEOMETRY_ID"] == "field-a"
        np.testing.assert_array_equal(src.read(1), field.bands["NDVI"][0])


def test_several_times_on_one_day_get_a_time_suffix(tmp_path):
    t1, t2 = np.datetime64("2024-03-01T05:10:02"), np.datetime64("2024-03-01T05:10:31")
    layer = GeometryLayers(
        1, "EPSG:32643", A_TRANSFORM, 3, 3, [t1, t2, D2], {"NDVI": np.ones((3, 3, 3))}, ["a", "b", "c"]
    )
    ds = stack_geometries([layer], ["NDVI"], np.float32, np.nan, {})
    names = [os.path.basename(p) for p in save_per_geometry(ds, tmp_path)[1]]
    assert names == ["ndvi_20240301_051002.tif", "ndvi_20240301_051031.tif", "ndvi_20240311.tif"]


def test_crash_during_write_leaves_no_file(tmp_path, ds, monkeypatch):
    def boom(dst, array, tags, description):
        dst.write(array[: array.shape[0] // 2], 1, window=((0, array.shape[0] // 2), (0, array.shape[1])))
        raise OSError("disk on fire")

    removed = []
    real_unlink = os.unlink

    def spy_unlink(path):
        removed.append(str(path))
        real_unlink(path)

    monkeypatch.setattr(geotiff, "_write_band", boom)
    monkeypatch.setattr(geotiff.os, "unlink", spy_unlink)
    with pytest.raises(ProductWriteError, match="disk on fire") as info:
        save_per_geometry(ds, tmp_path)
    assert "geometry_3/ndvi_20240301.tif" in str(info.value)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []  # no final file, no temp
    # The (closed, so fully written) temporary file was in the final folder and was removed.
    assert len(removed) == 1 and os.path.dirname(removed[0]) == str(tmp_path.resolve() / "geometry_3")
    assert os.path.basename(removed[0]).startswith(".ndvi_20240301.tif.tmp-")

    # An existing file at the final name survives a failed rewrite untouched.
    monkeypatch.undo()
    paths = save_per_geometry(ds, tmp_path)
    before = {p: open(p, "rb").read() for ps in paths.values() for p in ps}
    monkeypatch.setattr(geotiff, "_write_band", boom)
    with pytest.raises(ProductWriteError, match="disk on fire"):
        save_per_geometry(ds, tmp_path)
    assert {p: open(p, "rb").read() for p in before} == before
    assert sorted(str(p) for p in tmp_path.rglob("*") if p.is_file()) == sorted(before)


def test_crash_at_rename_removes_the_temporary_file(tmp_path, monkeypatch):
    def failing_replace(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(geotiff.os, "replace", failing_replace)
    with pytest.raises(KeyboardInterrupt):
        write_cog(np.zeros((4, 4)), tmp_path / "x.tif", "EPSG:32643", A_TRANSFORM)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_write_cog_checks_its_input(tmp_path):
    with pytest.raises(ProductInputError):
        write_cog(np.zeros((2, 3, 4)), tmp_path / "x.tif", "EPSG:32643", A_TRANSFORM)
    with pytest.raises(ProductInputError):
        write_cog(np.zeros((3, 4)), tmp_path / "x.tif", "EPSG:32643", (1.0, 2.0))
    path = write_cog(
        np.arange(12).reshape(3, 4), tmp_path / "d" / "x.tif", "EPSG:32643", rasterio.Affine(*A_TRANSFORM), {"K": 1}
    )
    with rasterio.open(path) as src:
        assert src.read(1).tolist() == np.arange(12, dtype=np.float32).reshape(3, 4).tolist()
        assert src.tags()["K"] == "1" and tuple(src.transform)[:6] == A_TRANSFORM


def test_write_cog_keeps_an_integer_scene_with_its_nodata_and_options(tmp_path):
    data = np.arange(600 * 700, dtype=np.uint16).reshape(600, 700) % 5000
    data[:10] = 0
    path = write_cog(data, tmp_path / "scene.tif", "EPSG:32643", A_TRANSFORM, dtype=None, nodata=0, blocksize=512)
    with rasterio.open(path) as src:
        assert (src.dtypes[0], src.nodata, src.block_shapes[0]) == ("uint16", 0, (512, 512))
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and src.overviews(1) == [2]
        np.testing.assert_array_equal(src.read(1), data)
        # horizontal differencing: the floating-point predictor of COG_OPTIONS is for floats
        assert src.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "2"
    with rasterio.open(write_cog(data, tmp_path / "f.tif", "EPSG:32643", A_TRANSFORM)) as src:
        assert (src.dtypes[0], src.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"]) == ("float32", "3")
        assert np.isnan(src.nodata)


def test_bad_geometry_id(tmp_path):
    layer = GeometryLayers("a/b", "EPSG:32643", A_TRANSFORM, 2, 2, [D1], {"NDVI": np.ones((1, 2, 2))}, ["s"])
    ds = stack_geometries([layer], ["NDVI"], np.float32, np.nan, {})
    with pytest.raises(ProductInputError, match="a/b"):
        save_per_geometry(ds, tmp_path)


def test_save_to_s3(tmp_path, ds, layers, moto_s3):
    endpoint = moto_s3
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="lake")

    paths = save_per_geometry(ds, "s3://lake/products/ndvi/")
    assert paths == {
        3: [
            "s3://lake/products/ndvi/geometry_3/ndvi_20240301.tif",
            "s3://lake/products/ndvi/geometry_3/ndvi_20240311.tif",
        ],
        17: ["s3://lake/products/ndvi/geometry_17/ndvi_20240311.tif"],
    }
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="lake")["Contents"])
    assert keys == [p.removeprefix("s3://lake/") for p in sorted(paths[3] + paths[17])]

    _, b = layers
    local = tmp_path / "b.tif"
    s3.download_file("lake", "products/ndvi/geometry_17/ndvi_20240311.tif", str(local))
    with rasterio.open(local) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.crs.to_epsg() == 32644 and tuple(src.transform)[:6] == B_TRANSFORM
        np.testing.assert_array_equal(src.read(1), expected_layer(b, D2))
        assert src.tags()["GEOMETRY_ID"] == "17"
