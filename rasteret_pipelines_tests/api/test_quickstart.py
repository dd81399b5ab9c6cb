"""The original Rasteret quick start, run as written (imports changed) against a local mirror.

The mirror: a Landsat Collection 2 Level-2 world over Bangalore (recorded USGS STAC item as a
template, 30 m COGs on the EPSG:32643 grid, DN = (reflectance + 0.2) / 0.0000275) whose
``alternate.s3`` hrefs are requester-pays ``s3://usgs-landsat/...`` objects served by the range
server standing in for S3 (signed requests checked there).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.mask
import rasterio.shutil
import shapely.geometry
import xarray as xr
from pyproj import Transformer
from rasterio.transform import from_origin

from rasteret_pipelines.errors import CollectionNotFoundError
from rasteret_pipelines.products.geotiff import write_cog
from rasteret_pipelines.reading.model import geometry_transform
from rasteret_pipelines_demo.range_server import RangeServer
from rasteret_pipelines_demo.stac_server import StacServer

DATA = Path(__file__).parents[1] / "data" / "stac" / "usgs-landsatlook" / "landsat-c2l2-sr"
TEMPLATE = DATA / "LC09_L2SP_092068_20230607_20230609_02_T1_SR.json"
ORIGIN = (760000.0, 1460000.0)  # 30 m grid, EPSG:32643, covers the quick start AOIs
SIZE = 1024
DATES = ["2024-01-09", "2024-01-25"]
BANDS = {
    "coastal": "B1",
    "blue": "B2",
    "green": "B3",
    "red": "B4",
    "nir08": "B5",
    "swir16": "B6",
    "swir22": "B7",
    "qa_pixel": "QA_PIXEL",
}


def landsat_world(root: Path) -> list[dict]:
    """Two Landsat 8 scenes (every SR band and QA_PIXEL) and a Landsat 9 one the filter drops."""
    inv = Transformer.from_crs("EPSG:32643", "EPSG:4326", always_xy=True)
    x1, y1 = ORIGIN[0] + SIZE * 30, ORIGIN[1] - SIZE * 30
    footprint = shapely.geometry.Polygon(
        [inv.transform(x, y) for x, y in ((ORIGIN[0], ORIGIN[1]), (x1, ORIGIN[1]), (x1, y1), (ORIGIN[0], y1))]
    )
    items = []
    for k, (date, platform) in enumerate(
        [(DATES[0], "LANDSAT_8"), (DATES[1], "LANDSAT_8"), ("2024-01-17", "LANDSAT_9")]
    ):
        item = copy.deepcopy(json.loads(TEMPLATE.read_text()))
        scene = f"LC0{8 if platform == 'LANDSAT_8' else 9}_L2SP_144051_{date.replace('-', '')}_02_T1"
        item["id"] = f"{scene}_SR"
        item["geometry"] = shapely.geometry.mapping(footprint)
        item["bbox"] = list(footprint.bounds)
        p = item["properties"]
        p.update(
            {
                "datetime": f"{date}T05:05:10Z",
                "platform": platform,
                "eo:cloud_cover": 3.0 + k,
                "proj:epsg": 32643,
                "landsat:wrs_path": "144",
                "landsat:wrs_row": "051",
            }
        )
        rng = np.random.default_rng(k)
        y, x = np.mgrid[0:SIZE, 0:SIZE]
        reflect = {"red": 0.05 + 0.05 * np.sin(x / 17.0) ** 2, "nir08": 0.25 + 0.15 * np.cos(y / 23.0) ** 2}
        for band, code in BANDS.items():
            rel = f"usgs-landsat/collection02/level-2/{scene}/{scene}_SR_{code}.TIF"
            path = root / rel
            if band == "qa_pixel":
                dn = np.full((SIZE, SIZE), 21824, np.uint16)  # clear land, low confidence cloud
            else:
                surface = reflect.get(band, 0.1 + 0.02 * np.sin((x + y) / 31.0))
                dn = np.round((surface + rng.normal(0, 0.002, (SIZE, SIZE)) + 0.2) / 0.0000275).astype(np.uint16)
            dn[:40, :] = 0  # a nodata strip, as at scene edges
            write_cog(dn, path, "EPSG:32643", from_origin(*ORIGIN, 30, 30), dtype=None, nodata=0)
            item["assets"][band]["alternate"]["s3"]["href"] = f"s3://{rel}"
            item["assets"][band]["href"] = f"https://landsatlook.usgs.gov/data/{rel}"
        items.append(item)
    return items


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    root = tmp_path / "s3"
    root.mkdir()
    items = landsat_world(root)
    with RangeServer(root) as s3, StacServer(items) as stac:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDQUICKSTART")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "quickstart-secret")
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3.url)
        monkeypatch.setenv("RASTERET_STAC_URL_LANDSAT_C2L2_SR", stac.url)
        yield root, s3, stac


def test_original_quick_start(tmp_path, mirror):
    root, s3, stac = mirror
    workspace = tmp_path / "rasteret_workspace"
    output_dir = tmp_path / "ndvi_output"

    # --- the original quick start, imports changed ----------------------------------------------
    from shapely.geometry import Polygon

    from rasteret_pipelines import DataSources, Rasteret, save_per_geometry

    custom_name = "bangalore"
    date_range = ("2024-01-01", "2024-01-31")
    data_source = DataSources.LANDSAT

    workspace_dir = workspace
    workspace_dir.mkdir(exist_ok=True)

    aoi1_polygon = Polygon([(77.55, 13.01), (77.58, 13.01), (77.58, 13.08), (77.55, 13.08), (77.55, 13.01)])
    aoi2_polygon = Polygon([(77.56, 13.02), (77.59, 13.02), (77.59, 13.09), (77.56, 13.09), (77.56, 13.02)])
    bbox = aoi1_polygon.union(aoi2_polygon).bounds

    listed = Rasteret.list_collections(workspace_dir=workspace_dir)
    assert listed == []

    collection_name = "bangalore_202401-01_landsat"
    with pytest.raises(CollectionNotFoundError):
        Rasteret.load_collection(collection_name, workspace_dir=workspace_dir)
    processor = Rasteret(
        custom_name=custom_name, data_source=data_source, workspace_dir=workspace_dir, date_range=date_range
    )
    processor.create_collection(bbox=bbox, cloud_cover_lt=20, platform={"in": ["LANDSAT_8"]})
    assert processor.name == collection_name

    for c in Rasteret.list_collections(workspace_dir=workspace_dir):
        print(f"- {c['name']}: {c['data_source']}, {c['date_range']}, {c['size']} scenes")
    assert Rasteret.list_collections(workspace_dir=workspace_dir) == [
        {"name": collection_name, "data_source": "landsat-c2l2-sr", "date_range": date_range, "size": 2}
    ]

    processor = Rasteret.load_collection(collection_name, workspace_dir=workspace_dir)
    s3.reset_log()
    stac_requests = stac.count()
    ds = processor.get_xarray(
        geometries=[aoi1_polygon, aoi2_polygon],
        bands=["B4", "B5"],
        cloud_cover_lt=20,
        date_range=["2024-01-01", "2024-01-31"],
    )
    ndvi = (ds.B5 - ds.B4) / (ds.B5 + ds.B4)
    ndvi_ds = xr.Dataset({"NDVI": ndvi}, coords=ds.coords, attrs=ds.attrs)
    output_files = save_per_geometry(ndvi_ds, output_dir, file_prefix="ndvi")
    # ----------------------------------------------------------------------------------------------

    # The read: no STAC request, no header request, at most one GET per distinct tile.
    assert stac.count() == stac_requests
    headers = {
        h.href: h
        for band in ("red", "nir08")
        for h in processor.collection.headers(processor.collection.to_table(), band)
    }
    first_tile = min(int(o) for h in headers.values() for o in h.levels[0].tile_offsets if o)
    assert all(r.range is not None and r.range[0] >= first_tile for r in s3.requests)
    tiles = set()
    for gi in range(2):
        t = geometry_transform(ds, gi + 1)
        col0 = round((t[2] - ORIGIN[0]) / 30)
        row0 = round((ORIGIN[1] - t[5]) / 30)
        h, w = int(ds.height[gi]), int(ds.width[gi])
        for r in range(max(row0, 0) // 256, (min(row0 + h, SIZE) - 1) // 256 + 1):
            for c in range(max(col0, 0) // 256, (min(col0 + w, SIZE) - 1) // 256 + 1):
                tiles.add((r, c))
    assert 0 < s3.count("GET") <= len(tiles) * 2 * 2  # tiles x bands x dates
    for r in s3.requests:
        assert {k.lower(): v for k, v in r.headers.items()}.get("x-amz-request-payer") == "requester"

    # The files: one per geometry and date, reopening with the source grid and values.
    assert sorted(output_files) == [1, 2]
    for gid, polygon in ((1, aoi1_polygon), (2, aoi2_polygon)):
        paths = output_files[gid]
        assert [Path(p).name for p in paths] == [f"ndvi_{d.replace('-', '')}.tif" for d in DATES]
        assert all(Path(p).parent == output_dir / f"geometry_{gid}" for p in paths)
        utm = gpd.GeoSeries([polygon], crs="EPSG:4326").to_crs("EPSG:32643").iloc[0]
        for path, date in zip(paths, DATES):
            scene = f"LC08_L2SP_144051_{date.replace('-', '')}_02_T1"
            bands = {}
            for code in ("B4", "B5"):
                with rasterio.open(
                    root / "usgs-landsat/collection02/level-2" / scene / f"{scene}_SR_{code}.TIF"
                ) as src:
                    arr, transform = rasterio.mask.mask(src, [utm], crop=True, filled=False)
                    bands[code] = arr[0].astype("float32").filled(np.nan)
                    bands[code][arr[0].data == 0] = np.nan
                    crs = src.crs
            expected = (bands["B5"] - bands["B4"]) / (bands["B5"] + bands["B4"])
            with rasterio.open(path) as out:
                assert out.crs == crs and out.transform == transform
                np.testing.assert_array_equal(out.read(1), expected)
