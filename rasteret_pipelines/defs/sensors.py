"""Sensors: the field file, STAC items added or updated after a month was built, and automation.

* ``field_file_sensor`` (running by default, every 60 s): when the field file's bytes change,
  it compares each group's digest (its fields' ids, geometries and names) with the last version
  it handled, and for every changed group (new, removed or edited fields, or a new group)
  records a materialisation of the external asset ``fields`` for that group (new groups become
  ``field_group`` partitions first). The automation sensor then requests the statistics of
  every (materialised month, changed group) as ONE backfill, which the field-statistics
  asset's backfill policy runs in one run (or a few): no run per field or per group. A
  collection month whose indexed area does not contain a changed group is requested again (its
  statistics follow through automation). Removed fields are reported (log and the group's
  materialisation metadata); bad rows (invalid geometry, duplicate or unsafe id) are skipped with
  their reason and the rest go on; an unreadable file is a skipped tick with the reason, the
  cursor unchanged. The cursor (the file's SHA-256 and the name of a snapshot of its (id,
  group) pairs in storage) stays small whatever the number of fields.
* ``stac_updates_sensor`` (stopped by default, every 10 minutes): asks each source's STAC API
  for items of materialised months updated (reprocessed) or added (late) after the month was
  built or after its cursor, and requests those collection months again; the statistics and
  time series follow through the automation sensor. Its searches are retried by the project's
  one retry policy (the ``http`` resource, ``RASTERET_HTTP_*``), as the collection months' are.
* ``rasteret_automation`` (running by default, every 30 s): Dagster's declarative automation,
  emitting backfills: field statistics after their collection month or their group of fields is
  updated, time series after any month of their group.
"""

import datetime as dt
import json
from dataclasses import dataclass

import dagster as dg

from rasteret_pipelines.defs.assets import FIELDS_KEY, collection_key
from rasteret_pipelines.defs.partitions import group_partitions, month_key, month_partition_key
from rasteret_pipelines.defs.pipeline import updated_items
from rasteret_pipelines.defs.resources import AoiFileResource, DataSourceResource, HttpClientResource, StorageResource
from rasteret_pipelines.defs.schedules import SOURCE_TAG
from rasteret_pipelines.errors import AoiFileError, RasteretError


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


def _inside_bounds(bbox, bounds) -> bool:
    if not bbox:
        return False
    eps = 1e-6
    return (
        bbox[0] - eps <= bounds[0]
        and bbox[1] - eps <= bounds[1]
        and bounds[2] <= bbox[2] + eps
        and bounds[3] <= bbox[3] + eps
    )


SNAPSHOTS = ("fields", "snapshots")
"""Below the storage: ``fields/snapshots/<fingerprint>.parquet``, the (id, group) of every
usable field of a version of the field file, and each group's digest in its metadata. The
sensor's cursor names the last one, so it stays small whatever the number of fields."""


def write_snapshot(store, current, digests: dict[str, str]) -> str:
    """Record ``current``'s fields and group digests; returns the snapshot's name."""
    import pyarrow as pa

    name = f"{current.fingerprint[:24]}.parquet"
    if not store.exists(*SNAPSHOTS, name):
        table = pa.table(
            {
                "id": pa.array(current.ids, pa.string()),
                "group": pa.array([str(g) for g in current.frame["group"]], pa.string()),
            }
        )
        table = table.replace_schema_metadata({b"digests": json.dumps(digests, sort_keys=True).encode()})
        store.write_parquet(table, *SNAPSHOTS, name)
    return name


def read_snapshot(store, name: str | None) -> tuple[dict[str, str], dict[str, set[str]]] | None:
    """``({group: digest}, {group: {ids}})`` of a snapshot, or None when there is none."""
    import io

    import pyarrow.parquet as pq

    if not name or not store.exists(*SNAPSHOTS, name):
        return None
    table = pq.read_table(io.BytesIO(store.read_bytes(*SNAPSHOTS, name)))
    digests = json.loads((table.schema.metadata or {}).get(b"digests", b"{}"))
    ids: dict[str, set[str]] = {}
    for fid, group in zip(table.column("id").to_pylist(), table.column("group").to_pylist()):
        ids.setdefault(group, set()).add(fid)
    return digests, ids


def recorded_digests(instance: dg.DagsterInstance) -> dict[str, str]:
    """``{group: digest}`` from the latest recorded materialisation of each ``fields`` partition
    (what the sensor or the demo reported), for a sensor without a cursor."""
    out: dict[str, str] = {}
    cursor = None
    for _ in range(1000):
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=FIELDS_KEY), limit=1000, cursor=cursor, ascending=False
        )
        for record in result.records:
            mat = record.asset_materialization
            if mat is None or mat.partition is None or mat.partition in out:
                continue
            entry = mat.metadata.get("digest")
            out[mat.partition] = str(getattr(entry, "value", entry) or "")
        if not result.has_more:
            break
        cursor = result.cursor
    return out


@dataclass
class FieldChanges:
    """What changed in the field file since the last version the sensor handled."""

    changed: list[str]
    """Groups with new, removed or edited fields (or new groups), sorted."""
    new_groups: list[str]
    """Of those, the groups that are not partitions yet."""
    added: dict[str, int]
    removed: dict[str, list[str]]
    """``{group: [removed field ids]}`` (known when the last version's snapshot exists)."""


def field_changes(
    current,
    digests: dict[str, str],
    before: dict[str, str],
    before_ids: dict[str, set[str]] | None,
    known_groups: set[str],
) -> FieldChanges:
    """Compare a version of the field file with the last one handled, group by group."""
    changed = sorted(g for g in set(digests) | set(before) if digests.get(g) != before.get(g))
    now_ids = current.group_ids()
    added, removed = {}, {}
    for group in changed:
        mine = set(now_ids.get(group, []))
        if before_ids is not None:
            old = before_ids.get(group, set())
            added[group] = len(mine - old)
            gone = sorted(old - mine)
            if gone:
                removed[group] = gone
        else:
            added[group] = len(mine)
    new_groups = [g for g in changed if g in digests and g not in known_groups]
    return FieldChanges(changed=changed, new_groups=new_groups, added=added, removed=removed)


MAX_GROUP_RANGES = 2
"""At most this many runs of consecutive groups per request. A backfill runs each range of
partitions as its own run, and Dagster cuts a month x group subset into ranges of consecutive
groups (in the partitions' order) within a month, or of consecutive months within a group:
changed groups scattered among unchanged ones would cost a run each. Past this many runs of
consecutive groups, the smallest gaps between them are filled with their unchanged groups
(recomputed, at the cost of some more fields read), so a request is at most this many runs per
month (and never more runs than groups)."""


def bounded_ranges(order: list[str], changed, max_ranges: int = MAX_GROUP_RANGES) -> list[str]:
    """The groups to request for ``changed``: ``changed`` itself when it forms at most
    ``max_ranges`` runs of consecutive groups of ``order`` (the partitions' order), else
    ``changed`` plus the unchanged groups of the smallest gaps, so that it forms ``max_ranges``."""
    position = {g: i for i, g in enumerate(order)}
    index = sorted(position[g] for g in changed if g in position)
    if not index:
        return sorted(changed)
    ranges = [[index[0], index[0]]]
    for i in index[1:]:
        if i == ranges[-1][1] + 1:
            ranges[-1][1] = i
        else:
            ranges.append([i, i])
    while len(ranges) > max_ranges:
        gaps = [ranges[k + 1][0] - ranges[k][1] for k in range(len(ranges) - 1)]
        k = gaps.index(min(gaps))
        ranges[k : k + 2] = [[ranges[k][0], ranges[k + 1][1]]]
    wanted = {order[i] for a, b in ranges for i in range(a, b + 1)}
    return sorted(wanted | {g for g in changed if g not in position})


def build_field_sensor(sources, collections_job) -> dg.SensorDefinition:

    @dg.sensor(
        name="field_file_sensor",
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        job=collections_job,
        description=(
            "Watches the field file: every group whose fields changed (new, removed or edited fields) gets a "
            "recorded materialisation of `fields`, new groups become partitions, and the groups' statistics "
            "follow through automation in a few runs; a collection month whose indexed area misses a changed "
            "group is requested again. Bad rows are skipped with their reason; removed fields are reported."
        ),
    )
    def field_file_sensor(context: dg.SensorEvaluationContext, aois: AoiFileResource, storage: StorageResource):
        try:
            current = aois.fields()
        except AoiFileError as exc:
            return dg.SkipReason(f"field file not usable, nothing changed: {exc}")
        cursor = json.loads(context.cursor) if context.cursor else {}
        summary = f"{len(current.ids)} fields in {len(current.groups)} groups"
        if cursor.get("fingerprint") == current.fingerprint:
            return dg.SkipReason(f"field file unchanged ({summary})")
        if current.skipped:
            context.log.warning(
                f"{len(current.skipped)} rows of {current.uri} skipped: "
                + "; ".join(f"{k}: {v}" for k, v in list(current.skipped.items())[:50])
            )
        store = storage.storage()
        digests = current.group_digests()
        try:
            previous = read_snapshot(store, cursor.get("snapshot"))
        except OSError as exc:  # storage unreachable: compare with what the instance recorded
            context.log.warning(
                f"the field file's last snapshot cannot be read ({exc}); comparing with the "
                "digests recorded in the fields materialisations"
            )
            previous = None
        before, before_ids = previous if previous is not None else (recorded_digests(context.instance), None)
        known = set(context.instance.get_dynamic_partitions(group_partitions.name))
        changes = field_changes(current, digests, before, before_ids, known)
        try:
            snapshot = write_snapshot(store, current, digests)
        except OSError as exc:
            return dg.SkipReason(f"the field file changed but its snapshot cannot be written to {store.uri}: {exc}")
        new_cursor = json.dumps({"fingerprint": current.fingerprint, "snapshot": snapshot})
        for group, gone in changes.removed.items():
            context.log.warning(
                f"fields removed from {current.uri} (group {group}): {', '.join(gone[:50])}"
                + (f" and {len(gone) - 50} more" if len(gone) > 50 else "")
            )
        if not changes.changed:
            return dg.SensorResult(
                skip_reason=dg.SkipReason(f"field file changed, no group changed ({summary})"), cursor=new_cursor
            )
        bounds = current.group_bounds()
        inside_now = [g for g in changes.changed if g in bounds]
        requests = []
        tag = current.fingerprint[:12]
        for source in sources:
            ckey = collection_key(source)
            for partition in sorted(context.instance.get_materialized_partitions(ckey)):
                bbox = _search_bbox(_latest_materialization(context.instance, ckey, partition))
                outside = [g for g in inside_now if not _inside_bounds(bbox, bounds[g])]
                if outside:
                    requests.append(
                        dg.RunRequest(
                            run_key=f"fields-area:{source}:{month_key(partition)}:{tag}",
                            partition_key=partition,
                            asset_selection=[ckey],
                            tags={
                                SOURCE_TAG: source,
                                "rasteret/trigger": "field-file",
                                "rasteret/groups": ",".join(outside)[:200],
                            },
                        )
                    )
        sizes = current.frame.groupby("group").size().to_dict()
        order = context.instance.get_dynamic_partitions(group_partitions.name)
        order += [g for g in sorted(changes.new_groups) if g not in set(order)]  # added in this order below
        wanted = bounded_ranges(order, changes.changed)
        events = []
        for group in wanted:
            gone = changes.removed.get(group, [])
            metadata = {
                "fields": int(sizes.get(group, 0)),
                "digest": digests.get(group, ""),
                "added_fields": changes.added.get(group, 0),
                "removed_fields": len(gone),
                "changed": group in set(changes.changed),
                "file": current.uri,
            }
            if gone:
                metadata["removed"] = ", ".join(gone[:200])
            events.append(dg.AssetMaterialization(asset_key=FIELDS_KEY, partition=group, metadata=metadata))
        context.log.info(
            f"{summary}: {len(changes.changed)} groups changed ({len(changes.new_groups)} new; "
            f"{len(wanted) - len(changes.changed)} unchanged ones between them recorded too, "
            f"to keep the statistics to at most {MAX_GROUP_RANGES} runs), "
            f"{sum(len(v) for v in changes.removed.values())} fields removed, "
            f"{len(current.skipped)} rows skipped; {len(requests)} collection months to rebuild"
        )
        return dg.SensorResult(
            run_requests=requests,
            asset_events=events,
            dynamic_partitions_requests=[group_partitions.build_add_request(sorted(changes.new_groups))]
            if changes.new_groups
            else [],
            cursor=new_cursor,
        )

    return field_file_sensor


def _iso(timestamp: float) -> str:
    return (
        dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    )


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
        context: dg.SensorEvaluationContext,
        data_source: DataSourceResource,
        aois: AoiFileResource,
        http: HttpClientResource,
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
                url = data_source.stac_url_for(source)
                changed = updated_items(
                    source,
                    url,
                    sorted(built),
                    areas.bbox,
                    max(filter(None, [since, floor])),
                    retry=http.fetch_config().retry_policy,  # the project's one policy (RASTERET_HTTP_*)
                )
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
            "Field statistics after their collection month or their group of fields is updated; time "
            "series after any month of their group. Requests of many partitions are launched as "
            "backfills, so the assets' backfill policy puts many (month, group) partitions in one run."
        ),
    )
