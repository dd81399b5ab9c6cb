"""The Dagster project: assets (with their checks), IO manager, resources, jobs, schedule and sensors.

:func:`build_definitions` assembles everything from :class:`~rasteret_pipelines.defs.settings.Settings`
(the environment by default); ``rasteret_pipelines.definitions`` exposes the result as ``defs``.
"""

from __future__ import annotations

import dagster as dg

from rasteret_pipelines.defs.assets import collection_asset, field_stats_asset, field_timeseries_asset, fields_asset
from rasteret_pipelines.defs.jobs import build_jobs
from rasteret_pipelines.defs.partitions import build_partitions
from rasteret_pipelines.defs.resources import resources_from_settings
from rasteret_pipelines.defs.schedules import build_monthly_schedule
from rasteret_pipelines.defs.sensors import build_automation_sensor, build_field_sensor, build_stac_sensor
from rasteret_pipelines.defs.settings import Settings


def build_definitions(settings: Settings | None = None, resources: dict | None = None) -> dg.Definitions:
    """The project's definitions for ``settings`` (default: from the environment).

    Args:
        settings: What to build (sources, first month) and how to configure the resources.
        resources: Resources replacing those made from ``settings`` (tests).
    """
    settings = settings or Settings.from_env()
    partitions = build_partitions(settings.start_month, settings.end_month)
    policy = settings.backfill_policy()
    retry_policy = settings.retry_policy()
    assets = [fields_asset(partitions)]
    for source in settings.sources:
        assets += [
            collection_asset(source, partitions, retry_policy, settings.stac_url_label(source)),
            field_stats_asset(source, partitions, policy, retry_policy),
            field_timeseries_asset(source, partitions, policy),
        ]
    jobs = build_jobs(settings.sources)
    return dg.Definitions(
        assets=assets,
        jobs=jobs,
        schedules=[build_monthly_schedule(settings.sources, settings.start_month, jobs[0], settings.end_month)],
        sensors=[
            build_field_sensor(settings.sources, jobs[0]),
            build_stac_sensor(settings.sources, jobs[0]),
            build_automation_sensor(),
        ],
        resources={**resources_from_settings(settings), **(resources or {})},
    )


__all__ = ["Settings", "build_definitions"]
