"""``dagster dev -w workspace.yaml`` headless on 127.0.0.1 on a PostgreSQL-backed instance (the
dagster.yaml block of the README's scale-out section, against a server the test starts): a
partition run, a collection backfill and a months x groups statistics backfill launched through GraphQL,
queued, run under the pools of dagster.yaml, every partition materialised.

The webserver, daemon and code server run as one process group that is always killed at the end.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import requests

from rasteret_pipelines.aois import write_aois_geojson
from rasteret_pipelines_tests.conftest import free_port, wait_until
from rasteret_pipelines_tests.defs.conftest import AOIS, GROUP, REPO, postgres_dagster_yaml

LOCATION = "rasteret_pipelines"
COLLECTION = ["collections", "sentinel_2_l2a"]
STATS = ["field_stats", "sentinel_2_l2a_field_stats"]


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    response = requests.post(f"{url}/graphql", json={"query": query, "variables": variables or {}}, timeout=30)
    assert response.ok, f"HTTP {response.status_code}: {response.text[:2000]}"
    body = response.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


@pytest.fixture
def dagster_dev(tmp_path, mirror, postgres_server, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(postgres_dagster_yaml())
    for name, value in postgres_server.env().items():
        monkeypatch.setenv(name, value)
    aoi_file = tmp_path / "aois.geojson"
    write_aois_geojson(AOIS, aoi_file)
    instance = dg.DagsterInstance.from_config(str(home))
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    instance.add_dynamic_partitions("field_group", [GROUP])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RASTERET_", "DAGSTER_"))}
    env.update(
        **postgres_server.env(),
        DAGSTER_HOME=str(home),
        RASTERET_STORAGE=str(tmp_path / "data"),
        RASTERET_AOI_FILE=str(aoi_file),
        RASTERET_STAC_URL=mirror.stac_url,
        RASTERET_START_MONTH="2024-01",
        RASTERET_TRANSIENT_RETRIES="0",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        # deprecation warnings are printed by every process (Python hides them outside __main__)
        PYTHONWARNINGS="always::DeprecationWarning",
    )
    port = free_port()
    log = open(tmp_path / "dagster_dev.log", "wb")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster"),
            "dev",
            "-w",
            str(REPO / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=home,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def loaded() -> bool:
            try:
                if not requests.get(f"{url}/server_info", timeout=2).ok:
                    return False
                data = graphql(
                    url,
                    "{ workspaceOrError { ... on Workspace { locationEntries { name "
                    "locationOrLoadError { __typename } } } } }",
                )
            except requests.RequestException:
                return False
            entries = data["workspaceOrError"]["locationEntries"]
            return bool(
                entries
                and entries[0]["locationOrLoadError"]
                and entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation"
            )

        wait_until(loaded, process=proc, log=lambda: (tmp_path / "dagster_dev.log").read_text()[-4000:], interval=1)
        yield url, tmp_path, instance
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
        instance.dispose()


def wait_for_runs(url: str, run_filter: dict, count: int, log_path: Path) -> list[dict]:
    query = """query($filter: RunsFilter) { runsOrError(filter: $filter) {
        ... on Runs { results { runId status tags { key value } } } ... on PythonError { message } } }"""
    seen: list[dict] = []

    def finished() -> list[dict] | None:
        seen[:] = graphql(url, query, {"filter": run_filter})["runsOrError"]["results"]
        done = [r for r in seen if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
        return list(seen) if len(seen) >= count and len(done) == len(seen) else None

    return wait_until(finished, log=lambda: f"runs: {seen}\n" + log_path.read_text()[-4000:], interval=2)


def launch_backfill(url: str, params: dict) -> str:
    backfill = graphql(
        url,
        """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
            __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }""",
        {"params": params},
    )["launchPartitionBackfill"]
    assert backfill["__typename"] == "LaunchBackfillSuccess", backfill
    return backfill["backfillId"]


def wait_for_backfill(url: str, backfill_id: str, log_path: Path) -> None:
    def ended() -> str | None:
        status = graphql(
            url,
            "query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } } }",
            {"id": backfill_id},
        )["partitionBackfillOrError"]["status"]
        return status if status in ("COMPLETED", "COMPLETED_SUCCESS", "FAILED", "COMPLETED_FAILED") else None

    status = wait_until(ended, log=lambda: log_path.read_text()[-4000:], interval=2)
    assert status in ("COMPLETED", "COMPLETED_SUCCESS"), status + "\n" + log_path.read_text()[-4000:]


def max_overlap(intervals) -> int:
    """Largest number of (start, end) intervals open at once."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    most = current = 0
    for _, delta in events:
        current += delta
        most = max(most, current)
    return most


@pytest.mark.timeout(600)
def test_backfill_of_months_and_groups_through_the_queue_on_postgres(dagster_dev):
    """One backfill (launched as from the UI): two collection months, then the statistics of the
    quick start's group in both months in at most one run per month, every run queued, the
    source's pool respected."""
    url, tmp_path, instance = dagster_dev
    log_path = tmp_path / "dagster_dev.log"
    months = ("2024-01-01", "2024-02-01")
    stats_keys = [f"{GROUP}|{m}" for m in months]
    backfill_id = launch_backfill(
        url,
        {
            "partitionsByAssets": [
                {"assetKey": {"path": COLLECTION}, "partitions": {"range": {"start": months[0], "end": months[-1]}}},
                {"assetKey": {"path": STATS}, "partitions": {"range": {"start": stats_keys[0], "end": stats_keys[-1]}}},
            ],
        },
    )
    wait_for_backfill(url, backfill_id, log_path)
    runs = wait_for_runs(url, {"tags": [{"key": "dagster/backfill", "value": backfill_id}]}, 3, log_path)
    assert all(r["status"] == "SUCCESS" for r in runs), runs
    by_asset = {}
    for run in runs:
        record = instance.get_run_by_id(run["runId"])
        (asset,) = {k.to_user_string() for k in record.asset_selection}
        by_asset.setdefault(asset, []).append(record)
    assert len(by_asset["collections/sentinel_2_l2a"]) == 2
    assert 1 <= len(by_asset["field_stats/sentinel_2_l2a_field_stats"]) <= len(months), "at most one run per month"

    for month in months:
        path = tmp_path / "data" / "collections" / "sentinel_2_l2a" / f"month={month[:7]}" / "_search.json"
        assert json.loads(path.read_text())["groups"] == [GROUP]
    stats_key = dg.AssetKey(STATS)
    assert instance.get_materialized_partitions(stats_key) == set(stats_keys)
    for key in stats_keys:  # each partition its own materialization, with its fields, files and reads
        (record,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=stats_key, asset_partitions=[key]), limit=1
        ).records
        meta = record.asset_materialization.metadata
        assert meta["fields"].value == len(AOIS) and meta["geotiffs"].value >= 1 and meta["tile_get_requests"].value > 0
        group, month = key.split("|")
        assert (
            tmp_path / "data" / "field_stats" / "sentinel_2_l2a" / f"month={month[:7]}" / f"group={group}.parquet"
        ).exists()

    # every run went through the queue, and no more steps than the pool's limit held it at once
    pool = "rasteret-sentinel-2-l2a"
    intervals = []
    for run in instance.get_runs():  # the backfill's, and any the automation sensor launched
        assert run.status == dg.DagsterRunStatus.SUCCESS, run.run_id
        assert instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_ENQUEUED).records, run.run_id
        # issue 19 item 8: no step of any run is skipped (checks are declared once, in their asset)
        assert not instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_SKIPPED).records
        for stat in instance.get_run_step_stats(run.run_id):
            if stat.step_key in ("collections__sentinel_2_l2a", "sentinel_2_l2a_field_stats"):
                intervals.append((stat.start_time, stat.end_time))
    assert len(intervals) >= len(runs)
    limit = instance.event_log_storage.get_concurrency_info(pool).slot_count
    assert limit == 2 and max_overlap(intervals) <= limit

    # dagster dev's log (webserver, daemon, code server, the runs' processes): no deprecation
    # raised from our modules, nor Dagster's resource-context deprecation our IO manager caused
    text = log_path.read_text()
    ours = [
        line
        for line in text.splitlines()
        if "Warning" in line and ("/rasteret_pipelines/" in line or "InitResourceContext.dagster_run" in line)
    ]
    assert not ours, "\n".join(ours)
