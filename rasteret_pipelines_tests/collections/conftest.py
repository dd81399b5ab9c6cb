"""A local Earth Search / USGS mirror: recorded STAC items whose assets point at test COGs."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rasteret_pipelines_demo.range_server import RangeServer
from rasteret_pipelines_demo.stac_server import StacServer
from rasteret_pipelines_tests.cog.cogs import s2_cog
from rasteret_pipelines_tests.conftest import DATA_DIR, committed_fixtures

STAC_DIR = DATA_DIR / "stac"
S2_DIR = STAC_DIR / "earth-search-v1" / "sentinel-2-l2a"
USGS_DIR = STAC_DIR / "usgs-landsatlook" / "landsat-c2l2-sr"
S2_BANDS = ("red", "nir")
LANDSAT_BANDS = ("red", "nir08")


def recorded(directory: Path) -> list[dict]:
    """The committed items of one recorded folder (from the fixture list: none may go missing)."""
    under = directory.relative_to(DATA_DIR).as_posix()
    return [json.loads(p.read_text()) for p in committed_fixtures(under) if p.parent == directory]


def july_2025_items() -> list[dict]:
    """The six recorded Earth Search items of 2025-07-31."""
    return [i for i in recorded(S2_DIR) if i["properties"]["datetime"].startswith("2025-07")]


def shifted(item: dict, month: int, day: int = 15) -> dict:
    """A copy of a recorded item re-dated into another month of 2025 (new id, same metadata)."""
    out = copy.deepcopy(item)
    stamp = f"2025-{month:02d}-{day:02d}"
    out["id"] = item["id"].replace("20250731", stamp.replace("-", ""))
    out["properties"]["datetime"] = f"{stamp}T13:03:19.635000Z"
    return out


@dataclass
class Mirror:
    """COGs on a range server and STAC items pointing at them."""

    root: Path
    cogs: RangeServer
    base_cog: Path

    def publish(self, item: dict, bands=S2_BANDS, alternate: str | None = None) -> dict:
        """Copy of ``item`` whose ``bands`` assets are COGs served here (other assets unchanged)."""
        out = copy.deepcopy(item)
        for band in bands:
            rel = f"{item['id']}/{band}.tif"
            target = self.root / rel
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.base_cog, target)
            asset = out["assets"][band]
            if alternate:
                asset["alternate"][alternate]["href"] = f"s3://usgs-landsat/{rel}"
                (self.root / "usgs-landsat" / rel).parent.mkdir(parents=True, exist_ok=True)
                if not (self.root / "usgs-landsat" / rel).exists():
                    shutil.copyfile(self.base_cog, self.root / "usgs-landsat" / rel)
            else:
                asset["href"] = self.cogs.url_for(rel)
        return out

    def path_of(self, href: str) -> Path:
        return self.root / href.split("/", 3)[3]


@pytest.fixture(scope="session")
def base_cog(tmp_path_factory) -> Path:
    return s2_cog(tmp_path_factory.mktemp("base") / "base.tif", width=700, height=600, blocksize=256)


@pytest.fixture
def mirror(tmp_path, base_cog) -> Iterator[Mirror]:
    root = tmp_path / "cogs"
    root.mkdir()
    with RangeServer(root) as srv:
        yield Mirror(root=root, cogs=srv, base_cog=base_cog)


@pytest.fixture
def stac_for(mirror):
    """``stac_for(items)`` starts a STAC API over ``items`` (closed after the test)."""
    servers = []

    def start(items, **kwargs) -> StacServer:
        server = StacServer(items, **kwargs)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
