"""Overviews stored out of size order, in the main IFD chain or in SubIFDs, against rasterio.

The engine sorts a file's overviews by size (``levels[1]`` is always the largest overview), so
a read that picks an overview by level or by resolution gets the one it means. Each level keeps
where it is stored (``ifd_index``, ``subifd``). GDAL 3.10 lists overviews in file order, which
rasterio's ``overview_level`` follows: :meth:`CogHeader.gdal_overview_order` maps one numbering
onto the other. Every level's pixels equal the GDAL overview of the same IFD, and a decimated
rasterio read at a level's size (GDAL picks the overview by resolution) equals that level.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio
import tifffile
from rasterio.enums import Resampling

from rasteret_pipelines.cog import CogHeader, read_header, read_window
from rasteret_pipelines.collections.schema import HEADER_TYPE

RNG = np.random.default_rng(22)
FULL = RNG.integers(0, 250, (3, 256, 320), dtype=np.uint8)
FACTORS = (4, 2, 8)  # the order the overviews are stored in


def _overview(factor: int) -> np.ndarray:
    return np.ascontiguousarray(FULL[:, ::factor, ::factor])


def write_chained(path):
    """Overviews as reduced-resolution IFDs after the first image, 1/4 before 1/2 before 1/8."""
    with tifffile.TiffWriter(path) as tif:
        tif.write(FULL, photometric="rgb", planarconfig="separate", tile=(64, 64))
        for factor in FACTORS:
            tif.write(_overview(factor), photometric="rgb", planarconfig="separate",
                      tile=(16, 16), subfiletype=1)
    return path


def write_subifds(path):
    """The same overviews in the first image's SubIFDs, in the same order."""
    with tifffile.TiffWriter(path) as tif:
        tif.write(FULL, photometric="rgb", planarconfig="separate", tile=(64, 64),
                  subifds=len(FACTORS))
        for factor in FACTORS:
            tif.write(_overview(factor), photometric="rgb", planarconfig="separate",
                      tile=(16, 16), subfiletype=1)
    return path


def rio(path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rasterio.open(path, **kwargs)


@pytest.mark.parametrize("writer", [write_chained, write_subifds], ids=["chained", "subifds"])
def test_overviews_out_of_size_order_are_sorted_and_each_equals_gdals(tmp_path, writer):
    path = writer(tmp_path / "ovr.tif")
    header = read_header(str(path))
    with rio(path) as src:
        gdal_factors = src.overviews(1)
    assert gdal_factors == list(FACTORS)  # GDAL keeps the file's order
    # Sorted by size, largest first.
    sizes = [(lvl.width, lvl.height) for lvl in header.levels]
    assert sizes == [(320, 256), (160, 128), (80, 64), (40, 32)]
    # Provenance: where each level is stored (the order the file holds them in).
    subifd = writer is write_subifds
    stored = [(lvl.subifd, lvl.ifd_index) for lvl in header.levels]
    first = 0 if subifd else 1
    position = {f: first + i for i, f in enumerate(FACTORS)}
    assert stored == [(False, 0)] + [(subifd, position[f]) for f in (2, 4, 8)]
    # GDAL's overview i is the engine's level gdal_overview_order()[i]: same IFD, same pixels.
    order = header.gdal_overview_order()
    assert sorted(order) == [1, 2, 3]
    for i, k in enumerate(order):
        level = header.levels[k]
        with rio(path, overview_level=i) as src:
            assert (src.width, src.height) == (level.width, level.height)
            expected = src.read()
        np.testing.assert_array_equal(read_window(header, (0, 0, level.width, level.height), k), expected)
        np.testing.assert_array_equal(expected, _overview(FACTORS[i]))
    # By resolution: GDAL picks the overview of a decimated read's size; so does levels[k].
    with rio(path) as src:
        for k, level in enumerate(header.levels):
            shape = (3, level.height, level.width)
            expected = src.read(out_shape=shape, resampling=Resampling.nearest)
            np.testing.assert_array_equal(read_window(header, (0, 0, level.width, level.height), k), expected)


def test_provenance_survives_the_cached_header_exactly(tmp_path):
    """to_dict/from_dict and the Arrow column keep every level's IFD provenance."""
    import pyarrow as pa

    header = read_header(str(write_subifds(tmp_path / "sub.tif")))
    plain = header.to_dict()
    assert [(lvl["subifd"], lvl["ifd_index"]) for lvl in plain["levels"]] == [
        (False, 0), (True, 1), (True, 0), (True, 2)
    ]
    assert CogHeader.from_dict(plain) == header
    stored = pa.array([plain], HEADER_TYPE).to_pylist()[0]
    assert stored == plain
    assert CogHeader.from_dict(stored) == header
    assert CogHeader.from_dict(stored).to_dict() == plain
