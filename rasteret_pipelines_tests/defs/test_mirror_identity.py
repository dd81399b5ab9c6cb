"""Two checkouts' demo mirrors on one machine: each demo, ``--serve``, later runs and
``ensure_cog_servers`` use only the mirror of their own demo folder."""

import os
import shutil
import threading

import pyarrow.parquet as pq
import pytest

from rasteret_pipelines.defs.resources import DataSourceResource
from rasteret_pipelines.errors import LocalServerDownError
from rasteret_pipelines_demo.demo_mirror import (
    DEMO_TITLE,
    PORT_FILE,
    DemoMirror,
    free_port_pair,
    mirror_identity,
    open_mirror,
    port_state,
    probe_demo_mirror,
    record_port,
    recorded_port,
    running_mirror_url,
)
from rasteret_pipelines_demo.stac_server import StacServer
from rasteret_pipelines_tests.defs.conftest import MONTHS


@pytest.fixture
def other_clone(demo_world, tmp_path):
    """The same world in another checkout's folder (a copy: same files, another path)."""
    folder = tmp_path / "other_clone" / "demo_world"
    shutil.copytree(demo_world, folder, ignore=shutil.ignore_patterns("mirror.*", ".*lock"))
    return folder


def test_each_folder_has_its_own_identity(demo_world, other_clone):
    assert mirror_identity(demo_world) != mirror_identity(other_clone)
    assert mirror_identity(demo_world) == mirror_identity(str(demo_world) + "/.")


def test_another_folders_mirror_on_the_port_is_not_reused(demo_world, other_clone):
    port = free_port_pair()
    with DemoMirror(demo_world, port) as theirs:  # the older clone's mirror, still serving
        assert port_state(other_clone, port).kind == "other-mirror"
        assert port_state(demo_world, port).kind == "ours"
        lines = []
        mine, url = open_mirror(other_clone, port, default=port, log=lines.append)
        try:
            assert mine is not None and url != theirs.stac_url
            text = "\n".join(lines)
            assert f"port {port} is held by the demo mirror of another folder ({demo_world.resolve()})" in text, text
            assert f"uses port {mine.port} instead (recorded in {other_clone / PORT_FILE})" in text, text
            assert recorded_port(other_clone) == mine.port
            assert probe_demo_mirror(url, demo_dir=other_clone)
            assert not probe_demo_mirror(theirs.stac_url, demo_dir=other_clone)

            # later runs (the resource) find this folder's mirror through the recorded port
            resource = DataSourceResource(
                stac_url="demo", demo_dir=str(other_clone), demo_port=port, demo_months=",".join(MONTHS)
            )
            assert resource.stac_url_for("sentinel-2-l2a") == url
            assert resource.ensure_cog_servers([f"{mine.cog_url}/cogs/x.tif"]) is None
            # hrefs of a collection indexed from the other folder's mirror are refused, not read
            with pytest.raises(LocalServerDownError, match="the demo mirror of another folder"):
                resource.ensure_cog_servers([f"{theirs.cog_url}/cogs/x.tif"], "collection month 2024-01")

            # a second open in this folder reuses its mirror, and says so
            again = []
            assert open_mirror(other_clone, port, default=port, log=again.append) == (None, url)
            assert again == [f"using this folder's demo mirror, already running at {url} (serving {other_clone})"]
        finally:
            if mine is not None:
                mine.stop()
        # the other clone's mirror answered no request of this folder
        assert [r.path for r in theirs.stac.requests if r.path != "/"] == [] and theirs.cogs.requests == []


def test_a_mirror_of_an_older_version_counts_as_another_folders(demo_world):
    port = free_port_pair()
    with StacServer([], title=DEMO_TITLE, port=port):  # no identity on its landing page
        state = port_state(demo_world, port)
        assert state.kind == "other-mirror" and state.detail == ""
        assert state.holder() == (
            "the demo mirror of an older rasteret-pipelines, which does not say which folder it serves"
        )
        with pytest.raises(LocalServerDownError, match="not running"):
            running_mirror_url(demo_world, port, default_port=port)


def test_serve_for_quickstart_next_to_another_folders_mirror(demo_world, other_clone, monkeypatch):
    from rasteret_pipelines_demo.demo import serve_for_quickstart

    port = free_port_pair()
    monkeypatch.setenv("RASTERET_DEMO_DIR", str(other_clone))
    monkeypatch.setenv("RASTERET_DEMO_PORT", str(port))
    monkeypatch.setenv("RASTERET_DEMO_MONTHS", ",".join(MONTHS))
    with DemoMirror(demo_world, port):
        lines, stop = [], threading.Event()
        served = threading.Thread(target=serve_for_quickstart, kwargs={"log": lines.append, "stop": stop})
        served.start()
        try:
            for _ in range(600):  # bounded: the server is up when the export lines are printed
                if any("export" in line for line in lines) or not served.is_alive():
                    break
                served.join(0.05)
            mine = recorded_port(other_clone)
            assert mine is not None and mine != port
            assert f"  export RASTERET_STAC_URL_SENTINEL_2_L2A=http://127.0.0.1:{mine}" in lines, lines
            assert any("held by the demo mirror of another folder" in line for line in lines), lines
            assert probe_demo_mirror(f"http://127.0.0.1:{mine}", demo_dir=other_clone)
        finally:
            stop.set()
            served.join(30)


@pytest.mark.timeout(300)
def test_the_demo_next_to_another_clones_live_mirror_reads_its_own_world(
    demo_world, other_clone, tmp_path, monkeypatch
):
    """The acceptance case: a fresh clone's demo while an older clone's mirror serves the port."""
    from rasteret_pipelines_demo.demo import run_demo

    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("RASTERET_"):
            monkeypatch.delenv(name)
    port = free_port_pair()
    monkeypatch.setenv("RASTERET_DEMO_DIR", str(other_clone))
    monkeypatch.setenv("RASTERET_DEMO_PORT", str(port))
    monkeypatch.setenv("RASTERET_DEMO_MONTHS", ",".join(MONTHS))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / ".dagster_home"))
    with DemoMirror(demo_world, port) as theirs:
        lines = []
        summary = run_demo(months=MONTHS[:1], log=lines.append)
        text = "\n".join(lines)
        theirs_searches = [r.path for r in theirs.stac.requests if r.path != "/"]  # "/": identity probes
        theirs_cogs = list(theirs.cogs.requests)
    mine = recorded_port(other_clone)
    assert mine is not None and mine != port
    assert f"demo mirror of {other_clone}: STAC API http://127.0.0.1:{mine}" in text, text
    assert "held by the demo mirror of another folder" in text, text
    assert theirs_searches == [] and theirs_cogs == [], (theirs_searches, theirs_cogs)
    (month,) = summary["collections"]["sentinel-2-l2a"]
    hrefs = pq.read_table(month, columns=["red_href"]).column("red_href").to_pylist()
    assert hrefs and all(h.startswith(f"http://127.0.0.1:{mine + 1}/") for h in hrefs), hrefs
    assert len(summary["geotiffs"]["sentinel-2-l2a"]) == 2  # 1 month x 2 dates x 1 group (both AOIs in one)


def test_cog_hrefs_on_this_folders_port_with_its_mirror_down_start_nothing(other_clone):
    """A collection's COGs point at this folder's preferred port and its mirror is down: the
    resource says how to start it, and starts nothing (no mirror on either port after)."""
    recorded, preferred = free_port_pair(), free_port_pair()
    record_port(other_clone, recorded)
    resource = DataSourceResource(
        stac_url="demo", demo_dir=str(other_clone), demo_port=preferred, demo_months=",".join(MONTHS)
    )
    with pytest.raises(
        LocalServerDownError, match=rf"nothing listens at http://127.0.0.1:{preferred + 1}.*demo --serve"
    ):
        resource.ensure_cog_servers([f"http://127.0.0.1:{preferred + 1}/cogs/x.tif"])
    with pytest.raises(LocalServerDownError, match="not running"):
        resource.stac_url_for("sentinel-2-l2a")
    assert port_state(other_clone, preferred).kind == "free" and port_state(other_clone, recorded).kind == "free"
