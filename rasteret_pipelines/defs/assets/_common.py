"""What the assets share: pools, automation conditions, turning errors into Dagster outcomes."""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import dagster as dg

from rasteret_pipelines.errors import FetchError, RasteretError, StacApiError

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (StacApiError, FetchError)
"""Faults worth retrying the step for (after the library's own request retries)."""


def source_pool(source_id: str) -> str:
    """The concurrency pool of every step that sends requests to ``source_id``."""
    return f"rasteret-{source_id}"


def after_upstream_updates() -> dg.AutomationCondition:
    """Materialise a partition once any of its upstream partitions was updated, when none is in
    flight and every blocking check of them passed (a collection month with missing headers
    holds its NDVI back until the month is rebuilt).

    Unlike ``AutomationCondition.eager()`` this applies to every month, not only the latest, so
    a month rebuilt by the STAC sensor or a backfill flows downstream too.
    """
    return (
        dg.AutomationCondition.any_deps_updated().since_last_handled()
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
        & dg.AutomationCondition.all_deps_blocking_checks_passed()
    ).with_label("after upstream updates")


def after_any_upstream_update() -> dg.AutomationCondition:
    """Like :func:`after_upstream_updates` but allowing missing upstream partitions (time series)."""
    return (
        dg.AutomationCondition.any_deps_updated().since_last_handled()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("after any upstream update")


@contextmanager
def beta_backfill_policy():
    """Around ``dg.asset(backfill_policy=...)``: ``backfill_policy`` is a Dagster beta parameter
    with no stable equivalent (many partitions per run need it); its BetaWarning, and only that
    one, is silenced while the asset decorator is made."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Parameter `backfill_policy` of function `asset`", category=dg.BetaWarning
        )
        yield


def retries_left(context, retry_policy: dg.RetryPolicy | None) -> bool:
    """Whether the step's :class:`dagster.RetryPolicy` still allows a retry after this attempt."""
    return retry_policy is not None and context.retry_number < retry_policy.max_retries


def fail_at_once(what: str, exc: BaseException, context=None, **metadata) -> dg.Failure:
    """A :class:`dagster.Failure` naming ``exc`` that the step's RetryPolicy does not retry."""
    if context is not None:
        metadata["retries"] = context.retry_number
    return dg.Failure(
        description=f"{what}: {exc}",
        metadata={"error": type(exc).__name__, **metadata},
        allow_retries=False,
    )


@contextmanager
def step_errors(context, what: str, retry_policy: dg.RetryPolicy | None):
    """Turn the step's errors into Dagster outcomes under its RetryPolicy.

    A transient fault (:data:`TRANSIENT_ERRORS`) is raised as it is, so the policy retries the
    step (backoff and jitter from the policy), until the last attempt, which fails with the
    fault's message. Any other :class:`~rasteret_pipelines.errors.RasteretError` is bad input or
    a permanent fault (an AOI file that does not parse, a local server that is down, a month
    before the source starts): it fails at once, never retried. Other exceptions (unexpected
    faults of the storage or the network) are left to the policy.
    """
    try:
        yield
    except dg.Failure:
        raise
    except TRANSIENT_ERRORS as exc:
        if not retries_left(context, retry_policy):
            raise fail_at_once(what, exc, context) from exc
        context.log.warning(
            f"{what}: {exc} -- transient, the step's retry policy retries it "
            f"(retry {context.retry_number + 1} of {retry_policy.max_retries})"
        )
        raise
    except RasteretError as exc:
        raise fail_at_once(what, exc, context) from exc
