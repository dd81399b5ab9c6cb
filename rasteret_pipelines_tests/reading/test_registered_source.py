"""Adding a data source is one registry entry: a source registered here, in the test, is indexed,
read (reflectance, cloud-masked) and turned into NDVI GeoTIFFs without any library module naming it.

The source is a copy of Earth Search Sentinel-2 whose items call their assets ``rouge``,
``pir`` and ``classes`` (band codes ``R``, ``PIR``, ``CLS``): the STAC items of the reading
world (``conftest.py``) with renamed assets, in a collection of another name, served by a STAC
server of their own, pointing at the same COGs. Oracle: rasterio reading those COG files, the
provider's reflectance formula (DN x 0.0001, minus 0.1 for baseline >= 04.00 items without
``earthsearch:boa_offset_applied``) and the SCL classes of ESA's documentation
(``test_sources.py``).
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import rasterio
import rasterio.mask
import rasterio.warp
from rasterio.enums import Resampling

from rasteret_pipelines.collections import (
    MaskedClasses,
    build_collection,
    get_source,
    load_collection,
    register_source,
    unregister_source,
)
from rasteret_pipelines.products import ndvi_dataset
from rasteret_pipelines.reading import read_geometries
from rasteret_pipelines_demo.stac_server import StacServer
from rasteret_pipelines_tests.reading.conftest import AOIS, BASE_IDS, FLAG_COPIES, FLAG_SOURCE_ID
from rasteret_pipelines_tests.reading.test_read import day, layer, to_crs

RENAMED = {"red": "rouge", "nir": "pir", "scl": "classes"}
"""World asset key -> asset key of the new source."""
SCL_DOCUMENTED_CLOUDY = (0, 1, 3, 8, 9, 10)
"""ESA L2A SCL: no data, saturated or defective, cloud shadows, cloud medium and high
probability, thin cirrus (see test_sources.py for the whole table and its reference)."""
SCENES = (*BASE_IDS, *FLAG_COPIES)


@pytest.fixture
def renamed_source():
    s2 = get_source("sentinel-2-l2a")
    source = register_source(
        dataclasses.replace(
            s2,
            id="test-renamed-s2",
            collection="test-renamed",
            short_name="renamed",
            aliases=("RENAMED",),
            bands={"R": "rouge", "PIR": "pir", "CLS": "classes"},
            cloud_mask=MaskedClasses(band="classes", classes=SCL_DOCUMENTED_CLOUDY),
            ndvi_bands=("rouge", "pir"),
        )
    )
    try:
        yield source
    finally:
        unregister_source(source.id)


@pytest.fixture
def renamed_collection(world, renamed_source, tmp_path):
    items = []
    for scene_id in SCENES:
        item = copy.deepcopy(world.items[scene_id])
        item["collection"] = renamed_source.collection
        item["assets"] = {RENAMED.get(k, k): v for k, v in item["assets"].items()}
        items.append(item)
    with StacServer(items) as stac:
        report = build_collection(
            "RENAMED",
            "renamed",
            tmp_path,
            date_range=("2024-01-01", "2024-05-31"),
            stac_url=stac.url,
            progress=False,
        )
    assert report.failed == [] and report.items == len(SCENES)
    return load_collection("renamed", tmp_path)


def oracle(world, scene_id, geom_utm):
    """(red, nir) reflectance from rasterio, NaN outside the geometry, at nodata and where the
    20 m SCL (nearest, GDAL) is a documented cloud class; the number of pixels the clouds
    masked; the window's transform."""
    source_id = FLAG_SOURCE_ID if scene_id in FLAG_COPIES else scene_id
    props = world.items[scene_id]["properties"]
    if props["earthsearch:boa_offset_applied"] is True or float(props["s2:processing_baseline"]) < 4.0:
        offset = 0.0
    else:
        offset = -0.1
    out = []
    for band in ("red", "nir"):
        with rasterio.open(world.path(source_id, band)) as src:
            arr, transform = rasterio.mask.mask(src, [geom_utm], crop=True, filled=False)
        out.append(arr[0].astype(np.float64).filled(np.nan) * 0.0001 + offset)
    scl = np.zeros(out[0].shape, np.uint8)
    with rasterio.open(world.path(source_id, "scl")) as src:
        rasterio.warp.reproject(
            src.read(1),
            scl,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=transform,
            dst_crs=src.crs,
            resampling=Resampling.nearest,
        )
    cloudy = np.isin(scl, SCL_DOCUMENTED_CLOUDY)
    red, nir = (np.where(cloudy, np.nan, a) for a in out)
    return red, nir, int((cloudy & np.isfinite(out[0])).sum()), transform


def oracle_ndvi(red, nir):
    with np.errstate(divide="ignore", invalid="ignore"):
        ndvi = (nir - red) / (nir + red)
    ndvi[np.abs(ndvi) > 1] = np.nan
    return ndvi


def test_a_source_registered_in_a_test_reads_reflectance_cloud_masked_and_ndvi(
    world, renamed_source, renamed_collection
):
    collection = renamed_collection
    assert collection.source is renamed_source
    assert sorted(collection.bands) == ["classes", "pir", "rouge"]
    # The source's typed properties are the month files' types (the reflectance rule reads two).
    assert str(collection.schema.field("earthsearch:boa_offset_applied").type) == "bool"
    assert str(collection.schema.field("s2:processing_baseline").type) == "string"

    ds = read_geometries(collection, list(AOIS.values()), ["R", "PIR"], values="reflectance", cloud_mask=True)
    assert ds.attrs["data_source"] == "test-renamed-s2" and ds.attrs["asset_keys"] == ["rouge", "pir"]
    ndvi = ndvi_dataset(ds, "R", "PIR")
    masked = offsets_seen = 0
    for gid, geom in AOIS.items():
        g = to_crs(geom)
        for scene_id in SCENES:
            red, nir, n_cloudy, transform = oracle(world, scene_id, g)
            when = day(scene_id, world)
            got_red, got_transform = layer(ds, "R", gid, when)
            got_nir, _ = layer(ds, "PIR", gid, when)
            assert tuple(got_transform)[:6] == pytest.approx(tuple(transform)[:6], abs=1e-6)
            np.testing.assert_allclose(got_red, red, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(got_nir, nir, rtol=1e-6, atol=1e-7)
            assert np.array_equal(np.isnan(got_red), np.isnan(red))
            got_ndvi, _ = layer(ndvi, "NDVI", gid, when)
            np.testing.assert_allclose(got_ndvi, oracle_ndvi(red, nir), rtol=1e-5, atol=1e-6)
            masked += n_cloudy
            offsets_seen += int(np.nanmin(red) < 0)
    assert masked > 1000  # clouds were masked ...
    assert offsets_seen > 0  # ... and the baseline-05.10 copy without the flag got its -0.1


def test_the_dagster_layer_reads_a_registered_source_through_its_declared_bands(
    world, renamed_source, renamed_collection, tmp_path
):
    """``collection_bands``, ``field_stats_month`` and ``group_geotiffs`` (the field-statistics
    asset's work) take the red, NIR and cloud-mask bands from the registered source; the COGs
    hold the oracle's NDVI."""
    from pathlib import Path

    import geopandas as gpd

    from rasteret_pipelines.defs.io_managers import CollectionSlice
    from rasteret_pipelines.defs.pipeline import collection_bands, field_stats_month, group_geotiffs

    assert collection_bands(renamed_source.id) == ["rouge", "pir", "classes"]
    full = renamed_collection
    month = "2024-01"
    collection = CollectionSlice(name=full.name, storage=full.storage, manifest=full.manifest, month_keys=(month,))
    # each field a group of its own: a group's COG is then its field's
    frame = gpd.GeoDataFrame(
        {"name": [f"aoi {g}" for g in AOIS], "group": [f"g{g}" for g in AOIS]},
        geometry=list(AOIS.values()),
        index=[str(g) for g in AOIS],
        crs="EPSG:4326",
    )
    frame.index.name = "id"
    january = [s for s in SCENES if world.items[s]["properties"]["datetime"].startswith(month)]
    table = field_stats_month(renamed_source.id, collection, month, frame)
    assert set(table.column("scene_ids").to_pylist()) <= set(january) and table.num_rows > 0
    assert set(table.column("group").to_pylist()) <= {f"g{g}" for g in AOIS}
    paths, _ = group_geotiffs(renamed_source.id, collection, month, frame, output_uri=str(tmp_path / "out"))
    for gid, geom in AOIS.items():
        by_date = {Path(p).stem[-8:]: p for p in paths.get(f"g{gid}", [])}
        for scene_id in january:
            red, nir, _, transform = oracle(world, scene_id, to_crs(geom))
            expected = oracle_ndvi(red, nir)
            date = world.items[scene_id]["properties"]["datetime"][:10].replace("-", "")
            if date not in by_date:  # no valid pixel that date
                assert np.isnan(expected).all()
                continue
            with rasterio.open(by_date[date]) as tif:
                got = tif.read(1, masked=True).filled(np.nan)
                assert tuple(tif.transform)[:6] == pytest.approx(tuple(transform)[:6], abs=1e-6)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
