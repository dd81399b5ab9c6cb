"""The offline demo: the main job through Dagster, the mirror on fixed ports, the CLI."""

import os
import signal
from pathlib import Path

import dagster as dg
import pytest

from rasteret_pipelines.cli import build_parser
from rasteret_pipelines.defs.resources import DataSourceResource
from rasteret_pipelines.errors import LocalServerDownError, StacApiError
from rasteret_pipelines_demo.demo import run_demo
from rasteret_pipelines_demo.demo_mirror import DemoMirror, free_port_pair, probe_demo_mirror
from rasteret_pipelines_tests.conftest import free_port, wait_until
from rasteret_pipelines_tests.defs.conftest import GROUP, MONTHS


def test_run_demo_records_runs_in_a_persistent_instance(demo_world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("RASTERET_"):
            monkeypatch.delenv(name)
    port = free_port_pair()  # the mirror's pair: port and port + 1
    monkeypatch.setenv("RASTERET_DEMO_DIR", str(demo_world))  # the session's world: no COG writing here
    monkeypatch.setenv("RASTERET_DEMO_PORT", str(port))
    monkeypatch.setenv("RASTERET_DEMO_MONTHS", ",".join(MONTHS))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / ".dagster_home"))
    # set as a user would: the resources then hold EnvVars, which the demo must not use as paths
    monkeypatch.setenv("RASTERET_STORAGE", str(tmp_path / ".rasteret_data"))
    lines = []
    summary = run_demo(log=lines.append)
    text = "\n".join(lines)

    assert (tmp_path / ".dagster_home" / "dagster.yaml").exists()
    assert (tmp_path / ".rasteret_data" / ".gitignore").read_text().strip().endswith("*")
    assert (tmp_path / ".rasteret_data" / "aois.geojson").exists()
    # the quick start's two AOIs are two fields of one group: one COG per (group, date)
    assert len(summary["geotiffs"]["sentinel-2-l2a"]) == 4  # 2 months x 2 dates x 1 group
    assert len(summary["tables"]["sentinel-2-l2a"]) == 2  # 2 months x 1 group
    assert len(summary["series"]["sentinel-2-l2a"]) == 1
    assert "NDVI COGs (4 files)" in text and "rasteret-pipelines ui" in text
    assert "field 1 (group g_13.0_77.5) mean NDVI" in text and "field 2 (group g_13.0_77.5)" in text
    hint = _dagster_dev_hint(text)
    assert hint["env"]["DAGSTER_HOME"] == str(tmp_path / ".dagster_home")
    assert hint["env"]["RASTERET_DEMO_PORT"] == str(port) and hint["env"]["RASTERET_DEMO_MONTHS"] == ",".join(MONTHS)
    assert os.access(hint["argv"][0], os.X_OK), "the hint names this interpreter's command, not one on PATH"
    assert not probe_demo_mirror(f"http://127.0.0.1:{port}"), "the in-process mirror stopped"
    assert hint["env"]["RASTERET_STAC_URL"] == "demo", "the demo is selected explicitly for the UI's runs"
    assert "RASTERET_STAC_URL" not in os.environ, "the demo's selection does not outlive the demo"

    instance = dg.DagsterInstance.get()
    runs = instance.get_runs()
    assert len(runs) == len(summary["runs"]) == 2 + 1 + 1  # a collection per month; statistics; series
    assert {r.job_name for r in runs} == {"collections_job", "field_stats_job", "field_timeseries_job"}
    assert all(r.is_success for r in runs)
    assert instance.get_dynamic_partitions("field_group") == ["g_13.0_77.5"]
    _assert_the_ui_counts_the_runs(instance, summary["runs"])

    # a second run reuses the world, the AOI file and the cached headers
    again = run_demo(log=lines.append)
    assert again["geotiffs"] == summary["geotiffs"]
    assert len(instance.get_runs()) == 8


RUNS_QUERY = """{ runsOrError { ... on Runs { results {
    runId jobName repositoryOrigin { repositoryLocationName repositoryName } } } } }"""
JOB_RUNS_QUERY = """query ($sel: PipelineSelector!) { pipelineOrError(params: $sel) {
    __typename ... on Pipeline { runs { runId } } } }"""
ASSET_QUERY = """query ($key: AssetKeyInput!) { assetOrError(assetKey: $key) {
    __typename ... on Asset { assetMaterializations(limit: 100) { runId } } } }"""


def _assert_the_ui_counts_the_runs(instance, run_ids) -> None:
    """Over GraphQL, on the workspace ``dagster dev`` loads (location and repository as named by
    workspace.yaml): every demo run names its repository (the Overview timeline drops runs that do
    not), each job page lists its runs, and the asset pages show their materialisations."""
    import yaml
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster_graphql.test.utils import execute_dagster_graphql

    from rasteret_pipelines.defs.location_runs import DEFINITIONS_MODULE, LOCATION_NAME
    from rasteret_pipelines_tests.defs.conftest import REPO

    (entry,) = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"]
    assert entry["python_module"]["location_name"] == LOCATION_NAME
    assert entry["python_module"]["module_name"] == DEFINITIONS_MODULE
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name=DEFINITIONS_MODULE), location_name=LOCATION_NAME
    )
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as process:
        context = process.create_request_context()
        (repo_name,) = context.get_code_location(LOCATION_NAME).get_repositories()
        runs = execute_dagster_graphql(context, RUNS_QUERY).data["runsOrError"]["results"]
        assert sorted(r["runId"] for r in runs) == sorted(run_ids)
        origins = {(r["repositoryOrigin"] or {}).get("repositoryLocationName") for r in runs}
        assert origins == {LOCATION_NAME}, runs
        assert {r["repositoryOrigin"]["repositoryName"] for r in runs} == {repo_name}
        for job in {r["jobName"] for r in runs}:
            sel = {"repositoryLocationName": LOCATION_NAME, "repositoryName": repo_name, "pipelineName": job}
            page = execute_dagster_graphql(context, JOB_RUNS_QUERY, {"sel": sel}).data["pipelineOrError"]
            assert page["__typename"] == "Pipeline", page
            assert sorted(r["runId"] for r in page["runs"]) == sorted(r["runId"] for r in runs if r["jobName"] == job)
        asset = execute_dagster_graphql(context, ASSET_QUERY, {"key": {"path": ["collections", "sentinel_2_l2a"]}})
        materialized = {m["runId"] for m in asset.data["assetOrError"]["assetMaterializations"]}
        assert materialized == {r["runId"] for r in runs if r["jobName"] == "collections_job"}


def test_the_resource_finds_the_running_mirror_and_starts_none(demo_world):
    port = free_port_pair()  # the mirror's pair: port and port + 1
    url = f"http://127.0.0.1:{port}"
    resource = DataSourceResource(
        stac_url="demo", demo_dir=str(demo_world), demo_port=port, demo_months=",".join(MONTHS)
    )
    with pytest.raises(LocalServerDownError, match="not running.*rasteret-pipelines demo --serve"):
        resource.stac_url_for("sentinel-2-l2a")
    assert not probe_demo_mirror(url)
    with DemoMirror(demo_world, port):  # what the demo and ui commands serve while they run
        assert resource.stac_url_for("sentinel-2-l2a") == url
    assert not probe_demo_mirror(url)


def test_something_else_on_the_demo_port(mirror):
    with pytest.raises(StacApiError, match="used by another program|not the demo mirror"):
        probe_demo_mirror(mirror.cog_url)


def test_cli_has_demo_and_header():
    parser = build_parser()
    assert parser.parse_args(["demo", "--months", "2024-01"]).months == "2024-01"
    assert parser.parse_args(["header", "x.tif"]).hrefs == ["x.tif"]
    args, rest = parser.parse_known_args(["ui", "--dagster-home", "h", "-p", "3001"])
    assert (args.command, args.dagster_home, rest) == ("ui", "h", ["-p", "3001"])


def test_cli_rejects_unknown_arguments_outside_ui(capsys):
    from rasteret_pipelines.cli import main

    with pytest.raises(SystemExit):
        main(["header", "x.tif", "--frobnicate"])
    assert "unrecognized arguments: --frobnicate" in capsys.readouterr().err


@pytest.mark.timeout(240)
def test_runs_after_the_demo_exited(demo_world, tmp_path):
    """The demo's mirror is gone (the demo exited): a run fails without a retry, saying how to start the
    mirror, whether the demo is selected or a STAC URL of it is given; nothing starts it."""
    from rasteret_pipelines_tests.defs.conftest import failure_messages, local_instance, make_project

    port = free_port_pair()  # the mirror's pair: port and port + 1
    demo_env = {
        "RASTERET_DEMO_DIR": str(demo_world),
        "RASTERET_DEMO_PORT": str(port),
        "RASTERET_DEMO_MONTHS": ",".join(MONTHS),
        "RASTERET_TRANSIENT_RETRIES": "2",
    }
    demo = make_project(
        str(tmp_path / "data"),
        "demo",
        str(tmp_path / "aois.geojson"),
        instance=local_instance(tmp_path / "home"),
        extra=demo_env,
    )
    demo.register_aois()
    with DemoMirror(demo_world, port):  # what `rasteret-pipelines demo` serves while it runs
        demo.run("collections_job", "2024-01-01")
    url = f"http://127.0.0.1:{port}"
    assert not probe_demo_mirror(url)

    # the demo selected: the STAC search and the COG reads find the mirror down
    for job, partition in (("collections_job", "2024-02-01"), ("field_stats_job", f"{GROUP}|2024-01-01")):
        result = demo.run(job, partition, raise_on_error=False)
        assert not result.success
        text = failure_messages(result)
        assert "rasteret-pipelines demo --serve" in text and "rasteret-pipelines ui" in text, text
        assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)
        assert not probe_demo_mirror(url), "a run started the mirror"

    # a STAC URL given explicitly: fail with the way out, no retry
    explicit = make_project(demo.storage, url, demo.aoi_file, instance=demo.instance, aois=False, extra=demo_env)
    result = explicit.run("field_stats_job", f"{GROUP}|2024-01-01", raise_on_error=False)
    assert not result.success
    text = failure_messages(result)
    assert f"nothing listens at http://127.0.0.1:{port + 1}" in text, text
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)


def _serves(url: str) -> bool:
    import requests

    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False


def _dagster_dev_hint(text: str) -> dict:
    """``{"env": {...}, "argv": [...]}`` of the demo's closing ``rasteret-pipelines ui`` line."""
    import shlex

    (line,) = [ln for ln in text.splitlines() if ln.strip().endswith(" ui")]
    words = shlex.split(line)
    env = dict(w.split("=", 1) for w in words if "=" in w.split("/")[0])
    return {"env": env, "argv": [w for w in words if "=" not in w.split("/")[0]]}


def _children(pid: int) -> list[int]:
    """Pids of ``pid``'s children (every thread's), from /proc."""
    tasks = Path(f"/proc/{pid}/task")
    return [int(c) for t in tasks.iterdir() for c in (t / "children").read_text().split()]


def _cmdlines(pids) -> str:
    """The command lines of ``pids``, for a failure message."""
    out = []
    for pid in sorted(pids):
        try:
            out.append(f"{pid}: " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return "\n".join(out)


def _session(sid: int) -> set[int]:
    """Pids of the live (not zombie) processes of session ``sid``, from /proc."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:  # state, ppid, pgrp, session
            out.add(int(stat.parent.name))
    return out


@pytest.mark.timeout(240)
def test_the_ui_command_serves_the_demo_while_dg_dev_runs_and_stops_it_after(demo_world, tmp_path):
    """The closing hint, run from the repository root (which holds dagster.yaml): `dg dev` comes up
    on the demo's DAGSTER_HOME with the demo selected and relative storage paths made absolute, the
    command serves this folder's mirror while it runs, and a SIGTERM to the command stops dg dev
    and then the mirror. Dagster neither warns that ./dagster.yaml is not used nor says "use dg dev"."""
    import subprocess
    import sys

    from rasteret_pipelines.defs.settings import Settings
    from rasteret_pipelines_demo.demo import dagster_dev_command
    from rasteret_pipelines_tests.defs.conftest import REPO

    assert (REPO / "dagster.yaml").exists()
    home = tmp_path / ".dagster_home"
    mirror_port = free_port_pair()
    settings = Settings.from_env(
        {
            "RASTERET_STORAGE": "rel_data",
            "RASTERET_DEMO_DIR": str(demo_world),
            "RASTERET_DEMO_PORT": str(mirror_port),
            "RASTERET_DEMO_MONTHS": ",".join(MONTHS),
        }
    )
    hint = _dagster_dev_hint(dagster_dev_command(home, settings))
    assert Path(hint["argv"][0]).parent == Path(sys.executable).parent
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RASTERET_", "DAGSTER_"))}
    env.update(hint["env"])
    log = tmp_path / "dev.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*hint["argv"], "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    mirror_url = f"http://127.0.0.1:{mirror_port}"
    dev = None
    try:
        wait_until(lambda: _serves(f"http://127.0.0.1:{port}/server_info"), process=proc, log=log.read_text)
        assert probe_demo_mirror(mirror_url, demo_dir=demo_world), "the command serves the mirror"
        (dev,) = _children(proc.pid)  # dg dev, in its own session
        environ = Path(f"/proc/{dev}/environ").read_bytes().split(b"\0")
        assert f"RASTERET_STORAGE={REPO / 'rel_data'}".encode() in environ
        assert b"RASTERET_STAC_URL=demo" in environ
        assert Path(f"/proc/{dev}/cwd").resolve() == home.resolve()
        services = _session(dev)  # dg dev (its own session), its webserver, daemon and code servers
        assert dev in services and len(services) >= 3, services
        proc.send_signal(signal.SIGTERM)  # to the command only: it passes it on to dg dev
        proc.wait(timeout=120)
        # dg dev's code server exits on its own once its parent is gone (an event, not a deadline:
        # a service that never exits is stopped by the test's timeout)
        wait_until(lambda: not _session(dev), log=lambda: _cmdlines(_session(dev)))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        left = _session(dev) if dev else set()
        if left:  # never leave a failed test's dg dev running
            os.killpg(dev, signal.SIGKILL)
    assert left == set(), "dg dev or one of its services outlived the command"
    assert not probe_demo_mirror(mirror_url), "the mirror outlived the command"
    assert (home / "dagster.yaml").read_bytes() == (REPO / "dagster.yaml").read_bytes()
    assert (home / "history" / "runs.db").exists() or (home / "storage").exists(), sorted(home.iterdir())
    assert not (REPO / "rel_data").exists()
    text = log.read_text()
    assert "will not be used" not in text and "dagster.yaml" not in text, text[-3000:]
    assert "dg dev" not in text.replace("rasteret-pipelines", ""), text[-3000:]
    assert "stopped the demo mirror" in text, text[-3000:]
