"""A small range-capable static HTTP file server on 127.0.0.1, for tests, benchmarks and demos.

It behaves like the object stores COG readers talk to (S3, Azure Blob, a CDN) in the ways
that matter to a range reader:

* ``GET`` and ``HEAD`` of any file under ``root``; ``Range: bytes=a-b``, ``bytes=a-`` and
  ``bytes=-n`` answer ``206`` with ``Content-Range``; an unsatisfiable range answers ``416``;
  no (or an unparseable, or a multi-range) ``Range`` answers ``200`` with the whole file, like
  S3. Only the requested bytes are read from disk, in chunks, so multi-GB files are fine.
* A strong ``ETag`` (from the file's ``mtime_ns`` and size) and ``Last-Modified``;
  ``If-Match`` answers ``412`` when no listed tag matches.
* Injected latency (``srv.latency``, seconds, before every response) that does not serialise
  requests, and injected faults (:class:`FaultPlan`): HTTP 500 / 503 / 429, connection resets
  and truncated bodies, drawn deterministically from a seed.
* A request log (``srv.requests``) for asserting how many requests, and which ranges, a
  reader made.

The server runs its own event loop in a daemon thread, so it can be used from synchronous
code and beside code that runs its own event loops::

    with RangeServer(Path("data")) as srv:
        url = srv.url_for("cog/B04.tif")
        srv.latency = 0.05                       # 50 ms before every response
        srv.faults = FaultPlan(rate=0.2, kinds=["503", "reset"], seed=1)
        ...
        assert srv.count("GET", "cog/B04.tif") == 2
        srv.faults = None                        # back to a healthy server

Simulating a changed object: the ETag is derived from the file's ``mtime_ns`` and size, so
rewriting the file changes it. A rewrite within the file system's timestamp granularity and
with the same size could keep the old tag; :meth:`RangeServer.replace_file` writes new bytes
and moves the modification time forward, so the tag is guaranteed to change.
"""

from __future__ import annotations

import asyncio
import fnmatch
import mimetypes
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from rasteret_pipelines_demo._server import BackgroundServer, abort_connection

__all__ = ["FAULT_KINDS", "FaultPlan", "RangeServer", "RequestRecord"]

FAULT_KINDS: tuple[str, ...] = ("500", "503", "429", "reset", "truncate")
"""Every fault kind :class:`FaultPlan` can inject."""

_CHUNK = 1 << 20  # bytes read from disk and written to the socket at a time


@dataclass
class RequestRecord:
    """One request the server answered (or deliberately failed).

    Attributes:
        method: ``"GET"``, ``"HEAD"``, ...
        path: URL path as requested, percent-decoded, with its leading ``/``.
        range: The byte range served, as inclusive absolute offsets ``(start, end)``, resolved
            against the file size (so ``bytes=-100`` of a 1000-byte file is ``(900, 999)``);
            ``None`` when the request had no usable ``Range`` header, the range was
            unsatisfiable, or the file does not exist.
        range_header: The raw ``Range`` header, or ``None``.
        status: HTTP status sent; ``None`` for a ``"reset"`` fault (no response at all).
        bytes_sent: Body bytes written (fewer than ``Content-Length`` for ``"truncate"``).
        headers: All request headers.
        fault: The injected fault kind, or ``None`` for a normal answer.
    """

    method: str
    path: str
    range: tuple[int, int] | None
    range_header: str | None
    status: int | None
    bytes_sent: int
    headers: dict[str, str] = field(repr=False)
    fault: str | None = None


class FaultPlan:
    """A deterministic schedule of injected failures.

    Each request whose path matches ``paths`` draws once from ``random.Random(seed)``: with
    probability ``rate`` it fails with a kind drawn uniformly from ``kinds``. The sequence of
    decisions depends only on the seed and the order of matching requests.

    Kinds:
        ``"500"``, ``"503"``: that status, with ``Retry-After: 0``.
        ``"429"``: Too Many Requests, with ``Retry-After: 0``.
        ``"reset"``: the connection is aborted (TCP RST) without any response.
        ``"truncate"``: correct status, headers and ``Content-Length``, then only half of the
        body, then the connection is closed. A ``HEAD`` request (or an empty body) drawing
        ``"truncate"`` is reset instead, since there is no body to cut.

    Args:
        rate: Probability in [0, 1] that a matching request fails.
        kinds: Fault kinds to choose from (see :data:`FAULT_KINDS`).
        seed: Seed of the private random generator.
        max_faults: Stop injecting after this many faults (``None``: no limit).
        paths: Which requests may fail: ``None`` for all, a glob pattern or a sequence of glob
            patterns matched against the path without its leading ``/`` (``"cog/*.tif"``), or
            a callable taking that path and returning a bool.

    Attributes:
        injected: Number of faults injected so far.
    """

    def __init__(
        self,
        rate: float,
        kinds: Sequence[str] = FAULT_KINDS,
        seed: int = 0,
        max_faults: int | None = None,
        paths: str | Sequence[str] | Callable[[str], bool] | None = None,
    ):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be within [0, 1], got {rate}")
        kinds = tuple(str(k) for k in kinds)
        if not kinds:
            raise ValueError("kinds must not be empty")
        unknown = sorted(set(kinds) - set(FAULT_KINDS))
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; known: {list(FAULT_KINDS)}")
        if max_faults is not None and max_faults < 0:
            raise ValueError("max_faults must be >= 0")
        self.rate = rate
        self.kinds = kinds
        self.seed = seed
        self.max_faults = max_faults
        if isinstance(paths, str):
            paths = (paths,)
        self.paths = paths
        self.injected = 0
        self._rng = random.Random(seed)

    def reset(self) -> None:
        """Restart the schedule from the seed and zero the fault count."""
        self.injected = 0
        self._rng = random.Random(self.seed)

    def matches(self, relpath: str) -> bool:
        """Whether requests for ``relpath`` (no leading ``/``) are subject to this plan."""
        if self.paths is None:
            return True
        if callable(self.paths):
            return bool(self.paths(relpath))
        return any(fnmatch.fnmatchcase(relpath, pattern) for pattern in self.paths)

    def draw(self, relpath: str) -> str | None:
        """Decide the fate of one request: a fault kind, or ``None`` to answer normally."""
        if not self.matches(relpath):
            return None
        if self.max_faults is not None and self.injected >= self.max_faults:
            return None
        if self._rng.random() >= self.rate:
            return None
        self.injected += 1
        return self._rng.choice(self.kinds)


class RangeServer(BackgroundServer[RequestRecord]):
    """Serve the files under ``root`` over HTTP/1.1 on ``127.0.0.1`` (ephemeral port).

    Args:
        root: Directory to serve. Paths resolving outside it (``..``, symlinks) are 404.
        latency: Seconds to wait (``asyncio.sleep``) before every response; can be changed
            at any time through the ``latency`` attribute.
        faults: Failures to inject, or ``None``; can be replaced or switched off at any time
            through the ``faults`` attribute.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, root: Path | str, *, latency: float = 0.0, faults: FaultPlan | None = None, port: int = 0):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise NotADirectoryError(f"not a directory: {self.root}")
        super().__init__(latency=latency, faults=faults, port=port)

    # --- lifecycle (start, stop, port, url: see BackgroundServer) ----------------------------

    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    def _thread_name(self) -> str:
        return f"RangeServer({self.root})"

    # --- addresses ---------------------------------------------------------------------------

    def url_for(self, relpath: str | os.PathLike[str]) -> str:
        """URL of a file, given its path relative to ``root`` or an absolute path inside it.

        A path starting with ``/`` that is not inside ``root`` is taken as a URL path.
        """
        return self.url + "/" + quote(self._relative(relpath))

    def _relative(self, relpath: str | os.PathLike[str]) -> str:
        path = Path(relpath)
        if path.is_absolute():
            try:
                path = path.resolve().relative_to(self.root)
            except ValueError:  # not a file path inside root: a URL path like "/a/b.tif"
                pass
        return path.as_posix().lstrip("/")

    # --- changing objects --------------------------------------------------------------------

    def etag_for(self, relpath: str | os.PathLike[str]) -> str:
        """The (quoted) ETag the server currently sends for a file."""
        return _etag(os.stat(self.root / self._relative(relpath)))

    def replace_file(self, relpath: str | os.PathLike[str], data: bytes) -> str:
        """Overwrite (or create) a file and make sure its ETag changes; returns the new ETag.

        The modification time is set to at least one second after the previous one, so the
        tag changes even when the size stays the same and the rewrite is very fast.
        """
        path = self.root / self._relative(relpath)
        old_ns = path.stat().st_mtime_ns if path.exists() else 0
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        new_ns = max(time.time_ns(), old_ns + 1_000_000_000)
        os.utime(path, ns=(new_ns, new_ns))
        return self.etag_for(relpath)

    # --- request log (requests, reset_log: see BackgroundServer) ----------------------------

    def count(self, method: str | None = "GET", path: str | os.PathLike[str] | None = None) -> int:
        """Number of logged requests with this method (``None``: any) and path (``None``: any).

        ``path`` is relative to ``root`` (a leading ``/`` is accepted) or absolute inside it.
        """
        want = None if path is None else "/" + self._relative(path)
        return sum(
            1 for r in self.requests if (method is None or r.method == method) and (want is None or r.path == want)
        )

    # --- request handling --------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method = request.method
        path = request.path
        relpath = path.lstrip("/")
        range_header = request.headers.get("Range")
        headers = dict(request.headers)

        def record(status: int | None, rng=None, sent: int = 0, fault: str | None = None):
            return self._record(RequestRecord(method, path, rng, range_header, status, sent, headers, fault))

        fault = await self._delay_and_draw_fault(relpath)
        if fault in ("500", "503", "429"):
            record(int(fault), fault=fault)
            return web.Response(status=int(fault), text=f"injected fault {fault}\n", headers={"Retry-After": "0"})
        if fault == "reset" or (fault == "truncate" and method == "HEAD"):
            record(None, fault="reset")
            abort_connection(request)
            return web.Response(status=500)  # never sent: the transport is gone

        if method not in ("GET", "HEAD"):
            record(405)
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})

        file = self._resolve(relpath)
        st = None
        if file is not None:
            try:
                st = file.stat()
            except OSError:
                st = None
        if st is None:
            record(404)
            return web.Response(status=404, text="not found\n")

        size = st.st_size
        etag = _etag(st)
        common = {
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "Last-Modified": formatdate(st.st_mtime, usegmt=True),
            "Content-Type": mimetypes.guess_type(file.name)[0] or "application/octet-stream",
        }

        if_match = request.headers.get("If-Match")
        if if_match is not None and not _etag_matches(if_match, etag):
            record(412)
            return web.Response(status=412, headers={"ETag": etag})

        span = _parse_range(range_header, size)
        if span == "unsatisfiable":
            record(416)
            return web.Response(status=416, headers={**common, "Content-Range": f"bytes */{size}"})
        if span is None:
            status, start, length = 200, 0, size
            resp_headers = dict(common)
        else:
            start, end = span
            status, length = 206, end - start + 1
            resp_headers = {**common, "Content-Range": f"bytes {start}-{end}/{size}"}

        to_send = 0 if method == "HEAD" else length
        if fault == "truncate":
            if to_send == 0:  # nothing to cut: behave like a reset
                record(None, span, fault="reset")
                abort_connection(request)
                return web.Response(status=500)
            to_send //= 2

        response = web.StreamResponse(status=status, headers=resp_headers)
        response.content_length = length
        rec = record(status, span, to_send, fault)
        await response.prepare(request)
        if method == "HEAD":
            return response

        sent = 0
        loop = asyncio.get_running_loop()
        try:
            with open(file, "rb") as fh:
                if fault is None and request.transport is not None:
                    # The kernel copies the file to the socket (sendfile(2)), as a production
                    # server does: the benchmarks run it on the cores of the client they time.
                    try:
                        sent = await loop.sendfile(request.transport, fh, start, to_send)
                    except NotImplementedError:  # a transport without sendfile: the loop below
                        pass
                    else:
                        rec.bytes_sent = sent
                        await response.write_eof()
                        return response
                while sent < to_send:
                    n = min(_CHUNK, to_send - sent)
                    chunk = await loop.run_in_executor(None, _pread, fh, start + sent, n)
                    if not chunk:  # file shrank under us
                        break
                    await response.write(chunk)
                    sent += len(chunk)
        except ConnectionError:  # the client went away: nothing more to do
            rec.bytes_sent = sent
            return response
        rec.bytes_sent = sent
        if fault == "truncate" or sent < length:
            if request.transport is not None:
                request.transport.close()  # flushes what was written, then closes
        return response

    def _resolve(self, relpath: str) -> Path | None:
        if "\x00" in relpath or not relpath:
            return None
        try:
            candidate = (self.root / relpath).resolve()
        except (OSError, RuntimeError):
            return None
        if not candidate.is_relative_to(self.root) or not candidate.is_file():
            return None
        return candidate


def _etag(st: os.stat_result) -> str:
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


def _etag_matches(if_match: str, etag: str) -> bool:
    """Strong comparison of an ``If-Match`` list against ``etag`` (RFC 9110 13.1.1)."""
    tags = [t.strip() for t in if_match.split(",")]
    return "*" in tags or etag in tags  # weak tags (W/"...") never match strongly


def _parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """Resolve a ``Range`` header against ``size``.

    Returns:
        ``(start, end)`` inclusive; ``None`` to ignore the header (absent, not ``bytes=``,
        malformed, or several ranges) and send the whole file; ``"unsatisfiable"`` for 416.
    """
    if header is None:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash or (first and not first.isdigit()) or (last and not last.isdigit()):
        return None
    if not first:  # suffix: the last n bytes
        if not last:
            return None
        n = int(last)
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        return "unsatisfiable"
    end = int(last) if last else size - 1
    return start, min(end, size - 1)


def _pread(fh, offset: int, n: int) -> bytes:
    fh.seek(offset)
    return fh.read(n)
