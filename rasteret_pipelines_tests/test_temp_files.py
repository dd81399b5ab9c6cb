"""Temporary files of atomic writes: never matched by an output glob, cleaned on failure, and a
killed write's leftover removed by the next write into the same folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import rasterio

from rasteret_pipelines.errors import StoragePathError
from rasteret_pipelines.products.geotiff import write_cog
from rasteret_pipelines.storage import Storage, remove_stale_temps, temp_path

TRANSFORM = (10.0, 0.0, 600000.0, 0.0, -10.0, 1500000.0)


def _globbed(folder: Path) -> list[str]:
    """What a user's glob of the output folder returns (pathlib matches hidden files too)."""
    return sorted(
        p.name for pattern in ("*.tif", "*.parquet", "**/*.tif", "**/*.parquet") for p in folder.glob(pattern)
    )


def _start_and_kill(folder: Path, code: str, marker_glob: str) -> Path:
    """Run ``code`` in a child process, SIGKILL it once a temporary file exists, return that file."""
    script = textwrap.dedent(code)
    child = subprocess.Popen([sys.executable, "-c", script], cwd=folder)
    try:
        # waits for an event (the file appears, or the child ends); pytest-timeout bounds a hang
        while True:
            found = [p for p in folder.iterdir() if p.match(marker_glob)]
            if found and found[0].stat().st_size > 0:
                break
            assert child.poll() is None, "the writer ended before it could be killed"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    return found[0]


def test_temp_names_match_no_output_glob(tmp_path):
    for target in ("ndvi_20240105.tif", "items.parquet", "_manifest.json"):
        name = Path(temp_path(str(tmp_path / target))).name
        assert name.startswith(f".{target}.tmp-")
        (tmp_path / name).write_bytes(b"partial")
    assert _globbed(tmp_path) == []
    assert Storage.from_uri(tmp_path).list_files() == []


def test_a_killed_geotiff_write_leaves_no_tif_and_is_cleaned_by_the_next_write(tmp_path):
    code = f"""
        import os, time, numpy as np
        from rasteret_pipelines.products import geotiff
        class SlowOs:  # GDAL's COG driver writes the file when the dataset closes: be killed
            def __getattr__(self, name):  # after that, before the rename into place
                return getattr(os, name)
            def replace(self, src, dst):
                time.sleep(600)
        geotiff.os = SlowOs()
        geotiff.write_cog(np.ones((512, 512)), "ndvi_20240105.tif", "EPSG:32643", {TRANSFORM!r})
    """
    leftover = _start_and_kill(tmp_path, code, ".ndvi_20240105.tif.tmp-*")
    assert leftover.exists()
    assert _globbed(tmp_path) == []  # the unreadable partial file is invisible to *.tif
    written = write_cog(np.full((4, 4), 0.5), tmp_path / "ndvi_20240106.tif", "EPSG:32643", TRANSFORM)
    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ndvi_20240106.tif"]
    with rasterio.open(written) as src:
        np.testing.assert_array_equal(src.read(1), np.full((4, 4), 0.5, np.float32))


def test_a_killed_parquet_write_is_cleaned_by_the_next_write(tmp_path):
    code = """
        import time, pyarrow as pa
        from rasteret_pipelines.storage import Storage
        store = Storage.from_uri(".")
        def slow(sink):
            sink.write(b"PAR1 partial")
            sink.flush()
            time.sleep(600)
        store._atomic(store.path("month=2024-01", "items.parquet"), slow)
    """
    month = tmp_path / "month=2024-01"
    month.mkdir()
    leftover = _start_and_kill(
        month, code.replace('Storage.from_uri(".")', f"Storage.from_uri({str(tmp_path)!r})"), ".items.parquet.tmp-*"
    )
    store = Storage.from_uri(tmp_path)
    assert _globbed(tmp_path) == [] and store.list_files() == []
    store.write_parquet(pa.table({"a": [1, 2]}), "month=2024-01", "items.parquet")
    assert not leftover.exists()
    assert sorted(p.name for p in month.iterdir()) == ["items.parquet"]


def test_temps_of_live_writers_and_other_hosts_are_kept(tmp_path):
    live = tmp_path / f".a.tif.tmp-{temp_path('x').split('.tmp-')[1].split('-')[0]}-{os.getppid()}-{'0' * 32}"
    live.write_bytes(b"in progress")
    other_host = tmp_path / f".b.tif.tmp-otherhost-12345-{'1' * 32}"
    other_host.write_bytes(b"in progress elsewhere")
    old_other_host = tmp_path / f".c.tif.tmp-otherhost-12345-{'2' * 32}"
    old_other_host.write_bytes(b"abandoned long ago")
    os.utime(old_other_host, (time.time() - 2 * 86400,) * 2)
    legacy_old = tmp_path / f".d.tif.tmp-{'3' * 32}.tif"  # the previous naming, ending in .tif
    legacy_old.write_bytes(b"abandoned long ago")
    os.utime(legacy_old, (time.time() - 2 * 86400,) * 2)
    user_file = tmp_path / ".notes.tmp-mine"
    user_file.write_bytes(b"not ours")
    removed = sorted(Path(p).name for p in remove_stale_temps(tmp_path))
    assert removed == sorted([old_other_host.name, legacy_old.name])
    assert live.exists() and other_host.exists() and user_file.exists()


def test_a_failed_write_removes_its_temporary_file(tmp_path):
    store = Storage.from_uri(tmp_path)

    def fails(sink):
        sink.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store._atomic(store.path("x", "items.parquet"), fails)
    assert list((tmp_path / "x").iterdir()) == []


@pytest.mark.parametrize("parts", [("..", "x"), ("a", "../../x"), ("/etc", "passwd"), ("a\x00b",)])
def test_storage_paths_stay_under_the_root(tmp_path, parts):
    store = Storage.from_uri(tmp_path / "root")
    with pytest.raises(StoragePathError, match="not a path inside storage"):
        store.write_bytes(b"x", *parts)
    assert not (tmp_path / "x").exists()
