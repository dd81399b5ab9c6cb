"""Signatures, tokens and passwords removed from any text before it reaches a message or a log.

Presigned URLs (S3 ``X-Amz-Signature``, Azure SAS ``sig``, Google ``X-Goog-Signature``) carry
their credential in the query string, and URLs may carry ``user:password@``. Every error this
project raises goes through :func:`redact` (see :class:`~rasteret_pipelines.errors.RasteretError`),
so an href can be named in a message without leaking what signs it.
"""

from __future__ import annotations

import re

SECRET_PARAMS = (
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
    "signature",
    "sig",
    "token",
    "access_token",
    "id_token",
    "security-token",
    "awsaccesskeyid",
    "api_key",
    "apikey",
    "key",
    "password",
    "secret",
    "client_secret",
    "code",
)
"""Query parameters whose values are credentials (compared case-insensitively)."""

REDACTED = "REDACTED"

_PARAM = re.compile(
    r"(?i)([?&;](?:" + "|".join(re.escape(p) for p in SECRET_PARAMS) + r")=)(?:[^&;#:\s'\"<>)\]]|:(?!\s|$))*"
)
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s'\"<>]+@")
_HEADER = re.compile(r"(?i)\b(authorization|x-amz-security-token|cookie|set-cookie)(['\"]?\s*:\s*['\"]?)[^'\"\n,}]+")


def redact(text: str) -> str:
    """``text`` with credential query values, URL passwords and auth header values replaced."""
    if not text or not isinstance(text, str):
        return text
    if "=" in text:
        text = _PARAM.sub(lambda m: m.group(1) + REDACTED, text)
    if "@" in text:
        text = _USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", text)
    if ":" in text:
        text = _HEADER.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    return text


class RedactedCause(Exception):
    """Stands in for an exception from another library in a chain of causes, its message
    redacted (:func:`redact`): such messages quote URLs, query strings included."""

    def __init__(self, original: BaseException):
        self.original_type = f"{type(original).__module__}.{type(original).__qualname__}"
        super().__init__(f"{self.original_type}: {redact(str(original))}")


def redacted_cause(exc: BaseException, _depth: int = 0) -> BaseException:
    """``exc`` and the causes chained to it, with every message redacted, for ``raise ... from``.

    Exceptions of this project are already redacted and kept as they are; any other one is
    replaced by a :class:`RedactedCause` carrying its type name, redacted message and traceback.
    A traceback of the new error then prints no credential from a library's message.
    """
    from rasteret_pipelines.errors import RasteretError

    if isinstance(exc, RasteretError) and exc.__cause__ is None and exc.__context__ is None:
        return exc
    out = exc if isinstance(exc, RasteretError) else RedactedCause(exc).with_traceback(exc.__traceback__)
    inner = exc.__cause__ if exc.__cause__ is not None else (None if exc.__suppress_context__ else exc.__context__)
    if inner is not None and _depth < 16:
        out.__cause__ = redacted_cause(inner, _depth + 1)
    else:
        out.__cause__ = None
    out.__suppress_context__ = True
    return out
