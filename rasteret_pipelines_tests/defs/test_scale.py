"""The main job at scale: many partitions per run, one read per month, isolation, few requests."""

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
import shapely.geometry
from pyproj import Transformer

from rasteret_pipelines.aois import write_aois_geojson
from rasteret_pipelines.defs.assets import ndvi_key
from rasteret_pipelines.defs.pipeline import BYTES_PER_PIXEL_DATE, chunk_aois, window_bytes
from rasteret_pipelines_tests.defs.conftest import AOIS, make_project

S2 = "sentinel-2-l2a"
JAN = "2024-01-01"
# four small fields next to each other, inside the area the months are indexed for (the
# quick start AOIs' bounds): they share the demo COGs' 1024 x 1024 tiles
NEIGHBOURS = {
    "a": shapely.geometry.box(77.5620, 13.0400, 77.5660, 13.0440),
    "b": shapely.geometry.box(77.5660, 13.0400, 77.5700, 13.0440),
    "c": shapely.geometry.box(77.5620, 13.0440, 77.5660, 13.0480),
    "d": shapely.geometry.box(77.5670, 13.0450, 77.5710, 13.0490),
}
OUTSIDE = shapely.geometry.box(77.70, 13.20, 77.72, 13.22)  # on the tile, outside the indexed area


def materialised(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict[str, dict]:
    """``{partition: metadata}`` of the run's materializations of ``key``."""
    out = {}
    for event in result.get_asset_materialization_events():
        mat = event.materialization
        if mat.asset_key == key:
            out[mat.partition] = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    return out


def oracle_tiles(demo_world: Path, month: str, geometries) -> tuple[set, int]:
    """(distinct tiles, sum of per-geometry tiles) the month's files need for ``geometries``,
    from rasterio's view of the files: every block a geometry's window touches, per file."""
    world = json.loads((demo_world / "world.json").read_text())
    files = [demo_world / a["href"] for item in world["items"]
             if item["properties"]["datetime"].startswith(month)
             for key, a in item["assets"].items() if key in ("red", "nir", "scl")]
    assert files, "the month has scenes"
    distinct, total = set(), 0
    for path in files:
        with rasterio.open(path) as src:
            to_crs = Transformer.from_crs("EPSG:4326", src.crs, always_xy=True)
            bh, bw = src.block_shapes[0]
            for geom in geometries:
                local = shapely.transform(geom, lambda xy: np.column_stack(to_crs.transform(xy[:, 0], xy[:, 1])))
                win = rasterio.features.geometry_window(src, [local], pad_x=1, pad_y=1)
                tiles = {(str(path), r, c)
                         for r in range(int(win.row_off) // bh, (int(win.row_off + win.height) - 1) // bh + 1)
                         for c in range(int(win.col_off) // bw, (int(win.col_off + win.width) - 1) // bw + 1)}
                total += len(tiles)
                distinct |= tiles
    return distinct, total


def test_month_batch_shares_tiles_and_equals_single_partition_runs(project, clean_mirror, demo_world, tmp_path):
    write_aois_geojson({**AOIS, **NEIGHBOURS}, project.aoi_file)
    project.register_aois()
    project.run("collections_job", JAN)
    clean_mirror.cogs.reset_log()
    result = project.run_range("ndvi_job", f"a|{JAN}", f"d|{JAN}")
    meta = materialised(result, ndvi_key(S2))
    assert sorted(meta) == [f"{a}|{JAN}" for a in "abcd"], "one materialization per (month, AOI)"
    assert all(m["read_batch_aois"] == 4 and m["dates"] == 2 and m["files"] >= 1 for m in meta.values()), \
        {k: (m.get("read_batch_aois"), m["dates"], m["files"], m.get("note")) for k, m in meta.items()}
    checks = [(e.partition, e.check_name, e.passed) for e in result.get_asset_check_evaluations()]
    assert sorted(checks) == sorted((f"{a}|{JAN}", c, True) for a in "abcd" for c in ("ndvi_within_range", "geotiffs_reopen"))

    gets = [r for r in clean_mirror.cogs.requests if r.method == "GET"]
    distinct, per_geometry_sum = oracle_tiles(demo_world, "2024-01", NEIGHBOURS.values())
    assert per_geometry_sum > len(distinct), "the fields do share tiles (else this test proves nothing)"
    assert len(gets) <= len(distinct), (len(gets), len(distinct))
    assert len({(r.path, r.range) for r in gets}) == len(gets), "no byte range fetched twice"
    assert {m["tile_get_requests"] for m in meta.values()} == {len(gets)}  # the batch's GETs, as reported

    # the same partitions one run each, into another storage: pixel-equal GeoTIFFs
    single = make_project(str(tmp_path / "single"), clean_mirror.stac_url, str(tmp_path / "single.geojson"),
                          instance=project.instance, aois={**AOIS, **NEIGHBOURS})
    single.run("collections_job", JAN)
    for aoi in "abcd":
        one = materialised(single.run("ndvi_job", f"{aoi}|{JAN}"), ndvi_key(S2))
        assert one[f"{aoi}|{JAN}"]["read_batch_aois"] == 1
    batch_dir = Path(project.storage) / "ndvi/sentinel_2_l2a_ndvi/tif"
    single_dir = tmp_path / "single/ndvi/sentinel_2_l2a_ndvi/tif"
    names = sorted(str(p.relative_to(batch_dir)) for p in batch_dir.rglob("*.tif"))
    assert names == sorted(str(p.relative_to(single_dir)) for p in single_dir.rglob("*.tif"))
    assert len(names) == sum(m["files"] for m in meta.values())
    for name in names:
        with rasterio.open(batch_dir / name) as a, rasterio.open(single_dir / name) as b:
            assert (a.crs, a.transform, a.shape) == (b.crs, b.transform, b.shape)
            assert np.array_equal(a.read(1), b.read(1), equal_nan=True), name
    for aoi in "abcd":
        batch = json.loads((Path(project.storage) / f"ndvi/sentinel_2_l2a_ndvi/aoi={aoi}/month=2024-01.json").read_text())
        alone = json.loads((tmp_path / f"single/ndvi/sentinel_2_l2a_ndvi/aoi={aoi}/month=2024-01.json").read_text())
        assert [{k: d[k] for k in ("date", "mean_ndvi", "valid_fraction")} for d in batch["dates"]] == \
               [{k: d[k] for k in ("date", "mean_ndvi", "valid_fraction")} for d in alone["dates"]]


def ndvi_job_from_env():
    """The NDVI job of the definitions configured by the environment (reconstructable, for re-execution)."""
    from rasteret_pipelines.defs import build_definitions

    return build_definitions().resolve_job_def("ndvi_job")


def test_one_bad_aoi_fails_alone_and_a_reexecution_redoes_only_it(project, clean_mirror, monkeypatch):
    project.run("collections_job", JAN)  # indexed for AOIs 1 and 2 only
    write_aois_geojson({**AOIS, "far": OUTSIDE}, project.aoi_file)
    project.register_aois(["far"])
    result = project.run_range("ndvi_job", f"1|{JAN}", f"far|{JAN}", raise_on_error=False)
    assert not result.success
    assert sorted(materialised(result, ndvi_key(S2))) == [f"1|{JAN}", f"2|{JAN}"]
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert f"1 of 3 partitions failed (2 materialised" in message and "does not contain AOI far" in message, message
    assert project.instance.get_materialized_partitions(ndvi_key(S2)) == {f"1|{JAN}", f"2|{JAN}"}
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)

    # fix the cause (index the month over the new AOI set), then re-execute the failed run
    project.run("collections_job", JAN)
    for name, value in project.settings.env.items():
        monkeypatch.setenv(name, value)
    clean_mirror.cogs.reset_log()
    parent = project.instance.get_run_by_id(result.run_id)
    with dg.execute_job(
        dg.reconstructable(ndvi_job_from_env), instance=project.instance,
        tags={k: v for k, v in parent.tags.items() if k.startswith("dagster/asset_partition_range")},
        reexecution_options=dg.ReexecutionOptions.from_failure(result.run_id, project.instance),
        run_config={"execution": {"config": {"in_process": {}}}},
    ) as retry:
        assert retry.success
        redone = [e.materialization.partition for e in retry.get_asset_materialization_events()]
    assert redone == [f"far|{JAN}"], "only the failed partition is redone"
    assert project.instance.get_materialized_partitions(ndvi_key(S2)) == {f"{a}|{JAN}" for a in ("1", "2", "far")}


def test_an_aoi_with_an_invalid_geometry_fails_alone(project):
    bowtie = shapely.geometry.Polygon([(77.56, 13.03), (77.57, 13.04), (77.57, 13.03), (77.56, 13.04)])
    write_aois_geojson({**AOIS, "bow": bowtie}, project.aoi_file)
    project.register_aois(["bow"])
    project.run("collections_job", JAN)  # the collection is indexed over the usable AOIs
    result = project.run_range("ndvi_job", f"1|{JAN}", f"bow|{JAN}", raise_on_error=False)
    assert not result.success
    assert sorted(materialised(result, ndvi_key(S2))) == [f"1|{JAN}", f"2|{JAN}"]
    text = [e for e in result.all_events if e.is_step_failure][0].step_failure_data.error.message
    assert "1 of 3 partitions failed" in text and f"bow|{JAN}: AoiFileError" in text, text
    assert "geometry bow is invalid: Self-intersection" in text and project.aoi_file in text, text


def test_batches_are_bounded_by_count_and_estimated_bytes(project, clean_mirror):
    from rasteret_pipelines.aois import load_aois

    fields = {f"f{i:04d}": shapely.geometry.box(77.55 + (i % 40) * 0.001, 13.01 + (i // 40) * 0.001,
                                                77.5508 + (i % 40) * 0.001, 13.0108 + (i // 40) * 0.001)
              for i in range(1000)}
    write_aois_geojson(fields, project.aoi_file)
    areas = load_aois(project.aoi_file)
    rows, cols, one = window_bytes(fields["f0000"], n_dates=2)
    assert 9 <= rows <= 11 and 9 <= cols <= 11  # 0.0008 degrees ~ 88 m at 10 m
    batches = chunk_aois(areas, areas.ids, max_aois=64, max_bytes=200_000, n_dates=2)
    assert sorted(a for b in batches for a in b) == sorted(areas.ids)
    for batch in batches:
        r = max(window_bytes(fields[a], 2)[0] for a in batch)
        c = max(window_bytes(fields[a], 2)[1] for a in batch)
        assert len(batch) <= 64 and len(batch) * r * c * 2 * BYTES_PER_PIXEL_DATE <= 200_000
    assert len(batches) >= 1000 * one // 200_000

    # in a run over two months (a range over both dimensions, as the AOI sensor asks for):
    # each month read on its own, two AOIs per read, as configured
    p = make_project(project.storage, clean_mirror.stac_url, project.aoi_file, instance=project.instance,
                     aois={**AOIS, **NEIGHBOURS}, extra={"RASTERET_NDVI_BATCH_AOIS": "2"})
    p.register_aois()
    for month in (JAN, "2024-02-01"):
        p.run("collections_job", month)
    result = p.run_range("ndvi_job", f"a|{JAN}", "d|2024-02-01")
    meta = materialised(result, ndvi_key(S2))
    assert sorted(meta) == sorted(f"{a}|{m}" for a in "abcd" for m in (JAN, "2024-02-01"))
    assert {m["read_batch_aois"] for m in meta.values()} == {2}
    manifests = [json.loads(Path(m["path"]).read_text()) for m in meta.values()]
    assert {(x["aoi"], x["month"]) for x in manifests} == {(a, m) for a in "abcd" for m in ("2024-01", "2024-02")}
    assert all(d["date"].startswith(x["month"]) for x in manifests for d in x["dates"])


@pytest.mark.parametrize("n_new", [50])
def test_aoi_sensor_requests_one_ndvi_run_per_month(project, n_new):
    from rasteret_pipelines_tests.defs.test_automation import tick

    months = ["2024-01-01", "2024-02-01", "2024-03-01"]
    for month in months:
        project.run("collections_job", month)
    first = tick(project, "aoi_file_sensor")
    new = {f"n{i:02d}": shapely.geometry.box(77.551 + (i % 10) * 0.003, 13.011 + (i // 10) * 0.01,
                                            77.553 + (i % 10) * 0.003, 13.013 + (i // 10) * 0.01)
           for i in range(n_new)}
    write_aois_geojson({**AOIS, **new}, project.aoi_file)
    data = tick(project, "aoi_file_sensor", first.cursor)
    ndvi = [r for r in data.run_requests if r.job_name == "ndvi_job"]
    assert 1 <= len(ndvi) <= len(months) and len(data.run_requests) == len(ndvi)
    assert len({r.run_key for r in data.run_requests}) == len(ndvi)
    (add,) = data.dynamic_partitions_requests
    project.instance.add_dynamic_partitions("aoi", list(add.partition_keys))
    months_def = project.defs.resolve_assets_def(ndvi_key(S2)).partitions_def
    covered = []
    for request in ndvi:
        covered += months_def.get_partition_keys_in_range(
            dg.PartitionKeyRange(request.tags["dagster/asset_partition_range_start"],
                                 request.tags["dagster/asset_partition_range_end"]),
            dynamic_partitions_store=project.instance,
        )
    assert sorted(covered) == sorted(f"{a}|{m}" for a in new for m in months), "exactly the new AOIs x months"
    again = tick(project, "aoi_file_sensor", data.cursor)
    assert not again.run_requests
