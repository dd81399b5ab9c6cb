"""The AOI file: GeoJSON or GeoParquet, and every way it can be wrong, named in the error."""

import json

import geopandas as gpd
import pytest
import shapely.geometry

from rasteret_pipelines.aois import AoiFileError, load_aois, parse_aois, write_aois_geojson

BOX = shapely.geometry.box(77.55, 13.01, 77.58, 13.08)


def feature(props, geometry=BOX, **extra):
    geom = shapely.geometry.mapping(geometry) if geometry is not None and not isinstance(geometry, dict) else geometry
    return {"type": "Feature", "properties": props, "geometry": geom, **extra}


def geojson(*features, **extra) -> bytes:
    return json.dumps({"type": "FeatureCollection", "features": list(features), **extra}).encode()


def test_geojson_ids_names_and_lonlat(tmp_path):
    path = tmp_path / "aois.geojson"
    write_aois_geojson(
        {"1": BOX, "farm-2": shapely.geometry.box(77.56, 13.02, 77.59, 13.09)}, path, names={"1": "north field"}
    )
    aois = load_aois(str(path))
    assert aois.ids == ["1", "farm-2"]
    assert aois.frame.loc["1", "name"] == "north field"
    assert aois.bbox == pytest.approx((77.55, 13.01, 77.59, 13.09))
    assert len(aois.fingerprint) == 64


def test_feature_id_member_and_numeric_ids():
    aois = parse_aois(geojson(feature({}, id=7), feature({"id": 8.0})))
    assert aois.ids == ["7", "8"]


def test_geoparquet_in_utm_is_reprojected(tmp_path):
    frame = gpd.GeoDataFrame({"id": ["a"], "name": ["x"]}, geometry=[BOX], crs="EPSG:4326").to_crs("EPSG:32643")
    path = tmp_path / "aois.parquet"
    frame.to_parquet(path)
    aois = load_aois(str(path))
    assert aois.ids == ["a"]
    assert aois.geometry("a").bounds == pytest.approx(BOX.bounds, abs=1e-9)


@pytest.mark.parametrize(
    "data, message",
    [
        (geojson(), "contains no areas of interest"),
        (geojson(feature({"name": "x"})), "row 1: no id"),
        (geojson(feature({"id": "a"}), feature({"id": "a"})), "row 1 (id 'a'): duplicate id 'a' (rows 1, 2)"),
        (geojson(feature({"id": "a/b"})), "row 1 (id 'a/b'): id 'a/b' is not a safe name"),
        (
            geojson(
                feature({"id": "bow"}, shapely.geometry.Polygon([(77.5, 13), (77.6, 13.1), (77.6, 13), (77.5, 13.1)]))
            ),
            "row 1 (id 'bow'): invalid geometry: Self-intersection",
        ),
        (
            geojson(feature({"id": "pt"}, shapely.geometry.Point(77.5, 13))),
            "row 1 (id 'pt'): geometry is a Point, not a Polygon",
        ),
        (geojson(feature({"id": "none"}, None)), "row 1 (id 'none'): no geometry"),
        # UTM metres written as if they were GeoJSON longitude/latitude: the wrong CRS
        (
            geojson(feature({"id": "utm"}, shapely.geometry.box(776510, 1439620, 779860, 1447410))),
            "row 1 (id 'utm'): coordinates (776510.0, 1439620.0, 779860.0, 1447410.0) are not longitude/latitude",
        ),
        (b"not json at all", "is neither GeoJSON nor GeoParquet"),
        (json.dumps({"type": "Topology"}).encode(), "is not a GeoJSON FeatureCollection"),
    ],
)
def test_malformed_files_name_the_fault(data, message):
    with pytest.raises(AoiFileError) as info:
        parse_aois(data, "aois.geojson")
    assert message in str(info.value) and "aois.geojson" in str(info.value)


def test_wrong_declared_crs_is_caught():
    """Degrees declared as UTM (legacy GeoJSON crs member) land far outside lon/lat."""
    data = geojson(feature({"id": "a"}), crs={"type": "name", "properties": {"name": "EPSG:32643"}})
    with pytest.raises(AoiFileError, match=r"row 1 \(id 'a'\): lies outside the area of use of its CRS EPSG:32643"):
        parse_aois(data)


def test_geoparquet_without_crs_or_id(tmp_path):
    path = tmp_path / "noid.parquet"
    gpd.GeoDataFrame({"name": ["x"]}, geometry=[BOX], crs="EPSG:4326").to_parquet(path)
    with pytest.raises(AoiFileError, match="no 'id' column"):
        load_aois(str(path))
    path = tmp_path / "nocrs.parquet"
    gpd.GeoDataFrame({"id": ["x"]}, geometry=[BOX]).to_parquet(path)
    with pytest.raises(AoiFileError, match="no CRS"):
        load_aois(str(path))


def test_missing_file():
    with pytest.raises(AoiFileError, match="does not exist"):
        load_aois("/nonexistent/aois.geojson")


def test_aoi_parsing_is_library_code_without_dagster():
    import subprocess
    import sys

    code = (
        "import sys, json\n"
        "from rasteret_pipelines.aois import parse_aois\n"
        "parse_aois(json.dumps({'type': 'FeatureCollection', 'features': [{'type': 'Feature', "
        "'properties': {'id': 'a'}, 'geometry': {'type': 'Polygon', 'coordinates': "
        "[[[77.55, 13.01], [77.58, 13.01], [77.58, 13.08], [77.55, 13.08], [77.55, 13.01]]]}}]}).encode())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'dagster' or m.startswith('rasteret_pipelines.defs')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_lenient_aois_leave_bad_geometries_out_and_raise_on_bad_ids():
    bow = shapely.geometry.Polygon([(77.5, 13), (77.6, 13.1), (77.6, 13), (77.5, 13.1)])
    data = geojson(
        feature({"id": "ok"}), feature({"id": "bow"}, bow), feature({"id": "pt"}, shapely.geometry.Point(77.5, 13))
    )
    with pytest.raises(AoiFileError, match="invalid geometry"):
        parse_aois(data, "aois.geojson")
    aois = parse_aois(data, "aois.geojson", lenient=True)
    assert aois.ids == ["ok"]
    assert sorted(aois.invalid) == ["bow", "pt"]
    assert "row 2 (id 'bow'): invalid geometry: Self-intersection" in aois.invalid["bow"]
    assert "aois.geojson" in aois.invalid["pt"] and "is a Point" in aois.invalid["pt"]
    with pytest.raises(AoiFileError, match=r"row 1 \(id 'ok'\): duplicate id 'ok' \(rows 1, 2\)"):
        parse_aois(geojson(feature({"id": "ok"}), feature({"id": "ok"})), "aois.geojson", lenient=True)
    with pytest.raises(AoiFileError, match="no usable AOI is left"):
        parse_aois(geojson(feature({"id": "bow"}, bow)), "aois.geojson", lenient=True)


def test_one_row_checker_with_strict_and_lenient_modes():
    """The AOI file and the field file share ``check_rows``: the same rows give the same reasons,
    raised (strict) or listed (lenient)."""
    from rasteret_pipelines.aois import FAULTS, check_rows, read_rows
    from rasteret_pipelines.fields import parse_fields

    data = geojson(feature({"id": "ok"}), feature({"name": "no id"}), feature({"id": "g", "group": "a/b"}))
    rows = read_rows(data, "f.geojson")
    lenient = check_rows(rows, "f.geojson", skip=FAULTS)
    assert list(lenient.frame.index) == ["ok"]
    assert lenient.skipped == {"row 2": "no id", "row 3 (id 'g')": "group 'a/b' is not a safe name"}
    assert parse_fields(data, "f.geojson").skipped == lenient.skipped
    with pytest.raises(AoiFileError, match="f.geojson: row 2: no id"):
        check_rows(rows, "f.geojson", skip=())
    with pytest.raises(AoiFileError, match=r"row 3 \(id 'g'\): group 'a/b' is not a safe name"):
        check_rows(rows, "f.geojson", skip=("id",))
