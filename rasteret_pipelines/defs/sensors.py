"""Sensors: the AOI file, STAC items added or updated after a month was built, and automation.

* ``aoi_file_sensor`` (running by default, every 60 s): when the AOI file's bytes change, new
  ids become ``aoi`` partitions, and for every month already materialised it requests ONE NDVI
  run over all the new AOIs of that month (a partition range; the run reads them together),
  so N new AOIs cost at most one request per month and source (one in all when they lie inside
  every month and the months have no gap); when new AOIs lie outside the
  area a month was indexed for, it requests that collection month again instead (their NDVI
  then follows through the automation sensor, as a backfill). Removed AOIs are reported
  (their partitions and files are kept). A
  malformed file is skipped with the reason, the cursor unchanged, so the fixed file is picked
  up. The cursor (the file's SHA-256 and ids) and run keys make it idempotent.
* ``stac_updates_sensor`` (stopped by default, every 10 minutes): asks each source's STAC API
  for items of materialised months updated (reprocessed) or added (late) after the month was
  built or after its cursor, and requests those collection months again; NDVI and time series
  follow through the automation sensor.
* ``rasteret_automation`` (running by default, every 30 s): Dagster's declarative automation:
  NDVI partitions after their collection month is updated, time series after any NDVI month.
"""


import datetime as dt
import json

import dagster as dg

from rasteret_pipelines.errors import AoiFileError
from rasteret_pipelines.defs.assets import collection_key, ndvi_key
from rasteret_pipelines.defs.partitions import (
    UnsafePartitionKeyError,
    aoi_partitions,
    check_aoi_id,
    month_key,
    month_partition_key,
)
from rasteret_pipelines.defs.pipeline import updated_items
from rasteret_pipelines.defs.resources import AoiFileResource, DataSourceResource
from rasteret_pipelines.defs.schedules import SOURCE_TAG
from rasteret_pipelines.errors import RasteretError


def _latest_materialization(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    return records[0] if records else None


def _search_bbox(record) -> list[float] | None:
    if record is None or record.asset_materialization is None:
        return None
    entry = record.asset_materialization.metadata.get("search_bbox")
    value = getattr(entry, "value", entry)
    return list(value) if value else None


def _inside(bbox, geometry) -> bool:
    if not bbox:
        return False
    minx, miny, maxx, maxy = geometry.bounds
    eps = 1e-6
    return bbox[0] - eps <= minx and bbox[1] - eps <= miny and maxx <= bbox[2] + eps and maxy <= bbox[3] + eps


RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
"""Run tags of a run over a range of partitions (what a backfill's multi-partition run carries)."""


def consecutive_runs(order: list[str], wanted: set[str]) -> list[list[str]]:
    """Maximal runs of consecutive ids of ``order`` that are all in ``wanted``."""
    out, current = [], []
    for aoi in order:
        if aoi in wanted:
            current.append(aoi)
        elif current:
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


def _consecutive(partitions: list[str]) -> bool:
    """True when the monthly partition keys (sorted) follow each other without a gap."""
    index = [int(p[:4]) * 12 + int(p[5:7]) for p in partitions]
    return all(b - a == 1 for a, b in zip(index, index[1:]))


def aoi_requests(
    instance: dg.DagsterInstance, sources, aois, new_ids, tag: str
) -> tuple[list[dg.RunRequest], list[str]]:
    """Run requests bringing the new AOIs into every materialised month of every source.

    Per source and month: one NDVI run over all the new AOIs inside the area the month was
    indexed for (a range of the ``aoi`` dimension: the new ids are added as partitions in the
    returned order, those inside every month first, so they are consecutive), and one
    collection run when some lie outside it (their NDVI follows through the automation). When
    every new AOI lies inside every month and the months have no gap, the months share one run
    (a range over both dimensions), which saves the start-up of a run per month.

    Returns:
        The requests, and the order in which to add the new ids as ``aoi`` partitions.
    """
    new_ids = [check_aoi_id(a) for a in new_ids]
    months = []
    for source in sources:
        ckey = collection_key(source)
        for partition in sorted(instance.get_materialized_partitions(ckey)):
            bbox = _search_bbox(_latest_materialization(instance, ckey, partition))
            outside = [a for a in new_ids if not _inside(bbox, aois.geometry(a))]
            months.append((source, partition, outside))
    misses = {a: sum(a in outside for _, _, outside in months) for a in new_ids}
    order = sorted(new_ids, key=lambda a: (misses[a], new_ids.index(a)))
    requests = []
    for source in sources:
        mine = [(p, o) for s, p, o in months if s == source]
        if len(mine) > 1 and not any(o for _, o in mine) and _consecutive([p for p, _ in mine]):
            # every new AOI inside every month, months without gaps: one run over all of them
            first, last = f"{order[0]}|{mine[0][0]}", f"{order[-1]}|{mine[-1][0]}"
            requests.append(
                dg.RunRequest(
                    job_name="ndvi_job",
                    run_key=f"aoi-added:{source}:{month_key(mine[0][0])}..{month_key(mine[-1][0])}:"
                            f"{order[0]}..{order[-1]}:{tag}",
                    asset_selection=[ndvi_key(source)],
                    tags={SOURCE_TAG: source, "rasteret/trigger": "aoi-file", "rasteret/aois": str(len(order)),
                          RANGE_START: first, RANGE_END: last},
                )
            )
            months = [m for m in months if m[0] != source]
    for source, partition, outside in months:
        month = month_key(partition)
        ckey = collection_key(source)
        tags = {SOURCE_TAG: source, "rasteret/trigger": "aoi-file"}
        if outside:
            requests.append(
                dg.RunRequest(
                    job_name="collections_job",
                    run_key=f"aoi-area:{source}:{month}:{tag}",
                    partition_key=partition,
                    asset_selection=[ckey],
                    tags={**tags, "rasteret/new_aois": ",".join(outside)[:200]},
                )
            )
        # the AOIs outside follow the collection rebuild through the automation sensor
        for run in consecutive_runs(order, set(new_ids) - set(outside)):
            first, last = f"{run[0]}|{partition}", f"{run[-1]}|{partition}"
            requests.append(
                dg.RunRequest(
                    job_name="ndvi_job",
                    run_key=f"aoi-added:{source}:{month}:{run[0]}..{run[-1]}:{tag}",
                    asset_selection=[ndvi_key(source)],
                    **({"partition_key": first} if len(run) == 1 else {}),
                    tags={**tags, "rasteret/aois": str(len(run)),
                          **({} if len(run) == 1 else {RANGE_START: first, RANGE_END: last})},
                )
            )
    return requests, order


def build_aoi_sensor(sources, collections_job, ndvi_job) -> dg.SensorDefinition:

    @dg.sensor(
        name="aoi_file_sensor",
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        jobs=[collections_job, ndvi_job],
        description=(
            "Watches the AOI file: new ids become aoi partitions and every materialised month is "
            "requested for them (NDVI, or the collection month when the AOI lies outside the area it "
            "was indexed for); removed AOIs are reported; a malformed file is skipped with the reason."
        ),
    )
    def aoi_file_sensor(context: dg.SensorEvaluationContext, aois: AoiFileResource):
        try:
            current = aois.load(lenient=True)
        except AoiFileError as exc:
            return dg.SkipReason(f"AOI file not usable, nothing changed: {exc}")
        if current.invalid:  # left out until fixed (the fixed file is new bytes: picked up then)
            context.log.warning("AOIs with an unusable geometry, not added: "
                                + "; ".join(current.invalid.values())[:2000])
        cursor = json.loads(context.cursor) if context.cursor else {}
        if cursor.get("fingerprint") == current.fingerprint:
            return dg.SkipReason(f"AOI file unchanged ({len(current.ids)} AOIs)")
        known = set(context.instance.get_dynamic_partitions(aoi_partitions.name))
        new = [a for a in current.ids if a not in known]
        removed = sorted(known - set(current.ids))
        new_cursor = json.dumps({"fingerprint": current.fingerprint, "ids": current.ids})
        if removed:
            context.log.warning(
                f"AOIs removed from {current.uri}: {', '.join(removed)}; their partitions and files "
                "are kept (delete the partitions in the UI to stop processing them)"
            )
        if not new:
            reason = "AOI file changed, no new AOI"
            if removed:
                reason += f"; removed from the file: {', '.join(removed)} (partitions and outputs kept)"
            return dg.SensorResult(skip_reason=dg.SkipReason(reason), cursor=new_cursor)
        try:
            requests, order = aoi_requests(context.instance, sources, current, new, current.fingerprint[:12])
        except UnsafePartitionKeyError as exc:  # the AOI file checks ids; partitions added by hand may not be
            return dg.SkipReason(f"not adding the new AOIs: {exc}")
        context.log.info(f"{len(new)} new AOIs ({', '.join(new[:20])}{' ...' if len(new) > 20 else ''}): "
                         f"{len(requests)} run requests")
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[aoi_partitions.build_add_request(order)],
            cursor=new_cursor,
        )

    return aoi_file_sensor


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def build_stac_sensor(sources, collections_job) -> dg.SensorDefinition:
    @dg.sensor(
        name="stac_updates_sensor",
        minimum_interval_seconds=600,
        default_status=dg.DefaultSensorStatus.STOPPED,
        job=collections_job,
        description=(
            "Asks the STAC API for items of materialised months added or updated after the month was "
            "built (or after the cursor) and requests those collection months again; downstream "
            "follows through the automation sensor."
        ),
    )
    def stac_updates_sensor(
        context: dg.SensorEvaluationContext, data_source: DataSourceResource, aois: AoiFileResource
    ):
        try:
            areas = aois.load()
        except AoiFileError as exc:
            return dg.SkipReason(f"AOI file not usable: {exc}")
        cursor = json.loads(context.cursor) if context.cursor else {}
        requests, notes = [], []
        for source in sources:
            ckey = collection_key(source)
            partitions = sorted(context.instance.get_materialized_partitions(ckey))
            if not partitions:
                notes.append(f"{source}: no month materialised yet")
                continue
            built = {}
            for p in partitions:
                record = _latest_materialization(context.instance, ckey, p)
                built[month_key(p)] = _iso(record.timestamp) if record else ""
            since = cursor.get(source)
            floor = min(v for v in built.values() if v) if any(built.values()) else "1970-01-01T00:00:00Z"
            try:
                url = data_source.stac_url_for(source, start_demo=False)
                changed = updated_items(source, url, sorted(built), areas.bbox, max(filter(None, [since, floor])))
            except RasteretError as exc:
                notes.append(f"{source}: {exc}")
                continue
            newest = since or ""
            for month, stamp in sorted(changed.items()):
                newest = max(newest, stamp)
                if stamp <= max(built[month], since or ""):
                    continue  # already in the month's last build
                requests.append(
                    dg.RunRequest(
                        run_key=f"stac-updated:{source}:{month}:{stamp}",
                        partition_key=month_partition_key(month),
                        asset_selection=[ckey],
                        tags={SOURCE_TAG: source, "rasteret/trigger": "stac-updated"},
                    )
                )
            if newest:
                cursor[source] = newest
        if not requests:
            return dg.SensorResult(
                skip_reason=dg.SkipReason("; ".join(notes) or "no item added or updated in a materialised month"),
                cursor=json.dumps(cursor, sort_keys=True),
            )
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True))

    return stac_updates_sensor


def build_automation_sensor() -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        "rasteret_automation",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        emit_backfills=True,
        description=(
            "NDVI after its collection month is updated; time series after any NDVI month. Requests "
            "of many partitions are launched as backfills, so the assets' backfill policy puts a "
            "month's AOIs in one run."
        ),
    )
