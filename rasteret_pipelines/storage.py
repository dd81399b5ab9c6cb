"""Where collections and products live: a local folder or an ``s3://bucket/prefix``.

One small :class:`Storage` over an `fsspec <https://filesystem-spec.readthedocs.io>`_
filesystem so that every writer is atomic: on local disk a file is written under a temporary
name in the same folder and renamed into place; on S3 an object is put whole (one PUT, or a
multipart upload that s3fs completes or aborts), so it only appears once complete.

S3 goes through `s3fs <https://s3fs.readthedocs.io>`_, that is aiobotocore: botocore's
configuration, credentials and signing over aiohttp, the same family as the COG reader
(:mod:`rasteret_pipelines.cog.http`: aiohttp with botocore's SigV4 signing). Both take the
standard AWS configuration from one place, :func:`rasteret_pipelines.s3config.s3_config` (here
through :func:`s3_options`): the credential chain (environment, ``AWS_PROFILE`` and ``~/.aws``,
SSO, container and instance roles), ``AWS_REGION`` and ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL`` for S3-compatible servers.
pyarrow reads the same filesystem through :attr:`Storage.arrow_fs`
(``pyarrow.fs.PyFileSystem(FSSpecHandler(fs))``), so Parquet footers, row groups and columns
are still read as ranges.

Temporary names look like ``.<name>.tmp-<host>-<pid>-<hex>``: hidden, and ending in hex so that
no ``*.tif`` / ``*.parquet`` glob (nor :meth:`Storage.list_files`) ever returns one. A failed write
removes its own; a write killed outside Python's reach (SIGKILL, power loss) leaves one, which
the first write into that folder by a later process removes (:func:`sweep_once`,
:func:`remove_stale_temps`).
"""

from __future__ import annotations

import functools
import json
import os
import posixpath
import re
import socket
import time
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rasteret_pipelines.errors import StoragePathError
from rasteret_pipelines.s3config import s3_config

STALE_TEMP_SECONDS = 24 * 3600
"""A temporary file of another host (or of a live process id) counts as abandoned after this."""

_HOST = re.sub(r"[^A-Za-z0-9.]", "", socket.gethostname())[:40] or "host"
_TEMP = re.compile(r"^\..+\.tmp-(?:(?P<host>[A-Za-z0-9.]+)-(?P<pid>\d+)-)?[0-9a-f]{32}(?:\..*)?$")


def temp_path(target: str) -> str:
    """A hidden temporary name beside ``target`` that no ``*.tif``/``*.parquet`` glob matches."""
    folder, name = os.path.split(target)
    return os.path.join(folder, f".{name}.tmp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, *, max_age: float = STALE_TEMP_SECONDS) -> list[str]:
    """Remove temporary files left in ``folder`` by killed writes; returns their paths.

    A temporary file is abandoned when this host's process that named it is gone, or (another
    host, or an older name without a process id) when it is older than ``max_age`` seconds.
    Writes in progress, here or on another host sharing the folder, are left alone.
    """
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    now = time.time()
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        host, pid = match.group("host"), match.group("pid")
        if host == _HOST and pid is not None:
            stale = int(pid) != os.getpid() and not _pid_alive(int(pid))
        else:
            try:
                stale = now - entry.stat(follow_symlinks=False).st_mtime > max_age
            except FileNotFoundError:
                continue
        if stale:
            try:
                os.unlink(entry.path)
                removed.append(entry.path)
            except FileNotFoundError:
                pass
    return removed


_SWEPT: set[str] = set()


def sweep_once(folder: str | os.PathLike) -> None:
    """:func:`remove_stale_temps` on ``folder`` the first time this process writes there (a
    folder of many outputs is not rescanned for every file)."""
    key = os.path.abspath(folder)
    if key not in _SWEPT:
        remove_stale_temps(key)
        _SWEPT.add(key)


def _as_os_error(method):
    """Connection-level failures of S3 (botocore's ``EndpointConnectionError`` and kin, which s3fs
    passes on untranslated) as :class:`OSError`, like every other storage fault."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError:
            raise
        except Exception as exc:
            from botocore.exceptions import BotoCoreError

            if isinstance(exc, BotoCoreError):
                raise OSError(f"storage {self.uri}: {type(exc).__name__}: {exc}") from exc
            raise

    return wrapper


def s3_options(*, requester_pays: bool = False) -> dict:
    """The s3fs options of ``s3://`` storage: :func:`~rasteret_pipelines.s3config.s3_config`'s,
    the one S3 configuration that COG reads use too (endpoint, region, profile and credentials).

    Listings are never cached: other processes (Dagster steps, other hosts) write the same
    prefixes. Files opened for reading fetch exactly the ranges asked for (pyarrow plans its own
    reads).

    Args:
        requester_pays: Requests carry ``x-amz-request-payer: requester``.

    Raises:
        S3ConfigError: the AWS configuration is unusable (``AWS_PROFILE`` names no profile).
    """
    options: dict = {"use_listings_cache": False, "default_cache_type": "none"}
    options.update(s3_config(requester_pays=requester_pays).s3fs_options())
    return options


@dataclass(frozen=True)
class Storage:
    """A base location (local folder or S3 prefix) with atomic writes below it."""

    uri: str
    """What the user gave: a path or ``s3://bucket/prefix``."""
    fs: fsspec.AbstractFileSystem
    """The fsspec filesystem: local, or s3fs with :func:`s3_options`."""
    base: str
    """Base path inside :attr:`fs` (no trailing slash): a folder, or ``bucket/prefix``."""

    @classmethod
    def from_uri(cls, uri: str | os.PathLike, *, requester_pays: bool = False) -> Storage:
        """The storage at ``uri``: a local path (or ``file://``) or ``s3://bucket/prefix``.

        Args:
            uri: The location.
            requester_pays: On S3, requests carry ``x-amz-request-payer: requester`` (a bucket
                whose owner has the reader pay for transfers).

        Raises:
            StoragePathError: another scheme.
            S3ConfigError: an ``s3://`` location with an unusable AWS configuration.
        """
        text = os.fspath(uri)
        if text.startswith("s3://"):
            options = s3_options(requester_pays=requester_pays)
            return cls(text.rstrip("/"), fsspec.filesystem("s3", **options), text[5:].rstrip("/"))
        if "://" in text and not text.startswith("file://"):
            raise StoragePathError(f"unsupported storage location {text!r}: use a path or s3://")
        path = Path(text.removeprefix("file://")).expanduser().resolve()
        return cls(str(path), fsspec.filesystem("file"), str(path))

    @property
    def is_local(self) -> bool:
        return "file" in _protocols(self.fs)

    @property
    def storage_options(self) -> dict:
        """The options :attr:`fs` was made with (for ``UPath(uri, **storage_options)``)."""
        return dict(self.fs.storage_options)

    @cached_property
    def arrow_fs(self) -> pafs.FileSystem:
        """:attr:`fs` as a pyarrow filesystem (for ``pyarrow.parquet`` and ``pyarrow.dataset``):
        Arrow's own on local disk, the fsspec filesystem wrapped on S3."""
        if self.is_local:
            return pafs.LocalFileSystem()
        return pafs.PyFileSystem(pafs.FSSpecHandler(self.fs))

    def path(self, *parts: str) -> str:
        """Path of ``parts`` below the base, inside :attr:`fs`.

        Raises:
            StoragePathError: the path would leave the base (``..``, an absolute part, NUL).
        """
        joined = posixpath.join(self.base, *parts)
        inside = self.base if self.base.endswith("/") else self.base + "/"
        normal = posixpath.normpath(joined)
        if "\x00" in joined or (normal != self.base and not normal.startswith(inside)):
            raise StoragePathError(f"{'/'.join(map(str, parts))!r} is not a path inside storage {self.uri}")
        return joined

    def uri_of(self, *parts: str) -> str:
        """User-facing location (local path or ``s3://`` URI) of ``parts``."""
        p = self.path(*parts)
        return p if self.is_local else f"s3://{p}"

    @_as_os_error
    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    @_as_os_error
    def list_dirs(self, *parts: str) -> list[str]:
        """Names of the folders directly below ``parts`` (empty if it does not exist)."""
        try:
            entries = self.fs.ls(self.path(*parts), detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e["type"] == "directory")

    @_as_os_error
    def list_files(self, *parts: str, suffix: str = "") -> list[str]:
        """Paths (inside :attr:`fs`) of files below ``parts``, recursively, sorted."""
        try:
            found = self.fs.find(self.path(*parts))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(p for p in found if p.endswith(suffix) and _TEMP.match(posixpath.basename(p)) is None)

    @_as_os_error
    def read_bytes(self, *parts: str) -> bytes:
        return self.fs.cat_file(self.path(*parts))

    def read_json(self, *parts: str):
        return json.loads(self.read_bytes(*parts))

    @_as_os_error
    def write_bytes(self, data: bytes, *parts: str) -> str:
        """Write ``data`` atomically; returns the user-facing location."""
        target = self.path(*parts)
        self._atomic(target, lambda sink: sink.write(data))
        return self.uri_of(*parts)

    def write_json(self, obj, *parts: str) -> str:
        return self.write_bytes(json.dumps(obj, indent=2, sort_keys=True).encode(), *parts)

    @_as_os_error
    def write_parquet(self, table: pa.Table, *parts: str, **kwargs) -> str:
        """Write ``table`` as Parquet atomically; returns the user-facing location."""
        target = self.path(*parts)
        kwargs.setdefault("compression", "zstd")
        self._atomic(target, lambda sink: pq.write_table(table, sink, **kwargs))
        return self.uri_of(*parts)

    @_as_os_error
    def upload_file(self, local_path: str | os.PathLike, *parts: str) -> str:
        """Copy a local file to ``parts`` atomically; returns the user-facing location."""
        target = self.path(*parts)
        if self.is_local:

            def copy(sink) -> None:
                with open(local_path, "rb") as src:
                    while chunk := src.read(1 << 22):
                        sink.write(chunk)

            self._atomic(target, copy)
        else:
            # one PUT, or a multipart upload that s3fs completes (the object appears whole) or
            # aborts (nothing appears)
            self.fs.put_file(os.fspath(local_path), target)
        return self.uri_of(*parts)

    @_as_os_error
    def delete(self, *parts: str) -> None:
        path = self.path(*parts)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def _atomic(self, target: str, write) -> None:
        parent = posixpath.dirname(target)
        if self.is_local:
            os.makedirs(parent, exist_ok=True)
            sweep_once(parent)
            tmp = temp_path(target)
            try:
                with open(tmp, "wb") as sink:
                    write(sink)
                os.replace(tmp, target)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
        else:
            # Produce the whole object first, then put it whole: a completed S3 upload is
            # atomic (readers see the old object or the new one, never a part), and a failure
            # while producing the bytes never reaches S3.
            buffer = pa.BufferOutputStream()
            write(buffer)
            self.fs.pipe_file(target, buffer.getvalue().to_pybytes())


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)
