"""The main job at scale: many (month, group) partitions per run, one read per month, isolation, few requests."""

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import rasterio
import rasterio.features
import shapely
import shapely.geometry
from pyproj import Transformer

from rasteret_pipelines.aois import write_aois_geojson
from rasteret_pipelines.defs.assets import field_stats_key
from rasteret_pipelines.defs.location_runs import partition_range_tags
from rasteret_pipelines.defs.pipeline import BYTES_PER_PIXEL_DATE, chunk_aois, window_bytes
from rasteret_pipelines.fields import group_names
from rasteret_pipelines_tests.defs.conftest import AOIS, GROUP, make_project

S2 = "sentinel-2-l2a"
STATS = field_stats_key(S2)
JAN, FEB = "2024-01-01", "2024-02-01"
ONE_PER_CELL = {"RASTERET_GROUP_CELL_DEG": "0.001"}
"""0.001-degree cells: each of the NEIGHBOURS is a group of its own."""
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
    files = [
        demo_world / a["href"]
        for item in world["items"]
        if item["properties"]["datetime"].startswith(month)
        for key, a in item["assets"].items()
        if key in ("red", "nir", "scl")
    ]
    assert files, "the month has scenes"
    distinct, total = set(), 0
    for path in files:
        with rasterio.open(path) as src:
            to_crs = Transformer.from_crs("EPSG:4326", src.crs, always_xy=True)
            bh, bw = src.block_shapes[0]
            for geom in geometries:
                local = shapely.transform(geom, lambda xy: np.column_stack(to_crs.transform(xy[:, 0], xy[:, 1])))
                win = rasterio.features.geometry_window(src, [local], pad_x=1, pad_y=1)
                tiles = {
                    (str(path), r, c)
                    for r in range(int(win.row_off) // bh, (int(win.row_off + win.height) - 1) // bh + 1)
                    for c in range(int(win.col_off) // bw, (int(win.col_off + win.width) - 1) // bw + 1)
                }
                total += len(tiles)
                distinct |= tiles
    return distinct, total


def test_a_month_s_groups_share_one_read(project, clean_mirror, demo_world):
    """Four neighbouring fields, each its own group: one run over the four (month, group)
    partitions reads their shared tiles once (one zonal_stats call for the month)."""
    p = make_project(
        project.storage,
        clean_mirror.stac_url,
        project.aoi_file,
        instance=project.instance,
        aois={**AOIS, **NEIGHBOURS},
        extra=ONE_PER_CELL,
    )
    groups = p.register_fields()
    mine = sorted(
        group_names([g.centroid.x for g in NEIGHBOURS.values()], [g.centroid.y for g in NEIGHBOURS.values()], 0.001)
    )
    assert len(set(mine)) == 4
    p.run("collections_job", JAN)
    order = [g for g in p.instance.get_dynamic_partitions("field_group") if g in mine]
    quiet = make_project(
        p.storage,
        clean_mirror.stac_url,
        p.aoi_file,
        instance=p.instance,
        aois=False,
        extra={**ONE_PER_CELL, "RASTERET_FIELD_GEOTIFFS": "none"},
    )
    clean_mirror.cogs.reset_log()
    first, last = min(order, key=groups.index), max(order, key=groups.index)
    result = quiet.run_range("field_stats_job", f"{first}|{JAN}", f"{last}|{JAN}")
    meta = materialised(result, STATS)
    ours = {k: m for k, m in meta.items() if k.split("|")[0] in mine}
    assert sorted(ours) == sorted(f"{g}|{JAN}" for g in mine), "one materialization per (month, group)"
    assert all(m["fields"] == 1 and len(m["dates"]) == 2 and m["read_fields"] == len(meta) for m in ours.values())
    checks = [(e.partition, e.check_name, e.passed) for e in result.get_asset_check_evaluations()]
    assert sorted(c for c in checks if c[0] in ours) == sorted(
        (k, c, True) for k in ours for c in ("stats_in_range", "geotiffs_reopen")
    )

    gets = [r for r in clean_mirror.cogs.requests if r.method == "GET"]
    distinct, per_geometry_sum = oracle_tiles(demo_world, "2024-01", NEIGHBOURS.values())
    assert per_geometry_sum > len(distinct), "the fields do share tiles (else this test proves nothing)"
    # the run's range also holds the quick start fields' group: their tiles come on top
    others = [g for g in AOIS.values()]
    distinct_all, _ = (
        oracle_tiles(demo_world, "2024-01", [*NEIGHBOURS.values(), *others]) if len(meta) > 4 else (distinct, 0)
    )
    assert len(gets) <= len(distinct_all), (len(gets), len(distinct_all))
    assert len({(r.path, r.range) for r in gets}) == len(gets), "no byte range fetched twice"
    assert {m["tile_get_requests"] for m in meta.values()} == {len(gets)}  # the month's one read, as reported

    # every field of a group of one: its table holds only it, each of its dates once (the joint
    # read's rows split by group; their values against the library and rasterio: test_fields.py)
    for group in mine:
        table = pq.read_table(Path(p.storage) / f"field_stats/sentinel_2_l2a/month=2024-01/group={group}.parquet")
        assert len(set(table.column("id").to_pylist())) == 1 and table.num_rows == 2


def test_groups_of_one_small_field_each_run_alone(project, clean_mirror):
    """Four neighbouring small fields, a group each (0.001-degree cells): every group's run
    succeeds on its own, and a date without a clear pixel keeps its row with null statistics
    (the library's case of a date masked everywhere: reading/test_zonal.py)."""
    p = make_project(
        project.storage,
        clean_mirror.stac_url,
        project.aoi_file,
        instance=project.instance,
        aois={**AOIS, **NEIGHBOURS},
        extra=ONE_PER_CELL,
    )
    p.register_fields()
    p.run("collections_job", JAN)
    from rasteret_pipelines.fields import group_names

    centres = [g.centroid for g in NEIGHBOURS.values()]
    order = group_names([c.x for c in centres], [c.y for c in centres], cell_deg=0.001)
    assert len(set(order)) == 4 and set(order) <= set(p.instance.get_dynamic_partitions("field_group"))
    for group in order:
        assert p.run("field_stats_job", f"{group}|{JAN}", raise_on_error=False).success, group
        table = pq.read_table(Path(p.storage) / f"field_stats/sentinel_2_l2a/month=2024-01/group={group}.parquet")
        for row in table.to_pylist():
            if row["ndvi_count"] == 0:  # no clear pixel that date: the row is kept, its statistics null
                assert row["ndvi_mean"] is None and row["ndvi_median"] is None, row
    assert table.num_rows > 0


def field_stats_job_from_env():
    """The statistics job of the definitions configured by the environment (reconstructable, for re-execution)."""
    from rasteret_pipelines.defs import build_definitions

    return build_definitions().resolve_job_def("field_stats_job")


def test_a_failed_partition_fails_alone_and_a_reexecution_redoes_only_it(project, clean_mirror, monkeypatch):
    project.run("collections_job", JAN)  # February not built yet: its partition fails, January's is kept
    result = project.run_range("field_stats_job", f"{GROUP}|{JAN}", f"{GROUP}|{FEB}", raise_on_error=False)
    assert not result.success
    assert sorted(materialised(result, STATS)) == [f"{GROUP}|{JAN}"]
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert "1 of 2 partitions failed (1 materialised" in message and "has no month 2024-02" in message, message
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)

    # fix the cause, then re-execute the failed run: only February is redone
    project.run("collections_job", FEB)
    for name, value in project.settings.env.items():
        monkeypatch.setenv(name, value)
    parent = project.instance.get_run_by_id(result.run_id)
    with dg.execute_job(
        dg.reconstructable(field_stats_job_from_env),
        instance=project.instance,
        tags={k: v for k, v in parent.tags.items() if k in partition_range_tags("", "")},
        reexecution_options=dg.ReexecutionOptions.from_failure(result.run_id, project.instance),
        run_config={"execution": {"config": {"in_process": {}}}},
    ) as retry:
        assert retry.success
        redone = [e.materialization.partition for e in retry.get_asset_materialization_events()]
    assert redone == [f"{GROUP}|{FEB}"], "only the failed partition is redone"
    assert project.instance.get_materialized_partitions(STATS) == {f"{GROUP}|{JAN}", f"{GROUP}|{FEB}"}


def test_a_field_with_an_invalid_geometry_is_skipped_and_the_rest_go_on(project):
    bowtie = shapely.geometry.Polygon([(77.56, 13.03), (77.57, 13.04), (77.57, 13.03), (77.56, 13.04)])
    write_aois_geojson({**AOIS, "bow": bowtie}, project.aoi_file)
    project.run("collections_job", JAN)  # the collection is indexed over the usable fields
    result = project.run("field_stats_job", f"{GROUP}|{JAN}")
    assert materialised(result, STATS)[f"{GROUP}|{JAN}"]["fields"] == 2
    table = pq.read_table(Path(project.storage) / f"field_stats/sentinel_2_l2a/month=2024-01/group={GROUP}.parquet")
    assert sorted(set(table.column("id").to_pylist())) == ["1", "2"]
    logs = "\n".join(e.message for e in project.instance.all_logs(result.run_id) if e.message)
    assert "row 3 (id 'bow'): invalid geometry: Self-intersection" in logs


def test_a_field_outside_the_indexed_area_is_left_out_until_the_month_is_rebuilt(project):
    project.run("collections_job", JAN)  # indexed for fields 1 and 2
    near = shapely.geometry.box(77.595, 13.02, 77.597, 13.022)  # same group, outside the indexed bbox
    write_aois_geojson({**AOIS, "near": near}, project.aoi_file)
    result = project.run("field_stats_job", f"{GROUP}|{JAN}")
    meta = materialised(result, STATS)[f"{GROUP}|{JAN}"]
    assert (meta["fields"], meta["fields_not_indexed"], meta["fields_with_data"]) == (3, 1, 2)
    project.run("collections_job", JAN)  # what the field sensor requests
    meta = materialised(project.run("field_stats_job", f"{GROUP}|{JAN}"), STATS)[f"{GROUP}|{JAN}"]
    assert (meta["fields"], meta["fields_not_indexed"], meta["fields_with_data"]) == (3, 0, 3)


def test_batches_are_bounded_by_count_and_estimated_bytes(project, clean_mirror):
    from rasteret_pipelines.aois import load_aois

    fields = {
        f"f{i:04d}": shapely.geometry.box(
            77.55 + (i % 40) * 0.001, 13.01 + (i // 40) * 0.001, 77.5508 + (i % 40) * 0.001, 13.0108 + (i // 40) * 0.001
        )
        for i in range(1000)
    }
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

    # in a run over two months x four groups: each month read on its own, each table its month's dates
    p = make_project(
        project.storage,
        clean_mirror.stac_url,
        project.aoi_file,
        instance=project.instance,
        aois={**AOIS, **NEIGHBOURS},
        extra={**ONE_PER_CELL, "RASTERET_NDVI_BATCH_AOIS": "2"},
    )
    groups = p.register_fields()
    for month in (JAN, FEB):
        p.run("collections_job", month)
    result = p.run_range("field_stats_job", f"{groups[0]}|{JAN}", f"{groups[-1]}|{FEB}")
    meta = materialised(result, STATS)
    assert sorted(meta) == sorted(f"{g}|{m}" for g in groups for m in (JAN, FEB))
    for key, m in meta.items():
        assert all(d.startswith(key.split("|")[1][:7]) for d in m["dates"])
    cogs = sorted((Path(p.storage) / "field_ndvi/sentinel_2_l2a").rglob("*.tif"))
    assert len(cogs) == sum(m["geotiffs"] for m in meta.values()) > 0


def test_the_field_sensor_s_50_new_fields_over_3_months_are_a_few_statistics_runs(tmp_path, clean_mirror):
    """The former "one NDVI run per month" test, in the new model: 50 new fields over 3 months are
    one request of (month, changed group) partitions that the backfill runs as at most
    MAX_GROUP_RANGES runs a month."""
    from rasteret_pipelines_tests.defs.conftest import local_instance
    from rasteret_pipelines_tests.defs.test_fields import runs_for, tick

    p = make_project(
        str(tmp_path / "data"),
        clean_mirror.stac_url,
        str(tmp_path / "aois.geojson"),
        instance=local_instance(tmp_path / "home"),
        extra={"RASTERET_GROUP_CELL_DEG": "0.01"},
    )
    p.register_fields()
    months = ["2024-01-01", "2024-02-01", "2024-03-01"]
    for month in months:
        p.run("collections_job", month)
    first = tick(p)
    new = {
        f"n{i:02d}": shapely.geometry.box(
            77.551 + (i % 10) * 0.003, 13.011 + (i // 10) * 0.01, 77.553 + (i % 10) * 0.003, 13.013 + (i // 10) * 0.01
        )
        for i in range(50)
    }
    write_aois_geojson({**AOIS, **new}, p.aoi_file)
    cursor = dg.evaluate_automation_conditions(defs=p.defs, instance=p.instance).cursor
    data = tick(p, cursor=first.cursor)
    assert not data.run_requests
    for event in data.asset_events:
        p.instance.report_runless_asset_event(event)
    for request in data.dynamic_partitions_requests:
        p.instance.add_dynamic_partitions("field_group", list(request.partition_keys))
    changed = {e.partition for e in data.asset_events}
    evaluated = dg.evaluate_automation_conditions(defs=p.defs, instance=p.instance, cursor=cursor)
    assert evaluated.get_requested_partitions(STATS) == {f"{g}|{m}" for g in changed for m in months}
    from rasteret_pipelines.defs.sensors import MAX_GROUP_RANGES

    assert runs_for(p, {STATS: evaluated.get_requested_partitions(STATS)}) <= MAX_GROUP_RANGES * len(months)
