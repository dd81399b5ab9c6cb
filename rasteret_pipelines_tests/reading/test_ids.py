"""Ids mean the same thing everywhere: a GeoDataFrame's ``id`` column (else its index) names the
geometry in every read, in ``get_gdf`` and in ``save_per_geometry``'s folders, as the pipeline
names its fields; ``keep=`` carries other columns along."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.mask

from rasteret_pipelines import Rasteret
from rasteret_pipelines.aois import load_aois, write_aois_geojson
from rasteret_pipelines.errors import InvalidGeometryError, InvalidReadArgumentError
from rasteret_pipelines.products import ndvi_dataset, save_per_geometry
from rasteret_pipelines.reading import read_geometries
from rasteret_pipelines_demo import demo_data
from rasteret_pipelines_tests.reading.conftest import BASE_IDS, BASE_RANGE

FIRST_DAY = (BASE_RANGE[0], BASE_RANGE[0][:8] + "07")
"""Holds the first base scene only (2024-01-05)."""


def frame(ids, index=None):
    geoms = list(demo_data.QUICKSTART_AOIS.values())
    return gpd.GeoDataFrame(
        {"id": ids, "crop": ["rice", "millet"], "area_ha": [12.5, 7.0]}, geometry=geoms, crs="EPSG:4326", index=index
    )


def test_the_id_column_names_the_geometries_not_the_index(world):
    fields = frame(["north", "south"], index=[10, 20])
    ds = read_geometries(world.collection(), fields, ["red"], date_range=FIRST_DAY, keep=["crop", "area_ha"])
    assert ds["scene_id"].values.tolist() == [[BASE_IDS[0]], [BASE_IDS[0]]]
    assert ds["geometry"].values.tolist() == ["north", "south"]
    assert ds["crop"].values.tolist() == ["rice", "millet"] and ds["crop"].dims == ("geometry",)
    assert ds["area_ha"].values.tolist() == [12.5, 7.0]
    # The pixels of "north" are those of the first polygon, whatever the index says.
    geom = fields.to_crs("EPSG:32643").geometry.iloc[0]
    with rasterio.open(world.path(BASE_IDS[0], "red")) as src:
        arr, _ = rasterio.mask.mask(src, [geom], crop=True, filled=False)
    one = ds.sel(geometry="north")
    got = one["red"].isel(time=0).values[: int(one["height"]), : int(one["width"])]
    np.testing.assert_array_equal(got, np.ma.filled(arr[0].astype(np.float32), np.nan))


def test_without_an_id_column_the_index_names_them_and_id_column_picks_another(world):
    fields = frame(["north", "south"], index=[10, 20]).rename(columns={"id": "field"})
    ds = read_geometries(world.collection(), fields, ["red"], date_range=FIRST_DAY)
    assert ds["geometry"].values.tolist() == [10, 20]
    ds = read_geometries(world.collection(), fields, ["red"], date_range=FIRST_DAY, id_column="field")
    assert ds["geometry"].values.tolist() == ["north", "south"]


def test_get_gdf_rows_carry_the_ids_and_kept_columns(world):
    processor = Rasteret.load_collection("world", world.workspace)
    gdf = processor.get_gdf(frame(["north", "south"], index=[10, 20]), ["red"], date_range=FIRST_DAY, keep=["crop"])
    assert list(gdf.columns[:2]) == ["geometry_id", "crop"]
    assert dict(zip(gdf["geometry_id"], gdf["crop"])) == {"north": "rice", "south": "millet"}
    expected = frame(["north", "south"]).set_index("id").geometry
    assert all(g.equals(expected[i]) for i, g in zip(gdf["geometry_id"], gdf.geometry))


def test_the_pipelines_aoi_file_gives_the_pipelines_folder_names(world, tmp_path):
    """The demo's aois.geojson, read with GeoPandas as a user would, writes geometry_<AOI id>/:
    the same folders the pipeline writes for the same fields (ids from load_aois)."""
    path = write_aois_geojson(
        {"7": demo_data.QUICKSTART_AOIS[1], "42": demo_data.QUICKSTART_AOIS[2]}, tmp_path / "aois.geojson"
    )
    pipeline_ids = load_aois(str(path)).ids
    assert pipeline_ids == ["7", "42"]
    user = gpd.read_file(path)
    assert user.index.tolist() == [0, 1]  # the index would have said 0 and 1
    ds = read_geometries(world.collection(), user, ["red", "nir"], date_range=FIRST_DAY, values="reflectance")
    written = save_per_geometry(ndvi_dataset(ds, "red", "nir"), tmp_path / "out")
    assert sorted(written) == sorted(pipeline_ids)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"geometry_{i}" for i in pipeline_ids)


def test_bad_ids_and_keep_are_refused_by_name(world):
    with pytest.raises(InvalidGeometryError, match="not unique: north"):
        read_geometries(world.collection(), frame(["north", "north"]), ["red"], date_range=FIRST_DAY)
    with pytest.raises(InvalidReadArgumentError, match=r"columns the geometries do not have: \['yield'\]"):
        read_geometries(world.collection(), frame(["a", "b"]), ["red"], date_range=FIRST_DAY, keep=["yield"])
    with pytest.raises(InvalidReadArgumentError, match="needs a GeoDataFrame"):
        read_geometries(world.collection(), list(demo_data.QUICKSTART_AOIS.values()), ["red"], keep=["crop"])
