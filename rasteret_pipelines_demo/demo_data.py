"""An offline Sentinel-2 L2A world around the original quick start's Bangalore AOIs.

Writes real GDAL COGs on the real grid of MGRS tile 43PGQ (EPSG:32643, origin 699960 E,
1500000 N, 10 m bands 10980 x 10980, SCL at 20 m 5490 x 5490), sparse outside a window around
the areas of interest so each file is small on disk, and STAC items made from a recorded Earth
Search item with this tile's footprint, dates and plausible cloud cover. Pixels are plausible
reflectance (fields, towns, seasonal greening) stored as Earth Search does for processing
baseline >= 04.00 (``earthsearch:boa_offset_applied: true``, DN = reflectance x 10000).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
import shapely.geometry
from pyproj import Transformer
from rasterio.transform import from_origin
from rasterio.windows import Window

TILE = "43PGQ"
CRS = "EPSG:32643"
ORIGIN = (699960.0, 1500000.0)
SIZE_10M = 10980
BLOCK = 1024

QUICKSTART_AOIS = {
    1: shapely.geometry.box(77.55, 13.01, 77.58, 13.08),
    2: shapely.geometry.box(77.56, 13.02, 77.59, 13.09),
}
"""The two polygons of the original Rasteret quick start (lon/lat)."""

TEMPLATE_ITEM = Path(__file__).with_name("data") / "S2B_24MUA_20250731_0_L2A.json"
"""A recorded Earth Search sentinel-2-l2a item (pystac-client test cassette, Apache-2.0)."""


@dataclass(frozen=True)
class DemoScene:
    """One acquisition of the demo world."""

    date: dt.date
    cloud_cover: float
    platform: str = "sentinel-2b"

    @property
    def item_id(self) -> str:
        return f"S{self.platform[-2:].upper()}_{TILE}_{self.date:%Y%m%d}_0_L2A"


def default_scenes(months: Sequence[str] = ("2024-01", "2024-02", "2024-03")) -> list[DemoScene]:
    """Two acquisitions a month (Sentinel-2A and 2B, five days apart), cloud cover varying."""
    scenes = []
    for i, month in enumerate(months):
        year, mon = (int(v) for v in month.split("-"))
        scenes.append(
            DemoScene(dt.date(year, mon, 5), cloud_cover=[4.2, 12.5, 31.0, 7.8][i % 4], platform="sentinel-2a")
        )
        scenes.append(
            DemoScene(dt.date(year, mon, 10), cloud_cover=[18.9, 2.1, 9.4, 55.0][i % 4], platform="sentinel-2b")
        )
    return scenes


def _to_utm() -> Transformer:
    return Transformer.from_crs("EPSG:4326", CRS, always_xy=True)


def dense_window(aois=None, pixel: float = 10.0, margin: int = 200) -> Window:
    """Pixel window (on a grid of ``pixel`` metres) around the AOIs (default: the quick start's),
    aligned to 1024-px tiles."""
    aois = QUICKSTART_AOIS.values() if aois is None else aois
    fwd = _to_utm()
    xs, ys = [], []
    for geom in aois:
        minx, miny, maxx, maxy = geom.bounds
        for x, y in ((minx, miny), (minx, maxy), (maxx, miny), (maxx, maxy)):
            ux, uy = fwd.transform(x, y)
            xs.append(ux)
            ys.append(uy)
    col0 = int((min(xs) - ORIGIN[0]) / pixel) - margin
    col1 = int(math.ceil((max(xs) - ORIGIN[0]) / pixel)) + margin
    row0 = int((ORIGIN[1] - max(ys)) / pixel) - margin
    row1 = int(math.ceil((ORIGIN[1] - min(ys)) / pixel)) + margin
    c0, r0 = (col0 // BLOCK) * BLOCK, (row0 // BLOCK) * BLOCK
    c1, r1 = -(-col1 // BLOCK) * BLOCK, -(-row1 // BLOCK) * BLOCK
    return Window(c0, r0, c1 - c0, r1 - r0)


def _landscape(window: Window, pixel: float, scene: DemoScene, seed: int) -> dict[str, np.ndarray]:
    """Reflectance of red and NIR and an SCL layer for ``window`` (rows, cols)."""
    rows = np.arange(window.row_off, window.row_off + window.height) * pixel
    cols = np.arange(window.col_off, window.col_off + window.width) * pixel
    y, x = np.meshgrid(rows, cols, indexing="ij")
    rng = np.random.default_rng(seed)
    parcel = (np.floor(x / 240) * 7 + np.floor(y / 180) * 13) % 17 / 17.0  # field parcels
    town = np.exp(-(((x - 81000) / 9000) ** 2 + ((y - 56000) / 7000) ** 2))  # a city core
    season = 0.5 + 0.5 * math.sin(2 * math.pi * (scene.date.timetuple().tm_yday - 80) / 365)
    vigour = np.clip(0.35 + 0.5 * parcel * (0.6 + 0.4 * season) - 0.6 * town, 0.02, 0.95)
    red = 0.12 - 0.08 * vigour + 0.05 * town + rng.normal(0, 0.004, x.shape)
    nir = 0.18 + 0.30 * vigour + 0.02 * town + rng.normal(0, 0.006, x.shape)
    # Clouds cover roughly the scene's cloud cover, as blobs; shadows beside them.
    cloud_field = np.sin(x / 2300 + seed) * np.cos(y / 1900 - seed) + 0.4 * np.sin((x + y) / 900 + 2 * seed)
    threshold = np.quantile(cloud_field, 1 - scene.cloud_cover / 100.0) if scene.cloud_cover > 0 else np.inf
    cloud = cloud_field > threshold
    shadow = np.roll(cloud, (25, 25), axis=(0, 1)) & ~cloud
    red = np.where(cloud, 0.35, np.where(shadow, red * 0.4, red))
    nir = np.where(cloud, 0.38, np.where(shadow, nir * 0.4, nir))
    scl = np.where(town > 0.5, 5, 4).astype(np.uint8)
    scl = np.where(cloud, 9, np.where(shadow, 3, scl)).astype(np.uint8)
    return {
        "red": np.clip(np.round(red * 10000), 1, 65535).astype(np.uint16),
        "nir": np.clip(np.round(nir * 10000), 1, 65535).astype(np.uint16),
        "scl": scl,
    }


def write_sparse_cog(
    path: Path,
    data: np.ndarray,
    window: Window,
    *,
    size: int,
    crs: str,
    origin: tuple[float, float],
    pixel: float,
    block: int = BLOCK,
    resampling: str | None = None,
) -> Path:
    """A one-band GDAL COG of a ``size`` x ``size`` grid that holds ``data`` at ``window`` and
    nothing elsewhere: nodata 0, Deflate with predictor 2, ``block``-pixel tiles, overviews.

    GDAL writes no bytes for the blocks left empty (``SPARSE_OK``), so a full-size Sentinel-2
    grid with real headers and overviews stays small on disk: the demo world, the benchmarks'
    scenes and the tests' full-size scenes are all written here. The COG is written under a
    temporary name and renamed, so a file at ``path`` is always whole.

    Args:
        path: Where the COG goes.
        data: The pixels (rows x cols, or one band first); their dtype is the file's.
        window: Where ``data`` sits on the grid (whole tiles keep the other blocks sparse).
        size: Side of the grid in pixels.
        crs: The grid's CRS.
        origin: Upper-left corner ``(x, y)`` of the grid, in CRS units.
        pixel: Pixel size in CRS units.
        block: Tile side in pixels.
        resampling: GDAL's overview resampling (the COG driver's default when None).
    """
    pixels = data if data.ndim == 3 else data[np.newaxis]
    src = path.with_suffix(".src.tif")
    tmp = path.with_suffix(".tmp.tif")
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=1,
        dtype=pixels.dtype,
        crs=crs,
        transform=from_origin(origin[0], origin[1], pixel, pixel),
        nodata=0,
        tiled=True,
        blockxsize=block,
        blockysize=block,
        compress="DEFLATE",
        predictor=2,
        SPARSE_OK=True,
    )
    with rasterio.open(src, "w", **profile) as dst:
        dst.write(pixels, window=window)
    options = {"resampling": resampling} if resampling is not None else {}
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"):
        rasterio.shutil.copy(
            src,
            tmp,
            driver="COG",
            compress="DEFLATE",
            predictor=2,
            blocksize=block,
            overviews="AUTO",
            SPARSE_OK=True,
            **options,
        )
    os.replace(tmp, path)
    src.unlink()
    return path


BANDS = {"red": (10.0, "uint16", "B04"), "nir": (10.0, "uint16", "B08"), "scl": (20.0, "uint8", "SCL")}


def write_scene(root: Path, scene: DemoScene, *, size_10m: int = SIZE_10M, seed: int = 0) -> dict[str, Path]:
    """Write the red, nir (10 m) and scl (20 m) COGs of ``scene`` under ``root/<item id>/``."""
    folder = root / scene.item_id
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    landscapes: dict[float, dict[str, np.ndarray]] = {}  # one landscape per pixel size: red and nir share it
    for band, (pixel, dtype, code) in BANDS.items():
        path = folder / f"{code}.tif"
        paths[band] = path
        if path.exists():
            continue
        factor = int(pixel / 10)
        size = -(-size_10m // factor)
        dense = dense_window(pixel=pixel, margin=200 // factor)
        dense = dense.intersection(Window(0, 0, size, size))
        if pixel not in landscapes:
            landscapes[pixel] = _landscape(dense, pixel, scene, seed + scene.date.toordinal())
        data = landscapes[pixel][band].astype(dtype, copy=False)
        write_sparse_cog(path, data, dense, size=size, crs=CRS, origin=ORIGIN, pixel=pixel, resampling="nearest")
    return paths


def tile_footprint(size_10m: int = SIZE_10M) -> shapely.Geometry:
    """The tile's footprint in lon/lat (densified so it follows the UTM grid)."""
    inv = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    x0, y0 = ORIGIN
    x1, y1 = x0 + size_10m * 10, y0 - size_10m * 10
    ring = []
    for t in np.linspace(0, 1, 11):
        ring.append((x0 + t * (x1 - x0), y0))
    for t in np.linspace(0, 1, 11):
        ring.append((x1, y0 + t * (y1 - y0)))
    for t in np.linspace(0, 1, 11):
        ring.append((x1 - t * (x1 - x0), y1))
    for t in np.linspace(0, 1, 11):
        ring.append((x0, y1 - t * (y1 - y0)))
    return shapely.geometry.Polygon([inv.transform(x, y) for x, y in ring])


def make_item(scene: DemoScene, hrefs: dict[str, str], *, size_10m: int = SIZE_10M) -> dict:
    """A STAC item for ``scene`` built from the recorded Earth Search template."""
    item = copy.deepcopy(json.loads(TEMPLATE_ITEM.read_text()))
    footprint = tile_footprint(size_10m)
    stamp = f"{scene.date.isoformat()}T05:16:12.024000Z"
    item["id"] = scene.item_id
    item["geometry"] = shapely.geometry.mapping(footprint)
    item["geometry"]["coordinates"] = [[list(c) for c in ring] for ring in item["geometry"]["coordinates"]]
    item["bbox"] = list(footprint.bounds)
    p = item["properties"]
    p.update(
        {
            "datetime": stamp,
            "created": stamp,
            "updated": stamp,
            "platform": scene.platform,
            "eo:cloud_cover": scene.cloud_cover,
            "proj:epsg": 32643,
            "mgrs:utm_zone": 43,
            "mgrs:latitude_band": "P",
            "mgrs:grid_square": "GQ",
            "grid:code": f"MGRS-{TILE}",
            "s2:processing_baseline": "05.10",
            "earthsearch:boa_offset_applied": True,
            "s2:nodata_pixel_percentage": 0.0,
        }
    )
    p["earthsearch:s3_path"] = f"s3://sentinel-cogs/sentinel-s2-l2a-cogs/43/P/GQ/{scene.date:%Y/%-m}/{scene.item_id}"
    keep = {}
    for band, (pixel, _, _) in BANDS.items():
        asset = item["assets"][band]
        asset["href"] = hrefs[band]
        size = -(-size_10m // int(pixel / 10))
        asset["proj:shape"] = [size, size]
        asset["proj:transform"] = [pixel, 0, ORIGIN[0], 0, -pixel, ORIGIN[1]]
        keep[band] = asset
    for key in ("thumbnail", "tileinfo_metadata", "granule_metadata"):
        if key in item["assets"]:
            keep[key] = item["assets"][key]
    item["assets"] = keep
    return item


def write_world(
    root: Path, url_for, scenes: Sequence[DemoScene] | None = None, *, size_10m: int = SIZE_10M
) -> list[dict]:
    """Write every scene's COGs under ``root`` and return their STAC items.

    Args:
        root: Folder the COG server serves.
        url_for: Maps a path relative to ``root`` to its URL (``RangeServer.url_for``).
        scenes: Acquisitions (default: :func:`default_scenes`).
        size_10m: Side of the 10 m grid in pixels (10980 for the real tile; tests use less).
    """
    items = []
    for scene in scenes or default_scenes():
        paths = write_scene(root, scene, size_10m=size_10m)
        hrefs = {band: url_for(str(path.relative_to(root))) for band, path in paths.items()}
        items.append(make_item(scene, hrefs, size_10m=size_10m))
    return items
