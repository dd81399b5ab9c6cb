"""Reads refused before any request: a memory estimate above its limit, and bad arguments
(typed ``ValueError`` subclasses whose messages name the argument)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
import shapely.geometry

from rasteret_pipelines import Rasteret
from rasteret_pipelines.cog import FetchConfig
from rasteret_pipelines.errors import (
    InvalidGeometryError,
    InvalidReadArgumentError,
    InvalidSearchError,
    MemoryLimitError,
    ReadError,
    UnknownBandError,
)
from rasteret_pipelines.reading import read as read_module
from rasteret_pipelines.reading import read_geometries
from rasteret_pipelines.reading.memory import estimate_read, memory_limit, parse_bytes
from rasteret_pipelines_tests.reading.conftest import AOIS, BASE_IDS, BASE_RANGE
from rasteret_pipelines_tests.reading.test_read import assert_same_transform, day, layer, rio_masked, to_crs

# Far larger than the scenes (which cover ~0.2 degrees around the AOIs): a 10 m grid over it
# is ~33000 x 33000 pixels per band and date.
HUGE = shapely.geometry.box(76.0, 12.0, 79.0, 15.0)


def test_a_polygon_larger_than_a_scene_is_refused_before_any_request(world):
    before = len(world.cogs.requests)
    config = FetchConfig(max_read_memory=256 << 20)
    with pytest.raises(MemoryLimitError) as info:
        read_geometries(world.collection(), [HUGE], ["red", "nir"], date_range=BASE_RANGE, fetch_config=config)
    exc = info.value
    assert isinstance(exc, ReadError) and isinstance(exc, MemoryError)
    assert exc.limit == 256 << 20 and exc.estimate > 8 << 30
    assert "above the limit of 256.0 MiB" in str(exc)
    assert f"({exc.estimate} bytes" in str(exc) and "max_read_memory" in str(exc)
    assert len(world.cogs.requests) == before  # nothing was fetched


def test_the_limit_comes_from_the_environment(world, monkeypatch):
    monkeypatch.setenv("RASTERET_MAX_READ_MEMORY", "1M")
    with pytest.raises(MemoryLimitError, match=r"above the limit of 1\.0 MiB \(1048576 bytes\)"):
        read_geometries(world.collection(), list(AOIS.values()), ["red"], date_range=BASE_RANGE)
    # A configured limit wins over the environment.
    ds = read_geometries(
        world.collection(),
        list(AOIS.values()),
        ["red"],
        date_range=BASE_RANGE,
        fetch_config=FetchConfig(max_read_memory=1 << 30),
    )
    assert ds["red"].size > 0


def test_the_estimate_counts_the_output_exactly(world, monkeypatch):
    seen = []
    real = read_module.check_plans

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(read_module, "check_plans", spy)
    ds = read_geometries(world.collection(), list(AOIS.values()), ["red", "nir"], date_range=BASE_RANGE)
    (estimate,) = seen
    assert estimate.output == ds["red"].nbytes + ds["nir"].nbytes  # xarray's own allocation
    # Every window read is at least as large as its geometry's output window, in uint16.
    assert estimate.windows >= ds.sizes["geometry"] * 2 * 2 * int(ds["height"].min()) * int(ds["width"].min())


def test_default_limit_is_a_fraction_of_physical_memory(monkeypatch):
    monkeypatch.delenv("RASTERET_MAX_READ_MEMORY", raising=False)
    physical = __import__("os").sysconf("SC_PAGE_SIZE") * __import__("os").sysconf("SC_PHYS_PAGES")
    assert memory_limit() == int(physical * 0.75)
    assert memory_limit(123) == 123
    monkeypatch.setenv("RASTERET_MAX_READ_MEMORY", "lots")
    with pytest.raises(InvalidReadArgumentError, match="RASTERET_MAX_READ_MEMORY='lots'"):
        memory_limit()
    assert parse_bytes("8G") == 8 << 30 and parse_bytes("512MiB") == 512 << 20 and parse_bytes("100") == 100
    assert estimate_read([(10, 20), (30, 5)], 3, 2, 4, [(10, 20, 2)]).output == 2 * 3 * 30 * 20 * 2 * 4


# -- bad arguments -------------------------------------------------------------------------------


def test_values_mode_is_a_typed_error(world):
    with pytest.raises(
        InvalidReadArgumentError, match=r"values must be one of \('float', 'native', 'reflectance'\), got 'bogus'"
    ):
        read_geometries(world.collection(), list(AOIS.values()), ["red"], values="bogus")


@pytest.mark.parametrize("bands", [[None], ["red", None], [""]])
def test_a_band_that_is_not_a_name_is_a_typed_error(world, bands):
    with pytest.raises(UnknownBandError, match="band names must be non-empty strings, got (None|'')"):
        read_geometries(world.collection(), list(AOIS.values()), bands)


@pytest.mark.parametrize(
    "geom",
    [
        shapely.geometry.Polygon([(77.55, 13.01), (77.58, math.nan), (77.58, 13.08), (77.55, 13.08)]),
        shapely.geometry.box(77.55, 13.01, math.inf, 13.08),
        shapely.geometry.MultiPolygon(
            [
                AOIS[1],
                shapely.geometry.Polygon([(77.6, 13.1), (math.nan, 13.1), (77.7, 13.2)]),
            ]
        ),
    ],
)
def test_nan_coordinates_are_a_typed_error(world, geom):
    with pytest.raises(InvalidGeometryError, match="geometry 1 has NaN or infinite coordinates"):
        read_geometries(world.collection(), [geom], ["red"])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", "cloud_cover_lt must be a number (a percentage), got 'abc'"),
        (math.nan, "cloud_cover_lt must be a finite number (a percentage), got nan"),
        (True, "cloud_cover_lt must be a number"),
        (-5, "cloud_cover_lt is a percentage between 0 and 100, got -5"),
    ],
)
def test_cloud_cover_is_a_typed_error_when_reading(world, value, message):
    with pytest.raises(InvalidSearchError) as info:
        read_geometries(world.collection(), list(AOIS.values()), ["red"], cloud_cover_lt=value)
    assert message in str(info.value)
    processor = Rasteret.load_collection("world", workspace_dir=world.workspace)
    with pytest.raises(InvalidSearchError, match="cloud_cover_lt"):
        processor.get_xarray(list(AOIS.values()), ["red"], cloud_cover_lt=value)


def test_numpy_cloud_cover_is_accepted(world):
    ds = read_geometries(
        world.collection(), list(AOIS.values()), ["red"], date_range=BASE_RANGE, cloud_cover_lt=np.float32(100)
    )
    assert ds["red"].size > 0


# -- local hrefs in a collection -----------------------------------------------------------------


def _with_local_hrefs(world, workspace, allow: bool):
    """A copy of the world collection whose cached headers point at the local COG files (as an
    edited parquet file, or a local catalog, would)."""
    by_url = {
        world.cogs.url_for(p.relative_to(world.root).as_posix()): str(p)
        for bands in world.paths.values()
        for p in bands.values()
    }
    return with_edited_hrefs(world, workspace, by_url.__getitem__, allow)


def with_edited_hrefs(world, workspace, new_href, allow: bool):
    """A copy of the world collection with every cached header's href replaced by
    ``new_href(href)`` (versions dropped: they differ per transport) and the manifest's
    ``allow_local_hrefs`` set to ``allow``; opened from ``workspace``."""
    import json
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    target = workspace / "world"
    shutil.copytree(world.workspace / "world", target)
    for path in target.glob("month=*/items.parquet"):
        table = pq.read_table(path)
        for name in [c for c in table.column_names if c.endswith("_header")]:
            rows = table.column(name).to_pylist()
            for row in rows:
                if row is not None:
                    row["href"] = new_href(row["href"])
                    row["etag"] = row["last_modified"] = None  # versions differ per transport
            i = table.column_names.index(name)
            table = table.set_column(i, table.schema.field(i), pa.array(rows, type=table.schema.field(i).type))
        pq.write_table(table, path)
    manifest = json.loads((target / "_manifest.json").read_text())
    manifest["allow_local_hrefs"] = allow
    (target / "_manifest.json").write_text(json.dumps(manifest))
    from rasteret_pipelines.collections import load_collection

    return load_collection("world", workspace)


def test_a_collection_not_built_from_a_local_catalog_never_reads_local_files(world, tmp_path):
    from rasteret_pipelines.errors import UnsafeHrefError

    edited = _with_local_hrefs(world, tmp_path / "edited", allow=False)
    with pytest.raises(UnsafeHrefError, match="local paths and file:// hrefs are not read"):
        read_geometries(edited, list(AOIS.values()), ["red"], date_range=BASE_RANGE)
    local = _with_local_hrefs(world, tmp_path / "local", allow=True)
    before = len(world.cogs.requests)
    got = read_geometries(local, list(AOIS.values()), ["red"], date_range=BASE_RANGE)
    assert got.attrs["requests"] > 0
    assert len(world.cogs.requests) == before  # the files were read from disk, not over HTTP
    # Oracle: rasterio masking the same files.
    for gid, geom in AOIS.items():
        for scene_id in BASE_IDS:
            expected, transform = rio_masked(world.path(scene_id, "red"), to_crs(geom))
            values, values_transform = layer(got, "red", gid, day(scene_id, world))
            assert_same_transform(values_transform, transform)
            np.testing.assert_array_equal(values, expected)
