"""The README's offline quick start, run as written against `rasteret-pipelines demo --serve`.

The CLI serves the session's demo world and prints the ``export`` line; the README's Python block
then runs with that variable set, and its NDVI GeoTIFFs are checked against NDVI computed from
the demo COGs read by rasterio.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.windows

from rasteret_pipelines.collections import stac_url_env_var
from rasteret_pipelines_demo.demo_mirror import free_port_pair
from rasteret_pipelines_tests.conftest import wait_until

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


def readme_block(heading: str, lang: str = "python") -> str:
    text = README.read_text()
    section = text[text.index(heading) :]
    match = re.search(rf"```{lang}\n(.*?)```", section, re.S)
    assert match, f"no {lang} block after {heading!r}"
    return match.group(1)


def cli() -> list[str]:
    script = Path(sys.executable).with_name("rasteret-pipelines")
    return [str(script)] if script.exists() else [sys.executable, "-m", "rasteret_pipelines.cli"]


@pytest.fixture
def served(demo_world):
    """`rasteret-pipelines demo --serve` on free ports; yields (process, printed lines)."""
    port = free_port_pair()
    env = {
        **os.environ,
        "RASTERET_DEMO_DIR": str(demo_world),
        "RASTERET_DEMO_PORT": str(port),
        "RASTERET_DEMO_MONTHS": "2024-01,2024-02",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop(stac_url_env_var("sentinel-2-l2a"), None)
    proc = subprocess.Popen(
        cli() + ["demo", "--serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    lines: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    wait_until(
        lambda: any("serving until Ctrl-C" in line for line in lines), process=proc, log=lambda: "\n".join(lines)
    )
    try:
        yield proc, lines, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(timeout=5)


def test_readme_offline_quickstart_runs_against_demo_serve(tmp_path, served, demo_world, monkeypatch):
    proc, lines, port = served
    exports = dict(re.findall(r"^\s*export (\w+)=(\S+)$", "\n".join(lines), re.M))
    assert exports == {stac_url_env_var("sentinel-2-l2a"): f"http://127.0.0.1:{port}"}
    for name, value in exports.items():  # what the README tells the user to do
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)

    namespace: dict = {}
    exec(compile(readme_block("## Quick start"), "README.md", "exec"), namespace)

    files = namespace["files"]
    processor = namespace["processor"]
    assert processor.last_build.failed == [] and processor.last_build.items == 4
    assert {m.band for m in processor.last_build.missing} == {  # the demo items have red, NIR, SCL
        k for k in processor.collection.source.asset_keys if k not in ("red", "nir", "scl")
    }
    world = json.loads((demo_world / "world.json").read_text())
    items = {
        i["properties"]["datetime"][:10].replace("-", ""): i
        for i in world["items"]
        if "2024-01-01" <= i["properties"]["datetime"][:10] <= "2024-02-29"
    }
    assert sorted(files) == [1, 2]
    for paths in files.values():
        assert [Path(p).name for p in paths] == [f"ndvi_{d}.tif" for d in sorted(items)]
        for path in paths:
            item = items[Path(path).stem.split("_")[-1]]
            with rasterio.open(tmp_path / path) as out:
                ndvi = out.read(1)
                bounds = out.bounds
            bands = {}
            for key in ("red", "nir"):  # the oracle: rasterio on the demo COG, same grid window
                with rasterio.open(demo_world / item["assets"][key]["href"]) as src:
                    window = (
                        rasterio.windows.from_bounds(*bounds, transform=src.transform).round_offsets().round_lengths()
                    )
                    bands[key] = src.read(1, window=window).astype("float64")
            want = (bands["nir"] - bands["red"]) / (bands["nir"] + bands["red"])
            inside = np.isfinite(ndvi)
            assert inside.sum() > 1000
            np.testing.assert_allclose(ndvi[inside], want[inside], rtol=1e-6, atol=1e-6)

    # the next block, as written: statistics of the same fields and its dry run
    exec(compile(readme_block("### Many fields"), "README.md", "exec"), namespace)
    table, plan = namespace["table"], namespace["plan"]
    assert sorted(set(table.column("id").to_pylist())) == ["1", "2"]
    assert table.num_rows == 2 * len(items) and plan.gets > 0 and plan.scenes == len(items)
    assert set(table.column_names) >= {
        "ndvi_mean",
        "ndvi_median",
        "ndvi_std",
        "ndvi_count",
        "ndvi_p90",
        "ndvi_valid_fraction",
        "scene_ids",
    }

    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    with socket.socket() as s:  # the mirror let go of its port
        s.bind(("127.0.0.1", port))


def test_demo_serve_reuses_a_running_mirror(served, demo_world):
    _, _, port = served
    env = {
        **os.environ,
        "RASTERET_DEMO_DIR": str(demo_world),
        "RASTERET_DEMO_PORT": str(port),
        "RASTERET_DEMO_MONTHS": "2024-01,2024-02",
    }
    done = subprocess.run(cli() + ["demo", "--serve"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "already running" in done.stdout
    assert f"export {stac_url_env_var('sentinel-2-l2a')}=http://127.0.0.1:{port}" in done.stdout
