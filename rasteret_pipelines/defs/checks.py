"""Asset checks: complete header caches, NDVI in range, GeoTIFFs that reopen as expected."""


import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import dagster as dg
import numpy as np
import pyarrow as pa

from rasteret_pipelines.collections import schema
from rasteret_pipelines.aois import read_uri_bytes
from rasteret_pipelines.defs.assets import collection_key, ndvi_key
from rasteret_pipelines.defs.io_managers import CollectionSlice
from rasteret_pipelines.defs.partitions import Partitions
from rasteret_pipelines.defs.pipeline import collection_bands


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


def collection_checks(source_id: str, partitions: Partitions) -> list[dg.AssetChecksDefinition]:
    bands = collection_bands(source_id)

    with preview_partitioned_checks():
        @dg.asset_check(
            asset=collection_key(source_id),
            partitions_def=partitions.months,
            name="every_band_header_present",
            blocking=True,
            description=(
                f"Every asset of {', '.join(bands)} an item of the month has is cached with its COG "
                "header (a band an item has no asset for is counted, not an error). Blocking: when "
                "it fails, the NDVI of that month is not materialised in the same run."
            ),
        )
        def every_band_header_present(collection: CollectionSlice) -> dg.AssetCheckResult:
            table = None
            if collection.files:
                table = collection.to_table(columns=collection_columns(collection.dataset.schema.names, bands))
            gaps = header_gaps(table, bands)
            metadata = {"items": gaps.items, "bands": ", ".join(bands), "missing_headers": len(gaps.missing),
                        "lacked_bands": len(gaps.lacked)}
            if gaps.missing:
                lines = ["| item | band | error |", "| --- | --- | --- |"]
                lines += [f"| {i} | {b} | {str(e)[:160]} |" for i, b, e in gaps.missing[:50]]
                metadata["missing"] = dg.MetadataValue.md("\n".join(lines))
            return dg.AssetCheckResult(
                passed=not gaps.missing,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata=metadata,
                description=(None if not gaps.missing
                             else f"{len(gaps.missing)} band headers missing: rematerialise the month"),
            )

    return [every_band_header_present]


@contextmanager
def preview_partitioned_checks():
    """Partitioned asset checks (``partitions_def=`` on ``@asset_check``) are a Dagster preview
    feature with no stable equivalent: its PreviewWarning, and only that one, is silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec",
                                category=dg.PreviewWarning)
        yield


def _open(path: str):
    import rasterio

    return rasterio.MemoryFile(read_uri_bytes(path))


NDVI_CHECKS = ("ndvi_within_range", "geotiffs_reopen")
"""Checks of the NDVI asset, evaluated by the asset itself for every partition it materialises
(:func:`ndvi_check_results`) and runnable on their own for a partition from the UI."""


def ndvi_check_results(manifest: dict) -> dict[str, dg.AssetCheckResult]:
    """``{check name: result}`` of every NDVI check on one partition's manifest."""
    return {"ndvi_within_range": ndvi_range_result(manifest), "geotiffs_reopen": geotiffs_reopen_result(manifest)}


def ndvi_range_result(manifest: dict) -> dg.AssetCheckResult:
    """Every NDVI GeoTIFF of the manifest holds values in [-1, 1] (NaN = no data)."""
    lo, hi, bad = math.inf, -math.inf, []
    for path in manifest.get("files", []):
        with _open(path) as mem, mem.open() as src:
            data = src.read(1, masked=False)
        finite = data[np.isfinite(data)]
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
            if finite.min() < -1 or finite.max() > 1:
                bad.append(path)
    return dg.AssetCheckResult(
        passed=not bad,
        metadata={
            "files": len(manifest.get("files", [])),
            "min": dg.MetadataValue.float(lo if bad or lo != math.inf else float("nan")),
            "max": dg.MetadataValue.float(hi if hi != -math.inf else float("nan")),
            "out_of_range_files": dg.MetadataValue.json(bad),
        },
    )


def geotiffs_reopen_result(manifest: dict) -> dg.AssetCheckResult:
    """Every NDVI GeoTIFF reopens as one float32 band with the manifest's CRS, shape and transform."""
    from rasterio.crs import CRS

    problems = []
    files = manifest.get("files", [])
    expected_crs = CRS.from_user_input(manifest["crs"]) if files else None
    for path in files:
        try:
            with _open(path) as mem, mem.open() as src:
                if src.crs != expected_crs:
                    problems.append(f"{path}: CRS {src.crs} != {manifest['crs']}")
                if [src.height, src.width] != list(manifest["shape"]):
                    problems.append(f"{path}: shape {[src.height, src.width]} != {manifest['shape']}")
                if src.count != 1 or src.dtypes[0] != "float32":
                    problems.append(f"{path}: {src.count} bands of {src.dtypes[0]}, expected 1 float32")
                if not np.allclose(tuple(src.transform)[:6], manifest["transform"][:6], atol=1e-6):
                    problems.append(f"{path}: transform {tuple(src.transform)[:6]} != {manifest['transform']}")
        except Exception as exc:  # any failure to open is the finding
            problems.append(f"{path}: cannot be opened: {exc}")
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "files": len(files),
            "crs": manifest.get("crs", ""),
            "shape": dg.MetadataValue.json(manifest.get("shape")),
            "problems": dg.MetadataValue.json(problems[:50]),
        },
    )


def ndvi_checks(source_id: str, partitions: Partitions) -> list[dg.AssetChecksDefinition]:
    """The NDVI checks as check definitions (for running them on a partition from the UI).

    In NDVI runs they are evaluated by the asset itself, partition by partition (their steps
    are skipped there), since one run covers many partitions.
    """

    with preview_partitioned_checks():
        @dg.asset_check(
            asset=ndvi_key(source_id),
            partitions_def=partitions.month_aoi,
            name="ndvi_within_range",
            description="Every NDVI GeoTIFF of the partition holds values in [-1, 1] (NaN = no data).",
        )
        def ndvi_within_range(manifest: dict) -> dg.AssetCheckResult:
            return ndvi_range_result(manifest)

        @dg.asset_check(
            asset=ndvi_key(source_id),
            partitions_def=partitions.month_aoi,
            name="geotiffs_reopen",
            description="Every NDVI GeoTIFF reopens as one float32 band with the AOI window's CRS, shape and transform.",
        )
        def geotiffs_reopen(manifest: dict) -> dg.AssetCheckResult:
            return geotiffs_reopen_result(manifest)

    return [ndvi_within_range, geotiffs_reopen]
