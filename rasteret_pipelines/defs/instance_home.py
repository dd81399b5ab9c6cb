"""The Dagster instance folder (``DAGSTER_HOME``) and the ``dg dev`` command that opens it.

The repository's ``dagster.yaml`` is the instance configuration. ``dagster dev`` run from the
repository root with ``DAGSTER_HOME`` unset uses it directly (with temporary storage). To keep
runs, :func:`prepare_dagster_home` seeds a folder (default ``./.dagster_home``) with a copy,
and :func:`dagster_ui_command` is ``dg dev -w workspace.yaml`` *inside* that folder: Dagster warns that
a ``./dagster.yaml`` "will not be used" when it runs from a folder holding one that is not
``DAGSTER_HOME``, which the repository root is. Relative storage paths are made absolute first,
so they keep pointing where they did from the folder the command was started in. Nothing here
starts a process: ``rasteret-pipelines ui`` (:func:`rasteret_pipelines_demo.demo.run_ui`) runs
the command.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REPO_DAGSTER_YAML = REPO / "dagster.yaml"
WORKSPACE_YAML = REPO / "workspace.yaml"
DEFAULT_DAGSTER_HOME = ".dagster_home"

_LOCAL_PATH_VARS = ("RASTERET_STORAGE", "RASTERET_AOI_FILE", "RASTERET_DEMO_DIR")


def prepare_dagster_home(path: str | os.PathLike | None = None) -> Path:
    """Set ``DAGSTER_HOME`` (default ``./.dagster_home``) and seed it with the repository's dagster.yaml."""
    from rasteret_pipelines_demo.demo_mirror import ensure_ignored_dir

    home = Path(path or os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).expanduser().absolute()
    ensure_ignored_dir(home)
    target = home / "dagster.yaml"
    if not target.exists():
        if REPO_DAGSTER_YAML.exists():
            shutil.copyfile(REPO_DAGSTER_YAML, target)
        else:  # installed without the repository: a minimal local instance
            target.write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def interpreter_command(script: str, module: str) -> list[str]:
    """The console ``script`` installed beside this interpreter (the virtualenv's, not whatever is
    on PATH), or ``python -m module`` when there is none."""
    exe = Path(sys.executable).parent / script
    return [str(exe)] if exe.exists() else [sys.executable, "-m", module]


def dagster_ui_command(
    home: Path, environ: Mapping[str, str], extra_args: list[str] | tuple[str, ...] = ()
) -> tuple[list[str], dict[str, str], Path]:
    """``(argv, environment, working directory)`` of ``dg dev`` on the instance in ``home``.

    The settings in ``environ`` are kept; the local paths among ``RASTERET_STORAGE`` (default
    ``./.rasteret_data``), ``RASTERET_AOI_FILE`` and ``RASTERET_DEMO_DIR`` (default
    ``./.rasteret_data/demo_world``) are made absolute
    against the current folder, because ``dg dev`` (and the runs it starts) work in ``home``.
    """
    from rasteret_pipelines.defs.settings import DEFAULT_DEMO_DIR, DEFAULT_STORAGE

    env = dict(environ)
    env["DAGSTER_HOME"] = str(Path(home).absolute())
    env.setdefault("RASTERET_STORAGE", DEFAULT_STORAGE)
    env.setdefault("RASTERET_DEMO_DIR", DEFAULT_DEMO_DIR)  # the demo's folder, not one under ``home``
    for name in _LOCAL_PATH_VARS:
        value = env.get(name)
        if value and "://" not in value:
            env[name] = str(Path(value).expanduser().absolute())
    if WORKSPACE_YAML.exists():
        target = ["-w", str(WORKSPACE_YAML)]
    else:  # installed without the repository
        target = ["-m", "rasteret_pipelines.definitions"]
    return [*interpreter_command("dg", "dagster_dg_cli.cli"), "dev", *target, *extra_args], env, Path(home).absolute()
