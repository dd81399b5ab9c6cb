"""The data sources a collection can be built from, and how their raw values become physical.

Each :class:`DataSource` names its STAC API and collection, maps the band names people use
(asset keys, band codes such as ``B04`` or ``B4``) to asset keys, says which href to read
(``https`` or the ``s3://`` alternate) and whether reads are requester pays, and gives the
scale and offset that turn stored numbers into surface reflectance for a given item.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from rasteret_pipelines.errors import UnknownBandError, UnknownSourceError


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
    quality_band: str
    """Asset key of the provider's pixel quality band (SCL, QA_PIXEL)."""
    href_alternate: str | None = None
    """Read ``assets[key]["alternate"][href_alternate]["href"]`` instead of the main href."""
    requester_pays: bool = False
    """Reads are billed to the reader (SigV4-signed with ``x-amz-request-payer``)."""
    reflectance_scale: float = 1.0
    """Multiply stored values by this to get reflectance."""
    reflectance_offset: float = 0.0
    """Then add this (before any per-item correction, see :meth:`reflectance`)."""
    start_date: str = "1970-01-01"
    """First date the source has data for (earlier months are refused)."""
    description: str = ""
    properties: tuple[str, ...] = ()
    """Item properties stored as typed columns besides the common ones."""
    aliases: tuple[str, ...] = field(default=())
    """Other names that resolve to this source (``DataSources.SENTINEL2`` and the like)."""

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
        raise UnknownBandError(
            f"band {name!r} is not a band of {self.id}; valid names: {', '.join(valid)}"
        )

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


@dataclass(frozen=True)
class EarthSearchSentinel2(DataSource):
    """Earth Search's ``sentinel-2-l2a``: the BOA offset depends on the item.

    Since processing baseline 04.00 ESA adds 1000 to every L2A value. Element84 removes it
    while building the COGs and then sets ``earthsearch:boa_offset_applied: true``, although
    ``raster:bands`` may still say ``offset: -0.1``; the flag is the truth. So the -0.1 applies
    only to items of baseline >= 04.00 without the flag; earlier baselines never had it.
    """

    def reflectance(self, properties: Mapping) -> tuple[float, float]:
        if properties.get("earthsearch:boa_offset_applied") is True:
            return self.reflectance_scale, 0.0
        baseline = str(properties.get("s2:processing_baseline") or "")
        try:
            has_offset = float(baseline) >= 4.0
        except ValueError:
            has_offset = True  # unknown baseline: assume current processing
        return self.reflectance_scale, (-0.1 if has_offset else 0.0)


_S2_BANDS = {
    "B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1",
    "B06": "rededge2", "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09",
    "B11": "swir16", "B12": "swir22", "SCL": "scl",
}
_S2_PROPS = (
    "mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square", "grid:code",
    "s2:processing_baseline", "s2:product_uri", "earthsearch:boa_offset_applied",
    "s2:nodata_pixel_percentage",
)
_LANDSAT_BANDS = {
    "B1": "coastal", "B2": "blue", "B3": "green", "B4": "red", "B5": "nir08", "B6": "swir16",
    "B7": "swir22", "QA_PIXEL": "qa_pixel",
}
_LANDSAT_PROPS = (
    "landsat:wrs_path", "landsat:wrs_row", "landsat:scene_id", "landsat:collection_category",
    "landsat:cloud_cover_land",
)

SOURCES: Mapping[str, DataSource] = MappingProxyType(
    {
        s.id: s
        for s in (
            EarthSearchSentinel2(
                id="sentinel-2-l2a",
                stac_url="https://earth-search.aws.element84.com/v1",
                collection="sentinel-2-l2a",
                short_name="sentinel",
                bands=_S2_BANDS,
                quality_band="scl",
                reflectance_scale=0.0001,
                reflectance_offset=-0.1,
                start_date="2015-06-27",
                description="Sentinel-2 L2A COGs on Earth Search v1 (public, us-west-2)",
                properties=_S2_PROPS,
                aliases=("SENTINEL2", "sentinel2", "sentinel-2"),
            ),
            DataSource(
                id="landsat-c2l2-sr",
                stac_url="https://landsatlook.usgs.gov/stac-server",
                collection="landsat-c2l2-sr",
                short_name="landsat",
                bands=_LANDSAT_BANDS,
                quality_band="qa_pixel",
                href_alternate="s3",
                requester_pays=True,
                reflectance_scale=0.0000275,
                reflectance_offset=-0.2,
                start_date="1982-08-22",
                description="Landsat Collection 2 Level-2 SR from USGS (s3://usgs-landsat, requester pays)",
                properties=_LANDSAT_PROPS,
                aliases=("LANDSAT", "landsat"),
            ),
            DataSource(
                id="sentinel-2-c1-l2a",
                stac_url="https://earth-search.aws.element84.com/v1",
                collection="sentinel-2-c1-l2a",
                short_name="sentinel-c1",
                bands=_S2_BANDS,
                quality_band="scl",
                reflectance_scale=0.0001,
                reflectance_offset=-0.1,
                start_date="2015-06-27",
                description="Sentinel-2 Collection 1 L2A on Earth Search v1 (offset kept in the data)",
                properties=_S2_PROPS[:-2] + ("s2:nodata_pixel_percentage",),
            ),
            DataSource(
                id="landsat-c2-l2",
                stac_url="https://earth-search.aws.element84.com/v1",
                collection="landsat-c2-l2",
                short_name="landsat-es",
                bands=_LANDSAT_BANDS,
                quality_band="qa_pixel",
                requester_pays=True,
                reflectance_scale=0.0000275,
                reflectance_offset=-0.2,
                start_date="1982-08-22",
                description="Landsat Collection 2 Level-2 on Earth Search v1 (s3://usgs-landsat, requester pays)",
                properties=_LANDSAT_PROPS,
            ),
        )
    }
)
"""Every registered data source by id."""


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
        f"unknown data source {name!r}; valid sources: {', '.join(sorted(SOURCES))}"
    )
