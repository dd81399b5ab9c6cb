"""Where collections and products live: a local folder or an ``s3://bucket/prefix``.

One small :class:`Storage` over :mod:`pyarrow.fs` so that every writer is atomic: on local
disk a file is written under a temporary name in the same folder and renamed into place; on
S3 an object only appears once its upload completes. S3 follows the standard AWS
configuration (credential chain, ``AWS_REGION``, ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``
for S3-compatible servers).

Temporary names look like ``.<name>.tmp-<host>-<pid>-<hex>``: hidden, and ending in hex so that
no ``*.tif`` / ``*.parquet`` glob (nor :meth:`Storage.list_files`) ever returns one. A failed write
removes its own; a write killed outside Python's reach (SIGKILL, power loss) leaves one, which
the first write into that folder by a later process removes (:func:`sweep_once`,
:func:`remove_stale_temps`).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rasteret_pipelines.errors import StoragePathError

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


def _s3_filesystem() -> pafs.S3FileSystem:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    kwargs: dict = {}
    if region:
        kwargs["region"] = region
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs["endpoint_override"] = host.rstrip("/")
        kwargs["scheme"] = scheme
        kwargs["force_virtual_addressing"] = False
    return pafs.S3FileSystem(**kwargs)


@dataclass(frozen=True)
class Storage:
    """A base location (local folder or S3 prefix) with atomic writes below it."""

    uri: str
    """What the user gave: a path or ``s3://bucket/prefix``."""
    fs: pafs.FileSystem
    base: str
    """Base path inside :attr:`fs` (no trailing slash)."""

    @classmethod
    def from_uri(cls, uri: str | os.PathLike) -> Storage:
        text = os.fspath(uri)
        if text.startswith("s3://"):
            return cls(text.rstrip("/"), _s3_filesystem(), text[5:].rstrip("/"))
        if "://" in text and not text.startswith("file://"):
            raise StoragePathError(f"unsupported storage location {text!r}: use a path or s3://")
        path = Path(text.removeprefix("file://")).expanduser().resolve()
        return cls(str(path), pafs.LocalFileSystem(), str(path))

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

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

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def list_dirs(self, *parts: str) -> list[str]:
        """Names of the folders directly below ``parts`` (empty if it does not exist)."""
        selector = pafs.FileSelector(self.path(*parts), allow_not_found=True)
        return sorted(
            posixpath.basename(info.path)
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.Directory
        )

    def list_files(self, *parts: str, suffix: str = "") -> list[str]:
        """Paths (inside :attr:`fs`) of files below ``parts``, recursively, sorted."""
        selector = pafs.FileSelector(self.path(*parts), allow_not_found=True, recursive=True)
        return sorted(
            info.path
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File
            and info.path.endswith(suffix)
            and _TEMP.match(posixpath.basename(info.path)) is None
        )

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.path(*parts)) as fh:
            return fh.read()

    def read_json(self, *parts: str):
        return json.loads(self.read_bytes(*parts))

    def write_bytes(self, data: bytes, *parts: str) -> str:
        """Write ``data`` atomically; returns the user-facing location."""
        target = self.path(*parts)
        self._atomic(target, lambda sink: sink.write(data))
        return self.uri_of(*parts)

    def write_json(self, obj, *parts: str) -> str:
        return self.write_bytes(json.dumps(obj, indent=2, sort_keys=True).encode(), *parts)

    def write_parquet(self, table: pa.Table, *parts: str, **kwargs) -> str:
        """Write ``table`` as Parquet atomically; returns the user-facing location."""
        target = self.path(*parts)
        kwargs.setdefault("compression", "zstd")
        self._atomic(target, lambda sink: pq.write_table(table, sink, **kwargs))
        return self.uri_of(*parts)

    def upload_file(self, local_path: str | os.PathLike, *parts: str) -> str:
        """Copy a local file to ``parts`` atomically; returns the user-facing location."""
        target = self.path(*parts)

        def copy(sink) -> None:
            with open(local_path, "rb") as src:
                while chunk := src.read(1 << 22):
                    sink.write(chunk)

        self._atomic(target, copy)
        return self.uri_of(*parts)

    def delete(self, *parts: str) -> None:
        path = self.path(*parts)
        info = self.fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(path)

    def _atomic(self, target: str, write) -> None:
        parent = posixpath.dirname(target)
        if self.is_local:
            self.fs.create_dir(parent, recursive=True)
            sweep_once(parent)
            tmp = temp_path(target)
            try:
                with self.fs.open_output_stream(tmp) as sink:
                    write(sink)
                os.replace(tmp, target)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
        else:
            # Produce the whole object first, then upload it in one stream: a completed S3
            # upload is atomic (readers see the old object or the new one, never a part), and
            # a failure while producing the bytes never reaches S3.
            buffer = pa.BufferOutputStream()
            write(buffer)
            data = buffer.getvalue()
            with self.fs.open_output_stream(target) as sink:
                sink.write(data)
