"""The original Rasteret library's high-level API, on top of collections and reading.

Example (the original quick start)::

    processor = Rasteret(workspace_dir, custom_name="bangalore",
                         data_source=DataSources.LANDSAT, date_range=("2024-01-01", "2024-01-31"))
    processor.create_collection(bbox=bbox, cloud_cover_lt=20, platform={"in": ["LANDSAT_8"]})
    ds = processor.get_xarray(geometries=[aoi1, aoi2], bands=["B4", "B5"], cloud_cover_lt=20)
    ndvi = (ds.B5 - ds.B4) / (ds.B5 + ds.B4)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

# Only what constructing a Rasteret needs is imported here; the collection, reading and
# COG modules (pyarrow, aiohttp, xarray, ...) load with the first call that uses them.
from rasteret_pipelines.collections.sources import DataSources, get_source
from rasteret_pipelines.errors import InvalidCollectionNameError, InvalidSearchError

if TYPE_CHECKING:
    from rasteret_pipelines.cog import ByteReader, FetchConfig
    from rasteret_pipelines.collections import BuildReport, Collection

_READ_DEFAULTS = ("fetch_config", "reader")


class Rasteret:
    """Build a collection once, then read geometries from it with zero header requests.

    Args:
        workspace_dir: Where collections live: a local folder or ``s3://bucket/prefix``.
        custom_name: First part of the collection name (``bangalore``).
        data_source: A source id or ``DataSources.SENTINEL2`` / ``DataSources.LANDSAT``.
        date_range: ``(start, end)`` of the collection.
        stac_url: STAC API root overriding the source's (``RASTERET_STAC_URL_<SOURCE>`` too).
        fetch_config: Transport settings (concurrency, retries, S3 options).
        output_dir: The original library's name for ``workspace_dir``.
        reader: Where COG bytes come from, for headers (:meth:`create_collection`) and tiles
            (:meth:`get_xarray`, :meth:`get_gdf`): any :class:`~rasteret_pipelines.cog.ByteReader`.
            None reads through the default aiohttp/local reader. Hrefs pass the collection's
            href policy either way.
    """

    def __init__(
        self,
        workspace_dir=None,
        custom_name: str | None = None,
        data_source=DataSources.SENTINEL2,
        date_range=None,
        *,
        stac_url: str | None = None,
        fetch_config: FetchConfig | None = None,
        output_dir=None,
        reader: ByteReader | None = None,
    ):
        workspace = workspace_dir if workspace_dir is not None else output_dir
        if workspace is None:
            workspace = Path.home() / "rasteret_workspace"
        self.workspace_dir = workspace if str(workspace).startswith("s3://") else Path(os.fspath(workspace))
        self.custom_name = custom_name
        self.data_source = get_source(data_source).id
        self.date_range = tuple(str(d) for d in date_range) if date_range is not None else None
        self.stac_url = stac_url
        self.fetch_config = fetch_config
        self.reader = reader
        self._collection: Collection | None = None
        self.last_build: BuildReport | None = None

    # -- collections -----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The collection name: ``<custom_name>_<YYYYMM>-<MM>_<source>``, or the loaded one."""
        if self._collection is not None:
            return self._collection.name
        if not self.custom_name or self.date_range is None:
            raise InvalidCollectionNameError("custom_name and date_range are needed to name a collection")
        from rasteret_pipelines.collections.build import collection_name

        return collection_name(self.custom_name, self.date_range, self.data_source)

    @property
    def collection(self) -> Collection:
        """The opened collection (raises ``ValueError`` if it was never created)."""
        if self._collection is None:
            from rasteret_pipelines.collections.query import load_collection

            self._collection = load_collection(self.name, self.workspace_dir)
        return self._collection

    def create_collection(
        self,
        bbox=None,
        cloud_cover_lt: float | None = None,
        platform=None,
        *,
        geometry=None,
        bands=None,
        query=None,
        progress: bool | None = None,
    ) -> Rasteret:
        """Index the STAC search into this collection (incremental when it exists).

        A new collection whose search finds nothing is not created
        (:class:`~rasteret_pipelines.errors.EmptySearchError`), nor one whose build fails.
        """
        if self.date_range is None:
            raise InvalidSearchError("date_range is needed to create a collection")
        from rasteret_pipelines.collections.build import build_collection
        from rasteret_pipelines.collections.query import load_collection

        self.last_build = build_collection(
            self.data_source,
            self.name,
            self.workspace_dir,
            date_range=self.date_range,
            bbox=bbox,
            geometry=geometry,
            bands=bands,
            cloud_cover_lt=cloud_cover_lt,
            platform=platform,
            query=query,
            stac_url=self.stac_url,
            fetch_config=self.fetch_config,
            progress=progress,
            require_items=True,
            reader=self.reader,
        )
        self._collection = load_collection(self.name, self.workspace_dir)
        return self

    @staticmethod
    def list_collections(workspace_dir=None) -> list[dict]:
        """Collections in ``workspace_dir``: name, data_source, date_range, size (scenes)."""
        from rasteret_pipelines.collections.query import list_collections

        return list_collections(workspace_dir or Path.home() / "rasteret_workspace")

    @classmethod
    def load_collection(cls, collection_name: str, workspace_dir=None, **kwargs) -> Rasteret:
        """Open an existing collection; ``ValueError`` naming the workspace when absent."""
        from rasteret_pipelines.collections.query import load_collection

        workspace = workspace_dir or Path.home() / "rasteret_workspace"
        collection = load_collection(collection_name, workspace)
        self = cls(
            workspace,
            data_source=collection.manifest["data_source"],
            date_range=tuple(collection.date_range),
            **kwargs,
        )
        self._collection = collection
        return self

    # -- reading -----------------------------------------------------------------------------------

    def get_xarray(
        self,
        geometries=None,
        bands=None,
        cloud_cover_lt: float | None = None,
        date_range=None,
        **kwargs,
    ):
        """Read ``bands`` for ``geometries``; see :func:`rasteret_pipelines.reading.read_geometries`
        (``reader=`` here overrides the one this Rasteret was made with).

        With ``bbox=``, ``geopolygon=`` or ``like=`` (or no geometries) it reads a data cube on
        one grid instead (``crs=``, ``resolution=``, ``groupby=``, ``mosaic=``, ``chunks=``, or
        ``options=`` a :class:`~rasteret_pipelines.reading.options.CubeOptions`; ``geometries``
        then mask it): see :func:`rasteret_pipelines.reading.cube.read_cube`."""
        from rasteret_pipelines.reading.cube import is_cube_read, read_cube
        from rasteret_pipelines.reading.read import read_geometries

        cube = is_cube_read(geometries, kwargs)
        kwargs = self._read_keywords(kwargs, read_cube if cube else read_geometries)
        if cube:
            return read_cube(
                self.collection,
                bands,
                geometries=geometries,
                date_range=date_range,
                cloud_cover_lt=cloud_cover_lt,
                **kwargs,
            )
        return read_geometries(
            self.collection,
            geometries,
            bands,
            date_range=date_range,
            cloud_cover_lt=cloud_cover_lt,
            **kwargs,
        )

    def get_gdf(self, geometries, bands, cloud_cover_lt: float | None = None, date_range=None, **kwargs):
        """The same read as a GeoDataFrame: one row per geometry x date x band."""
        from rasteret_pipelines.reading.gdf import dataset_to_gdf
        from rasteret_pipelines.reading.geometries import normalize_geometries

        ds = self.get_xarray(geometries, bands, cloud_cover_lt=cloud_cover_lt, date_range=date_range, **kwargs)
        return dataset_to_gdf(ds, dict(normalize_geometries(geometries, id_column=kwargs.get("id_column", "id"))))

    def zonal_stats(
        self,
        fields,
        *,
        index=None,
        bands=None,
        stats=None,
        cloud_cover_lt: float | None = None,
        date_range=None,
        **kwargs,
    ):
        """Statistics per field and date as a ``pyarrow.Table``; see
        :func:`rasteret_pipelines.reading.zonal_stats` (``reader=`` here overrides the one this
        Rasteret was made with)::

            table = processor.zonal_stats(fields, index="ndvi", stats=["mean", "median", "std", "count"],
                                          cloud_cover_lt=20, date_range=("2024-01-01", "2024-03-31"))
        """
        from rasteret_pipelines.reading.zonal import DEFAULT_STATS, zonal_stats

        kwargs = self._read_keywords(kwargs, zonal_stats)
        return zonal_stats(
            self.collection,
            fields,
            index=index,
            bands=bands,
            stats=stats or DEFAULT_STATS,
            cloud_cover_lt=cloud_cover_lt,
            date_range=date_range,
            **kwargs,
        )

    def sample_points(
        self, points, bands=None, *, index=None, cloud_cover_lt: float | None = None, date_range=None, **kwargs
    ):
        """The value of ``bands`` (and ``index``) at each point for every date, as a
        ``pyarrow.Table``; see :func:`rasteret_pipelines.reading.sample_points`."""
        from rasteret_pipelines.reading.zonal import sample_points

        kwargs = self._read_keywords(kwargs, sample_points)
        return sample_points(
            self.collection,
            points,
            bands=bands,
            index=index,
            cloud_cover_lt=cloud_cover_lt,
            date_range=date_range,
            **kwargs,
        )

    def explain(self, read: str, *args, **kwargs):
        """An exact dry run of a read with the same arguments: its scenes, windows, tiles,
        GETs, bytes and memory, from the cached headers alone (no request); see
        :mod:`rasteret_pipelines.reading.explain`::

            plan = processor.explain("get_xarray", geometries=aois, bands=["B04", "B08"])
            plan.gets, plan.bytes, plan.to_pandas()
        """
        from rasteret_pipelines.reading.explain import explain

        kwargs = self._read_keywords(kwargs)
        kwargs.pop("reader", None)  # a dry run reads nothing
        return explain(read, self.collection, *args, **kwargs)

    def _read_keywords(self, kwargs: dict, function=None) -> dict:
        """A read's keywords: ``options=`` (a :class:`~rasteret_pipelines.reading.options.ReadOptions`,
        or a :class:`~rasteret_pipelines.reading.options.CubeOptions` for the data cube) spelled
        out as keywords, then this Rasteret's ``fetch_config`` and ``reader`` where the call
        gives none.

        Raises:
            InvalidReadArgumentError: ``options`` is no ReadOptions (nor, for a cube or a dry
                run, a CubeOptions), a keyword contradicts it, or it sets an option ``function``
                does not take.
        """
        options = kwargs.pop("options", None)
        if options is not None:
            import inspect

            from rasteret_pipelines.errors import InvalidReadArgumentError
            from rasteret_pipelines.reading.options import CubeOptions, ReadOptions

            what = function.__name__ if function is not None else "read"
            kind = CubeOptions if isinstance(options, CubeOptions) and what in ("read_cube", "read") else ReadOptions
            given = {k: kwargs.pop(k) for k in list(kwargs) if k in kind.__dataclass_fields__}
            chosen = kind.resolve(options, given, what).keywords()
            if function is not None:
                parameters = inspect.signature(function).parameters
                if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
                    unused = sorted(set(chosen) - set(parameters))
                    if unused:
                        raise InvalidReadArgumentError(f"{what} takes no {', '.join(unused)} (set in options)")
            kwargs.update(chosen)
        for name in _READ_DEFAULTS:
            if kwargs.get(name) is None:
                kwargs[name] = getattr(self, name)
        return kwargs

    def __repr__(self) -> str:
        return f"Rasteret(workspace_dir={str(self.workspace_dir)!r}, data_source={self.data_source!r}, date_range={self.date_range!r})"
