"""The committed fixtures under ``data/`` are all there, unchanged, and all listed.

Tests find fixtures through ``data/MANIFEST.sha256`` (``conftest.committed_fixtures``), never
by globbing, so a lost file is a failure here and in every test that uses it, not a test that
quietly stops being collected. After adding or replacing a fixture (with its source in
``data/README.md``), regenerate the list:
``cd rasteret_pipelines_tests/data && git ls-files . | grep -v '^README.md$' | sort | xargs sha256sum > MANIFEST.sha256``
"""

from __future__ import annotations

import hashlib

import pytest

from rasteret_pipelines_tests.conftest import DATA_DIR, MANIFEST, committed_fixtures, fixture_tiffs


def _listed() -> dict[str, str]:
    return {path: digest for digest, path in (line.split("  ", 1) for line in MANIFEST.read_text().splitlines())}


def test_every_listed_fixture_exists_unchanged():
    listed = _listed()
    assert len(listed) > 100
    missing = sorted(p for p in listed if not (DATA_DIR / p).is_file())
    assert missing == [], f"committed fixtures missing from {DATA_DIR}"
    changed = sorted(
        p for p, digest in listed.items() if hashlib.sha256((DATA_DIR / p).read_bytes()).hexdigest() != digest
    )
    assert changed == [], "fixtures differ from the committed bytes"


def test_every_fixture_on_disk_is_listed():
    on_disk = {p.relative_to(DATA_DIR).as_posix() for p in DATA_DIR.rglob("*") if p.is_file()}
    assert sorted(on_disk - set(_listed()) - {"README.md", MANIFEST.name}) == []


def test_fixture_lists_come_from_the_manifest_not_the_disk(monkeypatch, tmp_path):
    """With the data folder gone, the lists stay whole (their tests then fail on the missing files)."""
    import rasteret_pipelines_tests.conftest as conftest

    expected = fixture_tiffs()
    monkeypatch.setattr(conftest, "DATA_DIR", tmp_path / "gone")
    monkeypatch.setattr(conftest, "TIFF_DIR", tmp_path / "gone" / "tiff")
    assert conftest.fixture_tiffs() == expected
    assert all(not p.exists() for p in conftest.committed_fixtures("stac"))
    with pytest.raises(FileNotFoundError, match="no committed fixture below"):
        committed_fixtures("nothing-here")
