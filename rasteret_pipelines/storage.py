"""Where collections and products live: a local folder or an ``s3://bucket/prefix``.

One small :class:`Storage` over :mod:`pyarrow.fs` so that every writer is atomic: on local
disk a file is written under a temporary name in the same folder and renamed into place; on
S3 an object only appears once its upload completes. S3 follows the standard AWS
configuration (credential chain, ``AWS_REGION``, ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``
for S3-compatible servers).
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


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
            raise ValueError(f"unsupported storage location {text!r}: use a path or s3://")
        path = Path(text.removeprefix("file://")).expanduser().resolve()
        return cls(str(path), pafs.LocalFileSystem(), str(path))

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        """Path of ``parts`` below the base, inside :attr:`fs`."""
        return posixpath.join(self.base, *parts)

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
            if info.type == pafs.FileType.File and info.path.endswith(suffix)
            and ".tmp-" not in posixpath.basename(info.path)
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
            tmp = posixpath.join(parent, f".{posixpath.basename(target)}.tmp-{uuid.uuid4().hex}")
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
