"""The Dagster project against the offline demo world, served on 127.0.0.1.

The world (two months, two Sentinel-2 scenes each, on the real 43PGQ grid) is written once per
test run for all xdist workers (the COG writing dominates; the grid size barely matters since
the quick start's AOIs sit near the tile's centre) and served by a :class:`DemoMirror` on free
ports, one per worker.
"""

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from rasteret_pipelines.aois import write_aois_geojson
from rasteret_pipelines.defs import build_definitions
from rasteret_pipelines.defs.location_runs import partition_range_tags
from rasteret_pipelines.defs.settings import Settings
from rasteret_pipelines.fields import load_fields
from rasteret_pipelines_demo.demo_data import QUICKSTART_AOIS
from rasteret_pipelines_demo.demo_mirror import WORLD_FILE, DemoMirror, prepare_world
from rasteret_pipelines_tests.conftest import build_once, shared_dir

REPO = Path(__file__).resolve().parents[2]
REPO_DAGSTER_YAML = REPO / "dagster.yaml"
"""The repository's instance configuration."""
MONTHS = ("2024-01", "2024-02")
AOIS = {str(k): v for k, v in QUICKSTART_AOIS.items()}
GROUP = "g_13.0_77.5"
"""The group of the quick start's two AOIs (two fields in one 0.1-degree cell)."""


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory) -> Path:
    """A demo world folder (``world.json`` + COGs) for :data:`MONTHS`, this worker's own.

    The COGs are written once per run for all xdist workers (``build_once``); each worker gets
    its own folder of hard links to them and its own copy of ``world.json``, so a mirror's
    identity (the folder's path), its lock and its log stay the worker's.
    """
    shared = build_once(shared_dir(tmp_path_factory, "demo_world"), lambda f: prepare_world(f, MONTHS, log=None))
    folder = tmp_path_factory.mktemp("demo_world")
    shutil.copytree(
        shared,
        folder,
        copy_function=os.link,
        ignore=shutil.ignore_patterns(".built", ".lock", ".*lock", "mirror.*", WORLD_FILE),
        dirs_exist_ok=True,
    )
    shutil.copyfile(shared / WORLD_FILE, folder / WORLD_FILE)
    return folder


@pytest.fixture(scope="session")
def mirror(demo_world) -> Iterator[DemoMirror]:
    """The world served on free ports (STAC API and COG server) for the whole session."""
    with DemoMirror(demo_world, port=0) as m:
        yield m


@pytest.fixture
def clean_mirror(mirror) -> Iterator[DemoMirror]:
    """The session mirror with empty request logs, no faults, and its items restored after."""
    items = mirror.stac.items
    for server in (mirror.stac, mirror.cogs):
        server.reset_log()
        server.faults = None
    yield mirror
    original = {(i["collection"], i["id"]) for i in items}
    for item in mirror.stac.items:
        if (item["collection"], item["id"]) not in original:
            mirror.stac.remove_item(item["collection"], item["id"])
    for item in items:
        if mirror.stac.get_item(item["collection"], item["id"]) is None:
            mirror.stac.add_items([item])
        else:
            mirror.stac.replace_item(item)
    for server in (mirror.stac, mirror.cogs):
        server.faults = None


@dataclass
class Project:
    """Definitions over a temporary storage location, and what they were built from."""

    defs: dg.Definitions
    settings: Settings
    storage: str
    aoi_file: str
    instance: dg.DagsterInstance

    @property
    def resources(self) -> dict:
        return self.defs.resources

    def assets(self):
        return list(self.defs.assets or []) + list(self.defs.asset_checks or [])

    def job(self, name: str):
        return self.defs.resolve_job_def(name)

    def run(self, job_name: str, partition_key, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        return self.job(job_name).execute_in_process(
            instance=self.instance, partition_key=str(partition_key), raise_on_error=raise_on_error
        )

    def run_range(self, job_name: str, first: str, last: str, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        """One run over the partitions ``first..last`` (what a backfill's multi-partition run does)."""
        return self.job(job_name).execute_in_process(
            instance=self.instance,
            raise_on_error=raise_on_error,
            tags=partition_range_tags(first, last),
        )

    def register_fields(self, groups=None, report: bool = True) -> list[str]:
        """Add the field file's groups (or ``groups``) as partitions and, as the field sensor does,
        record a ``fields`` materialisation of each; returns the groups."""
        fields = load_fields(self.aoi_file, cell_deg=self.settings.group_cell_deg)
        groups = list(groups or fields.groups)
        known = set(self.instance.get_dynamic_partitions("field_group"))
        new = [g for g in groups if g not in known]
        if new:
            self.instance.add_dynamic_partitions("field_group", new)
        if report:
            digests = fields.group_digests()
            for group in groups:
                self.instance.report_runless_asset_event(
                    dg.AssetMaterialization(
                        asset_key=dg.AssetKey(["fields"]), partition=group, metadata={"digest": digests.get(group, "")}
                    )
                )
        return groups

    register_aois = register_fields


def make_project(
    storage: str,
    stac_url: str,
    aoi_file: str,
    *,
    instance: dg.DagsterInstance | None = None,
    start_month: str = "2024-01",
    aois: dict | None = None,
    extra: dict | None = None,
) -> Project:
    """Definitions reading from ``stac_url`` and writing to ``storage`` (folder or s3://)."""
    if aois is not False:
        write_aois_geojson(aois or AOIS, aoi_file)
    env = {
        "RASTERET_STORAGE": storage,
        "RASTERET_AOI_FILE": aoi_file,
        "RASTERET_STAC_URL": stac_url,
        "RASTERET_START_MONTH": start_month,
        "RASTERET_TRANSIENT_RETRIES": "0",
        "RASTERET_TRANSIENT_RETRY_SECONDS": "0.1",
        "RASTERET_HTTP_MAX_RETRIES": "1",
        **(extra or {}),
    }
    settings = Settings.from_env(env)
    return Project(
        defs=build_definitions(settings),
        settings=settings,
        storage=storage,
        aoi_file=aoi_file,
        instance=instance or dg.DagsterInstance.ephemeral(),
    )


def local_instance(home: Path) -> dg.DagsterInstance:
    """A SQLite instance in ``home`` configured by the repository's dagster.yaml."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO_DAGSTER_YAML, home / "dagster.yaml")
    return dg.DagsterInstance.local_temp(str(home))


@pytest.fixture
def project(tmp_path, clean_mirror) -> Project:
    """Local storage under ``tmp_path``, the quick start's AOIs registered as fields, a SQLite instance
    (sensors resolving dynamic partitions need an instance reference, as in the daemon)."""
    p = make_project(
        str(tmp_path / "data"),
        clean_mirror.stac_url,
        str(tmp_path / "aois.geojson"),
        instance=local_instance(tmp_path / "dagster_home"),
    )
    p.register_aois()
    return p


def tick(project: Project, name: str, cursor: str | None = None):
    """One evaluation of the sensor ``name`` of ``project``, from ``cursor``."""
    sensor = project.defs.resolve_sensor_def(name)
    with dg.build_sensor_context(
        instance=project.instance,
        instance_ref=project.instance.get_ref(),
        cursor=cursor,
        resources=project.resources,
        definitions=project.defs,
    ) as context:
        return sensor.evaluate_tick(context)


def failure_messages(result: dg.ExecuteInProcessResult) -> str:
    """Every error message of the run's events (step and resource failures), joined: what the UI shows."""
    out = []
    for event in result.all_events:
        err = getattr(event.event_specific_data, "error", None)
        while err is not None:
            out.append(err.message)
            err = err.cause
    return "\n".join(out)


def file_digests(folder: str) -> dict[str, bytes]:
    """``{relative path: bytes}`` of every file below ``folder`` (to prove nothing changed)."""
    root = Path(folder)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- PostgreSQL ----------------------------------------------------------------------------------


def postgres_bin() -> Path | None:
    """Folder of PostgreSQL's server programs (Debian's ``postgresql`` package, or on PATH)."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    return versions[-1].parent if versions else None


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str
    db: str

    def env(self) -> dict[str, str]:
        """The variables the dagster.yaml PostgreSQL block reads."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USERNAME": self.user,
            "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
            "DAGSTER_PG_DB": self.db,
        }


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of its own on 127.0.0.1 (trust authentication), removed afterwards.

    As root (CI), the server runs as the ``postgres`` user (it refuses to run as root). Missing
    PostgreSQL fails under CI (``.ci/run`` installs Debian's package) and skips elsewhere.
    """
    import os
    import subprocess
    import tempfile

    from rasteret_pipelines_tests.conftest import free_port

    bindir = postgres_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: .ci/run installs Debian's postgresql package")
        pytest.skip("PostgreSQL server programs not found (apt-get install postgresql)")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="rasteret-pg-"))
    if os.geteuid() == 0:
        import pwd

        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port()

    def run(*args: str) -> None:
        done = subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"

    run(str(bindir / "initdb"), "-D", str(data), "-U", "dagster", "--auth=trust", "-E", "UTF8", "--no-sync")
    run(
        str(bindir / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(folder / "server.log"),
        "-w",
        "-t",
        "60",
        "-o",
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off",
        "start",
    )
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "dagster", "dagster")
        yield PostgresServer("127.0.0.1", port, "dagster", "dagster")
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(folder, ignore_errors=True)


def postgres_dagster_yaml() -> str:
    """The repository's dagster.yaml with its PostgreSQL storage block uncommented."""
    text = REPO_DAGSTER_YAML.read_text()
    begin, end = "# --- begin postgres storage ---\n", "# --- end postgres storage ---\n"
    block = text[text.index(begin) + len(begin) : text.index(end)]
    lines = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in block.splitlines()]
    return text + "\n" + "\n".join(lines) + "\n"
