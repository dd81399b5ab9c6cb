"""Collection names: one safe folder name, so a collection always stays inside its workspace."""

from __future__ import annotations

import unicodedata

from rasteret_pipelines.errors import InvalidCollectionNameError

MAX_NAME_BYTES = 255
"""The longest file name local file systems accept (in UTF-8 bytes)."""


def check_collection_name(name) -> str:
    """``name`` if it is one safe folder name, else :class:`InvalidCollectionNameError`.

    Refused: non-strings, empty names, names longer than 255 UTF-8 bytes, control characters
    (NUL, newline...), path separators (``/``, ``\\``), ``.``/``..`` and leading dots (hidden
    and temporary names), and surrounding whitespace.
    """
    if not isinstance(name, str):
        raise InvalidCollectionNameError(f"a collection name must be a string, got {type(name).__name__}")
    shown = repr(name if len(name) <= 60 else name[:60] + "...")
    if not name:
        raise InvalidCollectionNameError("a collection name must not be empty")
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        raise InvalidCollectionNameError(
            f"collection name {shown} is {size} bytes long; at most {MAX_NAME_BYTES} are allowed"
        )
    bad = sorted({c for c in name if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")})
    if bad:
        names = ", ".join(unicodedata.name(c, f"U+{ord(c):04X}") if c != "\x00" else "NUL" for c in bad)
        raise InvalidCollectionNameError(f"collection name {shown} contains control characters ({names})")
    if "/" in name or "\\" in name:
        raise InvalidCollectionNameError(
            f"collection name {shown} contains a path separator: a collection is one folder "
            "directly inside its workspace"
        )
    if name.startswith("."):
        raise InvalidCollectionNameError(f"collection name {shown} must not start with '.'")
    if name != name.strip():
        raise InvalidCollectionNameError(f"collection name {shown} has leading or trailing spaces")
    return name
