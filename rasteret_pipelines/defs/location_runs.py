"""Runs of the project's jobs executed in this process but recorded as the code location's runs.

``JobDefinition.execute_in_process`` records runs without a repository origin, and the UI's
Overview timeline and job pages only count runs that name the code location and repository
they belong to. :class:`LocationRunner` loads the code location the way ``dagster dev`` names it
(``rasteret_pipelines``, module ``rasteret_pipelines.definitions``, see ``workspace.yaml``),
creates each run through the instance with that origin, its execution plan and the asset graph
(what ``dagster job launch`` records), and executes it here with the in-process executor, so
that the runs need neither a daemon nor a code server and still show on every page of the UI.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping

import dagster as dg

LOCATION_NAME = "rasteret_pipelines"
"""The code location's name in ``workspace.yaml`` and ``[tool.dagster]``."""
DEFINITIONS_MODULE = "rasteret_pipelines.definitions"
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}
"""Run config selecting the in-process side of the default executor: the steps run here."""


def partition_range_tags(first: str, last: str) -> dict[str, str]:
    """The run tags of one run over the partitions ``first`` to ``last`` (a backfill's range run).

    Dagster 1.13 has no public Python argument for this: ``materialize`` and
    ``execute_in_process`` take one ``partition_key``, and ``RunRequest`` has no range. These are
    the tags that Dagster's own ``dagster job execute --partition-range`` and ``dg launch
    --partition-range`` set (``dagster/_cli/job.py``); this is the only place that names them,
    for the demo's run over many partitions and the tests that run one the same way. Sensors
    never use them: they request partitions, and the automation sensor emits backfills.
    """
    return {"dagster/asset_partition_range_start": str(first), "dagster/asset_partition_range_end": str(last)}


class LocationRunner:
    """Create and execute runs of the code location's jobs in this process (see module docs).

    Args:
        instance: Where runs are recorded.
        location_name: The code location's name (as the UI's workspace names it).
        module: The module whose ``Definitions`` the location loads; imported (or reloaded) here,
            so the environment must already hold the settings the runs should use.

    Use as a context manager (the location is released on exit).
    """

    def __init__(
        self, instance: dg.DagsterInstance, *, location_name: str = LOCATION_NAME, module: str = DEFINITIONS_MODULE
    ):
        from dagster._core.remote_origin import InProcessCodeLocationOrigin
        from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

        self.instance = instance
        if module in sys.modules:  # its definitions were built from the environment of that import
            importlib.reload(sys.modules[module])
        origin = InProcessCodeLocationOrigin(
            LoadableTargetOrigin(executable_path=sys.executable, module_name=module, working_directory=os.getcwd()),
            location_name=location_name,
        )
        self.location = origin.create_location(instance)
        (self.repository,) = self.location.get_repositories().values()

    def __enter__(self) -> LocationRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.location.cleanup()

    def run(
        self,
        job_name: str,
        *,
        partition_key: str | None = None,
        partition_range: tuple[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        run_config: Mapping | None = None,
    ):
        """Execute one run of ``job_name``: one partition, or every partition from
        ``partition_range[0]`` to ``partition_range[1]`` in one run.

        Returns:
            The ``JobExecutionResult`` (``success``, ``run_id``, ``all_events``).
        """
        from dagster._core.execution.api import execute_run
        from dagster._utils.hosted_user_process import recon_job_from_origin
        from dagster._utils.merger import deep_merge_dicts

        remote_job = self.repository.get_full_job(job_name)
        recon_job = recon_job_from_origin(remote_job.get_python_origin())
        run_tags = {**remote_job.tags, **(tags or {})}
        if partition_key is not None:
            job_def = recon_job.get_definition()
            run_tags.update(job_def.get_tags_for_partition_key(partition_key, selected_asset_keys=None))
        if partition_range is not None:
            run_tags.update(partition_range_tags(*partition_range))
        config = deep_merge_dicts(dict(run_config or {}), IN_PROCESS)
        plan = self.location.get_execution_plan(
            remote_job, config, step_keys_to_execute=None, known_state=None, instance=self.instance
        )
        snapshot = plan.execution_plan_snapshot
        run = self.instance.create_run(
            job_name=job_name,
            run_id=None,
            run_config=config,
            resolved_op_selection=None,
            step_keys_to_execute=snapshot.step_keys_to_execute,
            op_selection=None,
            status=None,
            root_run_id=None,
            parent_run_id=None,
            tags=run_tags,
            job_snapshot=remote_job.job_snapshot,
            execution_plan_snapshot=snapshot,
            parent_job_snapshot=remote_job.parent_job_snapshot,
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
            asset_selection=None,
            asset_check_selection=None,
            asset_graph=self.repository.asset_graph,
        )
        return execute_run(recon_job, run, self.instance)
