"""Every failure parsing a header is typed: no TypeError, ValueError, AttributeError or
OverflowError escapes, whatever type, count or value a tag is given."""

from __future__ import annotations

import struct
import warnings

import numpy as np
import pytest
import rasterio

from rasteret_pipelines.cog import read_header, read_window
from rasteret_pipelines.cog import tiff as tifftags
from rasteret_pipelines.errors import GeoreferenceWarning, RasteretError, TiffFormatError
from rasteret_pipelines_tests.cog.handmade import tiff_bytes

PIXELS = (np.arange(64 * 48, dtype=np.uint32) % 241).astype(np.uint8).reshape(48, 64)

GEO = [
    (tifftags.MODEL_PIXEL_SCALE, 12, [10.0, 10.0, 0.0]),
    (tifftags.MODEL_TIEPOINT, 12, [0.0, 0.0, 0.0, 699960.0, 1500000.0, 0.0]),
    (tifftags.GEO_KEY_DIRECTORY, 3, [1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32643, 3073, 34737, 6, 0]),
    (tifftags.GEO_ASCII_PARAMS, 2, "UTM|"),
    (tifftags.GDAL_NODATA, 2, "0"),
    (tifftags.GDAL_METADATA, 2, '<GDALMetadata><Item name="SCALE" sample="0" role="scale">2</Item></GDALMetadata>'),
]


def base_entries() -> list:
    return [
        (tifftags.IMAGE_WIDTH, 3, [64]),
        (tifftags.IMAGE_LENGTH, 3, [48]),
        (tifftags.BITS_PER_SAMPLE, 3, [8]),
        (tifftags.COMPRESSION, 3, [1]),
        (tifftags.PHOTOMETRIC, 3, [1]),
        (tifftags.SAMPLES_PER_PIXEL, 3, [1]),
        (tifftags.PLANAR_CONFIGURATION, 3, [1]),
        (tifftags.TILE_WIDTH, 3, [32]),
        (tifftags.TILE_LENGTH, 3, [32]),
        (tifftags.TILE_OFFSETS, 4, [0] * 4),
        (tifftags.TILE_BYTE_COUNTS, 4, [1024] * 4),
        (tifftags.SAMPLE_FORMAT, 3, [1]),
    ] + GEO


def tiles() -> list[bytes]:
    padded = np.zeros((64, 64), np.uint8)
    padded[:48] = PIXELS
    return [padded[r : r + 32, c : c + 32].tobytes() for r in (0, 32) for c in (0, 32)]


# (type, values) a hostile writer could give any tag
HOSTILE_VALUES = {
    "ascii": (2, "abc"),
    "empty-ascii": (2, ""),
    "rational": (5, [7, 3]),
    "zero-rational": (5, [1, 0]),
    "double-nan": (12, [float("nan")]),
    "double-inf": (12, [float("inf"), 2.0]),
    "float": (11, [1.5]),
    "undefined": (7, b"\xff\x00\x13"),
    "100-shorts": (3, list(range(1, 101))),
    "huge-long": (4, [0xFFFFFFFF]),
    "negative": (8, [-5]),
    "sbyte": (6, [-1, -2]),
    "long8": (16, [1 << 60]),
    "empty-short": (3, []),
}


def _entries_with(tag: int, ftype: int, values) -> list:
    return [e for e in base_entries() if e[0] != tag] + [(tag, ftype, values)]


@pytest.mark.parametrize("kind", list(HOSTILE_VALUES))
def test_any_wanted_tag_with_any_type_or_value_fails_typed_or_reads(tmp_path, kind):
    ftype, values = HOSTILE_VALUES[kind]
    failures = []
    for tag in sorted(tifftags.WANTED_TAGS):
        path = tmp_path / f"t{tag}.tif"
        try:
            body = tiff_bytes(_entries_with(tag, ftype, values), tiles())
        except struct.error:
            continue  # the value does not fit the type (e.g. a negative LONG): not writable
        path.write_bytes(body)
        try:
            header = read_header(str(path))
            first = read_window(header, (0, 0, 40, 40))
            np.testing.assert_array_equal(first, read_window(header, (0, 0, 40, 40)))
        except RasteretError as exc:
            assert str(path) in str(exc)
        except Exception as exc:  # noqa: BLE001 - the point of the test
            failures.append(f"tag {tag}: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)


def test_image_width_with_100_short_values_is_refused_like_gdal(tmp_path):
    """Before: a bare TypeError. libtiff refuses the count ("Incorrect count"); so does the engine."""
    path = tmp_path / "w100.tif"
    path.write_bytes(tiff_bytes(_entries_with(tifftags.IMAGE_WIDTH, 3, [64] * 100), tiles()))
    with pytest.raises(rasterio.errors.RasterioIOError, match="Incorrect count"):
        rasterio.open(path)
    with pytest.raises(TiffFormatError, match="w100.tif: .*ImageWidth \\(tag 256\\) has 100 values"):
        read_header(str(path))


def _directory(*extra: tuple[int, int, int, int], raster_type: int = 1, version=(1, 1, 0)) -> list:
    """The base entries with a GeoKeyDirectory (header ``version``) of GTModelType, GTRasterType,
    ProjectedCSType 32643 and the ``(key, location, count, offset)`` entries ``extra``."""
    keys = [(1024, 0, 1, 1), (1025, 0, 1, raster_type), (3072, 0, 1, 32643), *extra]
    directory = [*version, len(keys)] + [v for k in keys for v in k]
    return _entries_with(tifftags.GEO_KEY_DIRECTORY, 3, directory)


# GeoKey directories with a key libgeotiff cannot read (GDAL: no CRS at all), and their
# readable neighbours (GDAL: the CRS of ProjectedCSType).
GEOKEY_DIRECTORIES = {
    # GeoAsciiParams (holding the citation of key 3073) of a type libtiff does not read as text
    "ascii-typed-double": (_entries_with(tifftags.GEO_ASCII_PARAMS, 12, [1.0, 2.0]), None),
    "ascii-typed-float": (_entries_with(tifftags.GEO_ASCII_PARAMS, 11, [1.0]), None),
    "ascii-typed-short-over-255": (_entries_with(tifftags.GEO_ASCII_PARAMS, 3, [300, 2]), None),
    "ascii-absent": ([e for e in base_entries() if e[0] != tifftags.GEO_ASCII_PARAMS], None),
    "ascii-key-starts-past-the-end": (_directory((3073, 34737, 2, 10)), None),
    "double-key-without-doubles": (_directory((3075, 34736, 1, 0)), None),
    "double-key-past-the-end": (
        _directory((3075, 34736, 3, 0)) + [(tifftags.GEO_DOUBLE_PARAMS, 12, [1.0, 2.0])],
        None,
    ),
    "key-in-no-parameter-tag": (_directory((3075, 1234, 1, 0)), None),
    "directory-key-past-the-end": (_directory((3075, 34735, 2, 100)), None),
    "pixel-is-point-dropped-too": (_directory((3075, 34736, 1, 0), raster_type=2), None),
    "directory-version-2": (_directory(version=(2, 1, 0)), None),
    # readable: libtiff reads byte values of an integer type as text; a citation running past
    # the end is cut; a key inside the directory
    "ascii-typed-short": (_entries_with(tifftags.GEO_ASCII_PARAMS, 3, [1, 2]), "EPSG:32643"),
    "ascii-typed-undefined": (_entries_with(tifftags.GEO_ASCII_PARAMS, 7, b"UTM|\x00"), "EPSG:32643"),
    "ascii-key-runs-past-the-end": (_directory((3073, 34737, 5, 0)), "EPSG:32643"),
    "directory-key-inside": (_directory((4099, 34735, 1, 2)), "EPSG:32643"),
    "pixel-is-point": (_directory(raster_type=2), "EPSG:32643"),
    "key-revision-2": (_directory(version=(1, 2, 0)), "EPSG:32643"),
}


@pytest.mark.parametrize("case", list(GEOKEY_DIRECTORIES))
def test_a_geokey_libgeotiff_cannot_read_leaves_no_crs_like_gdal(tmp_path, case):
    """libgeotiff refuses the whole GeoKey directory when one key cannot be read, so GDAL
    reports no CRS (and no PixelIsPoint shift) although ProjectedCSType is readable: the engine
    reports the same, with a GeoreferenceWarning naming the key, never a CRS GDAL does not see.
    A read that places pixels on a map then stops with GeoreferenceError (test_build checks
    that for a header without a CRS). Pixels read as GDAL reads them."""
    entries, crs = GEOKEY_DIRECTORIES[case]
    path = tmp_path / f"{case}.tif"
    path.write_bytes(tiff_bytes(entries, tiles()))
    with rasterio.open(path) as src:
        expected_crs = None if src.crs is None else f"EPSG:{src.crs.to_epsg()}"
        expected_transform = tuple(src.transform)[:6]
        expected = src.read(1)
    assert expected_crs == crs  # the case says what GDAL does
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        header = read_header(str(path))
    assert header.crs == expected_crs
    assert tuple(header.transform) == pytest.approx(expected_transform, abs=1e-9)
    said = [str(w.message) for w in caught if issubclass(w.category, GeoreferenceWarning)]
    unreadable = [m for m in said if "libgeotiff (GDAL) then reads none of the GeoKeys" in m]
    if crs is None:
        assert len(unreadable) == 1 and f"{path}: CRS left unset: " in unreadable[0], said
    else:
        assert unreadable == []
    np.testing.assert_array_equal(expected, PIXELS)
    np.testing.assert_array_equal(read_window(header, (0, 0, 64, 48))[0], expected)


def test_negative_tile_offsets_are_a_format_error(tmp_path):
    entries = _entries_with(tifftags.TILE_BYTE_COUNTS, 9, [-1, 1024, 1024, 1024])
    path = tmp_path / "neg.tif"
    path.write_bytes(tiff_bytes(entries, tiles()))
    with pytest.raises(TiffFormatError, match="neg.tif: .*TileByteCounts .*negative"):
        read_header(str(path))


def test_a_huge_non_array_tag_is_refused_before_it_is_fetched(tmp_path):
    """A GeoDoubleParams claiming 100 M doubles would be 800 MB of Python floats."""
    body = bytearray(tiff_bytes(base_entries() + [(tifftags.GEO_DOUBLE_PARAMS, 12, [1.0, 2.0])], tiles()))
    n = struct.unpack("<H", body[8:10])[0]
    for i in range(n):
        at = 10 + 12 * i
        if struct.unpack("<H", body[at : at + 2])[0] == tifftags.GEO_DOUBLE_PARAMS:
            body[at + 4 : at + 8] = struct.pack("<I", 100_000_000)
    path = tmp_path / "bigtag.tif"
    path.write_bytes(bytes(body))
    with pytest.raises(TiffFormatError, match="bigtag.tif: tag 34736 claims 100000000 values"):
        read_header(str(path))


def test_a_cached_header_of_another_version_or_malformed_is_typed(tmp_path):
    from rasteret_pipelines.cog import CogHeader
    from rasteret_pipelines.errors import CachedHeaderError

    path = tmp_path / "ok.tif"
    path.write_bytes(tiff_bytes(base_entries(), tiles()))
    plain = read_header(str(path)).to_dict()
    with pytest.raises(CachedHeaderError, match="ok.tif: cached header has format version 0"):
        CogHeader.from_dict({**plain, "format_version": 0})
    broken = {**plain, "levels": [{**plain["levels"][0], "width": "wide"}]}
    with pytest.raises(CachedHeaderError, match="ok.tif: cached header is malformed"):
        CogHeader.from_dict(broken)
    assert isinstance(CachedHeaderError("x", "y"), ValueError)  # callers catching ValueError
