"""The area of a group of fields (the union its COG is read over and masked to): equal to geopandas'
``dissolve`` for every kind of group, by the union shapely has for the kind, and made once per set
of fields, however many months a run covers."""

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio.features
import rasterio.transform
import shapely
import shapely.geometry

from rasteret_pipelines.defs import pipeline
from rasteret_pipelines.defs.pipeline import COVERAGE_PROBE_PAIRS, GroupAreas, union_by_group
from rasteret_pipelines_tests.conftest import count_calls
from rasteret_pipelines_tests.defs.conftest import GROUP, local_instance, make_project

U = 2.0**-10
"""A side of the test fields' grid in degrees (a power of two: every corner is exact, so edges that
should match do match)."""
X0, Y0 = 77.5, 13.0


def box(x0, y0, x1, y1):
    """A field from grid corners (in units of :data:`U` from (X0, Y0))."""
    return shapely.geometry.box(X0 + x0 * U, Y0 + y0 * U, X0 + x1 * U, Y0 + y1 * U)


def ring_with_hole(outer, hole):
    """A polygon from two grid boxes: ``outer`` with ``hole`` cut out."""
    return shapely.Polygon(box(*outer).exterior.coords, [box(*hole).exterior.coords])


def diamond(x, y, r=1.0):
    """A square field turned 45 degrees, centred on grid point (x, y)."""
    return shapely.Polygon([(X0 + (x + dx) * U, Y0 + (y + dy) * U) for dx, dy in ((-r, 0), (0, -r), (r, 0), (0, r))])


def grid(n, size=1.0, step=1.0):
    """``n`` x ``n`` fields of ``size`` units every ``step`` units: a coverage when they are equal."""
    return [box(i * step, j * step, i * step + size, j * step + size) for j in range(n) for i in range(n)]


# (fields of one group, the union shapely should use: "disjoint", "coverage" or "overlay")
CASES = {
    "one field": ([box(0, 0, 3, 2)], "disjoint"),
    "fields apart": ([box(0, 0, 1, 1), box(2, 0, 3, 1), box(0, 2, 1, 3)], "disjoint"),
    "apart, their bounding boxes overlapping": ([diamond(2, 2), diamond(3.5, 3.5)], "disjoint"),
    "overlapping": ([box(0, 0, 2, 2), box(1, 1, 3, 3), box(5, 5, 6, 6)], "overlay"),
    "one inside another": ([box(0, 0, 4, 4), box(1, 1, 2, 2)], "overlay"),
    "the same field twice": ([box(0, 0, 2, 2), box(0, 0, 2, 2)], "overlay"),
    "shared edges": (grid(2), "coverage"),
    "edges that meet without a shared vertex": ([box(0, 0, 2, 2), box(2, 0, 4, 1), box(2, 1, 4, 2)], "overlay"),
    "touching at a corner": ([box(0, 0, 1, 1), box(1, 1, 2, 2)], "coverage"),
    "a field in another's hole, apart": (
        [ring_with_hole((0, 0, 6, 6), (2, 2, 4, 4)), box(2.5, 2.5, 3.5, 3.5)],
        "disjoint",
    ),
    "a field filling another's hole": ([ring_with_hole((0, 0, 6, 6), (2, 2, 4, 4)), box(2, 2, 4, 4)], "coverage"),
    "fields around a gap (the union has a hole)": ([g for k, g in enumerate(grid(3)) if k != 4], "coverage"),
    "a multipolygon and a field joining its parts": (
        [shapely.MultiPolygon([box(0, 0, 1, 1), box(3, 0, 4, 1)]), box(1, 0, 3, 1)],
        "coverage",
    ),
    "a multipolygon and a field overlapping a part": (
        [shapely.MultiPolygon([box(0, 0, 1, 1), box(3, 0, 4, 1)]), box(0.5, 0.5, 2, 2)],
        "overlay",
    ),
    "a multipolygon alone": ([shapely.MultiPolygon([box(0, 0, 1, 1), box(3, 0, 4, 1)])], "disjoint"),
}


def dissolved(geometries, groups) -> dict[str, object]:
    """The oracle: geopandas' ``dissolve(by="group")`` (its default, unary union)."""
    frame = gpd.GeoDataFrame({"group": list(groups)}, geometry=list(geometries), crs="EPSG:4326")
    out = frame.dissolve(by="group")
    return dict(zip(out.index, out.geometry.values))


def assert_same_areas(ours: dict, theirs: dict) -> None:
    assert sorted(ours) == sorted(theirs)
    for group, expected in theirs.items():
        got = ours[group]
        assert got.is_valid, group
        assert shapely.equals(got, expected), (group, got.wkt, expected.wkt)
        assert got.area == pytest.approx(expected.area, rel=1e-12), group
        assert shapely.symmetric_difference(got, expected).area == pytest.approx(0, abs=1e-18), group


def rasterio_mask(geometry):
    """rasterio's mask of ``geometry`` on a grid of :data:`U` pixels whose centres lie on the
    fields' corners and edges (GDAL's ties: a union with other vertices or orientation must
    still give every pixel the same side)."""
    transform = rasterio.transform.from_origin(X0 - 2.5 * U, Y0 + 12.5 * U, U, U)
    return rasterio.features.geometry_mask([geometry], (16, 16), transform, invert=True)


def union_calls(monkeypatch):
    return count_calls(
        monkeypatch,
        ((shapely, "coverage_is_valid"), (shapely, "coverage_union_all"), (shapely, "disjoint_subset_union_all")),
    )


@pytest.mark.parametrize("case", CASES)
def test_a_group_s_union_equals_dissolve_s_by_the_union_its_kind_needs(case, monkeypatch):
    fields, kind = CASES[case]
    calls = union_calls(monkeypatch)
    ours = union_by_group(fields, ["g"] * len(fields))
    theirs = dissolved(fields, ["g"] * len(fields))
    assert_same_areas(ours, theirs)
    assert rasterio_mask(theirs["g"]).any()
    assert np.array_equal(rasterio_mask(ours["g"]), rasterio_mask(theirs["g"])), "the COG's mask"
    used = {"coverage": calls["coverage_union_all"], "overlay_or_disjoint": calls["disjoint_subset_union_all"]}
    assert used == (
        {"coverage": 1, "overlay_or_disjoint": 0} if kind == "coverage" else {"coverage": 0, "overlay_or_disjoint": 1}
    )
    # fields that meet nothing of their group are not checked as a coverage; those that meet are
    assert calls["coverage_is_valid"] == (0 if kind == "disjoint" else 1)


def test_every_kind_in_one_call_as_groups_that_overlap_each_other():
    """One call over all the cases, each a group, all on the same spot: fields of different
    groups overlap, yet each group is unioned alone and equals its own dissolve."""
    geometries, groups = [], []
    for case, (fields, _) in CASES.items():
        geometries += fields
        groups += [case] * len(fields)
    order = np.random.default_rng(3).permutation(len(geometries))  # groups interleaved
    geometries, groups = [geometries[i] for i in order], [groups[i] for i in order]
    assert_same_areas(union_by_group(geometries, groups), dissolved(geometries, groups))
    assert union_by_group([], []) == {}


def test_a_coverage_checks_a_few_meeting_fields_first_and_then_all(monkeypatch):
    overlapping = grid(8, size=1.5)  # every field overlaps its neighbours
    covering = grid(8)
    flawed = grid(8)[:-1] + [box(6.5, 6.5, 8, 8)]  # the last field overlaps its neighbours, far from the first pairs
    for fields in (overlapping, covering, flawed):
        pairs = shapely.STRtree(fields).query(fields, predicate="intersects")
        assert (pairs[0] < pairs[1]).sum() > COVERAGE_PROBE_PAIRS
    calls = union_calls(monkeypatch)
    assert_same_areas(union_by_group(overlapping, ["g"] * 64), dissolved(overlapping, ["g"] * 64))
    assert (calls["coverage_is_valid"], calls["coverage_union_all"]) == (1, 0), "the probe alone said no"
    calls.clear()
    assert_same_areas(union_by_group(covering, ["g"] * 64), dissolved(covering, ["g"] * 64))
    assert (calls["coverage_is_valid"], calls["coverage_union_all"]) == (2, 1), "the probe, then all: a coverage"
    calls.clear()
    assert_same_areas(union_by_group(flawed, ["g"] * 64), dissolved(flawed, ["g"] * 64))
    assert calls["coverage_union_all"] == 0, "the probe passed, all of them did not"


def fields_frame(geometries: dict, groups: dict) -> gpd.GeoDataFrame:
    frame = gpd.GeoDataFrame(
        {"group": [groups[i] for i in geometries]}, geometry=list(geometries.values()), crs="EPSG:4326"
    )
    frame.index = list(geometries)
    return frame


def test_group_areas_are_made_once_for_the_same_fields_and_again_for_changed_ones(monkeypatch):
    geometries = {"a1": box(0, 0, 1, 1), "a2": box(2, 0, 3, 1), "b1": box(0, 5, 1, 6), "b2": box(1, 5, 2, 6)}
    geometries["c1"] = box(9, 9, 10, 10)
    groups = {"a1": "a", "a2": "a", "b1": "b", "b2": "b", "c1": "c"}
    fields = fields_frame(geometries, groups)
    made: list[list[str]] = []
    real = pipeline.union_by_group

    def spy(geoms, names):
        made.append(sorted(set(names)))
        return real(geoms, names)

    monkeypatch.setattr(pipeline, "union_by_group", spy)
    areas = GroupAreas()
    first = areas.of(fields)
    assert list(first) == ["a", "b", "c"] and made == [["a", "b", "c"]]
    assert_same_areas(first, dissolved(fields.geometry, fields["group"]))

    # the same fields, as the months of a run see them: other frames (a subset, another order)
    assert areas.of(fields[fields["group"].isin(["a", "b", "c"])].iloc[::-1]) == first
    assert areas.of(fields[fields["group"] == "b"]) == {"b": first["b"]}
    assert made == [["a", "b", "c"]], "no union made again"

    # a field left out (outside a month's indexed area): only its group is unioned again
    fewer = areas.of(fields.drop(index="a2"))
    assert made[-1] == ["a"] and fewer["b"] is first["b"]
    assert_same_areas(fewer, dissolved(fields.drop(index="a2").geometry, fields.drop(index="a2")["group"]))

    # the same ids with a moved field (a new version of the file): made again, from the new geometry
    moved = fields.copy()
    moved.loc["b2", "geometry"] = box(4, 5, 5, 6)
    again = areas.of(moved)
    assert made[-1] == ["b"]
    assert_same_areas(again, dissolved(moved.geometry, moved["group"]))
    assert not shapely.equals(again["b"], first["b"])


def test_a_run_over_two_months_makes_its_group_areas_once(tmp_path, clean_mirror, monkeypatch):
    """The field-statistics asset over two months in one run: the month's dry run (and the reads,
    which run its plan) take the group's area from one union for both months; no dissolve.
    Outside Dagster, a month's dry run and a read without a plan share it through ``areas``."""
    from rasteret_pipelines.collections import load_collection
    from rasteret_pipelines.defs.io_managers import CollectionSlice
    from rasteret_pipelines.defs.pipeline import group_geotiffs, plan_field_month
    from rasteret_pipelines.fields import load_fields

    # three fields sharing edges and one apart, all in the quick start's group, inside its indexed area
    neighbours = {
        "a": shapely.geometry.box(77.5620, 13.0400, 77.5660, 13.0440),
        "b": shapely.geometry.box(77.5660, 13.0400, 77.5700, 13.0440),
        "c": shapely.geometry.box(77.5620, 13.0440, 77.5660, 13.0480),
        "d": shapely.geometry.box(77.5670, 13.0450, 77.5710, 13.0490),
    }
    project = make_project(
        str(tmp_path / "data"),
        clean_mirror.stac_url,
        str(tmp_path / "fields.geojson"),
        instance=local_instance(tmp_path / "dagster_home"),
        aois=neighbours,
    )
    assert project.register_fields() == [GROUP]
    for month in ("2024-01-01", "2024-02-01"):
        project.run("collections_job", month)
    made: list[dict] = []
    real = pipeline.union_by_group
    calls = count_calls(monkeypatch, ((gpd.GeoDataFrame, "dissolve"),))

    def spy(geoms, names):
        made.append(real(geoms, names))
        return made[-1]

    monkeypatch.setattr(pipeline, "union_by_group", spy)
    result = project.run_range("field_stats_job", f"{GROUP}|2024-01-01", f"{GROUP}|2024-02-01")
    assert result.success
    materialised = [e.materialization.partition for e in result.get_asset_materialization_events()]
    assert sorted(p for p in materialised if p and p.startswith(GROUP)) == [
        f"{GROUP}|2024-01-01",
        f"{GROUP}|2024-02-01",
    ]
    assert len(made) == 1 and calls["dissolve"] == 0
    fieldset = load_fields(project.aoi_file)
    assert_same_areas(made[0], dissolved(fieldset.frame.geometry, fieldset.frame["group"]))
    calls.clear()  # the oracle's dissolve

    full = load_collection("sentinel_2_l2a", Path(project.storage) / "collections")
    collection = CollectionSlice(
        name=full.name, storage=full.storage, manifest=full.manifest, month_keys=("2024-01", "2024-02")
    )
    areas = GroupAreas()
    for month in ("2024-01", "2024-02"):
        fields = fieldset.fields_of([GROUP])  # a new frame each month, as in the asset
        plan = plan_field_month("sentinel-2-l2a", collection, month, fields, areas=areas)
        assert len(plan.geotiffs) == 1
        paths, _ = group_geotiffs(
            "sentinel-2-l2a", collection, month, fields, output_uri=str(tmp_path / "cogs"), areas=areas
        )
        assert paths[GROUP]
    assert len(made) == 2, "one more union for the two months' dry runs and reads outside the run"
    assert calls["dissolve"] == 0
