"""The IO manager: asset values at predictable paths below the storage location.

One :class:`RasteretIOManager` over the :class:`~rasteret_pipelines.defs.resources.StorageResource`
backend chosen by the base path (local folder or ``s3://bucket/prefix``); every write goes
through :class:`rasteret_pipelines.storage.Storage`, so it is atomic on local disk (temporary
name, then rename) and whole-object on S3 (an object only appears once complete).

Layout below the base path (``<key>`` is the asset key joined with ``/``)::

    collections/<source>/month=YYYY-MM/items.parquet   collection months (GeoParquet, written by
    collections/<source>/month=YYYY-MM/_search.json    the library) + the area each was searched for
    collections/<source>/_manifest.json
    field_stats/<source>/month=YYYY-MM/group=<g>.parquet  field statistics (GeoParquet, one per
                                                          month x group partition)
    field_timeseries/<source>/group=<g>.parquet          tables (time series of a group's fields)

An asset's values live below its key (``<key>/<partition>``) unless its ``rasteret/path``
metadata names another prefix (``field_stats/<source>``); a month x group partition is
``month=YYYY-MM/group=<g>`` (the month first, so a month's groups share a folder).

Loading a collection does not read it: downstream assets get a :class:`CollectionSlice`, a
:class:`~rasteret_pipelines.collections.Collection` restricted to the months of the input
partitions, which reads rows with predicate push-down when asked. Loading several JSON
partitions returns ``{partition key: value}`` and skips partitions never materialised.
"""

import io
import json
from dataclasses import dataclass, field
from functools import cached_property

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from rasteret_pipelines.collections import Collection, load_collection
from rasteret_pipelines.collections.build import MONTH_FILE
from rasteret_pipelines.defs.partitions import (
    check_aoi_id,
    check_month_key,
    check_path_parts,
    check_under_root,
    month_key,
)
from rasteret_pipelines.defs.resources import StorageResource, storage_resource
from rasteret_pipelines.errors import CollectionNotFoundError, MissingPartitionError, UnsafePartitionKeyError
from rasteret_pipelines.storage import Storage

KIND = "rasteret/io"
"""Asset metadata key telling the IO manager what an asset's values are."""
PATH = "rasteret/path"
"""Asset metadata key: the storage prefix of the asset's values (default: its key's path)."""
COLLECTION, JSON, TABLE = "collection", "json", "table"
SEARCH_FILE = "_search.json"
COLLECTIONS = "collections"


@dataclass(frozen=True)
class CollectionMonth:
    """What the collection asset returns: one month built by the library, already in storage."""

    name: str
    """Collection name (folder under ``<base>/collections``)."""
    month: str
    """``YYYY-MM``."""
    path: str
    """Location of the month's GeoParquet file."""
    search: dict = field(default_factory=dict)
    """The search that built it: ``bbox``, ``aoi_ids``, ``stac_url``, ``built_at``."""


@dataclass(frozen=True)
class CollectionSlice(Collection):
    """A collection seen through some of its months (what downstream assets receive)."""

    month_keys: tuple[str, ...] = ()
    searches: dict = field(default_factory=dict, compare=False)
    """``{YYYY-MM: search}`` (see :attr:`CollectionMonth.search`)."""

    @property
    def months(self) -> list[str]:
        return [m for m in super().months if m in self.month_keys]

    @cached_property
    def files(self) -> list[str]:
        wanted = {f"month={m}" for m in self.month_keys}
        return [f for f in Collection.files.func(self) if f.rsplit("/", 2)[-2] in wanted]


def partition_parts(partitions_def, key) -> list[str]:
    """``["month=2024-03", "group=g_13.0_77.5"]`` for a month x group key (time dimension first),
    ``["month=2024-03"]``, ``["field_group=g_13.0_77.5"]``.

    Raises:
        UnsafePartitionKeyError: a key is not a safe name (e.g. ``../x``) or not a month.
    """
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        by_dim = (
            key.keys_by_dimension
            if isinstance(key, dg.MultiPartitionKey)
            else partitions_def.get_partition_key_from_str(str(key)).keys_by_dimension
        )
        kinds = {d.name: d.partitions_def for d in partitions_def.partitions_defs}
        timed = lambda dim: isinstance(kinds[dim], dg.TimeWindowPartitionsDefinition)  # noqa: E731
        return [
            f"{dim}={month_key(check_month_key(v))}" if timed(dim) else f"{dim}={check_aoi_id(v, 'partition key')}"
            for dim, v in sorted(by_dim.items(), key=lambda kv: (not timed(kv[0]), kv[0]))
        ]
    if isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):
        return [f"month={month_key(check_month_key(key))}"]
    name = getattr(partitions_def, "name", None) or "partition"
    name = "group" if name == "field_group" else name
    return [f"{name}={check_aoi_id(key, 'partition key')}"]


def value_parts(store: Storage, asset_key: dg.AssetKey, partitions_def, key, ext: str, prefix=None) -> list[str]:
    """Path parts of an asset value below the storage base; every key checked, the path kept
    under the base (symbolic links resolved on local disk).

    Raises:
        UnsafePartitionKeyError: a partition key is not a safe name (``../x``) or the path
            would resolve outside the storage folder.
    """
    parts = list(prefix.split("/") if isinstance(prefix, str) else prefix or asset_key.path)
    if partitions_def is None or key is None:
        out = parts[:-1] + [parts[-1] + ext]
    else:
        sub = partition_parts(partitions_def, key)
        out = parts + sub[:-1] + [sub[-1] + ext]
    check_path_parts(out)
    check_under_root(store.uri_of(), store.uri_of(*out))
    return out


def write_value(store: Storage, asset_key: dg.AssetKey, partitions_def, key, obj, prefix=None) -> str:
    """Write a JSON value or a table where the IO manager keeps it; returns its location."""
    if isinstance(obj, pa.Table):
        return store.write_parquet(obj, *value_parts(store, asset_key, partitions_def, key, ".parquet", prefix))
    data = json.dumps(obj, indent=1, sort_keys=True, default=str).encode()
    return store.write_bytes(data, *value_parts(store, asset_key, partitions_def, key, ".json", prefix))


def read_table(store: Storage, asset_key: dg.AssetKey, partitions_def, key, prefix=None) -> pa.Table | None:
    """The table the IO manager keeps for ``key``, or None when it was never written."""
    parts = value_parts(store, asset_key, partitions_def, key, ".parquet", prefix)
    if not store.exists(*parts):
        return None
    return pq.read_table(io.BytesIO(store.read_bytes(*parts)))


class RasteretIOManager(dg.ConfigurableIOManager):
    """Stores collection months, JSON values and tables below the storage location."""

    base_path: str
    """The storage location (folder or ``s3://bucket/prefix``). A plain field, not a nested
    :class:`StorageResource`: Dagster initialises nested resources through a deprecated
    ``InitResourceContext`` property, which warns on every run."""

    @property
    def storage(self) -> StorageResource:
        return storage_resource(self.base_path)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.storage.check()

    # --- paths -------------------------------------------------------------------------------

    @staticmethod
    def _kind(metadata) -> str:
        value = (metadata or {}).get(KIND)
        return getattr(value, "value", value) or JSON

    @staticmethod
    def _prefix(metadata):
        value = (metadata or {}).get(PATH)
        return getattr(value, "value", value)

    def _parts(self, asset_key: dg.AssetKey, partitions_def, key, ext: str, prefix=None) -> list[str]:
        return value_parts(self.storage.storage(), asset_key, partitions_def, key, ext, prefix)

    # --- writing -------------------------------------------------------------------------------

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if obj is None:
            return
        store = self.storage.storage()
        partitions_def = context.asset_partitions_def if context.has_asset_partitions else None
        key = context.partition_key if context.has_asset_partitions else None
        if isinstance(obj, CollectionMonth):
            # The library wrote the GeoParquet month (atomically) through the same Storage;
            # record the search beside it so readers know what area the month covers.
            if not store.exists(COLLECTIONS, obj.name, f"month={obj.month}", MONTH_FILE):
                raise MissingPartitionError(f"collection {obj.name} month {obj.month} was not written to {store.uri}")
            where = store.write_json(obj.search, COLLECTIONS, obj.name, f"month={obj.month}", SEARCH_FILE)
            context.add_output_metadata({"path": dg.MetadataValue.path(obj.path), "search_file": where})
        elif isinstance(obj, pa.Table):
            where = write_value(
                store, context.asset_key, partitions_def, key, obj, self._prefix(context.definition_metadata)
            )
            context.add_output_metadata({"path": dg.MetadataValue.path(where), "rows": obj.num_rows})
        else:
            where = write_value(store, context.asset_key, partitions_def, key, obj)
            context.add_output_metadata({"path": dg.MetadataValue.path(where)})

    # --- reading -------------------------------------------------------------------------------

    def load_input(self, context: dg.InputContext):
        """The input's value; a partition that was never materialised or a key that is not a safe
        path fails the step at once (``dagster.Failure(allow_retries=False)``): no retry of the
        step's RetryPolicy can make it appear."""
        try:
            return self._load_input(context)
        except (MissingPartitionError, UnsafePartitionKeyError) as exc:
            raise dg.Failure(f"{type(exc).__name__}: {exc}", allow_retries=False) from exc

    def _load_input(self, context: dg.InputContext):
        upstream = context.upstream_output
        kind = self._kind(upstream.definition_metadata if upstream is not None else None)
        prefix = self._prefix(upstream.definition_metadata if upstream is not None else None)
        asset_key = context.asset_key
        keys = list(context.asset_partition_keys) if context.has_asset_partitions else [None]
        partitions_def = context.asset_partitions_def if context.has_asset_partitions else None
        store = self.storage.storage()
        if kind == COLLECTION:
            return self._load_collection(asset_key, keys, store)
        ext = ".parquet" if kind == TABLE else ".json"
        identity = keys == [None] or (
            len(keys) == 1 and context.has_partition_key and str(context.partition_key) == str(keys[0])
        )
        values = {}
        skipped = []
        for key in keys:
            parts = self._parts(asset_key, partitions_def, key, ext, prefix)
            if not store.exists(*parts):
                if identity:
                    raise MissingPartitionError(
                        f"{asset_key.to_user_string()} has no value at {store.uri_of(*parts)}"
                        + (f" (partition {key} not materialised)" if key is not None else "")
                    )
                skipped.append(str(key))
                continue
            data = store.read_bytes(*parts)
            values[key] = pq.read_table(io.BytesIO(data)) if kind == TABLE else json.loads(data)
        if identity:
            return next(iter(values.values()))
        if skipped and context.log is not None:
            context.log.debug(
                f"{asset_key.to_user_string()}: {len(values)} of {len(keys)} partitions loaded; "
                f"{len(skipped)} not materialised"
            )
        return {str(k): v for k, v in values.items()}

    def _load_collection(self, asset_key: dg.AssetKey, keys, store) -> CollectionSlice:
        name = asset_key.path[-1]
        workspace = store.uri_of(COLLECTIONS)
        try:
            full = load_collection(name, workspace)
        except CollectionNotFoundError as exc:
            raise MissingPartitionError(
                f"collection {name} has not been built in {workspace}: materialise {asset_key.to_user_string()} first"
            ) from exc
        months = tuple(sorted(month_key(k) for k in keys if k is not None)) or tuple(full.months)
        missing = [m for m in months if not store.exists(COLLECTIONS, name, f"month={m}", MONTH_FILE)]
        if missing and len(months) == 1:
            raise MissingPartitionError(
                f"collection {name} has no month {missing[0]} in {workspace}: materialise partition "
                f"{missing[0]}-01 of {asset_key.to_user_string()} first"
            )
        months = tuple(m for m in months if m not in missing)
        searches = {}
        for m in months:
            if store.exists(COLLECTIONS, name, f"month={m}", SEARCH_FILE):
                searches[m] = store.read_json(COLLECTIONS, name, f"month={m}", SEARCH_FILE)
        return CollectionSlice(
            name=full.name, storage=full.storage, manifest=full.manifest, month_keys=months, searches=searches
        )
