"""Asset checks, each declared once, as a ``check_specs`` entry of the asset that evaluates it:
complete header caches (the collection asset, per month, blocking), field statistics in range and
COGs that reopen (the field-statistics asset, per (month, group) of its runs).

This module imports no asset module: the assets import their checks from here."""

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import dagster as dg
import numpy as np
import pyarrow as pa

from rasteret_pipelines.aois import read_uri_bytes
from rasteret_pipelines.collections import schema


@dataclass(frozen=True)
class HeaderGaps:
    """Band headers a collection month does not hold, split by cause."""

    items: int
    missing: list[tuple[str, str, str]]
    """``(item id, band, error)`` of every asset the item has (an href) whose header is not cached."""
    lacked: list[tuple[str, str]]
    """``(item id, band)`` of every band the item has no asset for: nothing to cache, not an error."""


def header_gaps(table: pa.Table | None, bands) -> HeaderGaps:
    """The :class:`HeaderGaps` of a collection table (a month file or a slice of months)."""
    available = set(table.schema.names) if table is not None else set()
    rows = table.num_rows if table is not None else 0
    ids = table.column("id").to_pylist() if rows else []
    missing, lacked = [], []
    for band in bands:
        href_col, header_col, error_col = schema.band_columns(band)
        if header_col not in available:
            missing.extend((i, band, "band not indexed") for i in ids)
            continue
        hrefs = table.column(href_col).to_pylist() if href_col in available else [True] * rows
        absent = table.column(header_col).is_null().to_pylist()
        errors = table.column(error_col).to_pylist() if error_col in available else [None] * rows
        for item, href, no_header, error in zip(ids, hrefs, absent, errors):
            if not no_header:
                continue
            if href:
                missing.append((item, band, error or "no header"))
            else:
                lacked.append((item, band))
    return HeaderGaps(items=rows, missing=missing, lacked=lacked)


def collection_columns(available, bands) -> list[str]:
    """The columns :func:`header_gaps` needs, of those ``available``."""
    return ["id"] + [c for b in bands for c in schema.band_columns(b) if c in available]


HEADER_CHECK = "every_band_header_present"
"""The collection asset's check: every band asset of every item has its header cached."""


def collection_check_specs(key: dg.AssetKey, months: dg.PartitionsDefinition, bands) -> list[dg.AssetCheckSpec]:
    """The collection asset's checks, evaluated by the asset itself (one month per run)."""
    with preview_partitioned_checks():
        return [
            dg.AssetCheckSpec(
                HEADER_CHECK,
                asset=key,
                partitions_def=months,
                blocking=True,
                description=(
                    f"Every asset of {', '.join(bands)} an item of the month has is cached with its COG "
                    "header (a band an item has no asset for is counted, not an error). Blocking: when "
                    "it fails, the NDVI of that month is not materialised (in the same run, or by automation)."
                ),
            )
        ]


def header_check_result(gaps: HeaderGaps, bands) -> dg.AssetCheckResult:
    """The result of :data:`HEADER_CHECK` for a month's :class:`HeaderGaps`."""
    metadata = {
        "items": gaps.items,
        "bands": ", ".join(bands),
        "missing_headers": len(gaps.missing),
        "lacked_bands": len(gaps.lacked),
    }
    if gaps.missing:
        lines = ["| item | band | error |", "| --- | --- | --- |"]
        lines += [f"| {i} | {b} | {str(e)[:160]} |" for i, b, e in gaps.missing[:50]]
        metadata["missing"] = dg.MetadataValue.md("\n".join(lines))
    return dg.AssetCheckResult(
        check_name=HEADER_CHECK,
        passed=not gaps.missing,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=metadata,
        description=None if not gaps.missing else f"{len(gaps.missing)} band headers missing: rematerialise the month",
    )


def field_stats_check_specs(key: dg.AssetKey, month_group: dg.PartitionsDefinition) -> list[dg.AssetCheckSpec]:
    """The field-statistics asset's checks, evaluated by the asset for every (month, group) it writes."""
    with preview_partitioned_checks():
        return [
            dg.AssetCheckSpec(
                "stats_in_range",
                asset=key,
                partitions_def=month_group,
                description="Every NDVI statistic lies in [-1, 1] with min <= mean, median <= max; "
                "valid fractions in [0, 1]; every row is a field of the group.",
            ),
            dg.AssetCheckSpec(
                "geotiffs_reopen",
                asset=key,
                partitions_def=month_group,
                description="Every NDVI COG of the partition reopens as one float32 band with values "
                "in [-1, 1] (NaN outside the fields).",
            ),
        ]


def field_stats_check_evaluations(
    key: dg.AssetKey, partition: str, table: pa.Table, group: str, files, fields=None
) -> list[dg.AssetCheckEvaluation]:
    """The checks of one (month, group) partition that a run over many partitions wrote.

    ``AssetCheckResult`` names no partition (it takes the run's one partition key), so a run
    over a range of partitions reports each partition's result as the evaluation event it
    becomes, with its partition: the same checks, declared once in :func:`field_stats_check_specs`.
    """
    return [
        dg.AssetCheckEvaluation(
            asset_key=key,
            check_name=name,
            passed=result.passed,
            metadata=result.metadata,
            partition=partition,
            severity=result.severity,
        )
        for name, result in field_stats_check_results(table, group, files, fields).items()
    ]


@contextmanager
def preview_partitioned_checks():
    """Partitioned asset checks (``partitions_def=`` on ``AssetCheckSpec``) are a Dagster preview
    feature, used on purpose (a check result per month or per (month, group)), with no stable
    equivalent: its PreviewWarning, and only that one, is filtered while the specs are made."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning
        )
        yield


def _open(path: str):
    import rasterio

    return rasterio.MemoryFile(read_uri_bytes(path))


FIELD_STATS_CHECKS = ("stats_in_range", "geotiffs_reopen")
"""Checks of the field-statistics asset: declared once, as ``check_specs`` of the asset, and
evaluated by the asset for every (month, group) it materialises (a run covers many)."""


def field_stats_check_results(table: pa.Table, group: str, files, fields=None) -> dict[str, dg.AssetCheckResult]:
    """``{check name: result}`` of every check on one (month, group) partition's table and COGs."""
    return {
        "stats_in_range": stats_range_result(table, group, fields),
        "geotiffs_reopen": geotiffs_reopen_result(files),
    }


def stats_range_result(table: pa.Table, group: str, fields=None) -> dg.AssetCheckResult:
    """NDVI statistics in [-1, 1], min <= mean, median <= max, valid fractions in [0, 1], counts
    not negative, and every row a field of ``group`` (when ``fields``, a frame with ``group``, is given)."""
    problems = []
    if table.num_rows:
        cols = {
            c: np.asarray(table.column(c).to_numpy(zero_copy_only=False), dtype="float64")
            for c in (
                "ndvi_mean",
                "ndvi_median",
                "ndvi_std",
                "ndvi_min",
                "ndvi_max",
                "ndvi_count",
                "ndvi_valid_fraction",
            )
        }
        with np.errstate(invalid="ignore"):
            for c in ("ndvi_mean", "ndvi_median", "ndvi_min", "ndvi_max"):
                bad = int(np.sum((cols[c] < -1) | (cols[c] > 1)))
                if bad:
                    problems.append(f"{bad} rows with {c} outside [-1, 1]")
            tol = 1e-9
            order = (
                (cols["ndvi_min"] - tol > cols["ndvi_mean"])
                | (cols["ndvi_mean"] > cols["ndvi_max"] + tol)
                | (cols["ndvi_min"] - tol > cols["ndvi_median"])
                | (cols["ndvi_median"] > cols["ndvi_max"] + tol)
            )
            if int(np.sum(order)):
                problems.append(f"{int(np.sum(order))} rows where mean or median is not between min and max")
            fraction = cols["ndvi_valid_fraction"]
            if int(np.sum((fraction < 0) | (fraction > 1))):
                problems.append("valid fractions outside [0, 1]")
            if int(np.sum(cols["ndvi_count"] < 0)) or int(np.sum(cols["ndvi_std"] < 0)):
                problems.append("negative counts or standard deviations")
        if fields is not None:
            ids = set(table.column("id").to_pylist())
            known = fields.loc[fields.index.isin(ids), "group"]
            strangers = sorted(ids - set(known.index[known == group]))
            if strangers:
                problems.append(f"rows of fields not in group {group}: {', '.join(strangers[:10])}")
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"rows": table.num_rows, "problems": dg.MetadataValue.json(problems)},
    )


def geotiffs_reopen_result(files) -> dg.AssetCheckResult:
    """Every NDVI COG reopens as one float32 band with a CRS and values in [-1, 1] (NaN = no data)."""
    problems = []
    lo, hi = math.inf, -math.inf
    for path in files:
        try:
            with _open(path) as mem, mem.open() as src:
                if src.count != 1 or src.dtypes[0] != "float32":
                    problems.append(f"{path}: {src.count} bands of {src.dtypes[0]}, expected 1 float32")
                if src.crs is None:
                    problems.append(f"{path}: no CRS")
                data = src.read(1, masked=False)
        except Exception as exc:  # any failure to open is the finding
            problems.append(f"{path}: cannot be opened: {exc}")
            continue
        finite = data[np.isfinite(data)]
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
            if finite.min() < -1 or finite.max() > 1:
                problems.append(f"{path}: values outside [-1, 1]")
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "files": len(files),
            "min": dg.MetadataValue.float(lo if lo != math.inf else float("nan")),
            "max": dg.MetadataValue.float(hi if hi != -math.inf else float("nan")),
            "problems": dg.MetadataValue.json(problems[:50]),
        },
    )
