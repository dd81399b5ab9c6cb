"""Smoke test: ``dagster dev -w workspace.yaml`` headless on 127.0.0.1, a partition run and a
backfill launched through GraphQL, both succeeding against the local mirror.

The webserver, daemon and code server run as one process group that is always killed at the end.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import requests

from rasteret_pipelines_tests.conftest import free_port
from rasteret_pipelines_tests.defs.conftest import AOIS, REPO

from rasteret_pipelines.defs.aois import write_aois_geojson

STARTUP_TIMEOUT = 120
RUN_TIMEOUT = 180
LOCATION = "rasteret_pipelines"
COLLECTION = ["collections", "sentinel_2_l2a"]


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    response = requests.post(f"{url}/graphql", json={"query": query, "variables": variables or {}}, timeout=30)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


@pytest.fixture
def dagster_dev(tmp_path, mirror):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    aoi_file = tmp_path / "aois.geojson"
    write_aois_geojson(AOIS, aoi_file)
    instance = dg.DagsterInstance.local_temp(str(home))
    instance.add_dynamic_partitions("aoi", list(AOIS))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RASTERET_", "DAGSTER_"))}
    env.update(
        DAGSTER_HOME=str(home),
        RASTERET_STORAGE=str(tmp_path / "data"),
        RASTERET_AOI_FILE=str(aoi_file),
        RASTERET_STAC_URL=mirror.stac_url,
        RASTERET_START_MONTH="2024-01",
        RASTERET_TRANSIENT_RETRIES="0",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    port = free_port()
    log = open(tmp_path / "dagster_dev.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            assert proc.poll() is None, (tmp_path / "dagster_dev.log").read_text()[-4000:]
            try:
                if requests.get(f"{url}/server_info", timeout=2).ok:
                    data = graphql(url, "{ workspaceOrError { ... on Workspace { locationEntries { name "
                                        "locationOrLoadError { __typename } } } } }")
                    entries = data["workspaceOrError"]["locationEntries"]
                    if entries and entries[0]["locationOrLoadError"] and entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation":
                        break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "dagster dev did not come up: " + (tmp_path / "dagster_dev.log").read_text()[-4000:]
            time.sleep(1)
        yield url, tmp_path
    finally:
        for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()


def wait_for_runs(url: str, run_filter: dict, count: int, log_path: Path) -> list[dict]:
    deadline = time.monotonic() + RUN_TIMEOUT
    query = """query($filter: RunsFilter) { runsOrError(filter: $filter) {
        ... on Runs { results { runId status tags { key value } } } ... on PythonError { message } } }"""
    while True:
        runs = graphql(url, query, {"filter": run_filter})["runsOrError"]["results"]
        done = [r for r in runs if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
        if len(runs) >= count and len(done) == len(runs):
            return runs
        assert time.monotonic() < deadline, f"runs not finished: {runs}\n" + log_path.read_text()[-4000:]
        time.sleep(2)


@pytest.mark.timeout(420)
def test_partition_and_backfill_through_graphql(dagster_dev):
    url, tmp_path = dagster_dev
    log_path = tmp_path / "dagster_dev.log"
    launched = graphql(
        url,
        """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
            __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }""",
        {
            "params": {
                "selector": {"repositoryLocationName": LOCATION, "repositoryName": "__repository__", "jobName": "collections_job"},
                "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "2024-01-01"}]},
            }
        },
    )["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]

    backfill = graphql(
        url,
        """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
            __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }""",
        {"params": {"assetSelection": [{"path": COLLECTION}], "partitionNames": ["2024-01-01", "2024-02-01"]}},
    )["launchPartitionBackfill"]
    assert backfill["__typename"] == "LaunchBackfillSuccess", backfill
    backfill_id = backfill["backfillId"]

    (single,) = wait_for_runs(url, {"runIds": [run_id]}, 1, log_path)
    assert single["status"] == "SUCCESS", log_path.read_text()[-4000:]
    runs = wait_for_runs(url, {"tags": [{"key": "dagster/backfill", "value": backfill_id}]}, 2, log_path)
    assert sorted(r["status"] for r in runs) == ["SUCCESS", "SUCCESS"]
    assert sorted(t["value"] for r in runs for t in r["tags"] if t["key"] == "dagster/partition") == ["2024-01-01", "2024-02-01"]
    deadline = time.monotonic() + 60
    while True:
        status = graphql(url, "query($id: String!) { partitionBackfillOrError(backfillId: $id) { "
                              "... on PartitionBackfill { status } } }", {"id": backfill_id})
        if status["partitionBackfillOrError"]["status"] in ("COMPLETED", "COMPLETED_SUCCESS"):
            break
        assert time.monotonic() < deadline, status
        time.sleep(2)

    for month in ("2024-01", "2024-02"):
        path = tmp_path / "data" / "collections" / "sentinel_2_l2a" / f"month={month}" / "_search.json"
        assert json.loads(path.read_text())["aoi_ids"] == ["1", "2"]
