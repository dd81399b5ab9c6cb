"""The import graph stays lean: heavy dependencies load with the call that needs them.

Each check runs in a fresh interpreter and inspects ``sys.modules`` afterwards (timing is for
``benchmarks/bench_fresh.py``; this test only guards which modules are loaded).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = (
    "geopandas",
    "rasterio",
    "botocore",
    "boto3",
    "pandas",
    "pyarrow",
    "pyarrow.dataset",
    "tqdm",
    "dagster",
    "xarray",
    "aiohttp",
    "imagecodecs",
    "pyproj",
    "shapely",
    "pystac_client",
)


def loaded_after(code: str) -> set[str]:
    """The modules in ``sys.modules`` after running ``code`` in a new interpreter."""
    script = code + "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(h for h in HEAVY if h in modules)


def test_the_quick_start_import_loads_no_heavy_dependency():
    modules = loaded_after("from rasteret_pipelines import Rasteret, DataSources, save_per_geometry")
    assert heavy_in(modules) == []
    assert not any(
        m.startswith(
            ("rasteret_pipelines.cog", "rasteret_pipelines.reading.read", "rasteret_pipelines.collections.query")
        )
        for m in modules
    )


def test_constructing_a_rasteret_stays_lean():
    modules = loaded_after(
        "from rasteret_pipelines import Rasteret, DataSources\n"
        "r = Rasteret('/tmp/ws', custom_name='x', data_source=DataSources.SENTINEL2,"
        " date_range=('2024-01-01', '2024-01-31'))\n"
        "assert r.data_source == 'sentinel-2-l2a', r.data_source\n"
    )
    assert heavy_in(modules) == []


@pytest.mark.parametrize(
    "statement, allowed",
    [
        ("import rasteret_pipelines.reading", set()),
        ("import rasteret_pipelines.products", set()),
        ("import rasteret_pipelines.collections", set()),
        ("from rasteret_pipelines.collections import DataSources", set()),
        # The COG engine needs its transport and codecs, nothing of the analysis stack.
        ("import rasteret_pipelines.cog", {"aiohttp", "imagecodecs"}),
    ],
)
def test_subpackages_import_lazily(statement, allowed):
    assert set(heavy_in(loaded_after(statement))) <= allowed


def test_lazy_names_resolve_to_the_real_objects():
    import rasteret_pipelines
    from rasteret_pipelines import collections, products, reading
    from rasteret_pipelines.collections.query import load_collection
    from rasteret_pipelines.products.geotiff import save_per_geometry
    from rasteret_pipelines.reading.read import read_geometries

    assert rasteret_pipelines.save_per_geometry is save_per_geometry
    assert products.save_per_geometry is save_per_geometry
    assert reading.read_geometries is read_geometries
    assert collections.load_collection is load_collection
    for module in (rasteret_pipelines, collections, products, reading):
        for name in module.__all__:
            assert getattr(module, name) is not None
        with pytest.raises(AttributeError):
            module.no_such_name  # noqa: B018


def test_every_lazy_name_imports_eagerly_too():
    """``EAGER_IMPORT=1`` makes lazy_loader import every listed name at once: none is broken."""
    import os

    env = {**os.environ, "EAGER_IMPORT": "1"}
    code = (
        "import rasteret_pipelines, rasteret_pipelines.reading, rasteret_pipelines.products, "
        "rasteret_pipelines.collections\n"
        "import sys\n"
        "assert 'rasteret_pipelines.reading.read' in sys.modules and 'xarray' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
