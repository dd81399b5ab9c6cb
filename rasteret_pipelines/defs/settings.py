"""What the Dagster project reads from the environment, in one place.

Every variable is optional: with none set, each source's own public STAC API is searched (e.g.
Earth Search) and data goes under ``./.rasteret_data``. The offline demo (a local Sentinel-2 L2A
mirror on 127.0.0.1) is never a silent default: ``rasteret-pipelines demo`` and
``rasteret-pipelines ui`` set ``RASTERET_STAC_URL=demo`` for the Dagster processes they run, and
serve the mirror themselves. Variables that shape the
asset graph (sources, first month) are read when the definitions load; the others become
:class:`dagster.EnvVar` values of the resources when set, so the UI shows where a value came
from and a run reads it in its own process.

=====================================  ==============================================================
Variable                               Meaning (default)
=====================================  ==============================================================
``RASTERET_SOURCES``                   Comma-separated source ids, one collection asset each
                                       (``sentinel-2-l2a``).
``RASTERET_START_MONTH``               First monthly partition, ``YYYY-MM`` (``2024-01``; with the
                                       offline demo selected: the first demo month, and the
                                       partitions end with the last demo month, so the UI offers
                                       exactly the months the mirror has data for).
``RASTERET_STORAGE``                   Base path of collections, GeoTIFFs and tables: a folder or
                                       ``s3://bucket/prefix`` (``./.rasteret_data``).
``RASTERET_AOI_FILE``                  GeoJSON or GeoParquet of areas of interest, local or
                                       ``s3://`` (``<RASTERET_STORAGE>/aois.geojson``).
``RASTERET_STAC_URL``                  ``public`` (each source's own API, e.g. Earth Search), a STAC
                                       API URL, or ``demo`` (the offline mirror, which must be
                                       running: the demo and ``ui`` commands serve it) (``public``).
``RASTERET_STAC_URL_<SOURCE>``         Per-source STAC API root; wins over ``RASTERET_STAC_URL``.
``RASTERET_CLOUD_COVER_LT``            Index only scenes with ``eo:cloud_cover`` below this (none).
``RASTERET_HTTP_MAX_CONCURRENCY``      Range requests in flight per step (64).
``RASTERET_HTTP_MAX_RETRIES``          Retries of one range request (5).
``RASTERET_HTTP_CONNECT_TIMEOUT``      Seconds to connect (10).
``RASTERET_HTTP_READ_TIMEOUT``         Deadline in seconds of one request attempt (30).
``RASTERET_HTTP_IDLE_TIMEOUT``         Seconds without a byte before an attempt is abandoned (5).
``RASTERET_HTTP_TIMEOUT_RETRIES``      Retries of a range after timed-out attempts (1).
``RASTERET_HTTP_MAX_REDIRECTS``        HTTP redirects followed per attempt (5).
``RASTERET_TRANSIENT_RETRIES``         Dagster retries of a step after a transient fault (2):
                                       the ``RetryPolicy`` of the collection and NDVI assets,
                                       read when the definitions load (every run process loads
                                       them again, so a new value applies to the next run).
``RASTERET_TRANSIENT_RETRY_SECONDS``   Base delay of such a retry (30), doubled per retry
                                       (exponential backoff) with +/- that delay of jitter.
``RASTERET_PARTITIONS_PER_RUN``        Backfill policy of the field-statistics and time-series assets: at most
                                       this many partitions per run (500); ``single`` puts a whole
                                       backfill in one run, ``1`` gives one run per partition.
``RASTERET_NDVI_BATCH_AOIS``           At most this many groups per COG read inside a run (64).
``RASTERET_NDVI_BATCH_MB``             At most this many estimated MB of windows per COG read (512).
``RASTERET_FIELD_GEOTIFFS``            NDVI COGs of the field statistics: ``group`` (one per group
                                       and date, NaN outside the fields), ``fields`` (one per field
                                       and date, for groups of at most 200 fields) or ``none``
                                       (``group``).
``RASTERET_GROUP_CELL_DEG``            Grid cell, in degrees, grouping fields that have no
                                       ``group`` (0.1); read when the definitions load.
``RASTERET_DEMO_DIR``                  Where the demo world is written (``./.rasteret_data/demo_world``).
``RASTERET_DEMO_PORT``                 Port of the demo STAC API; its COG server uses the next one
                                       (47610).
``RASTERET_DEMO_MONTHS``               Months of the demo world (``2024-01,2024-02,2024-03``).
=====================================  ==============================================================

S3 follows the standard AWS configuration: credentials chain, ``AWS_REGION``,
``AWS_ENDPOINT_URL_S3`` for an S3-compatible server.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from rasteret_pipelines.collections import get_source
from rasteret_pipelines.errors import SettingsError

DEFAULT_STORAGE = "./.rasteret_data"
DEFAULT_START_MONTH = "2024-01"
DEFAULT_SOURCES = ("sentinel-2-l2a",)
DEFAULT_DEMO_DIR = "./.rasteret_data/demo_world"
DEFAULT_DEMO_PORT = 47610
DEFAULT_DEMO_MONTHS = ("2024-01", "2024-02", "2024-03")
DEFAULT_PARTITIONS_PER_RUN = 500
DEFAULT_NDVI_BATCH_AOIS = 64
DEFAULT_NDVI_BATCH_MB = 512

DEMO = "demo"
"""``RASTERET_STAC_URL`` value selecting the offline mirror (set by the demo and ``ui`` commands)."""
PUBLIC = "public"
"""``RASTERET_STAC_URL`` value selecting each source's own public STAC API (the default)."""

ENV_VARS: tuple[str, ...] = (
    "RASTERET_SOURCES",
    "RASTERET_START_MONTH",
    "RASTERET_STORAGE",
    "RASTERET_AOI_FILE",
    "RASTERET_STAC_URL",
    "RASTERET_CLOUD_COVER_LT",
    "RASTERET_HTTP_MAX_CONCURRENCY",
    "RASTERET_HTTP_MAX_RETRIES",
    "RASTERET_HTTP_CONNECT_TIMEOUT",
    "RASTERET_HTTP_READ_TIMEOUT",
    "RASTERET_HTTP_IDLE_TIMEOUT",
    "RASTERET_HTTP_TIMEOUT_RETRIES",
    "RASTERET_HTTP_MAX_REDIRECTS",
    "RASTERET_TRANSIENT_RETRIES",
    "RASTERET_TRANSIENT_RETRY_SECONDS",
    "RASTERET_PARTITIONS_PER_RUN",
    "RASTERET_NDVI_BATCH_AOIS",
    "RASTERET_NDVI_BATCH_MB",
    "RASTERET_FIELD_GEOTIFFS",
    "RASTERET_GROUP_CELL_DEG",
    "RASTERET_DEMO_DIR",
    "RASTERET_DEMO_PORT",
    "RASTERET_DEMO_MONTHS",
)
"""Every variable the project reads (besides ``RASTERET_STAC_URL_<SOURCE>`` and AWS's own)."""

_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


@dataclass(frozen=True)
class Settings:
    """The project's configuration (see the module docs for each variable)."""

    sources: tuple[str, ...] = DEFAULT_SOURCES
    """Registry ids of the sources, one collection asset (and NDVI asset) each."""
    start_month: str = DEFAULT_START_MONTH
    """First monthly partition (``YYYY-MM``)."""
    end_month: str | None = None
    """Last monthly partition (``YYYY-MM``), or None: the last complete month. Set to the last
    demo month when the offline demo is selected (the mirror has no other month)."""
    env: Mapping[str, str] = field(default_factory=dict)
    """The environment the settings were read from (only ``RASTERET_*`` variables kept)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``environ`` (default ``os.environ``).

        Raises:
            SettingsError: a variable names an unknown source or a malformed month.
        """
        environ = os.environ if environ is None else environ
        raw_sources = environ.get("RASTERET_SOURCES", "").strip()
        sources = tuple(s.strip() for s in raw_sources.split(",") if s.strip()) or DEFAULT_SOURCES
        try:
            sources = tuple(dict.fromkeys(get_source(s).id for s in sources))
        except ValueError as exc:
            raise SettingsError(f"RASTERET_SOURCES: {exc}") from exc
        kept = {k: v for k, v in environ.items() if k.startswith("RASTERET_") or k.startswith("AWS_")}
        demo_months = cls(sources=sources, env=kept).demo_months if _uses_demo(kept, sources) else None
        start = environ.get("RASTERET_START_MONTH", "").strip() or (
            min(demo_months) if demo_months else DEFAULT_START_MONTH
        )
        if not _MONTH.match(start):
            raise SettingsError(f"RASTERET_START_MONTH={start!r} is not a month (use YYYY-MM, e.g. 2024-01)")
        end = max(demo_months) if demo_months else None
        if end is not None and end < start:
            raise SettingsError(
                f"RASTERET_START_MONTH={start} is after the last demo month {end} (RASTERET_DEMO_MONTHS)"
            )
        return cls(sources=sources, start_month=start, end_month=end, env=kept)

    @property
    def uses_demo(self) -> bool:
        """True when every source reads the offline demo mirror (``RASTERET_STAC_URL=demo``, no
        ``RASTERET_STAC_URL_<SOURCE>``)."""
        return _uses_demo(self.env, self.sources)

    def stac_url_label(self, source_id: str) -> str:
        """Where ``source_id``'s STAC items come from, in words, for asset descriptions."""
        from rasteret_pipelines.collections import stac_url_env_var

        per_source = self.get(stac_url_env_var(source_id))
        if per_source:
            return f"the STAC API at {per_source} ({stac_url_env_var(source_id)})"
        choice = (self.get("RASTERET_STAC_URL") or PUBLIC).strip()
        if choice.lower() == DEMO:
            return (
                f"the offline demo mirror's STAC API at http://127.0.0.1:{self.demo_port} "
                f"(months {', '.join(self.demo_months)})"
            )
        if choice.lower() == PUBLIC:
            return f"the public STAC API at {get_source(source_id).stac_url}"
        return f"the STAC API at {choice}"

    @property
    def transient_retries(self) -> int:
        return self._not_negative("RASTERET_TRANSIENT_RETRIES", self.typed("RASTERET_TRANSIENT_RETRIES", 2, int))

    @property
    def transient_retry_seconds(self) -> float:
        return self._not_negative(
            "RASTERET_TRANSIENT_RETRY_SECONDS", self.typed("RASTERET_TRANSIENT_RETRY_SECONDS", 30.0, float)
        )

    def retry_policy(self):
        """The :class:`dagster.RetryPolicy` of the steps that send requests (collection and NDVI
        assets), or None when ``RASTERET_TRANSIENT_RETRIES`` is 0.

        Only transient faults (an unreachable STAC API, failed fetches) reach the policy; the
        assets fail bad input at once with ``dagster.Failure(allow_retries=False)``.
        """
        import dagster as dg

        retries = self.transient_retries
        if retries == 0:
            return None
        return dg.RetryPolicy(
            max_retries=retries,
            delay=self.transient_retry_seconds,
            backoff=dg.Backoff.EXPONENTIAL,
            jitter=dg.Jitter.PLUS_MINUS,
        )

    def typed(self, name: str, default, kind=str):
        """The variable ``name`` converted by ``kind`` (``int``, ``float``), or ``default`` when unset.

        Raises:
            SettingsError: the value does not convert.
        """
        text = self.get(name)
        if text is None:
            return default
        try:
            return kind(text)
        except ValueError as exc:
            raise SettingsError(f"{name}={text!r} is not a valid {kind.__name__}") from exc

    @staticmethod
    def _not_negative(name: str, value):
        if value < 0:
            raise SettingsError(f"{name}={value} must not be negative")
        return value

    def get(self, name: str, default: str | None = None) -> str | None:
        value = self.env.get(name)
        return value if value not in (None, "") else default

    @property
    def storage(self) -> str:
        return self.get("RASTERET_STORAGE", DEFAULT_STORAGE)

    @property
    def aoi_file(self) -> str:
        return self.get("RASTERET_AOI_FILE") or self.storage.rstrip("/") + "/aois.geojson"

    @property
    def demo_dir(self) -> str:
        return self.get("RASTERET_DEMO_DIR", DEFAULT_DEMO_DIR)

    @property
    def demo_port(self) -> int:
        text = self.get("RASTERET_DEMO_PORT", str(DEFAULT_DEMO_PORT))
        try:
            port = int(text)
        except ValueError as exc:
            raise SettingsError(f"RASTERET_DEMO_PORT={text!r} is not a port number") from exc
        if not 1024 <= port < 65535:
            raise SettingsError(f"RASTERET_DEMO_PORT={port} must be in 1024..65534 (the COG server uses the next port)")
        return port

    @property
    def partitions_per_run(self) -> int | None:
        """Largest number of partitions of one run of a backfill; None: the whole backfill in one run."""
        text = (self.get("RASTERET_PARTITIONS_PER_RUN") or str(DEFAULT_PARTITIONS_PER_RUN)).strip().lower()
        if text == "single":
            return None
        try:
            value = int(text)
        except ValueError as exc:
            raise SettingsError(f"RASTERET_PARTITIONS_PER_RUN={text!r}: use a positive number or 'single'") from exc
        if value < 1:
            raise SettingsError(f"RASTERET_PARTITIONS_PER_RUN={value}: use a positive number or 'single'")
        return value

    @property
    def field_geotiffs(self) -> str:
        """``RASTERET_FIELD_GEOTIFFS``: ``group`` (default), ``fields`` or ``none``."""
        text = (self.get("RASTERET_FIELD_GEOTIFFS") or "group").strip().lower()
        if text not in ("group", "fields", "none"):
            raise SettingsError(f"RASTERET_FIELD_GEOTIFFS={text!r}: use group, fields or none")
        return text

    @property
    def group_cell_deg(self) -> float:
        """``RASTERET_GROUP_CELL_DEG``: the side of the grid cells grouping fields (0.1 degrees)."""
        value = self.typed("RASTERET_GROUP_CELL_DEG", 0.1, float)
        if not 0 < value <= 90:
            raise SettingsError(f"RASTERET_GROUP_CELL_DEG={value}: use a number of degrees in (0, 90]")
        return value

    def backfill_policy(self):
        """The :class:`dagster.BackfillPolicy` of the NDVI and time-series assets."""
        import dagster as dg

        per_run = self.partitions_per_run
        return dg.BackfillPolicy.single_run() if per_run is None else dg.BackfillPolicy.multi_run(per_run)

    @property
    def demo_months(self) -> tuple[str, ...]:
        text = self.get("RASTERET_DEMO_MONTHS")
        if not text:
            return DEFAULT_DEMO_MONTHS
        months = tuple(m.strip() for m in text.split(",") if m.strip())
        bad = [m for m in months if not _MONTH.match(m)]
        if bad or not months:
            raise SettingsError(f"RASTERET_DEMO_MONTHS={text!r}: use comma-separated YYYY-MM months")
        return months


def _uses_demo(env: Mapping[str, str], sources) -> bool:
    from rasteret_pipelines.collections import stac_url_env_var

    choice = (env.get("RASTERET_STAC_URL") or PUBLIC).strip().lower()
    return choice == DEMO and not any(env.get(stac_url_env_var(s)) for s in sources)


def source_slug(source_id: str) -> str:
    """Asset-key form of a source id: ``sentinel-2-l2a`` -> ``sentinel_2_l2a``."""
    return re.sub(r"[^A-Za-z0-9_]", "_", source_id)
