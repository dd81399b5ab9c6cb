"""Resources: where data lives, where scenes come from, how HTTP behaves, which AOIs exist.

Each is a :class:`dagster.ConfigurableResource` whose fields come from the environment
(:class:`dagster.EnvVar`, see :mod:`rasteret_pipelines.defs.settings`). With nothing set, the
sources' own STAC APIs apply; the offline demo is selected explicitly (``RASTERET_STAC_URL=demo``,
which the demo and ``ui`` commands set). No resource starts a process or a server.
"""

import os

import dagster as dg
from pydantic import Field

from rasteret_pipelines.cog import FetchConfig
from rasteret_pipelines.collections import get_source, stac_url_env_var
from rasteret_pipelines.defs.io_managers import CollectionIOManager, TableIOManager
from rasteret_pipelines.defs.settings import (
    DEFAULT_DEMO_DIR,
    DEFAULT_DEMO_MONTHS,
    DEFAULT_DEMO_PORT,
    DEFAULT_NDVI_BATCH_AOIS,
    DEFAULT_NDVI_BATCH_MB,
    DEFAULT_STORAGE,
    DEMO,
    PUBLIC,
    Settings,
)
from rasteret_pipelines.defs.storage import (  # the storage resources, re-exported where the others are
    LocalStorageResource as LocalStorageResource,
)
from rasteret_pipelines.defs.storage import (
    S3StorageResource as S3StorageResource,
)
from rasteret_pipelines.defs.storage import (
    StorageResource as StorageResource,
)
from rasteret_pipelines.defs.storage import storage_resource
from rasteret_pipelines.errors import LocalServerDownError
from rasteret_pipelines.errors import StorageConfigError as StorageConfigError  # its former import name
from rasteret_pipelines.fields import DEFAULT_CELL_DEG, FieldSet, load_fields

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def loopback_servers(hrefs) -> set[tuple[str, int]]:
    """``{(host, port)}`` of the http(s) hrefs served from this machine."""
    from urllib.parse import urlsplit

    out = set()
    for href in hrefs:
        if not href or not str(href).startswith(("http://", "https://")):
            continue
        parts = urlsplit(str(href))
        if parts.hostname in LOOPBACK_HOSTS:
            out.add((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)))
    return out


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when something accepts TCP connections at ``host:port``."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --- data source -------------------------------------------------------------------------------


class DataSourceResource(dg.ConfigurableResource):
    """Where STAC items come from, and what is indexed.

    ``stac_url`` is ``"public"`` (each source's own API, e.g. Earth Search; the default), a STAC
    API URL, or ``"demo"``: the offline Sentinel-2 L2A mirror of the demo world under
    ``demo_dir``, which the demo and ``ui`` commands serve on 127.0.0.1 and set this to.
    ``RASTERET_STAC_URL_<SOURCE>`` overrides it per source. The resource never starts a
    server: it only checks that the servers it needs answer.
    """

    stac_url: str = Field(default=PUBLIC, description="public | a STAC API URL | demo")
    cloud_cover_lt: float | None = Field(default=None, description="Index scenes below this cloud cover")
    demo_dir: str = Field(default=DEFAULT_DEMO_DIR, description="Where the demo world is written")
    demo_port: int = Field(default=DEFAULT_DEMO_PORT, description="Demo STAC API port (COGs on the next)")
    demo_months: str = Field(default=",".join(DEFAULT_DEMO_MONTHS), description="Months of the demo world")

    @property
    def uses_demo(self) -> bool:
        return self.stac_url.strip().lower() == DEMO

    def stac_url_for(self, source_id: str) -> str:
        """The STAC API root to search for ``source_id``.

        Raises:
            LocalServerDownError: the demo is selected and its mirror is not running (the
                message says how to start it).
        """
        source = get_source(source_id)
        per_source = os.environ.get(stac_url_env_var(source.id))
        if per_source:
            return per_source
        choice = self.stac_url.strip()
        if self.uses_demo:
            from rasteret_pipelines_demo.demo_mirror import running_mirror_url

            return running_mirror_url(self.demo_dir, int(self.demo_port), default_port=DEFAULT_DEMO_PORT)
        if choice.lower() == PUBLIC:
            return source.stac_url
        return choice

    def ensure_cog_servers(self, hrefs, what: str = "the collection") -> None:
        """Check that the local servers ``hrefs`` point at are listening, before any read, so that
        a server that is down fails at once with how to start it, instead of every range request
        being retried against a closed port. Nothing is started here.

        With the demo selected, a COG server on a demo port pair (the STAC API on ``port - 1``)
        must be this demo folder's mirror: another folder's mirror serves other files.

        Raises:
            LocalServerDownError: a local server is down, or another folder's demo mirror
                serves the hrefs.
        """
        for host, port in sorted(loopback_servers(hrefs)):
            if self.uses_demo:
                from rasteret_pipelines_demo.demo_mirror import port_state

                state = port_state(self.demo_dir, port - 1)
                if state.kind == "ours":
                    continue
                if state.kind == "other-mirror":
                    raise LocalServerDownError(
                        f"{what} has its COGs at http://{host}:{port}, which {state.holder()} serves, not this "
                        f"demo folder's mirror ({os.path.abspath(self.demo_dir)}): "
                        "rematerialise the collection's months so that they index this folder's mirror"
                    )
            if port_open(host, port):
                continue
            if self.uses_demo:
                from rasteret_pipelines_demo.demo_mirror import START_HINT

                hint = f"if it is the offline demo's COG server (the mirror of {self.demo_dir}), {START_HINT}"
            else:
                hint = "start the server that serves these files, or rebuild the collection from a reachable STAC API"
            raise LocalServerDownError(f"nothing listens at http://{host}:{port}, where {what} has its COGs; {hint}")


# --- HTTP client ---------------------------------------------------------------------------------


_FETCH = FetchConfig()
"""The engine's transport defaults: the resource's defaults are these, never a second copy."""


class HttpClientResource(dg.ConfigurableResource):
    """Every transport setting of COG header and tile reads, in one place (step retries after
    transient faults are the assets' RetryPolicy:
    :meth:`~rasteret_pipelines.defs.settings.Settings.retry_policy`). Defaults are
    :class:`~rasteret_pipelines.cog.FetchConfig`'s."""

    max_concurrency: int = Field(default=_FETCH.max_concurrency, description="Range requests in flight per step")
    max_retries: int = Field(
        default=_FETCH.max_retries, description="Retries of one range request after a transient fault"
    )
    connect_timeout: float = Field(default=_FETCH.connect_timeout, description="Seconds to connect")
    read_timeout: float = Field(
        default=_FETCH.read_timeout, description="Deadline in seconds of one request attempt, body included"
    )
    idle_timeout: float = Field(
        default=_FETCH.idle_timeout,
        description="Seconds without a byte (status line or body) before an attempt is abandoned",
    )
    timeout_retries: int = Field(
        default=_FETCH.timeout_retries, description="Retries of a range after timed-out attempts"
    )
    max_redirects: int = Field(default=_FETCH.max_redirects, description="HTTP redirects followed per attempt")

    def fetch_config(self) -> FetchConfig:
        return FetchConfig(
            max_concurrency=self.max_concurrency,
            max_retries=self.max_retries,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            idle_timeout=self.idle_timeout,
            timeout_retries=self.timeout_retries,
            max_redirects=self.max_redirects,
        )


# --- batching ------------------------------------------------------------------------------------


class BatchResource(dg.ConfigurableResource):
    """How a run writes NDVI COGs: which (``geotiffs``: ``group``, ``fields`` or ``none``), and
    in reads bounded by count and by the estimated bytes of their windows (see
    :func:`rasteret_pipelines.defs.pipeline.chunk_aois`). The statistics are one read per month."""

    max_aois: int = Field(default=DEFAULT_NDVI_BATCH_AOIS, description="At most this many areas (groups) per COG read")
    max_mb: float = Field(default=DEFAULT_NDVI_BATCH_MB, description="At most this many estimated MB per COG read")
    geotiffs: str = Field(
        default="group",
        description="NDVI COGs per (group, date), per (field, date) for small groups, or none: group | fields | none",
    )

    @property
    def max_bytes(self) -> int:
        return int(float(self.max_mb) * 1e6)


# --- areas of interest ---------------------------------------------------------------------------


class AoiFileResource(dg.ConfigurableResource):
    """The field file (GeoJSON or GeoParquet, local or ``s3://``): see :mod:`rasteret_pipelines.fields`."""

    path: str = Field(description="Local path or s3:// URI of the field file")
    cell_deg: float = Field(default=DEFAULT_CELL_DEG, description="Grid cell (degrees) grouping fields without a group")

    def fields(self) -> FieldSet:
        """The usable fields, each in a group; bad rows are skipped and named in ``skipped``.

        Raises:
            AoiFileError: the file is missing or unreadable, or holds no usable field.
        """
        return load_fields(self.path, cell_deg=float(self.cell_deg))

    def load(self, *, lenient: bool = True) -> FieldSet:
        """:meth:`fields` (the former AOI interface: ``ids``, ``bbox``, ``invalid``, ``geometry``)."""
        return self.fields()


# --- from the environment -------------------------------------------------------------------------


def _env(settings: Settings, name: str, default, kind=str):
    """``EnvVar(name)`` (typed) when the variable is set in this process, else its value or ``default``.

    Settings built from another mapping than ``os.environ`` (tests) give plain values.
    """
    value = settings.get(name)
    if value is None:
        return default
    typed = settings.typed(name, default, kind)
    if os.environ.get(name) != value or kind is float:  # EnvVar has no float form
        return typed
    return dg.EnvVar.int(name) if kind is int else dg.EnvVar(name)


def resources_from_settings(settings: Settings) -> dict[str, object]:
    """Every resource of the definitions, configured from ``settings`` (the environment)."""
    base_path = _env(settings, "RASTERET_STORAGE", DEFAULT_STORAGE)
    cloud = _env(settings, "RASTERET_CLOUD_COVER_LT", None, float)
    return {
        "storage": storage_resource(base_path, settings.storage),
        "collection_io_manager": CollectionIOManager(base_path=base_path),
        "table_io_manager": TableIOManager(base_path=base_path),
        "data_source": DataSourceResource(
            stac_url=_env(settings, "RASTERET_STAC_URL", PUBLIC),
            cloud_cover_lt=cloud,
            demo_dir=_env(settings, "RASTERET_DEMO_DIR", DEFAULT_DEMO_DIR),
            demo_port=_env(settings, "RASTERET_DEMO_PORT", DEFAULT_DEMO_PORT, int),
            demo_months=_env(settings, "RASTERET_DEMO_MONTHS", ",".join(DEFAULT_DEMO_MONTHS)),
        ),
        "http": HttpClientResource(
            max_concurrency=_env(settings, "RASTERET_HTTP_MAX_CONCURRENCY", _FETCH.max_concurrency, int),
            max_retries=_env(settings, "RASTERET_HTTP_MAX_RETRIES", _FETCH.max_retries, int),
            connect_timeout=_env(settings, "RASTERET_HTTP_CONNECT_TIMEOUT", _FETCH.connect_timeout, float),
            read_timeout=_env(settings, "RASTERET_HTTP_READ_TIMEOUT", _FETCH.read_timeout, float),
            idle_timeout=_env(settings, "RASTERET_HTTP_IDLE_TIMEOUT", _FETCH.idle_timeout, float),
            timeout_retries=_env(settings, "RASTERET_HTTP_TIMEOUT_RETRIES", _FETCH.timeout_retries, int),
            max_redirects=_env(settings, "RASTERET_HTTP_MAX_REDIRECTS", _FETCH.max_redirects, int),
        ),
        "aois": AoiFileResource(
            path=_env(settings, "RASTERET_AOI_FILE", settings.aoi_file), cell_deg=settings.group_cell_deg
        ),
        "batching": BatchResource(
            max_aois=_env(settings, "RASTERET_NDVI_BATCH_AOIS", DEFAULT_NDVI_BATCH_AOIS, int),
            max_mb=_env(settings, "RASTERET_NDVI_BATCH_MB", float(DEFAULT_NDVI_BATCH_MB), float),
            geotiffs=settings.field_geotiffs,
        ),
    }
