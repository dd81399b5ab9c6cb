"""The IO managers: asset values at predictable paths below the storage location, one per kind.

Both are Dagster's :class:`~dagster.UPathIOManager` (paths as ``UPath``, one file per partition,
a partition range loaded with Dagster's own rules) over the storage location
(:class:`~rasteret_pipelines.defs.storage.StorageResource`: a folder or ``s3://bucket/prefix``),
and every write goes through :class:`rasteret_pipelines.storage.Storage`, so it is atomic on
local disk (temporary name, then rename) and whole-object on S3.

* :class:`CollectionIOManager` (resource key ``collection_io_manager``): collection months.
  The library writes the month's GeoParquet itself (a rebuild reuses the previous file's
  headers); the IO manager records the search beside it (``_search.json``) and hands
  downstream assets a :class:`CollectionSlice`: the collection restricted to the input
  partitions' months, which reads rows with predicate push-down when asked.
* :class:`TableIOManager` (resource key ``table_io_manager``): Arrow tables as (Geo)Parquet.

Layout below the base path (``<key>`` is the asset key joined with ``/``)::

    collections/<source>/month=YYYY-MM/items.parquet   collection months (GeoParquet, written by
    collections/<source>/month=YYYY-MM/_search.json    the library) + the area each was searched for
    collections/<source>/_manifest.json
    field_stats/<source>/month=YYYY-MM/group=<g>.parquet  field statistics (one per month x group)
    field_timeseries/<source>/group=<g>.parquet          time series of a group's fields

A table lives below its asset's key (``<key>/<partition>``) unless the asset's ``rasteret/path``
metadata names another prefix (``field_stats/<source>``); a month x group partition is
``month=YYYY-MM/group=<g>`` (the month first, so a month's groups share a folder). Every key is
checked to be a safe name and every path to stay below the base before anything is touched.
"""

from dataclasses import dataclass, field
from functools import cached_property

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from rasteret_pipelines.collections import Collection, load_collection
from rasteret_pipelines.collections.build import MONTH_FILE
from rasteret_pipelines.defs.partitions import (
    check_aoi_id,
    check_month_key,
    check_path_parts,
    check_under_root,
    month_key,
)
from rasteret_pipelines.defs.settings import DEFAULT_STORAGE
from rasteret_pipelines.defs.storage import storage_resource
from rasteret_pipelines.errors import CollectionNotFoundError, MissingPartitionError, UnsafePartitionKeyError
from rasteret_pipelines.storage import Storage

PATH = "rasteret/path"
"""Asset metadata key: the storage prefix of a table asset's values (default: its key's path)."""
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


# --- layout --------------------------------------------------------------------------------------


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


def write_table(store: Storage, asset_key: dg.AssetKey, partitions_def, key, table: pa.Table, prefix=None) -> str:
    """Write a table where :class:`TableIOManager` keeps it; returns its location. (For assets
    that materialise many partitions in one step, which an IO manager cannot store.)"""
    return store.write_parquet(table, *value_parts(store, asset_key, partitions_def, key, ".parquet", prefix))


def read_table(store: Storage, asset_key: dg.AssetKey, partitions_def, key, prefix=None) -> pa.Table | None:
    """The table :class:`TableIOManager` keeps for ``key``, or None when it was never written."""
    parts = value_parts(store, asset_key, partitions_def, key, ".parquet", prefix)
    if not store.exists(*parts):
        return None
    return pq.read_table(store.path(*parts), filesystem=store.arrow_fs)


def _metadata_value(metadata, name):
    value = (metadata or {}).get(name)
    return getattr(value, "value", value)


# --- the UPath IO managers -------------------------------------------------------------------------


class _StorageUPathIOManager(dg.UPathIOManager):
    """A :class:`~dagster.UPathIOManager` whose paths are :func:`value_parts` below a
    :class:`Storage`, and whose writes are the storage's atomic ones."""

    def __init__(self, store: Storage):
        from upath import UPath

        self.store = store
        super().__init__(base_path=UPath(store.uri) if store.is_local else UPath(store.uri, **store.storage_options))

    def _parts(self, context, partition_key, ext: str) -> list[str]:
        partitions_def = context.asset_partitions_def if partition_key is not None else None
        prefix = _metadata_value(_definition_metadata(context), PATH)
        return value_parts(self.store, context.asset_key, partitions_def, partition_key, ext, prefix)

    def _get_path(self, context):
        return self._base_path.joinpath(*self._parts(context, None, self.extension or ""))

    def _get_paths_for_partitions(self, context) -> dict:
        return {
            k: self._base_path.joinpath(*self._parts(context, k, self.extension or ""))
            for k in context.asset_partition_keys
        }

    def _get_multipartition_backcompat_paths(self, context) -> dict:
        return {}  # no earlier layout to fall back to

    def _handle_transition_to_partitioned_asset(self, context, path) -> None:
        """Nothing to do: no asset here was ever stored unpartitioned at a partition's folder."""

    def make_directory(self, path) -> None:
        """Nothing to do: :class:`Storage` creates local folders as it writes; S3 has none."""

    def storage_parts(self, path) -> list[str]:
        """``path`` (a UPath below the base) as parts below the storage base."""
        text, base = str(path), str(self._base_path).rstrip("/")
        if not text.startswith(base + "/"):
            raise UnsafePartitionKeyError(f"{text} is not below the storage location {base}")
        return text[len(base) + 1 :].split("/")


def _definition_metadata(context):
    """The asset's definition metadata, from an output context or an input's upstream output."""
    if isinstance(context, dg.InputContext):
        upstream = context.upstream_output
        return upstream.definition_metadata if upstream is not None else None
    return context.definition_metadata


class _Tables(_StorageUPathIOManager):
    extension = ".parquet"

    def dump_to_path(self, context: dg.OutputContext, obj: pa.Table, path) -> None:
        if not isinstance(obj, pa.Table):
            raise TypeError(f"{context.asset_key.to_user_string()}: TableIOManager stores pyarrow Tables, not {obj!r}")
        self.store.write_parquet(obj, *self.storage_parts(path))

    def load_from_path(self, context: dg.InputContext, path) -> pa.Table:
        parts = self.storage_parts(path)
        if not self.store.exists(*parts):
            raise FileNotFoundError(f"{context.asset_key.to_user_string()} has no value at {self.store.uri_of(*parts)}")
        return pq.read_table(self.store.path(*parts), filesystem=self.store.arrow_fs)

    def get_metadata(self, context: dg.OutputContext, obj: pa.Table) -> dict:
        return {"rows": dg.MetadataValue.int(obj.num_rows)}


class _Collections(_StorageUPathIOManager):
    """Collection months: the output's file is the month's ``_search.json`` (the library wrote
    ``items.parquet`` beside it); a partition range loads as one :class:`CollectionSlice`."""

    extension = ""

    def _parts(self, context, partition_key, ext: str) -> list[str]:
        if partition_key is None:
            raise MissingPartitionError(
                f"{context.asset_key.to_user_string()} is a collection: it is partitioned by month"
            )
        month = month_key(check_month_key(partition_key))
        parts = [COLLECTIONS, context.asset_key.path[-1], f"month={month}", SEARCH_FILE]
        check_path_parts(parts)
        return parts

    def dump_to_path(self, context: dg.OutputContext, obj: CollectionMonth, path) -> None:
        if not isinstance(obj, CollectionMonth):
            raise TypeError(
                f"{context.asset_key.to_user_string()}: CollectionIOManager stores CollectionMonth, not {obj!r}"
            )
        if not self.store.exists(COLLECTIONS, obj.name, f"month={obj.month}", MONTH_FILE):
            raise MissingPartitionError(f"collection {obj.name} month {obj.month} was not written to {self.store.uri}")
        self.store.write_json(obj.search, *self.storage_parts(path))

    def get_metadata(self, context: dg.OutputContext, obj: CollectionMonth) -> dict:
        return {"month_file": dg.MetadataValue.path(obj.path)}

    def load_from_path(self, context: dg.InputContext, path):
        raise NotImplementedError("collections load as one CollectionSlice (load_partitions)")

    def load_partitions(self, context: dg.InputContext) -> CollectionSlice:
        """The collection restricted to the input's months (one object for a whole range: the
        rows are read lazily, with push-down, by the asset that asks for them)."""
        asset_key = context.asset_key
        name = asset_key.path[-1]
        workspace = self.store.uri_of(COLLECTIONS)
        try:
            full = load_collection(name, workspace)
        except CollectionNotFoundError as exc:
            raise MissingPartitionError(
                f"collection {name} has not been built in {workspace}: materialise {asset_key.to_user_string()} first"
            ) from exc
        months = tuple(sorted(month_key(check_month_key(k)) for k in context.asset_partition_keys))
        missing = [m for m in months if not self.store.exists(COLLECTIONS, name, f"month={m}", MONTH_FILE)]
        if missing and len(months) == 1:
            raise MissingPartitionError(
                f"collection {name} has no month {missing[0]} in {workspace}: materialise partition "
                f"{missing[0]}-01 of {asset_key.to_user_string()} first"
            )
        months = tuple(m for m in months if m not in missing)
        searches = {}
        for m in months:
            if self.store.exists(COLLECTIONS, name, f"month={m}", SEARCH_FILE):
                searches[m] = self.store.read_json(COLLECTIONS, name, f"month={m}", SEARCH_FILE)
        return CollectionSlice(
            name=full.name, storage=full.storage, manifest=full.manifest, month_keys=months, searches=searches
        )


class _StorageIOManagerFactory(dg.ConfigurableIOManagerFactory):
    """Configured with the storage location; checks (and creates) it when a run starts."""

    base_path: str = Field(default=DEFAULT_STORAGE, description="Folder or s3://bucket/prefix")

    def _store(self, context: dg.InitResourceContext) -> Storage:
        resource = storage_resource(self.base_path)
        if getattr(context, "run", None) is not None:
            resource.check()
        return resource.storage()

    def create_io_manager(self, context: dg.InitResourceContext) -> dg.IOManager:
        raise NotImplementedError


class _FailFast(dg.IOManager):
    """Loads that can never succeed fail the step at once (``dagster.Failure(allow_retries=False)``):
    no retry of the step's RetryPolicy can make a missing partition appear or an unsafe key safe."""

    def __init__(self, inner: dg.IOManager):
        self.inner = inner

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if obj is not None:
            self.inner.handle_output(context, obj)

    def load_input(self, context: dg.InputContext):
        try:
            return self.inner.load_input(context)
        except (MissingPartitionError, UnsafePartitionKeyError) as exc:
            raise dg.Failure(f"{type(exc).__name__}: {exc}", allow_retries=False) from exc
        except FileNotFoundError as exc:
            raise dg.Failure(f"MissingPartitionError: {exc}", allow_retries=False) from exc


class CollectionIOManager(_StorageIOManagerFactory):
    """Collection months below ``<base>/collections``; inputs are :class:`CollectionSlice` s."""

    def create_io_manager(self, context: dg.InitResourceContext) -> dg.IOManager:
        return _FailFast(_Collections(self._store(context)))


class TableIOManager(_StorageIOManagerFactory):
    """Arrow tables as Parquet, one file per partition, below the asset's key or ``rasteret/path``.

    A partition range loads as ``{partition key: table}``; partitions never materialised fail
    the load unless the input's metadata sets ``allow_missing_partitions`` (Dagster's rule)."""

    def create_io_manager(self, context: dg.InitResourceContext) -> dg.IOManager:
        return _FailFast(_Tables(self._store(context)))
