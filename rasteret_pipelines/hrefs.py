"""Which asset hrefs may be read: the policy between STAC metadata and the byte fetcher.

Hrefs come from data (a remote STAC API, a collection's parquet file), not from the caller. A
hostile or broken catalog could point an asset at ``/etc/passwd`` or ``file:///home/...``: the
indexer would open it, and its first bytes would end up in the collection's error column (and a
path's existence could be probed by the difference between "not found" and "not a TIFF"). So:

* hrefs from a remote catalog are read only when they are ``http://``, ``https://`` or ``s3://``;
* local paths and ``file://`` are read only when the caller opts in (``allow_local_hrefs=True``
  for a local catalog, or the engine called directly on a path, which is the caller's own);
* any other scheme (``ftp://``, ``data:``, ``gs://``...) is refused.

A refused href is never touched: the refusal is the same whether the file exists or not.
"""

from __future__ import annotations

from rasteret_pipelines.errors import UnsafeHrefError

REMOTE_SCHEMES = frozenset({"http", "https", "s3"})
"""URL schemes read from any catalog."""


def href_scheme(href: str) -> str:
    """Lower-case URL scheme of ``href``; ``""`` for a plain local path, ``"file"`` for file://."""
    head, sep, _ = href.partition("://")
    return head.lower() if sep else ""


def is_local_href(href: str) -> bool:
    """True for a plain path or a ``file://`` URL."""
    return href_scheme(href) in ("", "file")


def check_href(href, *, allow_local: bool = False) -> str:
    """``href`` if the policy lets it be read, else :class:`UnsafeHrefError` (nothing opened).

    Args:
        href: An asset href.
        allow_local: Also accept local paths and ``file://`` URLs (a local catalog).
    """
    if not isinstance(href, str) or not href:
        raise UnsafeHrefError(repr(href), "an asset href must be a non-empty string")
    if "\x00" in href:
        raise UnsafeHrefError(repr(href), "an asset href must not contain NUL characters")
    scheme = href_scheme(href)
    if scheme in REMOTE_SCHEMES:
        return href
    if scheme in ("", "file"):
        if allow_local:
            return href
        raise UnsafeHrefError(
            href,
            "local paths and file:// hrefs are not read from a catalog unless the caller opts in "
            "(allow_local_hrefs=True for a local catalog); remote catalogs must use http(s):// "
            "or s3:// hrefs",
        )
    raise UnsafeHrefError(href, f"unsupported URL scheme {scheme!r} (use http(s)://, s3:// or, when allowed, a path)")
