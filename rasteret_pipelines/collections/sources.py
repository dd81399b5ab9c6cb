"""The data sources a collection can be built from: everything known about each, in one place.

Each :class:`DataSource` names its STAC API and collection, maps the band names people use
(asset keys, band codes such as ``B04`` or ``B4``) to asset keys, says which href to read
(``https`` or the ``s3://`` alternate) and whether reads are requester pays, gives the scale
and offset that turn stored numbers into surface reflectance for a given item (and which item
properties that rule reads), its typed item properties, its cloud-mask rule
(:mod:`~rasteret_pipelines.collections.cloudmask`), its red and near-infrared bands for NDVI
and their pixel size. No other module names a source's bands.

Adding a source is one :func:`register_source` call (or one entry of the built-in registry
below); a definition that misses a part or contradicts itself fails at once with a
:class:`~rasteret_pipelines.errors.SourceDefinitionError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

from rasteret_pipelines.collections.cloudmask import CloudMask, MaskedBits, MaskedClasses
from rasteret_pipelines.errors import SourceDefinitionError, UnknownBandError, UnknownSourceError

PROPERTY_TYPE_NAMES = ("bool", "string", "int32", "int64", "float32", "float64")
"""Arrow type names a source's typed property may have (``pyarrow.type_for_alias`` names)."""


class NdviBands(NamedTuple):
    """Asset keys of the red and near-infrared bands NDVI is computed from."""

    red: str
    nir: str


@dataclass(frozen=True)
class DataSource:
    """One STAC collection that rasteret-pipelines knows how to index and read."""

    id: str
    """Registry name, e.g. ``"sentinel-2-l2a"``."""
    stac_url: str
    """Default STAC API root (overridden by ``stac_url=`` or ``RASTERET_STAC_URL_<ID>``)."""
    collection: str
    """Collection id in that STAC API."""
    short_name: str
    """Used in collection names: ``<custom_name>_<YYYYMM>-<MM>_<short_name>``."""
    bands: Mapping[str, str]
    """Band code -> asset key (codes people use, e.g. ``B04`` -> ``red``)."""
    cloud_mask: CloudMask
    """The rule saying which pixels of the provider's quality band are clear."""
    ndvi_bands: NdviBands
    """(red, near-infrared) asset keys for NDVI."""
    pixel_size: float
    """Pixel size (m) of the NDVI bands, for memory estimates."""
    href_alternate: str | None = None
    """Read ``assets[key]["alternate"][href_alternate]["href"]`` instead of the main href."""
    requester_pays: bool = False
    """Reads are billed to the reader (SigV4-signed with ``x-amz-request-payer``)."""
    reflectance_scale: float = 1.0
    """Multiply stored values by this to get reflectance."""
    reflectance_offset: float = 0.0
    """Then add this (before any per-item correction, see :meth:`reflectance`)."""
    reflectance_properties: tuple[str, ...] = ()
    """Item properties :meth:`reflectance` reads (each must be a typed property)."""
    start_date: str = "1970-01-01"
    """First date the source has data for (earlier months are refused)."""
    description: str = ""
    properties: Mapping[str, str] = field(default_factory=dict)
    """Item property -> Arrow type name (:data:`PROPERTY_TYPE_NAMES`): stored with that type
    in every month, besides the common STAC properties."""
    aliases: tuple[str, ...] = field(default=())
    """Other names that resolve to this source (``DataSources.SENTINEL2`` and the like)."""

    def __post_init__(self) -> None:
        def refuse(what: str) -> SourceDefinitionError:
            return SourceDefinitionError(f"data source {self.id!r}: {what}")

        if not isinstance(self.id, str) or not self.id:
            raise SourceDefinitionError(f"a data source needs a non-empty string id, got {self.id!r}")
        if not self.bands or not all(
            isinstance(k, str) and k and isinstance(v, str) and v for k, v in self.bands.items()
        ):
            raise refuse(f"bands must map band codes to asset keys (non-empty strings), got {self.bands!r}")
        object.__setattr__(self, "bands", MappingProxyType(dict(self.bands)))
        keys = set(self.bands.values())
        if not isinstance(self.cloud_mask, CloudMask):
            raise refuse(f"cloud_mask must be a CloudMask rule, got {self.cloud_mask!r}")
        if self.cloud_mask.band not in keys:
            raise refuse(f"the cloud-mask band {self.cloud_mask.band!r} is not one of its asset keys")
        try:
            ndvi = NdviBands(*self.ndvi_bands)
        except TypeError:
            raise refuse(f"ndvi_bands must be (red, nir) asset keys, got {self.ndvi_bands!r}") from None
        for role, key in ndvi._asdict().items():
            if key not in keys:
                raise refuse(f"the NDVI {role} band {key!r} is not one of its asset keys")
        object.__setattr__(self, "ndvi_bands", ndvi)
        if not isinstance(self.pixel_size, (int, float)) or not self.pixel_size > 0:
            raise refuse(f"pixel_size must be a positive number of metres, got {self.pixel_size!r}")
        bad = {k: v for k, v in self.properties.items() if v not in PROPERTY_TYPE_NAMES}
        if bad:
            raise refuse(f"property types {bad} are not among {', '.join(PROPERTY_TYPE_NAMES)}")
        object.__setattr__(self, "properties", MappingProxyType(dict(self.properties)))
        untyped = [p for p in self.reflectance_properties if p not in self.properties]
        if untyped:
            raise refuse(f"reflectance properties {untyped} are not among its typed properties")
        object.__setattr__(self, "reflectance_properties", tuple(self.reflectance_properties))
        object.__setattr__(self, "aliases", tuple(self.aliases))

    @property
    def quality_band(self) -> str:
        """Asset key of the provider's pixel quality band (the cloud-mask rule's band)."""
        return self.cloud_mask.band

    @property
    def asset_keys(self) -> tuple[str, ...]:
        """Every asset key a band name can resolve to, in registry order."""
        seen: dict[str, None] = {}
        for key in self.bands.values():
            seen.setdefault(key, None)
        return tuple(seen)

    def resolve_band(self, name: str) -> str:
        """Asset key for a band code or asset key (case-insensitive codes)."""
        if not isinstance(name, str) or not name:
            raise UnknownBandError(
                f"band names must be non-empty strings, got {name!r}; valid names for {self.id}: "
                + ", ".join(sorted(set(self.bands) | set(self.asset_keys)))
            )
        if name in self.asset_keys:
            return name
        for code, key in self.bands.items():
            if code.lower() == name.lower():
                return key
        valid = sorted(set(self.bands) | set(self.asset_keys))
        raise UnknownBandError(f"band {name!r} is not a band of {self.id}; valid names: {', '.join(valid)}")

    def resolve_bands(self, names) -> list[str]:
        """Asset keys for ``names`` (None: every band), without duplicates, in order."""
        if names is None:
            return list(self.asset_keys)
        if isinstance(names, str):
            names = [names]
        out: dict[str, None] = {}
        for name in names:
            out.setdefault(self.resolve_band(name), None)
        if not out:
            raise UnknownBandError(f"no bands asked for from {self.id}")
        return list(out)

    def effective_stac_url(self, stac_url: str | None = None) -> str:
        """``stac_url`` if given, else ``RASTERET_STAC_URL_<ID>``, else the default."""
        return stac_url or os.environ.get(stac_url_env_var(self.id)) or self.stac_url

    def asset_href(self, asset: Mapping) -> str | None:
        """The href to read for one STAC asset dict."""
        if self.href_alternate:
            alt = (asset.get("alternate") or {}).get(self.href_alternate) or {}
            if alt.get("href"):
                return alt["href"]
        return asset.get("href")

    def reflectance(self, properties: Mapping) -> tuple[float, float]:
        """(scale, offset) turning this item's stored values into surface reflectance."""
        return self.reflectance_scale, self.reflectance_offset


_BOA_FLAG = "earthsearch:boa_offset_applied"
_BASELINE = "s2:processing_baseline"


@dataclass(frozen=True)
class EarthSearchSentinel2(DataSource):
    """Earth Search's ``sentinel-2-l2a``: the BOA offset depends on the item.

    Since processing baseline 04.00 ESA adds 1000 to every L2A value. Element84 removes it
    while building the COGs and then sets ``earthsearch:boa_offset_applied: true``, although
    ``raster:bands`` may still say ``offset: -0.1``; the flag is the truth. So the -0.1 applies
    only to items of baseline >= 04.00 without the flag; earlier baselines never had it.
    """

    reflectance_properties: tuple[str, ...] = (_BOA_FLAG, _BASELINE)

    def reflectance(self, properties: Mapping) -> tuple[float, float]:
        if properties.get(_BOA_FLAG) is True:
            return self.reflectance_scale, 0.0
        baseline = str(properties.get(_BASELINE) or "")
        try:
            has_offset = float(baseline) >= 4.0
        except ValueError:
            has_offset = True  # unknown baseline: assume current processing
        return self.reflectance_scale, (-0.1 if has_offset else 0.0)


_S2_BANDS = {
    "B01": "coastal",
    "B02": "blue",
    "B03": "green",
    "B04": "red",
    "B05": "rededge1",
    "B06": "rededge2",
    "B07": "rededge3",
    "B08": "nir",
    "B8A": "nir08",
    "B09": "nir09",
    "B11": "swir16",
    "B12": "swir22",
    "SCL": "scl",
}
_S2_NDVI = NdviBands(red="red", nir="nir")
_S2_SCL = MaskedClasses(band="scl", classes=(0, 1, 3, 8, 9, 10))
"""Sentinel-2 Scene Classification (ESA Sen2Cor L2A): masks 0 no data, 1 saturated or defective,
3 cloud shadows, 8 cloud medium probability, 9 cloud high probability, 10 thin cirrus; keeps
2 dark area, 4 vegetation, 5 not vegetated, 6 water, 7 unclassified, 11 snow or ice."""
_S2_PROPS = {
    "mgrs:utm_zone": "int64",
    "mgrs:latitude_band": "string",
    "mgrs:grid_square": "string",
    "grid:code": "string",
    _BASELINE: "string",
    "s2:product_uri": "string",
    "s2:nodata_pixel_percentage": "float64",
}
_LANDSAT_BANDS = {
    "B1": "coastal",
    "B2": "blue",
    "B3": "green",
    "B4": "red",
    "B5": "nir08",
    "B6": "swir16",
    "B7": "swir22",
    "QA_PIXEL": "qa_pixel",
}
_LANDSAT_NDVI = NdviBands(red="red", nir="nir08")
_LANDSAT_QA = MaskedBits(band="qa_pixel", bits=(0, 1, 2, 3, 4))
"""Landsat Collection 2 QA_PIXEL (USGS LSDS-1619): masks bit 0 fill, 1 dilated cloud, 2 cirrus,
3 cloud, 4 cloud shadow (each set only at high confidence)."""
_LANDSAT_PROPS = {
    "landsat:wrs_path": "string",
    "landsat:wrs_row": "string",
    "landsat:scene_id": "string",
    "landsat:collection_category": "string",
    "landsat:cloud_cover_land": "float64",
}

_REGISTRY: dict[str, DataSource] = {}

SOURCES: Mapping[str, DataSource] = MappingProxyType(_REGISTRY)
"""Every registered data source by id (read-only; add one with :func:`register_source`)."""


def register_source(source: DataSource) -> DataSource:
    """Add ``source`` to the registry and return it.

    Afterwards its id and aliases work wherever a source name is taken (``build_collection``,
    ``Rasteret(data_source=...)``, ``RASTERET_SOURCES``, loading its collections).

    Raises:
        SourceDefinitionError: ``source`` is not a :class:`DataSource`, or its id or an alias is
            already the id or an alias of a registered source.
    """
    if not isinstance(source, DataSource):
        raise SourceDefinitionError(f"register_source takes a DataSource, got {type(source).__name__}")
    names = (source.id, *source.aliases)
    for other in _REGISTRY.values():
        taken = sorted(set(names) & {other.id, *other.aliases})
        if taken:
            raise SourceDefinitionError(
                f"cannot register data source {source.id!r}: {', '.join(map(repr, taken))} already "
                f"names registered source {other.id!r}"
            )
    _REGISTRY[source.id] = source
    return source


def unregister_source(source_id: str) -> DataSource:
    """Remove a registered source (by id) and return it.

    Raises:
        UnknownSourceError: no source of that id is registered.
    """
    if source_id not in _REGISTRY:
        raise UnknownSourceError(f"unknown data source {source_id!r}; valid sources: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY.pop(source_id)


_EARTH_SEARCH = "https://earth-search.aws.element84.com/v1"
_S2_COMMON = dict(
    bands=_S2_BANDS,
    cloud_mask=_S2_SCL,
    ndvi_bands=_S2_NDVI,
    pixel_size=10.0,
    reflectance_scale=0.0001,
    reflectance_offset=-0.1,
    start_date="2015-06-27",
)
_LANDSAT_COMMON = dict(
    bands=_LANDSAT_BANDS,
    cloud_mask=_LANDSAT_QA,
    ndvi_bands=_LANDSAT_NDVI,
    pixel_size=30.0,
    requester_pays=True,
    reflectance_scale=0.0000275,
    reflectance_offset=-0.2,
    start_date="1982-08-22",
    properties=_LANDSAT_PROPS,
)

register_source(
    EarthSearchSentinel2(
        id="sentinel-2-l2a",
        stac_url=_EARTH_SEARCH,
        collection="sentinel-2-l2a",
        short_name="sentinel",
        description="Sentinel-2 L2A COGs on Earth Search v1 (public, us-west-2)",
        properties={**_S2_PROPS, _BOA_FLAG: "bool"},
        aliases=("SENTINEL2", "sentinel2", "sentinel-2"),
        **_S2_COMMON,
    )
)
register_source(
    DataSource(
        id="landsat-c2l2-sr",
        stac_url="https://landsatlook.usgs.gov/stac-server",
        collection="landsat-c2l2-sr",
        short_name="landsat",
        href_alternate="s3",
        aliases=("LANDSAT", "landsat"),
        description="Landsat Collection 2 Level-2 SR from USGS (s3://usgs-landsat, requester pays)",
        **_LANDSAT_COMMON,
    )
)
register_source(
    DataSource(
        id="sentinel-2-c1-l2a",
        stac_url=_EARTH_SEARCH,
        collection="sentinel-2-c1-l2a",
        short_name="sentinel-c1",
        description="Sentinel-2 Collection 1 L2A on Earth Search v1 (offset kept in the data)",
        properties=_S2_PROPS,
        **_S2_COMMON,
    )
)
register_source(
    DataSource(
        id="landsat-c2-l2",
        stac_url=_EARTH_SEARCH,
        collection="landsat-c2-l2",
        short_name="landsat-es",
        description="Landsat Collection 2 Level-2 on Earth Search v1 (s3://usgs-landsat, requester pays)",
        **_LANDSAT_COMMON,
    )
)


class DataSources:
    """The original library's names for the sources."""

    SENTINEL2 = "sentinel-2-l2a"
    LANDSAT = "landsat-c2l2-sr"
    SENTINEL2_C1 = "sentinel-2-c1-l2a"
    LANDSAT_EARTH_SEARCH = "landsat-c2-l2"


def stac_url_env_var(source_id: str) -> str:
    """``RASTERET_STAC_URL_<ID>``: the source id upper-cased, dashes as underscores."""
    return "RASTERET_STAC_URL_" + source_id.upper().replace("-", "_")


def get_source(source: str | DataSource) -> DataSource:
    """The registered source for an id, alias or :class:`DataSource`."""
    if isinstance(source, DataSource):
        return source
    name = str(getattr(source, "value", source))
    if name in SOURCES:
        return SOURCES[name]
    for candidate in SOURCES.values():
        if name in candidate.aliases:
            return candidate
    raise UnknownSourceError(
        f"unknown data source {name!r}; valid sources: {', '.join(sorted(SOURCES))} (add one with register_source)"
    )
