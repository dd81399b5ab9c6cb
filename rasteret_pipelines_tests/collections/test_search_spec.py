"""``build_collection`` takes its search as a ``SearchSpec`` or as today's keywords, alike."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from rasteret_pipelines.collections import SearchSpec, build_collection
from rasteret_pipelines.errors import InvalidSearchError, UnknownBandError
from rasteret_pipelines_tests.collections.conftest import july_2025_items

JULY = ("2025-07-01", "2025-07-31")


@pytest.fixture
def stac(stac_for, mirror):
    return stac_for([mirror.publish(i) for i in july_2025_items()])


def _manifest(root, name) -> dict:
    manifest = json.loads((root / name / "_manifest.json").read_text())
    for key in ("built_at", "name"):
        manifest.pop(key)
    for month in manifest["months"].values():
        month.pop("built_at")
    return manifest


def test_a_spec_builds_what_the_keywords_build(tmp_path, stac):
    search = dict(date_range=JULY, bands=["red"], cloud_cover_lt=50, bbox=(-60, -20, -40, 0), stac_url=stac.url)
    by_keywords = build_collection("sentinel-2-l2a", "kw", tmp_path, progress=False, **search)
    by_spec = build_collection(SearchSpec("sentinel-2-l2a", **search), "spec", tmp_path, progress=False)
    assert by_spec.items == by_keywords.items > 0
    assert _manifest(tmp_path, "spec") == _manifest(tmp_path, "kw")
    assert _manifest(tmp_path, "spec")["filters"]["cloud_cover_lt"] == 50
    ids = [pq.read_table(tmp_path / n / "month=2025-07" / "items.parquet")["id"].to_pylist() for n in ("kw", "spec")]
    assert ids[0] == ids[1]
    # A keyword fills what the spec leaves open.
    spec = SearchSpec("sentinel-2-l2a", JULY, bands=["red"])
    mixed = build_collection(spec, "mixed", tmp_path, stac_url=stac.url, progress=False)
    assert mixed.items == len(july_2025_items())  # no filter: every recorded July item


@pytest.mark.parametrize(
    "source, kwargs, match",
    [
        ("sentinel-2-l2a", {"date_range": JULY, "colour": "red"}, "unexpected keyword argument 'colour'"),
        ("sentinel-2-l2a", {"bands": ["red"]}, "date_range must be"),
        (SearchSpec("sentinel-2-l2a", JULY, bands=["red"]), {"bands": ["nir"]}, "bands is given twice"),
        (SearchSpec("sentinel-2-l2a", JULY), {"date_range": ("2025-08-01", "2025-08-31")}, "date_range is given twice"),
    ],
)
def test_bad_search_keywords_are_typed_errors_before_any_request(tmp_path, source, kwargs, match):
    with pytest.raises(InvalidSearchError, match=match):
        build_collection(source, "bad", tmp_path, stac_url="http://127.0.0.1:9", **kwargs)
    assert not (tmp_path / "bad").exists()


def test_a_spec_is_checked_like_the_keywords():
    with pytest.raises(UnknownBandError, match="B99"):
        SearchSpec("sentinel-2-l2a", JULY, bands=["B99"]).checked()
    with pytest.raises(InvalidSearchError, match="lat, lon"):
        SearchSpec("sentinel-2-l2a", JULY, bbox=(39.66, -106.18, 40.65, -104.88)).checked()
    checked = SearchSpec("sentinel-2-l2a", JULY, bands=["B04"], platform="sentinel-2b", cloud_cover_lt=10).checked()
    assert checked.keys == ["red"]
    assert checked.stac_query == {"eo:cloud_cover": {"lt": 10.0}, "platform": {"eq": "sentinel-2b"}}
