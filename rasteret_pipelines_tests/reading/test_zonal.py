"""Zonal statistics against rasterio: every statistic, on the hard cases.

Oracle, per field and date, independent of the code under test: rasterio reads each scene's
band over the field's window (``geometry_window``'s rule on the first covering scene's grid,
boundless, so pixels beyond an image are nodata), ``rasterio.features.geometry_mask`` gives
the field's pixels, numpy picks the first valid scene per pixel (datetime, then id), applies
the item's reflectance scale and offset, computes NDVI and reduces (``np.mean``,
``np.median``, ``np.std``, ``np.percentile``, ...).
"""

from __future__ import annotations

import math
import tracemalloc

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import rasterio
import rasterio.features
import rasterio.mask
import rasterio.transform
import rasterio.warp
import shapely
import shapely.affinity
import shapely.geometry
from affine import Affine
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio.windows import Window

from rasteret_pipelines.errors import (
    InvalidGeometryError,
    InvalidReadArgumentError,
    NoScenesError,
    ReflectanceRequiredError,
)
from rasteret_pipelines.reading import zonal as zonal_module
from rasteret_pipelines.reading import zonal_stats
from rasteret_pipelines_demo import demo_data
from rasteret_pipelines_tests.reading.conftest import (
    BASE_IDS,
    BASE_RANGE,
    CROSS_CRS,
    CROSS_ID,
    MOSAIC_DAY,
    MOSAIC_IDS,
    MOSAIC_NODATA_DIAGONAL,
    WORLD_SIZE,
)

UTM43 = "EPSG:32643"
SCL_CLOUDY = (0, 1, 3, 8, 9, 10)
STATS = ["mean", "median", "std", "min", "max", "count", "sum", "p10", "p90"]
EAST_EDGE_X = demo_data.ORIGIN[0] + WORLD_SIZE * 10.0
"""The base scenes' east edge in EPSG:32643 (column 8192)."""


# -- fields ------------------------------------------------------------------------------------


def _to_lonlat(geom, crs=UTM43):
    t = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    return shapely.transform(geom, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))


def _to_crs(geom, crs=UTM43):
    t = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    return shapely.transform(geom, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))


def _rect(cx, cy, w, h, angle):
    return shapely.affinity.rotate(shapely.geometry.box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), angle)


def hard_fields(seed=3):
    """Fields in EPSG:4326: random rotated rectangles (some overlapping each other), pairs that
    overlap by construction, fields across the base scenes' east edge, sub-pixel fields, a field
    with a hole and a two-part field."""
    rng = np.random.default_rng(seed)
    aoi = _to_crs(demo_data.QUICKSTART_AOIS[1])
    minx, miny, maxx, maxy = aoi.bounds
    out = {}
    for i in range(60):
        cx, cy = rng.uniform(minx + 300, maxx - 300), rng.uniform(miny + 300, maxy - 300)
        out[f"f{i:02d}"] = _rect(cx, cy, *rng.uniform(40, 250, 2), rng.uniform(0, 90))
        if i % 10 == 0:  # a neighbour overlapping it
            out[f"o{i:02d}"] = _rect(cx + 30, cy - 20, *rng.uniform(60, 200, 2), rng.uniform(0, 90))
    edge_y = 1500000 - 5600 * 10.0
    for i, dx in enumerate((-45.0, -12.0, 0.0, 37.0)):
        out[f"edge{i}"] = _rect(EAST_EDGE_X + dx, edge_y + 300 * i, 180, 120, 20 * i)
    out["tiny_centre"] = shapely.geometry.box(minx + 1003, miny + 1003, minx + 1007, miny + 1007)  # has a centre
    out["tiny_none"] = shapely.geometry.box(minx + 1501, miny + 1501, minx + 1504, miny + 1504)  # between centres
    out["holed"] = shapely.geometry.box(minx + 2000, miny + 2000, minx + 2300, miny + 2300).difference(
        shapely.geometry.box(minx + 2100, miny + 2100, minx + 2200, miny + 2200)
    )
    out["two_parts"] = shapely.MultiPolygon(
        [
            shapely.geometry.box(minx + 2500, miny + 2500, minx + 2600, miny + 2560),
            _rect(minx + 2800, miny + 2700, 90, 70, 30),
        ]
    )
    return gpd.GeoDataFrame(
        {"id": list(out), "crop": [f"c{i % 3}" for i in range(len(out))]},
        geometry=[_to_lonlat(g) for g in out.values()],
        crs="EPSG:4326",
    )


# -- the oracle --------------------------------------------------------------------------------


def _window_on(transform: Affine, geom_local):
    """rasterio's geometry_window rule on an unbounded grid: (col0, row0, width, height)."""
    inv = ~transform
    xy = shapely.get_coordinates(geom_local)
    cols = xy[:, 0] * inv.a + xy[:, 1] * inv.b + inv.c
    rows = xy[:, 0] * inv.d + xy[:, 1] * inv.e + inv.f
    c0, r0 = math.floor(cols.min()), math.floor(rows.min())
    return c0, r0, max(math.ceil(cols.max()) - c0, 1), max(math.ceil(rows.max()) - r0, 1)


def oracle(world, geom_4326, scene_ids, *, all_touched=False, cloud_mask=False):
    """NDVI pixels of one field for one date (the scenes of that date in datetime, id order),
    read by rasterio: (ndvi values of valid pixels, pixels of the field, scenes used)."""
    first = scene_ids[0]
    with rasterio.open(world.path(first, "red")) as ref:
        crs, ref_transform = ref.crs, ref.transform
    g = _to_crs(geom_4326, crs.to_string())
    c0, r0, w, h = _window_on(ref_transform, g)
    window_transform = ref_transform @ Affine.translation(c0, r0)
    inside = rasterio.features.geometry_mask([g], (h, w), window_transform, all_touched=all_touched, invert=True)
    out = {b: np.full((h, w), np.nan, np.float32) for b in ("red", "nir")}
    used = set()
    for band in ("red", "nir"):
        for scene_id in scene_ids:
            scale, offset = world.collection().source.reflectance(world.items[scene_id]["properties"])
            with rasterio.open(world.path(scene_id, band)) as src:
                col, row = ~src.transform @ (window_transform.c, window_transform.f)
                data = src.read(1, window=Window(round(col), round(row), w, h), boundless=True, fill_value=0)
                valid = inside & (data != 0)
            if cloud_mask:
                with rasterio.open(world.path(scene_id, "scl")) as scl_src:
                    scl = np.zeros((h, w), np.uint8)
                    rasterio.warp.reproject(
                        scl_src.read(1),
                        scl,
                        src_transform=scl_src.transform,
                        src_crs=scl_src.crs,
                        dst_transform=window_transform,
                        dst_crs=crs,
                        resampling=Resampling.nearest,
                    )
                valid &= ~np.isin(scl, SCL_CLOUDY)
            take = valid & np.isnan(out[band])
            out[band][take] = (data[take].astype(np.float64) * scale + offset).astype(np.float32)
            if take.any():
                used.add(scene_id)
    red, nir = out["red"].astype(np.float64), out["nir"].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ndvi = ((nir - red) / (nir + red)).astype(np.float32)
    ndvi[np.abs(ndvi) > 1] = np.nan
    values = ndvi[inside & np.isfinite(ndvi)].astype(np.float64)
    return values, int(inside.sum()), used


def assert_row_equals_oracle(row, values, pixels):
    assert row["ndvi_count"] == values.size
    if pixels:
        assert row["ndvi_valid_fraction"] == pytest.approx(values.size / pixels, abs=1e-12)
    else:
        assert row["ndvi_valid_fraction"] is None  # a field with no pixel: null, not 0
    if values.size == 0:
        for stat in ("mean", "median", "std", "min", "max", "p10", "p90", "sum"):
            assert row[f"ndvi_{stat}"] is None, stat
        return
    expected = {
        "mean": np.mean(values),
        "median": np.median(values),
        "std": np.std(values),
        "min": np.min(values),
        "max": np.max(values),
        "sum": np.sum(values),
        "p10": np.percentile(values, 10),
        "p90": np.percentile(values, 90),
    }
    for stat, value in expected.items():
        assert row[f"ndvi_{stat}"] == pytest.approx(value, rel=1e-9, abs=1e-12), stat


def rows_by_key(table):
    return {(r["id"], str(r["date"])): r for r in table.to_pylist()}


# -- statistics equal rasterio's -----------------------------------------------------------------


@pytest.mark.parametrize("all_touched", [False, True], ids=["centres", "all_touched"])
def test_every_statistic_equals_rasterio_on_hard_fields(world, all_touched):
    fields = hard_fields()
    table = zonal_stats(
        world.collection(),
        fields,
        index="ndvi",
        stats=STATS,
        date_range=BASE_RANGE,
        all_touched=all_touched,
        keep=["crop"],
    )
    assert table.column_names[:2] == ["id", "date"]
    assert {f"ndvi_{s}" for s in STATS} | {"ndvi_valid_fraction", "scene_ids", "crop"} <= set(table.column_names)
    rows = rows_by_key(table)
    dates = sorted({d for _, d in rows})
    assert len(dates) == len(BASE_IDS)
    checked_edge = checked_overlap = 0
    for fid, geom, crop in zip(fields["id"], fields.geometry, fields["crop"]):
        for scene_id in BASE_IDS:
            date = str(world.datetime(scene_id).astype("datetime64[D]"))
            row = rows[fid, date]
            assert row["crop"] == crop
            values, pixels, used = oracle(world, geom, [scene_id], all_touched=all_touched)
            assert_row_equals_oracle(row, values, pixels)
            assert row["scene_ids"] == (scene_id if values.size else "")
            checked_edge += fid.startswith("edge") and values.size > 0
            checked_overlap += fid.startswith("o") and values.size > 0
    assert checked_edge >= 8 and checked_overlap >= 8
    # A field between pixel centres has no pixel by the centre rule, and some with all_touched.
    tiny = rows["tiny_none", dates[0]]
    assert (tiny["ndvi_count"] >= 1) if all_touched else (tiny["ndvi_valid_fraction"] is None)


def test_same_day_scenes_on_shifted_grids_are_mosaicked_first_valid(world):
    """Fields across the part of the mosaic day where the first scene has nodata."""
    order = sorted(MOSAIC_IDS, key=lambda s: (world.datetime(s), s))
    fields = hard_fields()
    x0, y0 = demo_data.ORIGIN
    diagonal = [(col, MOSAIC_NODATA_DIAGONAL - col) for col in range(7150, 8300, 140)]  # 43PGQ pixels
    extra = gpd.GeoDataFrame(
        {"id": [f"diag{i}" for i in range(len(diagonal))], "crop": "c0"},
        geometry=[
            _to_lonlat(_rect(x0 + c * 10.0, y0 - r * 10.0, 220, 160, 15 * i)) for i, (c, r) in enumerate(diagonal)
        ],
        crs="EPSG:4326",
    )
    fields = gpd.GeoDataFrame(pd.concat([fields, extra], ignore_index=True), crs="EPSG:4326")
    day = str(MOSAIC_DAY)
    table = zonal_stats(world.collection(), fields, index="ndvi", stats=STATS, date_range=(day, day))
    rows = rows_by_key(table)
    both = 0
    for fid, geom in zip(fields["id"], fields.geometry):
        covering = [s for s in order if shapely.intersects(shapely.geometry.shape(world.items[s]["geometry"]), geom)]
        if not covering:
            assert (fid, day) not in rows
            continue
        values, pixels, used = oracle(world, geom, covering)
        row = rows[fid, day]
        assert_row_equals_oracle(row, values, pixels)
        assert set(filter(None, row["scene_ids"].split(","))) == used
        both += len(used) == 2
    assert both >= 6  # fields where both scenes contribute


def test_fields_in_another_utm_zone_are_read_on_that_zones_grid(world):
    cross = world.items[CROSS_ID]
    day = cross["properties"]["datetime"][:10]
    fields = hard_fields()
    table = zonal_stats(world.collection(), fields, index="ndvi", stats=STATS, date_range=(day, day))
    rows = rows_by_key(table)
    assert len(rows) >= 30
    for fid, geom in zip(fields["id"], fields.geometry):
        if (fid, day) in rows:
            values, pixels, _ = oracle(world, geom, [CROSS_ID])
            assert_row_equals_oracle(rows[fid, day], values, pixels)
    with rasterio.open(world.path(CROSS_ID, "red")) as src:
        assert src.crs.to_string() == CROSS_CRS


def test_cloud_mask_and_raw_band_statistics(world):
    fields = hard_fields().iloc[:25]
    table = zonal_stats(world.collection(), fields, index="ndvi", stats=STATS, date_range=BASE_RANGE, cloud_mask=True)
    rows = rows_by_key(table)
    masked = 0
    for fid, geom in zip(fields["id"], fields.geometry):
        for scene_id in BASE_IDS:
            date = str(world.datetime(scene_id).astype("datetime64[D]"))
            values, pixels, _ = oracle(world, geom, [scene_id], cloud_mask=True)
            assert_row_equals_oracle(rows[fid, date], values, pixels)
            masked += pixels - values.size
    assert masked > 100
    raw = zonal_stats(world.collection(), fields, bands=["red"], stats=["mean", "count"], date_range=BASE_RANGE)
    assert raw.column_names == ["id", "date", "red_mean", "red_count", "red_valid_fraction", "scene_ids"]
    for row in raw.to_pylist()[:20]:
        scene_id = row["scene_ids"]
        geom = fields.set_index("id").geometry[row["id"]]
        with rasterio.open(world.path(scene_id, "red")) as src:
            arr, _ = rasterio.mask.mask(src, [_to_crs(geom)], crop=True, filled=False)
        v = arr.compressed().astype(np.float64)
        v = v[v != 0]
        assert row["red_count"] == v.size and row["red_mean"] == pytest.approx(v.mean(), rel=1e-12)


# -- work once per tile, bounded memory -----------------------------------------------------------


def _tiles_under(world, fields):
    """Distinct (file, tile) pairs under the fields' windows, from GDAL's block layout."""
    tiles = set()
    for scene_id in BASE_IDS:
        for band in ("red", "nir"):
            with rasterio.open(world.path(scene_id, band)) as src:
                bh, bw = src.block_shapes[0]
                for geom in fields.geometry:
                    c0, r0, w, h = _window_on(src.transform, _to_crs(geom))
                    for row in range(max(r0, 0) // bh, min(r0 + h - 1, src.height - 1) // bh + 1):
                        for col in range(max(c0, 0) // bw, min(c0 + w - 1, src.width - 1) // bw + 1):
                            tiles.add((scene_id, band, row, col))
    return tiles


def test_gets_are_no_more_than_distinct_tiles_and_no_header_request(world):
    fields = hard_fields()
    world.cogs.reset_log()
    table = zonal_stats(world.collection(), fields, index="ndvi", date_range=BASE_RANGE)
    gets = [r for r in world.cogs.requests if str(r.method).upper() == "GET"]
    tiles = _tiles_under(world, fields)
    assert int(table.schema.metadata[b"header_requests"]) == 0
    assert 0 < len(gets) <= len(tiles)
    assert int(table.schema.metadata[b"requests"]) == len(gets)


def test_memory_does_not_grow_with_dates_when_written_to_a_file(world, tmp_path, monkeypatch):
    """Peak traced memory over all dates stays near that of the first few (rows go to disk)."""
    monkeypatch.setattr(zonal_module, "DAYS_IN_FLIGHT", 1)
    rng = np.random.default_rng(5)
    aoi = _to_crs(demo_data.QUICKSTART_AOIS[1])
    minx, miny, maxx, maxy = aoi.bounds
    geoms = [
        _to_lonlat(_rect(x, y, 60, 60, 10))
        for x, y in zip(rng.uniform(minx, maxx, 3000), rng.uniform(miny, maxy, 3000))
    ]

    def peak(date_range, name):
        tracemalloc.start()
        zonal_stats(world.collection(), geoms, index="ndvi", date_range=date_range, output=tmp_path / name)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top, pq.read_metadata(tmp_path / name).num_rows

    one, rows_one = peak((BASE_RANGE[0], str(world.datetime(BASE_IDS[0]).astype("datetime64[D]"))), "one.parquet")
    all_, rows_all = peak(BASE_RANGE, "all.parquet")
    assert rows_all == len(BASE_IDS) * rows_one == len(BASE_IDS) * 3000
    assert all_ < 1.3 * one, (all_, one)


# -- output and inputs ---------------------------------------------------------------------------


def test_output_is_geoparquet_equal_to_the_table(world, tmp_path):
    fields = hard_fields().iloc[:20]
    table = zonal_stats(world.collection(), fields, index="ndvi", date_range=BASE_RANGE)
    path = zonal_stats(world.collection(), fields, index="ndvi", date_range=BASE_RANGE, output=tmp_path / "s.parquet")
    assert path == str(tmp_path / "s.parquet")
    assert not [p for p in tmp_path.iterdir() if p.name != "s.parquet"]  # no temporary left
    written = gpd.read_parquet(path)
    assert written.crs.equals("OGC:CRS84")  # GeoParquet's default: longitude, latitude
    assert written.drop(columns="geometry").equals(table.to_pandas())
    by_id = fields.set_index("id").geometry
    assert all(g.equals(by_id[i]) for i, g in zip(written["id"], written.geometry))


def test_a_geoparquet_path_and_plain_polygons_give_the_same_statistics(world, tmp_path):
    fields = hard_fields().iloc[:10]
    fields.to_parquet(tmp_path / "fields.parquet")
    a = zonal_stats(world.collection(), tmp_path / "fields.parquet", index="ndvi", date_range=BASE_RANGE)
    b = zonal_stats(world.collection(), list(fields.geometry), index="ndvi", date_range=BASE_RANGE)
    assert a.column("id").to_pylist()[:10] == list(fields["id"])
    assert b.column("id").to_pylist()[:10] == [str(i) for i in range(1, 11)]
    assert a.drop_columns(["id"]).equals(b.drop_columns(["id"]))


def test_bad_input_is_refused_by_name(world):
    fields = hard_fields().iloc[:3].copy()
    dup = fields.copy()
    dup.loc[dup.index[1], "id"] = dup["id"].iloc[0]
    with pytest.raises(InvalidGeometryError, match="not unique: f00"):
        zonal_stats(world.collection(), dup, index="ndvi")
    bow = fields.copy()
    bow.loc[bow.index[2], "geometry"] = shapely.Polygon(
        [(77.55, 13.01), (77.56, 13.02), (77.56, 13.01), (77.55, 13.02)]
    )
    with pytest.raises(InvalidGeometryError, match="invalid geometries: f01 "):
        zonal_stats(world.collection(), bow, index="ndvi")
    with pytest.raises(InvalidReadArgumentError, match="unknown statistic 'mode'"):
        zonal_stats(world.collection(), fields, index="ndvi", stats=["mean", "mode"])
    with pytest.raises(ReflectanceRequiredError, match="values='float'"):
        zonal_stats(world.collection(), fields, index="ndvi", values="float")
    with pytest.raises(InvalidReadArgumentError, match="keep names columns"):
        zonal_stats(world.collection(), fields, index="ndvi", keep=["yield"])


# -- points ------------------------------------------------------------------------------------


def test_sample_points_equals_rasterio_sample(world):
    """Each point's value in every band and date is rasterio's ``sample()`` of that scene's file;
    nodata is null; a point outside every scene has no row; the mosaic day takes the first valid."""
    rng = np.random.default_rng(11)
    aoi = _to_crs(demo_data.QUICKSTART_AOIS[1])
    minx, miny, maxx, maxy = aoi.bounds
    xs, ys = rng.uniform(minx, maxx, 400), rng.uniform(miny, maxy, 400)
    xs[:5] = EAST_EDGE_X + np.array([-25.0, -5.0, 5.0, 15.0, 400.0])  # across the base scenes' east edge
    points = gpd.GeoDataFrame(
        {"id": [f"p{i}" for i in range(400)], "plot": np.arange(400)}, geometry=gpd.points_from_xy(xs, ys), crs=UTM43
    )
    far = gpd.GeoDataFrame(
        {"id": ["paris"], "plot": [-1]}, geometry=gpd.points_from_xy([2.35], [48.86]), crs="EPSG:4326"
    )
    points = gpd.GeoDataFrame(pd.concat([points.to_crs("EPSG:4326"), far], ignore_index=True), crs="EPSG:4326")
    table = zonal_module.sample_points(
        world.collection(), points, bands=["red", "nir"], keep=["plot"], date_range=(BASE_RANGE[0], str(MOSAIC_DAY))
    )
    assert table.column_names == ["id", "date", "red", "nir", "scene_ids", "plot"]
    rows = rows_by_key(table)
    assert not [k for k in rows if k[0] == "paris"]
    order = sorted(MOSAIC_IDS, key=lambda s: (world.datetime(s), s))
    checked = nulls = 0
    for scene_ids in [[s] for s in BASE_IDS] + [order]:
        date = str(world.datetime(scene_ids[0]).astype("datetime64[D]"))
        for band in ("red", "nir"):
            expected = np.full(400, np.nan)
            for scene_id in scene_ids:
                with rasterio.open(world.path(scene_id, band)) as src:
                    utm = points.iloc[:400].to_crs(src.crs)
                    inside = (
                        (utm.geometry.x > src.bounds.left)
                        & (utm.geometry.x < src.bounds.right)
                        & (utm.geometry.y > src.bounds.bottom)
                        & (utm.geometry.y < src.bounds.top)
                    ).to_numpy()
                    got = np.array([v[0] for v in src.sample(zip(utm.geometry.x, utm.geometry.y), masked=False)], float)
                    take = inside & np.isnan(expected) & (got != 0)
                    expected[take] = got[take]
            for i in range(400):
                row = rows.get((f"p{i}", date))
                if row is None:
                    continue
                value = row[band]
                if np.isnan(expected[i]):
                    assert value is None, (i, date, band)
                    nulls += 1
                else:
                    assert value == expected[i], (i, date, band)
                    checked += 1
    assert checked > 2000 and nulls >= 4


def _random_points(n: int, seed: int, past_the_edge: bool = True):
    """``n`` points uniform over AOI 1 (and a little past the base scenes' east edge), in UTM."""
    rng = np.random.default_rng(seed)
    minx, miny, maxx, maxy = _to_crs(demo_data.QUICKSTART_AOIS[1]).bounds
    xs, ys = rng.uniform(minx, EAST_EDGE_X + 300 if past_the_edge else maxx, n), rng.uniform(miny, maxy, n)
    return gpd.GeoDataFrame({"id": [f"p{i}" for i in range(n)]}, geometry=gpd.points_from_xy(xs, ys), crs=UTM43)


def test_sample_points_fetch_every_tile_with_points_once(world):
    """No byte is fetched twice in a file, every tile holding a point is fetched, and the GETs
    are no more than those tiles (rasterio's ``index`` and GDAL's block offsets as the oracle)."""
    points = _random_points(3000, 12).to_crs("EPSG:4326")
    date_range = (BASE_RANGE[0], str(MOSAIC_DAY))
    world.cogs.reset_log()
    table = zonal_module.sample_points(world.collection(), points, bands=["red", "nir"], date_range=date_range)
    gets = [r for r in world.cogs.requests if str(r.method).upper() == "GET"]
    assert int(table.schema.metadata[b"header_requests"]) == 0 and int(table.schema.metadata[b"requests"]) == len(gets)
    ranges: dict[str, list[tuple[int, int]]] = {}
    for r in gets:
        ranges.setdefault(r.path, []).append(tuple(r.range))
    for spans in ranges.values():
        spans.sort()
        assert all(a[1] < b[0] for a, b in zip(spans, spans[1:])), "a byte range was fetched twice"
    scenes = [s for s in world.items if date_range[0] <= world.items[s]["properties"]["datetime"][:10] <= date_range[1]]
    tiles = 0
    for scene_id in scenes:
        for band in ("red", "nir"):
            path = world.path(scene_id, band)
            spans = ranges["/" + path.relative_to(world.root).as_posix()]
            with rasterio.open(path) as src:
                utm = points.to_crs(src.crs)
                bh, bw = src.block_shapes[0]
                rows, cols = rasterio.transform.rowcol(src.transform, utm.geometry.x, utm.geometry.y)
                rows, cols = np.asarray(rows), np.asarray(cols)
                inside = (rows >= 0) & (rows < src.height) & (cols >= 0) & (cols < src.width)
                blocks = set(zip((rows[inside] // bh).tolist(), (cols[inside] // bw).tolist()))
                for row, col in blocks:
                    offset = int(src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1))
                    assert any(a <= offset <= b for a, b in spans), (scene_id, band, row, col)
                tiles += len(blocks)
    assert 0 < len(gets) <= tiles


def _with_geo(path, edit):
    """Rewrite the GeoParquet file at ``path`` with its ``geo`` metadata changed by ``edit``."""
    import json

    table = pq.read_table(path)
    geo = json.loads(table.schema.metadata[b"geo"])
    edit(geo["columns"][geo["primary_column"]])
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"geo": json.dumps(geo).encode()}), path)
    return path


def test_a_geoparquet_points_file_gives_the_table_of_its_geodataframe(world, tmp_path):
    """A GeoParquet path (read without GeoPandas) against the GeoDataFrame GeoPandas reads from
    the same file: integer and text ids, a projected CRS, kept columns, GeoParquet's default
    CRS when none is written, and ids GeoPandas writes as text of floats."""
    points = _random_points(300, 13)
    points["crop"] = [f"c{i % 3}" for i in range(len(points))]
    points["plot"] = np.arange(len(points)) * 7
    date_range = (BASE_RANGE[0], str(MOSAIC_DAY))

    def both(path, **kwargs):
        options = dict(bands=["red", "nir"], date_range=date_range, **kwargs)
        a = zonal_module.sample_points(world.collection(), path, **options)
        b = zonal_module.sample_points(world.collection(), gpd.read_parquet(path), **options)
        assert a.schema == b.schema and a.num_rows > 0
        assert a.equals(b)
        return a

    text_ids = tmp_path / "text_ids.parquet"
    points.to_crs("EPSG:4326").to_parquet(text_ids)
    table = both(text_ids, keep=["crop", "plot"])
    assert set(table.column("id").to_pylist()) <= set(points["id"])
    int_ids = tmp_path / "int_ids.parquet"
    points.assign(id=np.arange(len(points)) + 100).to_parquet(int_ids)  # EPSG:32643 in the file
    assert min(map(int, both(int_ids, keep=["plot"]).column("id").to_pylist())) >= 100
    both(_with_geo(tmp_path / "text_ids.parquet", lambda meta: meta.pop("crs")))  # OGC:CRS84
    float_ids = tmp_path / "float_ids.parquet"
    points.assign(key=np.arange(len(points)) / 2).to_parquet(float_ids)
    assert "0.5" in both(float_ids, id_column="key").column("id").to_pylist()
    no_crs = _with_geo(int_ids, lambda meta: meta.update(crs=None))
    with pytest.raises(InvalidGeometryError, match="no CRS"):
        zonal_module.sample_points(world.collection(), no_crs, bands=["red"])


def test_points_from_geoparquet_are_read_without_pandas(world, tmp_path):
    """The points path (file to table) never loads pandas, GeoPandas or pyarrow.dataset, and
    no pyarrow.compute when every point has a row every date: each costs a fresh process a
    noticeable part of a second."""
    import subprocess
    import sys

    path = tmp_path / "points.parquet"
    _random_points(500, 14, past_the_edge=False).to_crs("EPSG:4326").to_parquet(path)
    code = (
        "import sys\n"
        "from rasteret_pipelines.collections import load_collection\n"
        "from rasteret_pipelines.reading import sample_points\n"
        f"table = sample_points(load_collection('world', {str(world.workspace)!r}), {str(path)!r}, "
        f"bands=['red', 'nir'], date_range={BASE_RANGE!r})\n"
        "assert table.num_rows > 0\n"
        "print(sorted(m for m in ('pandas', 'geopandas', 'pyarrow.compute', 'pyarrow.dataset') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_date_with_no_valid_pixel_gives_null_statistics(world, monkeypatch):
    """Every pixel masked (here: every SCL class counted as cloud): counts 0, statistics null."""
    from rasteret_pipelines.collections import cloudmask

    monkeypatch.setattr(cloudmask.MaskedClasses, "clear", lambda self, values: np.zeros(values.shape, bool))
    fields = hard_fields().iloc[:5]
    table = zonal_stats(world.collection(), fields, index="ndvi", stats=STATS, date_range=BASE_RANGE, cloud_mask=True)
    assert table.num_rows == 5 * len(BASE_IDS)
    for row in table.to_pylist():
        assert row["ndvi_count"] == 0 and row["ndvi_valid_fraction"] == 0.0
        assert all(row[f"ndvi_{s}"] is None for s in STATS if s != "count"), row


def test_fields_no_scene_covers_are_refused_with_both_extents(world):
    paris = shapely.geometry.box(2.33, 48.85, 2.36, 48.87)
    with pytest.raises(NoScenesError, match=r"covers the geometries.*collection extent: bbox"):
        zonal_stats(world.collection(), [paris], index="ndvi")
    swapped = shapely.geometry.box(13.01, 77.55, 13.08, 77.58)  # the AOI with lat and lon swapped
    with pytest.raises(NoScenesError, match="swapped"):
        zonal_module.sample_points(world.collection(), [swapped.centroid], bands=["red"])
