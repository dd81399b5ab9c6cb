"""The monthly schedule: the last complete month of every source, early each month."""

import datetime as dt

import dagster as dg

from rasteret_pipelines.defs.assets import collection_key
from rasteret_pipelines.defs.partitions import month_partition_key

SOURCE_TAG = "rasteret/source"
"""Run tag naming the source a run sends requests to (limited per value in dagster.yaml)."""


def last_complete_month(when: dt.datetime) -> str:
    """``YYYY-MM`` of the month before ``when``'s month."""
    return (when.date().replace(day=1) - dt.timedelta(days=1)).strftime("%Y-%m")


def build_monthly_schedule(
    sources, start_month: str, collections_job, end_month: str | None = None
) -> dg.ScheduleDefinition:
    """The schedule over the months ``start_month`` to ``end_month`` (None: no end; the offline
    demo ends with its last month, and the schedule then has nothing to request)."""

    @dg.schedule(
        name="monthly_collections",
        cron_schedule="0 3 2 * *",
        execution_timezone="UTC",
        job=collections_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(
            "At 03:00 UTC on the 2nd of each month: the month just completed, one run per source. "
            "The NDVI of every AOI for that month, and their time series, follow through the "
            "automation sensor once the collection month is built."
        ),
    )
    def monthly_collections(context: dg.ScheduleEvaluationContext):
        month = last_complete_month(context.scheduled_execution_time)
        if month < start_month:
            return dg.SkipReason(f"{month} is before the first partition ({start_month})")
        if end_month is not None and month > end_month:
            return dg.SkipReason(f"{month} is after the last partition ({end_month}, the offline demo's last month)")
        return [
            dg.RunRequest(
                run_key=f"monthly:{source}:{month}",
                partition_key=month_partition_key(month),
                asset_selection=[collection_key(source)],
                tags={SOURCE_TAG: source, "rasteret/trigger": "schedule"},
            )
            for source in sources
        ]

    return monthly_collections
