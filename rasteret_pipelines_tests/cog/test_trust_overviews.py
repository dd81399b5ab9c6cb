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
            tif.write(_overview(factor), photometric="rgb", planarconfig="separate", tile=(16, 16), subfiletype=1)
    return path


def write_subifds(path):
    """The same overviews in the first image's SubIFDs, in the same order."""
    with tifffile.TiffWriter(path) as tif:
        tif.write(FULL, photometric="rgb", planarconfig="separate", tile=(64, 64), subifds=len(FACTORS))
        for factor in FACTORS:
            tif.write(_overview(factor), photometric="rgb", planarconfig="separate", tile=(16, 16), subfiletype=1)
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
        (False, 0),
        (True, 1),
        (True, 0),
        (True, 2),
    ]
    assert CogHeader.from_dict(plain) == header
    stored = pa.array([plain], HEADER_TYPE).to_pylist()[0]
    assert stored == plain
    assert CogHeader.from_dict(stored) == header
    assert CogHeader.from_dict(stored).to_dict() == plain


def test_an_overview_of_another_data_type_is_refused_by_name(tmp_path):
    """GDAL lists a reduced-resolution IFD of another data type as an overview. Before: the
    engine dropped it silently, so its level numbers and GDAL's named different overviews."""
    from rasteret_pipelines.errors import UnsupportedTiffError

    path = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(FULL[0], tile=(64, 64))
        tif.write(FULL[0, ::2, ::2].astype(np.uint16) * 3, tile=(16, 16), subfiletype=1)
        tif.write(FULL[0, ::4, ::4], tile=(16, 16), subfiletype=1)
    with rio(path) as src:
        assert src.overviews(1) == [2, 4]
    with rio(path, overview_level=0) as src:
        assert src.dtypes[0] == "uint16"  # GDAL reads it, in its own data type
    with pytest.raises(
        UnsupportedTiffError, match=r"mixed\.tif: the overview in the IFD at \d+ holds uint16 samples, the image uint8"
    ):
        read_header(str(path))


def test_a_reduced_ifd_with_photometric_mask_is_an_overview_as_in_gdal(tmp_path):
    """GDAL tells masks by NewSubfileType alone: PhotometricInterpretation 4 on a
    reduced-resolution IFD without the mask bit is an overview. Before: taken for a mask."""
    path = tmp_path / "pm4.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(FULL[0], tile=(64, 64))
        tif.write(FULL[0, ::2, ::2], tile=(16, 16), subfiletype=1, photometric="minisblack")
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[1].tags["PhotometricInterpretation"]
        at = tag.valueoffset
    data[at : at + 2] = (4).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[1].photometric == 4 and tif.pages[1].subfiletype == 1
    header = read_header(str(path))
    with rio(path) as src:
        assert src.overviews(1) == [2]
    with rio(path, overview_level=0) as src:
        expected = src.read()
    assert header.masks == ()
    np.testing.assert_array_equal(read_window(header, (0, 0, 160, 128), 1), expected)
