"""The S3 configuration of every ``s3://`` read and write, resolved in one place.

Two clients talk to S3: the COG reader (:mod:`rasteret_pipelines.cog.http`, aiohttp with
botocore's SigV4 signing) and storage (:mod:`rasteret_pipelines.storage`, s3fs, that is
aiobotocore). Both take their endpoint, region, profile, credentials and requester-pays setting
from :func:`s3_config`, so one environment reaches both the same way: an S3-compatible endpoint
or a region honoured by one is honoured by the other.

:func:`s3_config` reads the standard AWS configuration through botocore:

* the profile: ``AWS_PROFILE``;
* the endpoint: what botocore configures for S3 clients (``AWS_ENDPOINT_URL_S3``,
  ``AWS_ENDPOINT_URL``, or the profile's ``endpoint_url``; none under
  ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS``); AWS's own endpoints count as none, so that reads go
  to each bucket's virtual-hosted endpoint in its own region;
* the region: the one asked for, else ``AWS_REGION`` (the variable the AWS SDKs share), else
  botocore's (``AWS_DEFAULT_REGION``, or the profile's ``region``);
* the credentials: botocore's chain for that profile (environment, shared files, SSO, container
  and instance roles).

Requester pays and anonymous access are not part of the AWS environment; callers pass them
(a data source's ``requester_pays``, ``FetchConfig.aws_unsigned``, ``Storage.from_uri``).

A base module: it imports botocore only when it resolves a configuration, and nothing of the
library's layers, so that storage (below every layer) and the COG engine can both use it.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field

from rasteret_pipelines.errors import S3ConfigError

__all__ = ["ENVIRONMENT", "S3Config", "s3_config"]

log = logging.getLogger(__name__)

ENVIRONMENT = (
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)
"""The environment variables a resolved configuration depends on (a change resolves it again)."""


@dataclass(frozen=True)
class S3Config:
    """Where and how ``s3://`` objects are reached; made by :func:`s3_config`."""

    endpoint_url: str | None
    """An S3-compatible server (path-style URLs), or None for AWS's own endpoints."""
    region: str | None
    """The region to sign for, or None when nothing configures one."""
    profile: str | None
    """The AWS profile whose configuration and credentials apply (``AWS_PROFILE``)."""
    requester_pays: bool = False
    """Requests carry ``x-amz-request-payer: requester`` (the reader pays for the transfer)."""
    unsigned: bool = False
    """Requests are anonymous (public buckets): no credentials are looked up or sent."""
    credentials: object | None = field(default=None, repr=False, compare=False)
    """botocore's credentials of :attr:`profile` (refreshed by botocore when they expire); None
    when unsigned or when the chain found none."""

    def s3fs_options(self) -> dict:
        """These settings as s3fs options (``fsspec.filesystem("s3", **options)``).

        Endpoint, region and profile are named explicitly, rather than left to aiobotocore, so
        that fsspec's per-options cache of filesystems never hands out one that was made for
        another endpoint. The credentials are not copied in: s3fs resolves the same profile's
        chain, and options are kept (``Storage.storage_options``) where secrets must not be.
        """
        options: dict = {}
        if self.endpoint_url:
            options["endpoint_url"] = self.endpoint_url
        if self.region:
            options["client_kwargs"] = {"region_name": self.region}
        if self.profile:
            options["profile"] = self.profile
        if self.requester_pays:
            options["requester_pays"] = True
        if self.unsigned:
            options["anon"] = True
        return options


_LOCK = threading.Lock()
_RESOLVED: dict[tuple, S3Config] = {}


def s3_config(*, region: str | None = None, requester_pays: bool = False, unsigned: bool = False) -> S3Config:
    """The S3 configuration of this environment (see the module's docstring for the rules).

    Resolved once per environment and arguments (botocore builds a client to learn the
    endpoint), and again whenever one of :data:`ENVIRONMENT` changes.

    Args:
        region: A region that overrides the configured one (``FetchConfig.aws_region``).
        requester_pays: Requests carry ``x-amz-request-payer: requester``.
        unsigned: Anonymous requests; no credentials are looked up.

    Raises:
        S3ConfigError: ``AWS_PROFILE`` names a profile that no AWS configuration file defines.
    """
    key = (region, requester_pays, unsigned, *(os.environ.get(name) for name in ENVIRONMENT))
    with _LOCK:
        found = _RESOLVED.get(key)
        if found is None:
            found = _resolve(region, requester_pays, unsigned)
            _RESOLVED[key] = found
        return found


def _resolve(region: str | None, requester_pays: bool, unsigned: bool) -> S3Config:
    import botocore.session
    from botocore.exceptions import ProfileNotFound

    session = botocore.session.Session()
    try:
        session.get_scoped_config()  # the profile exists (or none is named)
    except ProfileNotFound:
        files = f"{os.environ.get('AWS_CONFIG_FILE', '~/.aws/config')}, "
        files += os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")
        raise S3ConfigError(
            f"AWS_PROFILE={os.environ.get('AWS_PROFILE')!r} names no profile of the AWS configuration files ({files})"
        ) from None
    region = region or os.environ.get("AWS_REGION") or session.get_config_variable("region")
    endpoint = None
    try:
        # botocore's own rule for the endpoint of S3 clients (environment, then the profile)
        client = session.create_client("s3", region_name=region or "us-east-1")
        endpoint = client.meta.endpoint_url
        client.close()
    except Exception as exc:  # an unusable client is reported by the requests that need it
        log.debug("botocore could not build an S3 client: %s", type(exc).__name__)
    if endpoint and "amazonaws.com" in endpoint:
        endpoint = None
    credentials = None if unsigned else session.get_credentials()
    return S3Config(
        endpoint_url=endpoint,
        region=region,
        profile=session.profile,
        requester_pays=requester_pays,
        unsigned=unsigned,
        credentials=credentials,
    )
