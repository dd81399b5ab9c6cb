"""Fields in groups (issue 18 part 2): the field file, the grouping rule, the partition counts,
the field sensor, the statistics asset against the library and rasterio, the checks declared
once, the time-series automation, the multiprocess executor."""

import io
import json
import random
from pathlib import Path

import dagster as dg
import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import rasterio.mask
import rasterio.transform
import shapely
import shapely.geometry
from pyproj import Transformer

from rasteret_pipelines.aois import write_aois_geojson
from rasteret_pipelines.defs.assets import FIELDS_KEY, field_stats_key, field_timeseries_key
from rasteret_pipelines.defs.location_runs import partition_range_tags
from rasteret_pipelines.defs.partitions import build_partitions
from rasteret_pipelines.defs.sensors import MAX_GROUP_RANGES, bounded_ranges
from rasteret_pipelines.fields import group_names, parse_fields
from rasteret_pipelines_tests.defs.conftest import AOIS, GROUP, local_instance, make_project
from rasteret_pipelines_tests.defs.conftest import tick as sensor_tick

S2 = "sentinel-2-l2a"
JAN, FEB = "2024-01-01", "2024-02-01"
STATS = field_stats_key(S2)
SERIES = field_timeseries_key(S2)
STAT_COLUMNS = [
    "id",
    "date",
    "ndvi_mean",
    "ndvi_median",
    "ndvi_std",
    "ndvi_min",
    "ndvi_max",
    "ndvi_count",
    "ndvi_valid_fraction",
    "scene_ids",
]


def boxes(
    n: int, x0: float, y0: float, step: float = 0.0004, size: float = 0.0003, per_row: int = 50, prefix: str = "f"
) -> dict:
    """``n`` square fields on a grid from (x0, y0), ``per_row`` per row."""
    return {
        f"{prefix}{i:05d}": shapely.geometry.box(
            x0 + (i % per_row) * step,
            y0 + (i // per_row) * step,
            x0 + (i % per_row) * step + size,
            y0 + (i // per_row) * step + size,
        )
        for i in range(n)
    }


def geoparquet_bytes(fields: dict, extra: dict | None = None) -> bytes:
    frame = gpd.GeoDataFrame({"id": list(fields), **(extra or {})}, geometry=list(fields.values()), crs="EPSG:4326")
    buf = io.BytesIO()
    frame.to_parquet(buf)
    return buf.getvalue()


# --- the file and the grouping rule ----------------------------------------------------------------


def test_grouping_is_deterministic_and_an_explicit_group_wins():
    fields = boxes(3000, 77.45, 12.95, step=0.004, per_row=60)
    first = parse_fields(geoparquet_bytes(fields))
    shuffled = dict(random.Random(7).sample(sorted(fields.items()), len(fields)))
    again = parse_fields(geoparquet_bytes(shuffled))
    groups = dict(zip(first.frame.index, first.frame["group"]))
    assert groups == dict(zip(again.frame.index, again.frame["group"])), "the file's order does not matter"
    assert first.group_digests() == again.group_digests()
    assert len(first.groups) > 4, "the fields span several cells (else this proves little)"
    # each field is in the cell of its centroid, named after the cell's south-west corner
    for fid in ("f00000", "f01234", "f02999"):
        c = fields[fid].centroid
        lat, lon = np.floor(c.y / 0.1) * 0.1, np.floor(c.x / 0.1) * 0.1
        assert groups[fid] == f"g_{lat:.1f}_{lon:.1f}"
        assert parse_fields(geoparquet_bytes({fid: fields[fid]})).frame.loc[fid, "group"] == groups[fid], (
            "a field's group does not depend on the other fields"
        )
    assert group_names([-0.05, 179.99], [-45.01, 0.0]) == ["g_-45.1_-0.1", "g_0.0_179.9"]
    assert group_names([77.51], [13.02], 0.05) == ["g_13.00_77.50"]
    explicit = parse_fields(
        geoparquet_bytes({"a": fields["f00000"], "b": fields["f00001"]}, {"group": ["north", None]})
    )
    assert dict(explicit.frame["group"]) == {"a": "north", "b": groups["f00001"]}


def test_bad_rows_are_skipped_with_their_reason_and_the_rest_go_on(tmp_path):
    bowtie = shapely.geometry.Polygon([(77.56, 13.03), (77.57, 13.04), (77.57, 13.03), (77.56, 13.04)])
    ok = AOIS["1"]

    def feature(props, geom):
        return {"type": "Feature", "properties": props, "geometry": geom and shapely.geometry.mapping(geom)}

    doc = {
        "type": "FeatureCollection",
        "features": [
            feature({"id": "good"}, ok),
            feature({"id": "bow"}, bowtie),
            feature({"id": "dup"}, ok),
            feature({"id": "dup"}, AOIS["2"]),
            feature({"id": "../x"}, ok),
            feature({"id": "line"}, shapely.geometry.LineString([(77.5, 13), (77.6, 13.1)])),
            feature({"id": "metres"}, shapely.geometry.box(776510, 1439620, 779860, 1447410)),
            feature({"id": "nogeom"}, None),
            feature({"name": "no id"}, ok),
            feature({"id": "badgroup", "group": "a/b"}, ok),
            feature({"id": 7.0, "name": "seven"}, AOIS["2"]),
        ],
    }
    fields = parse_fields(json.dumps(doc).encode(), "fields.geojson")
    assert fields.ids == ["good", "7"] and fields.frame.loc["7", "name"] == "seven"
    reasons = fields.skipped
    assert reasons["row 2 (id 'bow')"].startswith("invalid geometry: Self-intersection")
    assert (
        reasons["row 3 (id 'dup')"]
        == reasons["row 4 (id 'dup')"]
        == "duplicate id 'dup' (rows 3, 4); ids must be unique"
    )
    assert "not a safe name" in reasons["row 5 (id '../x')"]
    assert reasons["row 6 (id 'line')"] == "geometry is a LineString, not a Polygon or MultiPolygon"
    assert "not longitude/latitude in EPSG:4326" in reasons["row 7 (id 'metres')"]
    assert reasons["row 8 (id 'nogeom')"] == "no geometry"
    assert reasons["row 9"] == "no id"
    assert reasons["row 10 (id 'badgroup')"] == "group 'a/b' is not a safe name"
    assert len(reasons) == 9


def test_a_100000_row_geoparquet_file_and_the_partition_counts_of_12_months():
    """100,000 fields over a 1 x 1 degree region: about a hundred groups, so 12 months are about
    1,200 month x group partitions, far inside Dagster's limits; parsed, checked and grouped in
    one vectorised pass (the timing is benchmarks/bench_dagster.py's, not asserted here)."""
    rng = np.random.default_rng(18)
    x, y = 77.0 + rng.random(100_000) * 0.999, 13.0 + rng.random(100_000) * 0.999
    fields = {f"p{i:06d}": g for i, g in enumerate(shapely.box(x, y, x + 0.0009, y + 0.0009))}
    parsed = parse_fields(geoparquet_bytes(fields), "fields.parquet")
    assert len(parsed.ids) == 100_000 and not parsed.skipped
    groups = parsed.groups
    assert 100 <= len(groups) <= 121, len(groups)
    assert sum(len(v) for v in parsed.group_ids().values()) == 100_000

    partitions = build_partitions("2023-01", "2023-12")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(partitions.group.name, groups)
    with dg.partition_loading_context(dynamic_partitions_store=instance):
        per_asset = {
            "collections": partitions.months.get_num_partitions(),
            "fields": partitions.group.get_num_partitions(),
            "field_stats": partitions.month_group.get_num_partitions(),
            "field_timeseries": partitions.group.get_num_partitions(),
        }
    assert per_asset == {
        "collections": 12,
        "fields": len(groups),
        "field_stats": 12 * len(groups),
        "field_timeseries": len(groups),
    }
    assert max(per_asset.values()) <= 5_000, "a few thousand partitions per asset at most"


# --- the field sensor --------------------------------------------------------------------------------


def tick(project, name="field_file_sensor", cursor=None):
    return sensor_tick(project, name, cursor)


def small_cell_project(tmp_path, mirror, **extra):
    """The quick start's fields, grouped in 0.01-degree cells (many groups inside the indexed area)."""
    p = make_project(
        str(tmp_path / "data"),
        mirror.stac_url,
        str(tmp_path / "aois.geojson"),
        instance=local_instance(tmp_path / "home"),
        extra={"RASTERET_GROUP_CELL_DEG": "0.01", **extra},
    )
    p.register_fields()
    return p


def test_5000_new_fields_become_requests_for_the_changed_groups_only(tmp_path, clean_mirror):
    p = small_cell_project(tmp_path, clean_mirror)
    for month in (JAN, FEB):
        p.run("collections_job", month)
    before = sorted(p.instance.get_dynamic_partitions("field_group"))
    first = tick(p)  # no cursor: the groups the demo (here: the fixture) recorded are the baseline
    assert not first.run_requests and not first.asset_events and "no group changed" in first.skip_message

    # 5,000 new fields in the south-west of the indexed area (it is 77.55..77.59 x 13.01..13.09)
    new = boxes(5000, 77.5505, 13.0105, step=0.0003, size=0.0002, per_row=100, prefix="n")
    write_aois_geojson({**AOIS, **new}, p.aoi_file)
    data = tick(p, cursor=first.cursor)
    expected = sorted(
        set(group_names([g.centroid.x for g in new.values()], [g.centroid.y for g in new.values()], 0.01))
    )
    assert len(expected) >= 4, "the new fields span several groups"
    requested = sorted(e.partition for e in data.asset_events)
    assert all(e.asset_key == FIELDS_KEY for e in data.asset_events)
    untouched = [g for g in before if g not in expected]
    assert untouched, "some groups did not change (else 'only' proves nothing)"
    assert requested == expected, "exactly the groups of the new fields"
    assert not data.run_requests, "every new field lies inside the indexed area: no collection rebuild"
    (add,) = data.dynamic_partitions_requests
    assert sorted(add.partition_keys) == sorted(set(expected) - set(before))
    meta = {e.partition: e.metadata for e in data.asset_events}
    assert sum(m["added_fields"].value for m in meta.values()) == 5000

    # the automation then requests the statistics of every (materialised month, changed group) and
    # nothing else, in one run (as the daemon records it: the tick's events, then its partitions)
    cursor = dg.evaluate_automation_conditions(defs=p.defs, instance=p.instance).cursor
    for event in data.asset_events:
        p.instance.report_runless_asset_event(event)
    p.instance.add_dynamic_partitions("field_group", list(add.partition_keys))
    evaluated = dg.evaluate_automation_conditions(defs=p.defs, instance=p.instance, cursor=cursor)
    wanted = {f"{g}|{m}" for g in expected for m in (JAN, FEB)}
    assert evaluated.get_requested_partitions(STATS) == wanted
    assert evaluated.total_requested == len(wanted), "nothing else (no time series before the statistics)"
    assert runs_for(p, {STATS: wanted}) <= MAX_GROUP_RANGES * 2, "at most 2 runs a month"

    # the same file again: nothing; fields removed and a bad row: reported, the rest go on
    same = tick(p, cursor=data.cursor)
    assert not same.asset_events and same.skip_message.startswith("field file unchanged")
    kept = dict(list(new.items())[100:])
    bowtie = shapely.geometry.Polygon([(77.56, 13.03), (77.57, 13.04), (77.57, 13.03), (77.56, 13.04)])
    write_aois_geojson({**AOIS, **kept, "bow": bowtie}, p.aoi_file)
    removed = tick(p, cursor=same.cursor)
    gone = {
        g
        for fid, g in zip(
            new, group_names([g.centroid.x for g in new.values()], [g.centroid.y for g in new.values()], 0.01)
        )
        if fid not in kept
    }
    assert sorted(e.partition for e in removed.asset_events) == sorted(gone)
    names = sorted(
        n
        for e in removed.asset_events
        for n in e.metadata.get("removed", dg.MetadataValue.text("")).value.split(", ")
        if n
    )
    assert names == sorted(set(new) - set(kept))


def test_scattered_changed_groups_are_requested_as_a_bounded_number_of_ranges():
    order = [f"g{i:02d}" for i in range(20)]
    assert bounded_ranges(order, ["g01", "g02", "g09"]) == ["g01", "g02", "g09"], "few ranges: only the changed"
    scattered = ["g00", "g03", "g05", "g06", "g10", "g18", "g19"]  # 5 runs of consecutive groups
    wanted = bounded_ranges(order, scattered, max_ranges=4)
    assert set(scattered) <= set(wanted) and set(wanted) - set(scattered) == {"g04"}, "the smallest gap filled"
    assert bounded_ranges(order, order[::2], max_ranges=1) == order[:19]
    assert bounded_ranges(order, ["new"]) == ["new"]


def test_a_changed_group_outside_the_indexed_area_rebuilds_those_months(tmp_path, clean_mirror):
    p = small_cell_project(tmp_path, clean_mirror)
    for month in (JAN, FEB):
        p.run("collections_job", month)
    first = tick(p)
    far = shapely.geometry.box(77.70, 13.20, 77.702, 13.202)
    write_aois_geojson({**AOIS, "far": far}, p.aoi_file)
    data = tick(p, cursor=first.cursor)
    assert [e.partition for e in data.asset_events] == ["g_13.20_77.70"]
    assert sorted(
        (r.partition_key, tuple(k.to_user_string() for k in r.asset_selection)) for r in data.run_requests
    ) == [(m, ("collections/sentinel_2_l2a",)) for m in (JAN, FEB)]


def test_an_unreadable_field_file_is_a_skipped_tick_and_keeps_the_cursor(project):
    first = tick(project)
    with open(project.aoi_file, "w") as fh:
        fh.write("{not json")
    broken = tick(project, cursor=first.cursor)
    assert not broken.asset_events and "neither GeoJSON nor GeoParquet" in broken.skip_message
    assert broken.cursor is None or broken.cursor == first.cursor


# --- the statistics asset --------------------------------------------------------------------------


def metadata_of(result, key) -> dict[str, dict]:
    return {
        e.materialization.partition: {k: getattr(v, "value", v) for k, v in e.materialization.metadata.items()}
        for e in result.get_asset_materialization_events()
        if e.materialization.asset_key == key
    }


def test_the_statistics_table_of_a_run_equals_the_library_s_and_rasterio_s(project, clean_mirror, demo_world):
    from rasteret_pipelines.collections import load_collection
    from rasteret_pipelines.fields import load_fields
    from rasteret_pipelines.reading import zonal_stats

    project.run("collections_job", JAN)
    result = project.run("field_stats_job", f"{GROUP}|{JAN}")
    path = Path(project.storage) / f"field_stats/sentinel_2_l2a/month=2024-01/group={GROUP}.parquet"
    assert metadata_of(result, STATS)[f"{GROUP}|{JAN}"]["path"] == str(path)
    table = pq.read_table(path)
    assert table.column_names[:10] == STAT_COLUMNS and "geometry" in table.column_names
    assert json.loads(table.schema.metadata[b"geo"])["primary_column"] == "geometry", "GeoParquet"
    assert gpd.read_parquet(path).geometry.iloc[0].equals(AOIS[table.column("id")[0].as_py()])

    # the library on the same fields, directly
    fields = load_fields(project.aoi_file).frame.reset_index()
    collection = load_collection("sentinel_2_l2a", Path(project.storage) / "collections")
    direct = zonal_stats(
        collection,
        fields,
        index="ndvi",
        stats=("mean", "median", "std", "min", "max", "count"),
        date_range=("2024-01-01", "2024-01-31"),
        cloud_mask=True,
    )
    ours = table.select(STAT_COLUMNS).sort_by([("id", "ascending"), ("date", "ascending")])
    theirs = direct.select(STAT_COLUMNS).sort_by([("id", "ascending"), ("date", "ascending")])
    assert ours.num_rows == 4  # 2 fields x 2 dates
    assert ours.to_pylist() == theirs.to_pylist()

    # an independent oracle: rasterio.mask on the demo COGs (pixel centres inside the field, NDVI of
    # the stored values as in the quick start's test), cloudy pixels left out by sampling the 20 m
    # SCL band at each 10 m pixel's centre with the source's rule
    rule = collection.source.cloud_mask
    world = json.loads((demo_world / "world.json").read_text())
    items = {i["id"]: i for i in world["items"]}
    for row in ours.to_pylist():
        item = items[row["scene_ids"].split(",")[0]]
        bands = {}
        for key in ("red", "nir"):
            with rasterio.open(demo_world / item["assets"][key]["href"]) as src:
                to = Transformer.from_crs("EPSG:4326", src.crs, always_xy=True)
                local = shapely.transform(AOIS[row["id"]], lambda xy: np.column_stack(to.transform(xy[:, 0], xy[:, 1])))
                data, transform = rasterio.mask.mask(src, [local], crop=True, filled=False)
                bands[key] = data[0].astype("float64")
        rows, cols = np.indices(bands["red"].shape)
        xs, ys = rasterio.transform.xy(transform, rows.ravel(), cols.ravel())
        with rasterio.open(demo_world / item["assets"][rule.band]["href"]) as scl:
            r, c = rasterio.transform.rowcol(scl.transform, xs, ys)
            window = scl.read(1)[np.asarray(r), np.asarray(c)].reshape(rows.shape)
        ndvi = (bands["nir"] - bands["red"]) / (bands["nir"] + bands["red"])
        ndvi = np.ma.masked_where(~rule.clear(window), ndvi)
        assert int(ndvi.count()) == row["ndvi_count"], row
        assert abs(float(ndvi.mean()) - row["ndvi_mean"]) < 1e-5, row
        assert abs(float(ndvi.max()) - row["ndvi_max"]) < 1e-5, row


def test_each_batch_s_read_plan_is_shown_before_its_reads_which_run_it_and_make_exactly_its_gets(
    project, clean_mirror, monkeypatch
):
    """Issue 20 item 6 in Dagster: before a month's reads (statistics, then the group COGs), the
    plan computed from the cached headers is recorded on every partition of the batch as an
    observation with a Markdown table; the COG server then counts exactly its GETs and bytes.
    Each read runs the plan its dry run made: the library's planning functions (wrapped here to
    count their calls) run once per read of the plan, not again in the read."""
    from rasteret_pipelines.reading import read as read_module
    from rasteret_pipelines.reading import zonal
    from rasteret_pipelines_tests.conftest import count_calls

    for month in (JAN, FEB):
        project.run("collections_job", month)
    calls = count_calls(monkeypatch, ((read_module, "plan_read"), (zonal, "plan_fields_read")))
    clean_mirror.cogs.reset_log()
    result = project.run_range("field_stats_job", f"{GROUP}|{JAN}", f"{GROUP}|{FEB}")
    gets = [r for r in clean_mirror.cogs.requests if str(r.method).upper() == "GET"]
    assert len(gets) == len(clean_mirror.cogs.requests) > 0
    kinds = [
        (e.event_type_value, e.partition)
        if e.event_type_value in ("ASSET_OBSERVATION", "ASSET_MATERIALIZATION")
        else None
        for e in result.all_events
    ]
    observed = {
        e.asset_observation_data.asset_observation.partition: {
            k: getattr(v, "value", v) for k, v in e.asset_observation_data.asset_observation.metadata.items()
        }
        for e in result.get_asset_observation_events()
        if e.asset_observation_data.asset_observation.asset_key == STATS
    }
    assert sorted(observed) == [f"{GROUP}|{m}" for m in (JAN, FEB)]
    for k in observed:  # each batch's plan is recorded before its materialisation
        assert kinds.index(("ASSET_OBSERVATION", k)) < kinds.index(("ASSET_MATERIALIZATION", k))
    planned = sum(m["planned_get_requests"] for m in observed.values())
    assert (planned, sum(m["planned_bytes"] for m in observed.values())) == (
        len(gets),
        sum(int(r.bytes_sent or 0) for r in gets),
    )
    materialised = metadata_of(result, STATS)
    for k, m in observed.items():
        table = m["read_plan"]
        assert "| read | scenes | windows | tiles | GETs | MB to fetch | decoded MB | peak MB |" in table
        assert "statistics (zonal_stats)" in table and "COGs, batch 1 of 1" in table and "**total**" in table
        assert m["planned_scenes"] == 2 and m["planned_peak_bytes"] > 0 and m["planned_decoded_bytes"] > 0
        done = materialised[k]
        assert done["tile_get_requests"] + done["geotiff_get_requests"] == m["planned_get_requests"]
        assert done["planned_get_requests"] == m["planned_get_requests"]
    # one statistics read and one batch of COGs per month, each planned once
    tables = [m["read_plan"] for m in observed.values()]
    assert calls == {
        "plan_fields_read": sum(t.count("| statistics (zonal_stats) |") for t in tables),
        "plan_read": sum(t.count("| COGs, batch ") for t in tables),
    }
    assert calls == {"plan_fields_read": 2, "plan_read": 2}


def test_checks_are_declared_once_and_no_check_step_is_skipped(project):
    """Issue 19 item 8: every run's steps succeed or fail, none is skipped, and every (month, group)
    gets both check results from the asset's own step."""
    specs = [(s.asset_key, s.name) for c in project.defs.asset_checks or [] for s in c.check_specs]
    specs += [
        (s.asset_key, s.name) for a in project.defs.assets if isinstance(a, dg.AssetsDefinition) for s in a.check_specs
    ]
    assert len(specs) == len(set(specs)), "no check declared twice"
    for month in (JAN, FEB):
        result = project.run("collections_job", month)
        assert not [e for e in result.all_events if e.event_type_value == "STEP_SKIPPED"]
    runs = [
        project.run_range("field_stats_job", f"{GROUP}|{JAN}", f"{GROUP}|{FEB}"),
        project.run("field_timeseries_job", GROUP),
    ]
    for result in runs:
        kinds = [e.event_type_value for e in result.all_events]
        assert "STEP_SKIPPED" not in kinds and "STEP_SUCCESS" in kinds, kinds
    evaluations = sorted((e.partition, e.check_name, e.passed) for e in runs[0].get_asset_check_evaluations())
    assert evaluations == sorted(
        (f"{GROUP}|{m}", c, True) for m in (JAN, FEB) for c in ("stats_in_range", "geotiffs_reopen")
    )
    meta = metadata_of(runs[0], STATS)
    assert sorted(meta) == [f"{GROUP}|{m}" for m in (JAN, FEB)], "one materialisation per (month, group)"
    for m in meta.values():
        assert m["fields"] == m["fields_with_data"] == 2 and len(m["dates"]) == 2 and m["rows"] == 4
        assert m["geotiffs"] == 2 and 0 < m["mean_valid_fraction"] <= 1 and -1 <= m["mean_ndvi"] <= 1
        assert m["header_get_requests"] == 0 and m["tile_get_requests"] > 0
    series = metadata_of(runs[1], SERIES)[GROUP]
    assert series["fields"] == 2 and series["dates"] == 4 and series["months"] == ["2024-01", "2024-02"]
    assert [r.data["field"] for r in series["fields_table"].records] == ["1", "2"]
    table = pq.read_table(Path(project.storage) / f"field_timeseries/sentinel_2_l2a/group={GROUP}.parquet")
    assert table.num_rows == 8 and table.column_names[:3] == ["id", "date", "ndvi_mean"]
    cogs = sorted(
        p.name for p in (Path(project.storage) / "field_ndvi/sentinel_2_l2a" / f"geometry_{GROUP}").glob("*.tif")
    )
    assert cogs == ["ndvi_20240105.tif", "ndvi_20240110.tif", "ndvi_20240205.tif", "ndvi_20240210.tif"]
    with rasterio.open(Path(project.storage) / "field_ndvi/sentinel_2_l2a" / f"geometry_{GROUP}" / cogs[0]) as src:
        data = src.read(1)
    inside = np.isfinite(data)
    assert 0 < inside.sum() < data.size, "NaN outside the group's fields"


def test_per_field_cogs_through_the_setting(tmp_path, clean_mirror):
    p = make_project(
        str(tmp_path / "data"),
        clean_mirror.stac_url,
        str(tmp_path / "aois.geojson"),
        extra={"RASTERET_FIELD_GEOTIFFS": "fields"},
    )
    p.register_fields()
    p.run("collections_job", JAN)
    result = p.run("field_stats_job", f"{GROUP}|{JAN}")
    assert metadata_of(result, STATS)[f"{GROUP}|{JAN}"]["geotiffs"] == 4
    base = tmp_path / "data/field_ndvi/sentinel_2_l2a/fields"
    assert sorted(str(f.relative_to(base)) for f in base.rglob("*.tif")) == [
        f"geometry_{a}/ndvi_{d}.tif" for a in "12" for d in ("20240105", "20240110")
    ]


# --- automation and executors -----------------------------------------------------------------------


def test_time_series_automation_starts_a_bounded_number_of_runs(tmp_path, clean_mirror):
    """Statistics of many groups land; the automation asks for the time series of every group as
    ONE backfill, which the backfill policy runs as one run."""
    p = small_cell_project(tmp_path, clean_mirror)
    fields = {**AOIS, **boxes(400, 77.5505, 13.0105, step=0.0015, size=0.0004, per_row=20, prefix="n")}
    write_aois_geojson(fields, p.aoi_file)
    groups = p.register_fields()
    assert len(groups) >= 10
    p.run("collections_job", JAN)
    cursor = dg.evaluate_automation_conditions(defs=p.defs, instance=p.instance).cursor
    order = p.instance.get_dynamic_partitions("field_group")
    p.run_range("field_stats_job", f"{order[0]}|{JAN}", f"{order[-1]}|{JAN}")
    evaluated = dg.evaluate_automation_conditions(defs=p.defs, instance=p.instance, cursor=cursor)
    assert evaluated.get_requested_partitions(SERIES) == set(order)
    assert runs_for(p, {SERIES: set(order)}) == 1
    # with at most 4 partitions per run, the same request is ceil(groups / 4) runs, never one per group
    small = make_project(
        p.storage,
        clean_mirror.stac_url,
        p.aoi_file,
        instance=p.instance,
        aois=False,
        extra={"RASTERET_GROUP_CELL_DEG": "0.01", "RASTERET_PARTITIONS_PER_RUN": "4"},
    )
    assert runs_for(small, {SERIES: set(order)}) == -(-len(order) // 4)


def runs_for(project, requested: dict) -> int:
    """How many runs the assets' backfill policies make of ``{asset key: partitions}`` (what the
    backfill daemon launches for an automation backfill)."""
    from dagster._core.definitions.automation_tick_evaluation_context import (
        build_run_requests_with_backfill_policies,
    )
    from dagster._core.definitions.events import AssetKeyPartitionKey

    partitions = [AssetKeyPartitionKey(k, p) for k, keys in requested.items() for p in keys]
    with dg.partition_loading_context(dynamic_partitions_store=project.instance):
        return len(
            build_run_requests_with_backfill_policies(partitions, project.defs.resolve_asset_graph(), project.instance)
        )


def field_stats_job_from_env():
    """The statistics job of the definitions configured by the environment (reconstructable)."""
    from rasteret_pipelines.defs import build_definitions

    return build_definitions().resolve_job_def("field_stats_job")


@pytest.mark.timeout(300)
def test_the_same_assets_run_with_the_multiprocess_executor(tmp_path, clean_mirror, monkeypatch):
    """Groups are independent units: a run over two months x two groups in its own processes
    (the default multiprocess executor, as `dagster dev` and a run launcher run it)."""
    p = make_project(
        str(tmp_path / "data"),
        clean_mirror.stac_url,
        str(tmp_path / "aois.geojson"),
        instance=local_instance(tmp_path / "home"),
        aois={**AOIS, "s": shapely.geometry.box(77.551, 13.011, 77.553, 13.013)},
        extra={"RASTERET_GROUP_CELL_DEG": "0.02"},
    )
    groups = p.register_fields()
    assert len(groups) == 2
    for month in (JAN, FEB):
        p.run("collections_job", month)
    for name, value in p.settings.env.items():
        monkeypatch.setenv(name, value)
    order = p.instance.get_dynamic_partitions("field_group")
    with dg.execute_job(
        dg.reconstructable(field_stats_job_from_env),
        instance=p.instance,
        tags=partition_range_tags(f"{order[0]}|{JAN}", f"{order[-1]}|{FEB}"),
    ) as result:
        assert result.success
        kinds = {e.event_type_value for e in result.all_events}
        assert "STEP_SKIPPED" not in kinds
        assert result.dagster_run.run_config.get("execution", {}).get("config", {}).get("in_process") is None
    assert p.instance.get_materialized_partitions(STATS) == {f"{g}|{m}" for g in order for m in (JAN, FEB)}


def _series_table(n_fields: int, seed: int = 7):
    """A time-series table of ``n_fields`` fields over 5 dates, each field on 2 to 5 of them,
    with NaN and null means and null valid fractions sprinkled in."""
    import datetime as dt

    import pyarrow as pa

    rng = np.random.default_rng(seed)
    days = [dt.date(2024, 1, 5) + dt.timedelta(days=5 * i) for i in range(5)]
    ids, dates, means, fractions = [], [], [], []
    for i in range(n_fields):
        for d in sorted(rng.choice(5, size=int(rng.integers(2, 6)), replace=False)):
            ids.append(f"f{i:06d}")
            dates.append(days[d])
            r = rng.random()
            means.append(None if r < 0.03 else float("nan") if r < 0.08 else round(float(rng.uniform(-0.2, 0.9)), 6))
            fractions.append(None if rng.random() < 0.05 else float(rng.random()))
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "date": pa.array(dates, pa.date32()),
            "ndvi_mean": pa.array(means, pa.float64()),
            "ndvi_valid_fraction": pa.array(fractions, pa.float64()),
        }
    )


@pytest.mark.parametrize("n_fields", [3, 100_000])
def test_time_series_metadata_of_100000_fields_equals_pandas(n_fields):
    """The group's median per date (the upper median of the valid means: pandas' quantile with
    ``interpolation="higher"``), the mean valid fraction per date, the counts and the listed
    fields, against pandas on the same rows."""
    from rasteret_pipelines.defs.assets.fields import SERIES_FIELDS_LISTED, group_series_metadata
    from rasteret_pipelines.defs.plot import ndvi_sparkline_markdown

    table = _series_table(n_fields)
    meta = group_series_metadata(table, "g", ["2024-01"], S2)
    frame = table.to_pandas()
    valid = frame[frame["ndvi_mean"].notna()]
    median = valid.groupby("date")["ndvi_mean"].quantile(0.5, interpolation="higher").sort_index()
    fraction = frame.groupby("date")["ndvi_valid_fraction"].mean().reindex(median.index)
    assert meta["fields"] == frame["id"].nunique() == n_fields and meta["rows"] == len(frame)
    assert meta["dates"] == len(median) and meta["first_date"] == str(median.index[0])
    assert meta["last_date"] == str(median.index[-1])
    expected_plot = ndvi_sparkline_markdown(
        list(median.index), median.tolist(), "median NDVI of group g", fraction.tolist()
    )
    assert getattr(meta["plot"], "value", meta["plot"]) == expected_plot
    records = meta["fields_table"].records
    listed = sorted(frame["id"].unique())[:SERIES_FIELDS_LISTED]
    assert [r.data["field"] for r in records] == listed
    for record in records:
        rows = frame[frame["id"] == record.data["field"]].sort_values("date")
        own = rows[rows["ndvi_mean"].notna()]
        assert record.data["dates"] == len(rows)
        if len(own):
            # shown to 4 decimals: within half a unit of the 4th of pandas' mean
            assert abs(record.data["mean_ndvi"] - own["ndvi_mean"].mean()) <= 5e-5 + 1e-12
            assert record.data["last_date"] == str(own["date"].iloc[-1])
            assert record.data["last_ndvi"] == round(float(own["ndvi_mean"].iloc[-1]), 4)
            assert record.data["sparkline"] == " ".join(f"{v:.2f}" for v in own["ndvi_mean"].iloc[-12:])
        else:
            assert np.isnan(record.data["mean_ndvi"]) and record.data["last_date"] == ""
    assert meta["_svg"].startswith("<svg")


def test_time_series_metadata_of_an_empty_group():
    from rasteret_pipelines.defs.assets.fields import group_series_metadata

    meta = group_series_metadata(_series_table(1).slice(0, 0), "g", [], S2)
    assert (meta["fields"], meta["rows"], meta["dates"], meta["first_date"]) == (0, 0, 0, "")
    assert meta["fields_table"].records == []
