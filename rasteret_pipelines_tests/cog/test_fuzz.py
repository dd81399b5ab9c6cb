"""Seeded mutation fuzzing of the COG engine, CI subset (see ``fuzzing.py``; thousands of cases:
``python -m benchmarks.fuzz_cog``).

Mutants of seven small GDAL COGs (Deflate, LZW planar int16, ZSTD float32, JPEG RGB, BigTIFF
sparse, big-endian, internal mask): 0 untyped exceptions, 0 hangs, 0 repeated reads that
differ, 0 reads of a still-valid mutant (IFDs relinked, SampleFormat/Photometric changed) that
differ from rasterio's, and peak RSS bounded.
"""

from __future__ import annotations

import logging

import pytest

from rasteret_pipelines_tests.cog import fuzzing

CASES = 700
SEED = 2026
RSS_LIMIT_MB = 256


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return fuzzing.write_seed_cogs(tmp_path_factory.mktemp("fuzz-seeds"))


def test_mutated_cogs_fail_typed_never_hang_and_read_identically(seeds, tmp_path, caplog):
    caplog.set_level(logging.ERROR)  # IFD loops are warned about; not the point here
    measured = fuzzing.reset_peak_rss()
    base = fuzzing.status_mb("VmRSS")
    report = fuzzing.run_cases(seeds, CASES, tmp_path, seed=SEED, time_limit=10.0)
    growth = fuzzing.status_mb("VmHWM") - base
    assert report.cases == CASES
    assert not report.bugs, "\n\n".join(report.bugs[:10])
    assert report.outcomes["untyped"] == report.outcomes["hang"] == report.outcomes["differs"] == 0
    # The mutants exercise both paths: many refused (typed), many still read.
    assert report.outcomes["typed"] > CASES // 4 and report.outcomes["ok"] > CASES // 10
    assert {"TiffFormatError", "BlockDecodeError"} <= set(report.errors)
    assert report.compared > CASES // 40  # still-valid mutants read and equal to GDAL
    assert report.slowest < 5.0
    if measured:
        assert growth < RSS_LIMIT_MB, f"peak RSS grew by {growth:.0f} MB over {CASES} mutants"


def test_a_case_replays_from_its_index(seeds):
    name, mutant, what = fuzzing.replay(seeds, 9, seed=SEED)
    again = fuzzing.replay(seeds, 9, seed=SEED)
    assert (name, mutant, what) == again
    assert name == sorted(seeds)[9 % len(seeds)] and mutant != seeds[name]
