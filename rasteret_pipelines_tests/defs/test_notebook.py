"""Notebook users: the synchronous API inside a running event loop, and examples/quickstart.ipynb
executed by a real Jupyter kernel (nbclient + ipykernel) against the offline demo mirror."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nbformat
import numpy as np
import pytest
import rasterio
from nbclient import NotebookClient

from rasteret_pipelines import DataSources, Rasteret
from rasteret_pipelines.collections import stac_url_env_var
from rasteret_pipelines_demo.demo_data import QUICKSTART_AOIS

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "examples" / "quickstart.ipynb"
DATES = ("2024-01-01", "2024-02-29")


def _quickstart(workspace: Path, stac_url: str):
    processor = Rasteret(
        workspace_dir=workspace,
        custom_name="loop",
        data_source=DataSources.SENTINEL2,
        date_range=DATES,
        stac_url=stac_url,
    )
    processor.create_collection(bbox=QUICKSTART_AOIS[1].union(QUICKSTART_AOIS[2]).bounds, bands=["B04", "B08"])
    return processor.get_xarray(geometries=[QUICKSTART_AOIS[1], QUICKSTART_AOIS[2]], bands=["B04", "B08"])


def test_the_synchronous_api_works_inside_a_running_event_loop(tmp_path, mirror):
    """What a notebook cell does: call create_collection and get_xarray with a loop running."""
    outside = _quickstart(tmp_path / "outside", mirror.stac_url)

    async def cell():
        asyncio.get_running_loop()  # as in Jupyter: a loop is running in this thread
        return _quickstart(tmp_path / "inside", mirror.stac_url)

    inside = asyncio.run(cell())
    assert inside.sizes == outside.sizes and inside.sizes["time"] == 4
    for band in ("B04", "B08"):
        np.testing.assert_array_equal(inside[band].values, outside[band].values)


def test_quickstart_notebook_runs_in_a_jupyter_kernel(tmp_path, mirror, monkeypatch):
    monkeypatch.setenv(stac_url_env_var("sentinel-2-l2a"), mirror.stac_url)  # the kernel inherits it
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit it without outputs"
    client = NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell's traceback, if a cell fails

    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    items = [i for i in mirror.stac.items if DATES[0] <= i["properties"]["datetime"][:10] <= DATES[1]]
    assert len(items) == 4
    assert f"{len(items)} items," in text and "0 failed" in text
    assert "bangalore_202401-02_sentinel: sentinel-2-l2a" in text
    for item in items:  # the STAC-GeoParquet cell printed every item with its red href
        assert f"{item['id']} " in text and item["assets"]["red"]["href"] in text

    written = sorted((tmp_path / "ndvi_output").rglob("*.tif"))
    assert {p.parent.name for p in written} == {"geometry_1", "geometry_2"}
    assert len(written) == 2 * len(items)
    for path in written:
        with rasterio.open(path) as src:
            data = src.read(1)
        finite = data[np.isfinite(data)]
        assert finite.size and finite.min() >= -1 and finite.max() <= 1
    manifest = json.loads(
        (tmp_path / "rasteret_workspace" / "bangalore_202401-02_sentinel" / "_manifest.json").read_text()
    )
    assert manifest["size"] == len(items) and manifest["format"] == "stac-geoparquet-1.0"


@pytest.fixture(autouse=True)
def _no_stray_stac_url(monkeypatch):
    """These tests choose the STAC URL themselves."""
    monkeypatch.delenv(stac_url_env_var("sentinel-2-l2a"), raising=False)
