"""STAC searches through pystac-client, with checked inputs and bounded retries.

Searches are retried by the library's one :class:`~rasteret_pipelines.cog.config.RetryPolicy`
(the one COG reads use), translated once into the urllib3 ``Retry`` of pystac-client's requests
session by :func:`stac_retry`.
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rasteret_pipelines.collections.sources import DataSource
from rasteret_pipelines.errors import InvalidSearchError, StacApiError
from rasteret_pipelines.redaction import redacted_cause

if TYPE_CHECKING:
    # The COG package's __init__ loads aiohttp; the policy is imported where a search runs.
    from rasteret_pipelines.cog.config import RetryPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Month:
    """One calendar month of a date range: its key and the part of the range inside it."""

    key: str
    """``YYYY-MM``; also the Hive partition value ``month=YYYY-MM``."""
    start: dt.date
    end: dt.date
    """Last day (inclusive)."""

    @property
    def datetime_interval(self) -> str:
        """RFC 3339 interval for a STAC search covering whole days."""
        return f"{self.start.isoformat()}T00:00:00Z/{self.end.isoformat()}T23:59:59.999999Z"


def parse_date(value, what: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError as exc:
        raise InvalidSearchError(f"{what} {value!r} is not a date (use YYYY-MM-DD)") from exc


def check_date_range(date_range, source: DataSource | None = None) -> tuple[dt.date, dt.date]:
    """``(start, end)`` as dates; refuses empty, inverted or pre-mission ranges."""
    if date_range is None or isinstance(date_range, (str, bytes)) or len(date_range) != 2:
        raise InvalidSearchError(f"date_range must be (start, end), got {date_range!r}")
    start = parse_date(date_range[0], "start date")
    end = parse_date(date_range[1], "end date")
    if end < start:
        raise InvalidSearchError(f"date range {start}..{end} is inverted: the end is before the start")
    if source is not None:
        first = dt.date.fromisoformat(source.start_date)
        if end < first:
            raise InvalidSearchError(f"date range {start}..{end} ends before {source.id} starts ({first})")
    return start, end


def months_between(start: dt.date, end: dt.date) -> list[Month]:
    """Calendar months overlapping ``start..end``, each clipped to the range."""
    months = []
    year, month = start.year, start.month
    while (year, month) <= (end.year, end.month):
        first = dt.date(year, month, 1)
        last = dt.date(year, month, calendar.monthrange(year, month)[1])
        months.append(Month(f"{year:04d}-{month:02d}", max(first, start), min(last, end)))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


def check_cloud_cover(value, what: str = "cloud_cover_lt") -> float | None:
    """A cloud-cover threshold as a float percentage in [0, 100] (None stays None).

    Refuses text, booleans, NaN and infinities with :class:`InvalidSearchError` before any
    request, so a bad threshold is never reported as an API failure.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidSearchError(f"{what} must be a number (a percentage), got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidSearchError(f"{what} must be a finite number (a percentage), got {value!r}")
    if not 0 <= number <= 100:
        raise InvalidSearchError(f"{what} is a percentage between 0 and 100, got {value!r}")
    return number


def check_bbox(bbox) -> tuple[float, float, float, float] | None:
    """A (min lon, min lat, max lon, max lat) bbox in degrees, or a clear error."""
    if bbox is None:
        return None
    try:
        values = tuple(float(v) for v in bbox)
    except (TypeError, ValueError) as exc:
        raise InvalidSearchError(f"bbox {bbox!r} must be four numbers") from exc
    if len(values) != 4:
        raise InvalidSearchError(f"bbox {bbox!r} must be (min lon, min lat, max lon, max lat)")
    if not all(math.isfinite(v) for v in values):
        raise InvalidSearchError(f"bbox {bbox!r} must be four finite numbers (no NaN or infinity)")
    minx, miny, maxx, maxy = values
    lon_ok = all(-180 <= v <= 180 for v in (minx, maxx))
    lat_ok = all(-90 <= v <= 90 for v in (miny, maxy))
    if not lat_ok and all(-90 <= v <= 90 for v in (minx, maxx)) and all(-180 <= v <= 180 for v in (miny, maxy)):
        raise InvalidSearchError(
            f"bbox {bbox!r} has latitudes outside [-90, 90]: it looks like (lat, lon) order; "
            "give (min lon, min lat, max lon, max lat)"
        )
    if not (lon_ok and lat_ok):
        raise InvalidSearchError(
            f"bbox {bbox!r} is out of range: longitudes must be in [-180, 180], latitudes in [-90, 90]"
        )
    if minx >= maxx or miny >= maxy:
        raise InvalidSearchError(f"bbox {bbox!r} is empty or inverted (min must be below max)")
    return values


def check_geometry(geometry):
    """A valid, non-empty shapely geometry from shapely or GeoJSON input (or None)."""
    if geometry is None:
        return None
    import numpy as np
    import shapely
    import shapely.geometry

    try:
        geom = geometry if isinstance(geometry, shapely.Geometry) else shapely.geometry.shape(geometry)
    except Exception as exc:
        raise InvalidSearchError(f"geometry {str(geometry)[:80]!r} is not a geometry: {exc}") from exc
    if geom.is_empty:
        raise InvalidSearchError("geometry is empty")
    if not shapely.get_coordinates(geom).size or not np.isfinite(shapely.get_coordinates(geom)).all():
        raise InvalidSearchError("geometry has NaN or infinite coordinates")
    if not geom.is_valid:
        raise InvalidSearchError(f"geometry is invalid: {shapely.is_valid_reason(geom)}")
    minx, miny, maxx, maxy = geom.bounds
    if not (-180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90):
        raise InvalidSearchError(f"geometry bounds {geom.bounds} are not longitude/latitude degrees")
    return geom


def build_query(cloud_cover_lt: float | None, platform, query: Mapping | None) -> dict | None:
    """STAC query-extension object from the convenience filters and a user ``query``."""
    out: dict = {k: dict(v) if isinstance(v, Mapping) else v for k, v in (query or {}).items()}
    cloud_cover_lt = check_cloud_cover(cloud_cover_lt)
    if cloud_cover_lt is not None:
        out.setdefault("eo:cloud_cover", {})["lt"] = cloud_cover_lt
    if platform is not None:
        if isinstance(platform, Mapping):
            out["platform"] = dict(platform)
        elif isinstance(platform, str):
            out["platform"] = {"eq": platform}
        else:
            out["platform"] = {"in": list(platform)}
    return out or None


@dataclass(frozen=True)
class SearchSpec:
    """What a collection indexes: a source's STAC items in a date range, filtered.

    The search keywords of :func:`~rasteret_pipelines.collections.build.build_collection`, as
    one value: ``build_collection(SearchSpec("sentinel-2-l2a", ("2024-01-01", "2024-03-31"),
    bbox=...), name, workspace)`` is ``build_collection("sentinel-2-l2a", name, workspace,
    date_range=("2024-01-01", "2024-03-31"), bbox=...)``.
    """

    source: str | DataSource
    """Source id or alias (see :data:`~rasteret_pipelines.collections.sources.SOURCES`), or a :class:`DataSource`."""
    date_range: tuple
    """``(start, end)`` dates, inclusive."""
    bbox: Sequence[float] | None = None
    """``(min lon, min lat, max lon, max lat)``."""
    geometry: object = None
    """Shapely geometry or GeoJSON (EPSG:4326) the items must intersect."""
    bands: Sequence[str] | None = None
    """Band codes or asset keys; None indexes every band of the source."""
    cloud_cover_lt: float | None = None
    """Keep items with ``eo:cloud_cover`` below this."""
    platform: object = None
    """``"LANDSAT_8"``, a list, or a query object such as ``{"in": [...]}``."""
    query: Mapping | None = None
    """Further STAC query-extension filters."""
    stac_url: str | None = None
    """STAC API root overriding the source's default and the environment."""

    def checked(self) -> CheckedSearch:
        """The spec with every input checked and normalised, before any request.

        Raises:
            UnknownSourceError, UnknownBandError, InvalidSearchError: what is at fault.
        """
        from rasteret_pipelines.collections.sources import get_source

        source = get_source(self.source)
        keys = source.resolve_bands(self.bands)
        start, end = check_date_range(self.date_range, source)
        return CheckedSearch(
            spec=self,
            source=source,
            keys=keys,
            start=start,
            end=end,
            bbox=check_bbox(self.bbox),
            geometry=check_geometry(self.geometry),
            stac_query=build_query(self.cloud_cover_lt, self.platform, self.query),
        )


@dataclass(frozen=True)
class CheckedSearch:
    """A :class:`SearchSpec` whose inputs were checked: what the build searches and indexes."""

    spec: SearchSpec
    """The spec as given (the manifest records its filters)."""
    source: DataSource
    keys: list[str]
    """Asset keys to index."""
    start: dt.date
    end: dt.date
    bbox: tuple[float, float, float, float] | None
    geometry: object
    """A valid shapely geometry, or None."""
    stac_query: dict | None
    """The STAC query-extension object of the convenience filters and ``query``."""

    @property
    def stac_url(self) -> str:
        """The STAC API root searched."""
        return self.source.effective_stac_url(self.spec.stac_url)


def with_keywords(options, keywords: Mapping, error: type[Exception], what: str):
    """``options`` (a dataclass) with ``keywords`` set.

    How a function that takes an options dataclass keeps accepting its fields as keywords. A
    keyword at its default leaves the options' value alone; a keyword the dataclass has no field
    for, or one the options already set to something else, raises ``error`` naming it.
    """
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(options)}
    unknown = sorted(set(keywords) - set(fields))
    if unknown:
        raise error(f"{what} got an unexpected keyword argument {unknown[0]!r} (the options are {', '.join(fields)})")
    updates = {}
    for name, value in keywords.items():
        given, default = getattr(options, name), fields[name].default
        if _same(value, given) or _same(value, default):
            continue
        if not _same(given, default):
            raise error(f"{what}: {name} is given twice, as a keyword ({value!r}) and in the options ({given!r})")
        updates[name] = value
    return dataclasses.replace(options, **updates) if updates else options


def _same(a, b) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # arrays and frames compare element-wise: not the same value
        return False


def search_items(
    source: DataSource,
    month: Month,
    *,
    stac_url: str | None = None,
    bbox: Sequence[float] | None = None,
    geometry=None,
    query: Mapping | None = None,
    limit: int = 100,
    timeout: float = 15.0,
    retry: RetryPolicy | None = None,
) -> list[dict]:
    """Every item of ``source`` in ``month`` matching the filters, paging through all pages.

    Args:
        timeout: Seconds to connect, and seconds without a byte of the answer, per request.
        retry: Which failures are retried, how often and after how long (the defaults of
            :class:`~rasteret_pipelines.cog.config.RetryPolicy` when None). A silent API costs
            ``(retry.timeout_retries + 1) * timeout`` seconds, not ``retry.max_retries + 1`` times that.

    Raises:
        StacApiError: the API is unreachable or keeps answering with errors.
    """
    import requests
    from pystac_client import Client
    from pystac_client.exceptions import APIError
    from pystac_client.stac_api_io import StacApiIO

    from rasteret_pipelines.cog.config import RetryPolicy

    url = source.effective_stac_url(stac_url)
    retries = stac_retry(retry if retry is not None else RetryPolicy())
    try:
        # Client.open hands its own ``timeout`` (default None: wait forever) to the StacApiIO,
        # replacing the one it was built with: pass it to both.
        client = Client.open(url, stac_io=StacApiIO(max_retries=retries, timeout=timeout), timeout=timeout)
        search = client.search(
            collections=[source.collection],
            bbox=list(bbox) if bbox is not None else None,
            intersects=geometry.__geo_interface__ if geometry is not None else None,
            datetime=month.datetime_interval,
            query=query,
            limit=limit,
        )
        items: dict[str, dict] = {}
        for item in search.items_as_dicts():
            previous = items.get(item.get("id"))
            if previous is None or str(item.get("properties", {}).get("updated", "")) >= str(
                previous.get("properties", {}).get("updated", "")
            ):
                items[item.get("id")] = item
        return list(items.values())
    except APIError as exc:
        status = getattr(exc, "status_code", None)
        if status is None and isinstance(exc.__cause__ or exc.__context__, requests.RequestException):
            error = StacApiError(
                f"STAC API {url} unreachable searching {source.collection} for {month.key}: "
                f"{type(exc.__cause__ or exc.__context__).__name__}"
            )
        else:
            error = StacApiError(
                f"STAC API {url} answered {status or 'an error'} searching {source.collection} "
                f"for {month.key}: {str(exc)[:300]}"
            )
        cause = redacted_cause(exc)
    except requests.RequestException as exc:
        error = StacApiError(
            f"STAC API {url} unreachable searching {source.collection} for {month.key}: {type(exc).__name__}"
        )
        cause = redacted_cause(exc)
    # Raised outside the except blocks, so the library's own exception (whose message may
    # quote the URL with its query string) is neither the cause nor the context: only its
    # redacted stand-in is chained.
    raise error from cause


def stac_retry(policy: RetryPolicy):
    """``policy`` as the urllib3 ``Retry`` of a requests session (pystac-client's ``StacApiIO``).

    The counts and statuses map onto urllib3's: ``total`` is :attr:`RetryPolicy.max_retries`,
    ``read`` (answers that timed out or broke off) is :attr:`RetryPolicy.timeout_retries`, and
    ``status_forcelist`` is :attr:`RetryPolicy.statuses` (urllib3's own extra rule, retrying 413,
    429 and 503 whenever a ``Retry-After`` comes with them, is off). Every method is retried (a POST search
    is safe to repeat), and after the last retry the last answer is returned, not an exception,
    so pystac-client reports its status. The sleeps come from :meth:`RetryPolicy.delay`, so
    ``Retry-After`` and the backoff follow the same rule as the COG reader.
    """
    return _retry_class()(
        policy=policy,
        total=policy.max_retries,
        read=policy.timeout_retries,
        status_forcelist=policy.statuses,
        allowed_methods=None,
        raise_on_status=False,
        respect_retry_after_header=False,  # only the policy's statuses are retried; its delay reads Retry-After
    )


@functools.cache
def _retry_class():
    """A urllib3 ``Retry`` that sleeps as a :class:`RetryPolicy` says (urllib3 is imported here, lazily)."""
    import time

    from urllib3.util.retry import Retry

    class PolicyRetry(Retry):
        def __init__(self, *args, policy: RetryPolicy, **kwargs):
            super().__init__(*args, **kwargs)
            self.policy = policy

        def new(self, **kw):
            kw.setdefault("policy", self.policy)
            return super().new(**kw)

        def sleep(self, response=None) -> None:
            retry_after = response.headers.get("Retry-After") if response is not None else None
            time.sleep(self.policy.delay(len(self.history), retry_after))

    return PolicyRetry
