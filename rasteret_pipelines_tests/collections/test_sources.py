"""One place per data source: the registry, its validation, the cloud-mask rules against the
providers' documentation, and a layout check that no other module names a source's bands.

The end-to-end proof that a source registered outside the library is indexed, read and turned
into NDVI is ``rasteret_pipelines_tests/reading/test_registered_source.py``.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import rasteret_pipelines
from rasteret_pipelines.collections import (
    SOURCES,
    DataSource,
    MaskedBits,
    MaskedClasses,
    NdviBands,
    get_source,
    register_source,
    schema,
    unregister_source,
)
from rasteret_pipelines.collections.sources import PROPERTY_TYPE_NAMES
from rasteret_pipelines.errors import SourceDefinitionError, UnknownSourceError
from rasteret_pipelines_tests.collections.conftest import USGS_DIR

PACKAGE = Path(rasteret_pipelines.__file__).parent
SOURCES_MODULE = PACKAGE / "collections" / "sources.py"
ALLOWED = {
    # The Dagster project's default source is named by id (settings may name a source, not bands).
    ("defs/settings.py", "sentinel-2-l2a"),
}


# -- layout: nothing but collections/sources.py names a source's bands -----------------------


def _docstring_ids(tree: ast.AST) -> set[int]:
    """Ids of string constants that are statements of their own: docstrings (module, class,
    function and attribute docstrings). Comments are not in the AST at all."""
    return {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    }


def source_names(sources) -> dict[str, str]:
    """casefolded name -> what it is, for every band code, asset key and id of ``sources``."""
    out = {}
    for source in sources:
        out.update({code.casefold(): f"band code of {source.id}" for code in source.bands})
        out.update({key.casefold(): f"asset key of {source.id}" for key in source.bands.values()})
        out[source.id.casefold()] = "source id"
    return out


def literals_naming_sources(text: str, names: dict[str, str]) -> list[tuple[int, str, str]]:
    """(line, literal, what) of each string literal of ``text`` used in code that is one of ``names``."""
    tree = ast.parse(text)
    docs = _docstring_ids(tree)
    return [
        (node.lineno, node.value, names[node.value.casefold()])
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docs
        and node.value.casefold() in names
    ]


def package_modules() -> list[Path]:
    return [
        p for p in sorted(PACKAGE.rglob("*.py")) if p != SOURCES_MODULE and "mirror" not in p.relative_to(PACKAGE).parts
    ]


def test_no_module_but_sources_names_a_band_or_a_source():
    names = source_names(SOURCES.values())
    assert {"red", "nir08", "scl", "qa_pixel", "b04", "sentinel-2-l2a"} <= set(names)
    found = []
    for path in package_modules():
        rel = path.relative_to(PACKAGE).as_posix()
        for line, literal, what in literals_naming_sources(path.read_text(), names):
            if (rel, literal) not in ALLOWED:
                found.append(f"{rel}:{line}: {literal!r} ({what})")
    assert found == [], (
        "a data source's bands (or id) are named outside collections/sources.py; ask the "
        "DataSource instead (ndvi_bands, cloud_mask, reflectance_properties, properties):\n" + "\n".join(found)
    )


def test_the_layout_check_catches_what_the_registry_replaced():
    """The check fails on the old code: a per-source band table, a band-name switch, a
    Sentinel-2 column list. Docstrings and comments may keep names."""
    names = source_names(SOURCES.values())
    old_pipeline = (
        'NDVI_BANDS = {"landsat-c2l2-sr": ("red", "nir08")}\n'
        '"""(red, near-infrared) asset keys per source, e.g. "red"."""\n'
        "def bands(source_id):\n"
        '    """Bands, e.g. ``"nir"``."""\n'
        '    return NDVI_BANDS.get(source_id, ("red", "nir"))  # fallback "nir"\n'
    )
    found = {literal for _, literal, _ in literals_naming_sources(old_pipeline, names)}
    assert found == {"landsat-c2l2-sr", "red", "nir08", "nir"}
    old_quality = 'def clear(band, v):\n    if band == "scl":\n        return v != 9\n    if band == "QA_PIXEL": ...\n'
    assert [lit for _, lit, _ in literals_naming_sources(old_quality, names)] == ["scl", "QA_PIXEL"]
    old_plan = 'COLUMNS = ["id", f"{x}_href", "B8A"]\n'
    assert [lit for _, lit, _ in literals_naming_sources(old_plan, names)] == ["B8A"]


# -- the registry ---------------------------------------------------------------------------


def _copy(source: DataSource, **changes) -> DataSource:
    return dataclasses.replace(source, **{"aliases": (), **changes})


def test_every_source_declares_its_parts():
    for source in SOURCES.values():
        assert isinstance(source.ndvi_bands, NdviBands)
        assert {source.cloud_mask.band, *source.ndvi_bands} <= set(source.asset_keys)
        assert source.quality_band == source.cloud_mask.band
        assert source.pixel_size > 0
        assert set(source.reflectance_properties) <= set(source.properties)
        assert set(source.properties.values()) <= set(PROPERTY_TYPE_NAMES)
    # Providers' pixel sizes: Sentinel-2 B04/B08 10 m, Landsat OLI B4/B5 30 m.
    assert get_source("sentinel-2-l2a").pixel_size == 10.0
    assert get_source("landsat-c2l2-sr").pixel_size == 30.0
    assert get_source("landsat-c2l2-sr").ndvi_bands == ("red", "nir08")


def test_registering_a_source_makes_its_id_and_aliases_resolve():
    new = _copy(get_source("landsat-c2-l2"), id="test-landsat-copy", aliases=("TEST_LANDSAT",))
    assert register_source(new) is new
    try:
        assert get_source("test-landsat-copy") is new and get_source("TEST_LANDSAT") is new
        assert SOURCES["test-landsat-copy"] is new
    finally:
        assert unregister_source("test-landsat-copy") is new
    with pytest.raises(UnknownSourceError, match="register_source"):
        get_source("test-landsat-copy")
    with pytest.raises(UnknownSourceError, match="test-landsat-copy"):
        unregister_source("test-landsat-copy")


@pytest.mark.parametrize(
    "changes, taken",
    [
        ({"id": "sentinel-2-l2a"}, "'sentinel-2-l2a'"),
        ({"id": "x-new", "aliases": ("landsat",)}, "'landsat'"),
        ({"id": "SENTINEL2"}, "'SENTINEL2'"),
    ],
)
def test_registering_a_taken_name_is_refused(changes, taken):
    with pytest.raises(SourceDefinitionError, match=taken):
        register_source(_copy(get_source("sentinel-2-l2a"), **changes))
    assert "x-new" not in SOURCES and list(SOURCES).count("sentinel-2-l2a") == 1


def test_register_source_takes_only_data_sources():
    with pytest.raises(SourceDefinitionError, match="DataSource"):
        register_source({"id": "dict-source"})


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"ndvi_bands": ("red", "B08")}, "NDVI nir band 'B08' is not one of its asset keys"),
        ({"ndvi_bands": ("red",)}, "ndvi_bands must be"),
        ({"cloud_mask": MaskedBits(band="qa_pixel", bits=(3,))}, "cloud-mask band 'qa_pixel'"),
        ({"cloud_mask": "scl"}, "cloud_mask must be a CloudMask"),
        ({"pixel_size": 0}, "pixel_size"),
        ({"properties": {"s2:processing_baseline": "text"}}, "not among"),
        ({"properties": {}}, "reflectance properties"),
        ({"bands": {}}, "bands must map"),
    ],
)
def test_an_incomplete_or_contradictory_source_is_refused(changes, message):
    with pytest.raises(SourceDefinitionError, match=message) as info:
        _copy(get_source("sentinel-2-l2a"), id="test-bad", **changes)
    assert "test-bad" in str(info.value)


def test_ndvi_bands_and_cloud_mask_are_required():
    s2 = get_source("sentinel-2-l2a")
    fields = {f.name: f for f in dataclasses.fields(DataSource)}
    for name in ("cloud_mask", "ndvi_bands", "pixel_size"):
        assert fields[name].default is dataclasses.MISSING and fields[name].default_factory is dataclasses.MISSING
    with pytest.raises(TypeError, match="ndvi_bands"):
        DataSource(
            id="x",
            stac_url="http://127.0.0.1:1",
            collection="x",
            short_name="x",
            bands=s2.bands,
            cloud_mask=s2.cloud_mask,
            pixel_size=10.0,
        )


@pytest.mark.parametrize(
    "rule",
    [
        lambda: MaskedClasses(band="scl"),
        lambda: MaskedClasses(band="", classes=(1,)),
        lambda: MaskedBits(band="qa", bits=(32,)),
        lambda: MaskedBits(band="qa", bits=(-1,)),
    ],
)
def test_bad_cloud_mask_rules_are_refused(rule):
    with pytest.raises(SourceDefinitionError):
        rule()


# -- cloud-mask rules against the providers' documentation -------------------------------------

# Sentinel-2 L2A Scene Classification (SCL) values, from ESA's Sentinel-2 L2A documentation
# ("Scene Classification (SC)" table of the Level-2A algorithm overview, SentiWiki
# https://sentiwiki.copernicus.eu/web/s2-processing and the L2A Product Definition Document
# S2-PDGS-MPC-L2A-PDD). Cloud masking drops no data, defects, cloud shadows, medium and high
# probability clouds and cirrus; it keeps the land, water, dark, unclassified and snow classes.
SCL_DOCUMENTED = {
    0: ("NO_DATA", True),
    1: ("SATURATED_OR_DEFECTIVE", True),
    2: ("CAST_SHADOWS / DARK_AREA_PIXELS", False),
    3: ("CLOUD_SHADOWS", True),
    4: ("VEGETATION", False),
    5: ("NOT_VEGETATED", False),
    6: ("WATER", False),
    7: ("UNCLASSIFIED", False),
    8: ("CLOUD_MEDIUM_PROBABILITY", True),
    9: ("CLOUD_HIGH_PROBABILITY", True),
    10: ("THIN_CIRRUS", True),
    11: ("SNOW or ICE", False),
}


@pytest.mark.parametrize("source_id", ["sentinel-2-l2a", "sentinel-2-c1-l2a"])
def test_scl_rule_masks_the_documented_cloud_classes(source_id):
    rule = get_source(source_id).cloud_mask
    assert rule.band == "scl"
    values = np.array(sorted(SCL_DOCUMENTED), dtype=np.uint8).reshape(3, 4)
    expected = np.array([not SCL_DOCUMENTED[v][1] for v in values.ravel()]).reshape(3, 4)
    np.testing.assert_array_equal(rule.clear(values), expected)
    assert rule.clear(np.array([255], np.uint8)).tolist() == [True]  # undefined values are not clouds


# Landsat Collection 2 QA_PIXEL bits, from the USGS item itself: the ``classification:bitfields``
# of its ``qa_pixel`` asset (recorded USGS landsatlook item, see data/README.md), which are the
# bits of the Landsat 8-9 Collection 2 Level-2 Science Product Guide (LSDS-1619), table "Pixel
# Quality Assessment (QA_PIXEL) Bit Index". Masked: the one-bit flags fill, dilated cloud,
# cirrus, cloud and cloud shadow; kept: snow, clear, water (and the confidence pairs, which the
# high-confidence flags already summarise).
QA_MASKED_FLAGS = {"fill", "dilated", "cirrus", "cloud", "shadow"}


def _usgs_bitfields() -> list[dict]:
    item = json.loads(next(USGS_DIR.glob("LC09_*.json")).read_text())
    return item["assets"]["qa_pixel"]["classification:bitfields"]


@pytest.mark.parametrize("source_id", ["landsat-c2l2-sr", "landsat-c2-l2"])
def test_qa_pixel_rule_masks_the_documented_flag_bits(source_id):
    rule = get_source(source_id).cloud_mask
    assert rule.band == "qa_pixel"
    fields = _usgs_bitfields()
    flags = {f["name"]: f["offset"] for f in fields if f["length"] == 1}
    assert QA_MASKED_FLAGS <= set(flags) and {"snow", "clear", "water"} <= set(flags)
    for name, offset in flags.items():
        value = np.array([1 << offset], dtype=np.uint16)
        assert rule.clear(value).tolist() == [name not in QA_MASKED_FLAGS], name
    # Every combination of the masked flags with the kept bits: masked iff a masked flag is set.
    masked_bits = sum(1 << flags[n] for n in QA_MASKED_FLAGS)
    values = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    np.testing.assert_array_equal(rule.clear(values), (values.astype(np.uint32) & masked_bits) == 0)


# -- typed properties ------------------------------------------------------------------------


def test_typed_properties_come_from_the_source():
    s2, landsat = get_source("sentinel-2-l2a"), get_source("landsat-c2l2-sr")
    s2_types = schema.property_types(s2)
    assert s2_types["earthsearch:boa_offset_applied"] == pa.bool_()
    assert s2_types["s2:processing_baseline"] == pa.string()
    assert s2_types["mgrs:utm_zone"] == pa.int64()
    assert s2_types["datetime"] == pa.timestamp("us", tz="UTC")  # common STAC properties stay
    assert "earthsearch:boa_offset_applied" not in schema.property_types(landsat)
    assert schema.property_types(landsat)["landsat:cloud_cover_land"] == pa.float64()
    empty = schema.empty_month_table(s2)
    assert empty.schema.field("earthsearch:boa_offset_applied").type == pa.bool_()
    for source in SOURCES.values():
        for name, type_name in source.properties.items():
            assert schema.property_types(source)[name] == pa.type_for_alias(type_name)


def test_items_are_stored_with_the_sources_property_types():
    """A recorded USGS item's WRS path ("092") stays text, its land cloud cover a float."""
    item = json.loads(next(USGS_DIR.glob("LC09_*.json")).read_text())
    item["properties"]["landsat:cloud_cover_land"] = 12  # an integer in JSON
    table = schema.items_table([item], get_source("landsat-c2l2-sr"))
    assert table.schema.field("landsat:cloud_cover_land").type == pa.float64()
    assert table.column("landsat:wrs_path").to_pylist() == [item["properties"]["landsat:wrs_path"]]
    assert table.schema.field("landsat:wrs_path").type == pa.string()
