"""A small offline Sentinel-2 world for the reading tests: COGs over HTTP, a local STAC API.

Built once per test run for all xdist workers (``build_once``), in ``world``:

* **Base scenes** (:data:`BASE_IDS`): four acquisitions of January and February 2024 written by
  :func:`demo_data.write_scene` on the real grid of MGRS tile 43PGQ (EPSG:32643, origin
  699960 E / 1500000 N, 10 m), cut to :data:`WORLD_SIZE` = 8192 pixels a side instead of 10980
  to halve the writing time. Both quick-start AOIs lie inside (10 m columns 7656-8097, rows
  5150-6034; checked by :func:`check_aois_inside`), and the scene's east edge (column 8192)
  is close enough to test geometries that leave the scene. red/nir are 10 m, SCL 20 m.
* **Mosaic** (2024-03-15, :data:`MOSAIC_IDS`): two scenes of the same day on two different
  grids of EPSG:32643 that are whole-pixel shifts of each other (and of 43PGQ), neither aligned
  to the other's tiles. The one acquired first has nodata over a diagonal part of the AOIs; the
  second fills it except for a small patch where it has nodata too. The ids sort in the
  opposite order of the datetimes, so "first" must mean (datetime, id).
* **Cross-CRS** (2024-03-01, :data:`CROSS_ID`): a scene in EPSG:32644 (the next UTM zone, as
  overlapping real tiles are) covering both AOIs, with a nodata patch over part of AOI 1.
* **Flag copies** (May 2024): copies of the 2024-01-05 item pointing at the same COGs with
  ``earthsearch:boa_offset_applied: false``, one of processing baseline 05.10 (offset -0.1
  applies) and one of baseline 03.01 (no offset then).
* **Landsat**: an item of ``landsat-c2l2-sr`` whose ``red``/``nir08`` assets are the
  2024-01-05 COGs, for the Landsat scale and offset.

Every crafted item's footprint and bbox are its COG's bounds (densified) in lon/lat, and its
``proj:*`` fields are the file's. All COGs are served by one :class:`RangeServer`, all items by
one :class:`StacServer`; collections ``world`` (Sentinel-2, January-May) and ``landsat`` are
built from them into a session workspace.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.warp
import shapely.geometry
from affine import Affine
from pyproj import Transformer

from rasteret_pipelines.collections import Collection, build_collection, load_collection
from rasteret_pipelines.products.geotiff import write_cog
from rasteret_pipelines_demo import demo_data
from rasteret_pipelines_demo.range_server import RangeServer
from rasteret_pipelines_demo.stac_server import StacServer
from rasteret_pipelines_tests.conftest import build_once, shared_dir

WORLD_SIZE = 8192
"""Side of the base scenes' 10 m grid: the 43PGQ grid, cut at column/row 8192."""
PIXEL = 10.0
AOIS = dict(demo_data.QUICKSTART_AOIS)
BANDS_FILES = {"red": "B04.tif", "nir": "B08.tif", "scl": "SCL.tif"}

BASE_SCENES = demo_data.default_scenes(("2024-01", "2024-02"))
BASE_IDS = [s.item_id for s in BASE_SCENES]
BASE_RANGE = ("2024-01-01", "2024-02-29")

MOSAIC_DAY = dt.date(2024, 3, 15)
MOSAIC_IDS = ("S2A_43PGQ_20240315_1_L2A", "S2A_43PGQ_20240315_0_L2A")
"""(first acquired, with nodata over part of the AOIs; second, filling it). Ids sort the other way."""
MOSAIC_TIMES = ("2024-03-15T05:16:12.024000Z", "2024-03-15T05:16:40.000000Z")
MOSAIC_ORIGINS_PX = ((7000, 4900), (7013, 4871))
"""Upper-left corners of the two mosaic grids in 43PGQ 10 m pixels (col, row)."""
MOSAIC_SIZE = 1400
MOSAIC_NODATA_DIAGONAL = 13400
"""The first mosaic scene has nodata where 43PGQ col + row > this (crosses both AOIs)."""
MOSAIC_HOLE_PX = (7700, 5800, 100, 100)
"""(col, row, width, height) in 43PGQ pixels where the second mosaic scene has nodata too."""

CROSS_ID = "S2A_44PKV_20240301_0_L2A"
CROSS_CRS = "EPSG:32644"
CROSS_TIME = "2024-03-01T05:16:12.024000Z"
CROSS_RANGE = ("2024-02-10", "2024-03-01")
"""Base scene 2024-02-10 (the first, so the reference grid) and the EPSG:32644 scene."""

FLAG_COPIES = {
    # id: (datetime, processing baseline); both with earthsearch:boa_offset_applied false
    "S2A_43PGQ_20240505_0_L2A": ("2024-05-05T05:16:12.024000Z", "05.10"),
    "S2A_43PGQ_20240510_0_L2A": ("2024-05-10T05:16:12.024000Z", "03.01"),
}
FLAG_SOURCE_ID = BASE_IDS[0]
LANDSAT_ID = "LC09_L2SP_144051_20240105_20240106_02_T1_SR"
LANDSAT_TEMPLATE = (
    Path(__file__).parents[1]
    / "data"
    / "stac"
    / "usgs-landsatlook"
    / "landsat-c2l2-sr"
    / "LC09_L2SP_092068_20230607_20230609_02_T1_SR.json"
)


def check_aois_inside(size_10m: int = WORLD_SIZE) -> None:
    """Both quick-start AOIs must lie inside the cut 43PGQ grid (with a margin of 50 px)."""
    to_utm = Transformer.from_crs("EPSG:4326", demo_data.CRS, always_xy=True)
    x0, y0 = demo_data.ORIGIN
    for gid, geom in AOIS.items():
        minx, miny, maxx, maxy = geom.bounds
        for lon, lat in ((minx, miny), (minx, maxy), (maxx, miny), (maxx, maxy)):
            x, y = to_utm.transform(lon, lat)
            col, row = (x - x0) / PIXEL, (y0 - y) / PIXEL
            assert 50 < col < size_10m - 50 and 50 < row < size_10m - 50, (gid, col, row)


# -- crafted scenes --------------------------------------------------------------------------


def _noise(seed: int, shape, lo=300, hi=6000) -> np.ndarray:
    """Random DNs: any misplaced pixel shows up in a comparison."""
    return np.random.default_rng(seed).integers(lo, hi, size=shape, dtype=np.uint16)


def write_crafted_scene(
    root: Path, item_id: str, crs: str, origin_xy, size_10m, seed: int, nodata_where=None
) -> dict[str, Path]:
    """red, nir (10 m, ``size_10m`` px) and scl (20 m) COGs with random DNs on one grid.

    ``nodata_where(cols, rows)`` (10 m pixel-centre indices of this grid) marks nodata pixels.
    """
    x0, y0 = origin_xy
    paths = {}
    for band, (pixel, _, code) in demo_data.BANDS.items():
        n = -(-size_10m // int(pixel / 10))
        transform = Affine(pixel, 0, x0, 0, -pixel, y0)
        if band == "scl":
            data = np.full((n, n), 4, np.uint8)  # vegetation everywhere: clear
        else:
            data = _noise(seed * 10 + len(band), (n, n))
            if nodata_where is not None:
                rows, cols = np.mgrid[0:n, 0:n]
                data[nodata_where(cols, rows)] = 0
        # the library's writer, in the data's dtype: Deflate + predictor 2, 512 px tiles, nodata 0
        path = root / item_id / f"{code}.tif"
        write_cog(data, path, crs, transform, dtype=None, nodata=0, blocksize=512, overview_resampling="NEAREST")
        paths[band] = path
    return paths


def footprint_of(path: Path, n: int = 11) -> shapely.Geometry:
    """The COG's bounds, densified, in lon/lat: a truthful item footprint."""
    with rasterio.open(path) as src:
        left, bottom, right, top = src.bounds
        crs = src.crs
    t = np.linspace(0, 1, n)
    xs = np.concatenate([left + t * (right - left), np.full(n, right), right - t * (right - left), np.full(n, left)])
    ys = np.concatenate([np.full(n, top), top - t * (top - bottom), np.full(n, bottom), bottom + t * (top - bottom)])
    lon, lat = rasterio.warp.transform(crs, "EPSG:4326", xs.tolist(), ys.tolist())
    return shapely.geometry.Polygon(zip(lon, lat))


def _set_footprint(item: dict, footprint: shapely.Geometry) -> None:
    geometry = shapely.geometry.mapping(footprint)
    item["geometry"] = {
        "type": geometry["type"],
        "coordinates": [[list(c) for c in ring] for ring in geometry["coordinates"]],
    }
    item["bbox"] = list(footprint.bounds)


def _set_projection(item: dict, paths: dict[str, Path]) -> None:
    """proj:* of the item and its assets from the files themselves."""
    for band, path in paths.items():
        with rasterio.open(path) as src:
            asset = item["assets"][band]
            asset["proj:shape"] = [src.height, src.width]
            asset["proj:transform"] = list(src.transform)[:6]
            epsg = src.crs.to_epsg()
    item["properties"]["proj:epsg"] = epsg


def crafted_item(
    item_id: str,
    stamp: str,
    paths: dict[str, Path],
    hrefs: dict[str, str],
    *,
    cloud_cover: float = 1.0,
    platform: str = "sentinel-2a",
) -> dict:
    """An Earth Search item (from the demo template) describing crafted COGs truthfully."""
    when = dt.date.fromisoformat(stamp[:10])
    item = demo_data.make_item(demo_data.DemoScene(when, cloud_cover, platform), hrefs)
    item["id"] = item_id
    _set_footprint(item, footprint_of(paths["red"]))
    _set_projection(item, paths)
    p = item["properties"]
    p.update({"datetime": stamp, "created": stamp, "updated": stamp})
    zone, band, square = re.search(r"_(\d\d)([C-X])([A-Z]{2})_", item_id).groups()
    p.update(
        {
            "mgrs:utm_zone": int(zone),
            "mgrs:latitude_band": band,
            "mgrs:grid_square": square,
            "grid:code": f"MGRS-{zone}{band}{square}",
        }
    )
    p["earthsearch:s3_path"] = f"s3://sentinel-cogs/sentinel-s2-l2a-cogs/{zone}/{band}/{square}/{when:%Y/%-m}/{item_id}"
    return item


def landsat_item(paths: dict[str, Path], hrefs: dict[str, str]) -> dict:
    """A USGS landsat-c2l2-sr item (recorded template) whose red/nir08 are the given COGs."""
    item = json.loads(LANDSAT_TEMPLATE.read_text())
    item["id"] = LANDSAT_ID
    _set_footprint(item, footprint_of(paths["red"]))
    stamp = "2024-01-05T05:10:41.862538Z"
    item["properties"].update({"datetime": stamp, "created": stamp, "updated": stamp})
    for key, band in (("red", "red"), ("nir08", "nir")):
        asset = item["assets"][key]
        asset["href"] = hrefs[band]
        asset.pop("alternate", None)  # read the https href (no S3 endpoint here)
    with rasterio.open(paths["red"]) as src:
        item["properties"].update(
            {
                "proj:epsg": src.crs.to_epsg(),
                "proj:shape": [src.height, src.width],
                "proj:transform": list(src.transform)[:6],
            }
        )
    return item


# -- the world -------------------------------------------------------------------------------


@dataclass(repr=False)
class World:
    root: Path
    cogs: RangeServer
    stac: StacServer
    workspace: Path
    items: dict[str, dict]
    paths: dict[str, dict[str, Path]]
    """Scene id -> band -> COG path."""
    build_reports: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"World({self.root}, {len(self.items)} items, cogs {self.cogs.url}, stac {self.stac.url})"

    def collection(self, name: str = "world") -> Collection:
        """A freshly opened collection (nothing cached from earlier tests)."""
        return load_collection(name, self.workspace)

    def path(self, scene_id: str, band: str) -> Path:
        return self.paths[scene_id][band]

    def datetime(self, scene_id: str) -> np.datetime64:
        return np.datetime64(self.items[scene_id]["properties"]["datetime"].rstrip("Z"), "ns")


def _mosaic_nodata(origin_px, kind: int):
    c0, r0 = origin_px

    def first(cols, rows):
        return (cols + c0) + (rows + r0) > MOSAIC_NODATA_DIAGONAL

    def second(cols, rows):
        hc, hr, hw, hh = MOSAIC_HOLE_PX
        gc, gr = cols + c0, rows + r0
        return (gc >= hc) & (gc < hc + hw) & (gr >= hr) & (gr < hr + hh)

    return first if kind == 0 else second


def _cross_grid() -> tuple[tuple[float, float], int]:
    """Origin (on the 10 m lattice) and size of an EPSG:32644 grid covering both AOIs + 1.5 km."""
    to_44 = Transformer.from_crs("EPSG:4326", CROSS_CRS, always_xy=True)
    xs, ys = [], []
    for geom in AOIS.values():
        for lon, lat in geom.exterior.coords:
            x, y = to_44.transform(lon, lat)
            xs.append(x)
            ys.append(y)
    x0 = np.floor((min(xs) - 1500) / 20) * 20
    y0 = np.ceil((max(ys) + 1500) / 20) * 20
    size = int(np.ceil(max(max(xs) + 1500 - x0, y0 - (min(ys) - 1500)) / 20) * 2)
    return (float(x0), float(y0)), size


CROSS_NODATA_LONLAT = (77.555, 13.03, 77.565, 13.05)
"""Box where the EPSG:32644 scene has nodata: inside AOI 1, partly inside AOI 2."""


def _cross_nodata(origin_xy):
    to_44 = Transformer.from_crs("EPSG:4326", CROSS_CRS, always_xy=True)
    xmin, ymin, xmax, ymax = to_44.transform_bounds(*CROSS_NODATA_LONLAT)
    x0, y0 = origin_xy

    def where(cols, rows):
        x, y = x0 + (cols + 0.5) * PIXEL, y0 - (rows + 0.5) * PIXEL
        return (x >= xmin) & (x <= xmax) & (y >= ymin) & (y <= ymax)

    return where


def write_world_cogs(root: Path) -> None:
    """Write every scene's COGs under ``root`` and their paths (``scene id -> band -> path``
    relative to ``root``) to ``root/paths.json``."""
    paths: dict[str, dict[str, Path]] = {}
    x0, y0 = demo_data.ORIGIN
    # The base scenes are the bulk of the work: two at a time (GDAL and numpy release the GIL).
    with ThreadPoolExecutor(2) as pool:
        futures = {s.item_id: pool.submit(demo_data.write_scene, root, s, size_10m=WORLD_SIZE) for s in BASE_SCENES}
        for i, (origin_px, seed) in enumerate(zip(MOSAIC_ORIGINS_PX, (11, 12))):
            origin = (x0 + origin_px[0] * PIXEL, y0 - origin_px[1] * PIXEL)
            futures[MOSAIC_IDS[i]] = pool.submit(
                write_crafted_scene,
                root,
                MOSAIC_IDS[i],
                demo_data.CRS,
                origin,
                MOSAIC_SIZE,
                seed,
                _mosaic_nodata(origin_px, i),
            )
        cross_origin, cross_size = _cross_grid()
        futures[CROSS_ID] = pool.submit(
            write_crafted_scene,
            root,
            CROSS_ID,
            CROSS_CRS,
            cross_origin,
            cross_size,
            13,
            _cross_nodata(cross_origin),
        )
        for scene_id, future in futures.items():
            paths[scene_id] = future.result()
    relative = {s: {b: p.relative_to(root).as_posix() for b, p in bands.items()} for s, bands in paths.items()}
    (root / "paths.json").write_text(json.dumps(relative))


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Iterator[World]:
    check_aois_inside()
    # The COGs are written once per run for all xdist workers and only read; each worker serves
    # them with its own servers and builds its own collections.
    root = build_once(shared_dir(tmp_path_factory, "reading_cogs"), write_world_cogs)
    workspace = tmp_path_factory.mktemp("reading_ws")
    paths = {
        s: {b: root / p for b, p in bands.items()} for s, bands in json.loads((root / "paths.json").read_text()).items()
    }

    with RangeServer(root) as cogs:

        def hrefs_of(scene_id):
            return {b: cogs.url_for(p.relative_to(root).as_posix()) for b, p in paths[scene_id].items()}

        items = {}
        for scene in BASE_SCENES:
            items[scene.item_id] = demo_data.make_item(scene, hrefs_of(scene.item_id), size_10m=WORLD_SIZE)
        for scene_id, stamp in zip(MOSAIC_IDS, MOSAIC_TIMES):
            items[scene_id] = crafted_item(scene_id, stamp, paths[scene_id], hrefs_of(scene_id))
        items[CROSS_ID] = crafted_item(CROSS_ID, CROSS_TIME, paths[CROSS_ID], hrefs_of(CROSS_ID))
        for scene_id, (stamp, baseline) in FLAG_COPIES.items():
            item = copy.deepcopy(items[FLAG_SOURCE_ID])
            item["id"] = scene_id
            item["properties"].update(
                {
                    "datetime": stamp,
                    "created": stamp,
                    "updated": stamp,
                    "s2:processing_baseline": baseline,
                    "earthsearch:boa_offset_applied": False,
                }
            )
            items[scene_id] = item
            paths[scene_id] = paths[FLAG_SOURCE_ID]
        landsat = landsat_item(paths[FLAG_SOURCE_ID], hrefs_of(FLAG_SOURCE_ID))
        paths[LANDSAT_ID] = paths[FLAG_SOURCE_ID]

        with StacServer(list(items.values()) + [landsat]) as stac:
            w = World(
                root=root, cogs=cogs, stac=stac, workspace=workspace, items={**items, LANDSAT_ID: landsat}, paths=paths
            )
            w.build_reports["world"] = build_collection(
                "sentinel-2-l2a",
                "world",
                workspace,
                date_range=("2024-01-01", "2024-05-31"),
                bands=["red", "nir", "scl"],
                stac_url=stac.url,
                progress=False,
            )
            w.build_reports["landsat"] = build_collection(
                "landsat-c2l2-sr",
                "landsat",
                workspace,
                date_range=("2024-01-01", "2024-01-31"),
                bands=["red", "nir08"],
                stac_url=stac.url,
                progress=False,
            )
            for name, report in w.build_reports.items():
                assert report.failed == [], (name, report.failed)
            assert w.build_reports["world"].items == len(items)
            assert w.build_reports["landsat"].items == 1
            yield w
