"""No deprecation warnings from the project: loading the definitions, initialising every
resource and running every job records none, whether raised by our modules or by Dagster on
our behalf (a deprecated Dagster API reached through how the project uses Dagster)."""

import datetime as dt
import warnings
from pathlib import Path

import dagster as dg

import rasteret_pipelines
from rasteret_pipelines.defs import build_definitions
from rasteret_pipelines_tests.defs.conftest import GROUP, MONTHS

PROJECT = Path(rasteret_pipelines.__file__).resolve().parent
DAGSTER = Path(dg.__file__).resolve().parent.parent  # site-packages: dagster, dagster_shared, ...


def _ours_or_dagsters(w: warnings.WarningMessage) -> bool:
    path = Path(w.filename).resolve()
    return path.is_relative_to(PROJECT) or (
        path.is_relative_to(DAGSTER) and "dagster" in path.relative_to(DAGSTER).parts[0]
    )


def test_definitions_resources_and_runs_raise_no_deprecation_warning(project):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        defs = build_definitions(project.settings)
        assert project.run("collections_job", f"{MONTHS[0]}-01").success
        assert project.run("field_stats_job", f"{GROUP}|{MONTHS[0]}-01").success
        assert project.run("field_timeseries_job", GROUP).success
        schedule = defs.resolve_schedule_def("monthly_collections")
        schedule.evaluate_tick(
            dg.build_schedule_context(
                instance=project.instance,
                repository_def=defs.get_repository_def(),
                scheduled_execution_time=dt.datetime(2024, 3, 2, 3, tzinfo=dt.timezone.utc),
            )
        )
    deprecations = [
        f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}"
        for w in caught
        if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning)) and _ours_or_dagsters(w)
    ]
    assert not deprecations, "\n".join(deprecations)
