"""What the assets share: pools, automation conditions, turning errors into Dagster outcomes."""

from __future__ import annotations

import dagster as dg

from rasteret_pipelines.errors import FetchError, StacApiError

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (StacApiError, FetchError)
"""Faults worth retrying the step for (after the library's own request retries)."""


def source_pool(source_id: str) -> str:
    """The concurrency pool of every step that sends requests to ``source_id``."""
    return f"rasteret-{source_id}"


def after_upstream_updates() -> dg.AutomationCondition:
    """Materialise a partition once any of its upstream partitions was updated, when none is in flight.

    Unlike ``AutomationCondition.eager()`` this applies to every month, not only the latest, so
    a month rebuilt by the STAC sensor or a backfill flows downstream too.
    """
    return (
        dg.AutomationCondition.any_deps_updated().since_last_handled()
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("after upstream updates")


def after_any_upstream_update() -> dg.AutomationCondition:
    """Like :func:`after_upstream_updates` but allowing missing upstream partitions (time series)."""
    return (
        dg.AutomationCondition.any_deps_updated().since_last_handled()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("after any upstream update")


def raise_for(context, exc: BaseException, what: str, transient_retries: int, wait_seconds: float):
    """Retry the step after a transient fault (up to ``transient_retries``), else fail clearly."""
    if isinstance(exc, TRANSIENT_ERRORS) and context.retry_number < transient_retries:
        context.log.warning(
            f"{what}: {exc} -- transient, retrying in {wait_seconds:g} s "
            f"(retry {context.retry_number + 1} of {transient_retries})"
        )
        raise dg.RetryRequested(max_retries=transient_retries, seconds_to_wait=wait_seconds) from exc
    raise dg.Failure(
        description=f"{what}: {exc}",
        metadata={"error": type(exc).__name__, "retries": context.retry_number},
        allow_retries=False,
    ) from exc
