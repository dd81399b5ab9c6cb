"""The COG factory writes what it is asked for, deterministically, and refuses the rest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from rasteret_pipelines_tests.cog_factory import FactoryError, make_data, write_cog


def test_data_is_deterministic_and_spans_the_dtype():
    a = make_data("uint16", 2, 50, 60, seed=3)
    assert a.shape == (2, 50, 60) and a.dtype == np.uint16
    np.testing.assert_array_equal(a, make_data("uint16", 2, 50, 60, seed=3))
    assert not np.array_equal(a, make_data("uint16", 2, 50, 60, seed=4))
    assert make_data("int16", 1, 40, 40).min() < 0
    assert make_data("uint32", 1, 40, 40).max() > 2**31
    f = make_data("float32", 1, 40, 40)
    assert f.min() < 0 and not np.all(f == np.round(f))


def test_written_file_matches_request(tmp_path: Path):
    path = write_cog(
        tmp_path / "a.tif",
        dtype="int16",
        count=3,
        width=300,
        height=170,
        blocksize=128,
        compress="ZSTD",
        predictor=2,
        interleave="band",
        endian="big",
        nodata=-1,
        mask=False,
    )
    with rasterio.open(path) as src:
        assert (src.count, src.width, src.height, src.dtypes[0]) == (3, 300, 170, "int16")
        assert src.block_shapes[0] == (128, 128)
        assert src.nodata == -1
        assert src.overviews(1) == [2, 4]  # halving until 75x43 fits in one 128 block
        np.testing.assert_array_equal(src.read()[:, 0, 120:], make_data("int16", 3, 170, 300)[:, 0, 120:])
    assert path.read_bytes()[:4] == b"MM\x00\x2a"
    assert not (tmp_path / "a.src.tif").exists()  # the intermediate source is removed


def test_unknown_creation_option_is_an_error(tmp_path: Path):
    with pytest.raises(FactoryError, match="FOO"):
        write_cog(tmp_path / "a.tif", width=300, height=200, foo="bar")


def test_silently_dropped_option_is_an_error(tmp_path: Path):
    # GDAL writes no Predictor tag with LZMA, without a warning: the check after writing sees it
    with pytest.raises(FactoryError, match="predictor"):
        write_cog(tmp_path / "a.tif", dtype="float32", compress="LZMA", predictor=3, width=300, height=200)


def test_contradictory_arguments(tmp_path: Path):
    with pytest.raises(ValueError, match="COG driver"):
        write_cog(tmp_path / "a.tif", driver="COG", endian="big")
    with pytest.raises(ValueError, match="compress='JPEG2000' is not one of"):
        write_cog(tmp_path / "a.tif", compress="JPEG2000")
