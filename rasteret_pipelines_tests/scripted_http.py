"""A scripted HTTP server for the misbehaviour :class:`~rasteret_pipelines_demo.RangeServer`'s
fault plan does not cover (redirects, a server without version headers, bytes that drip).

For standard faults (5xx, 429, resets, truncated bodies) and latency, use the session
``range_server`` (``clean_server``) or a :class:`RangeServer` with a ``FaultPlan``: those are the
project's fault-injecting servers. :class:`ScriptedServer` answers every GET with a
``route(handler)`` callable and records the requests.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

Route = Callable[[BaseHTTPRequestHandler], None]


class ScriptedServer(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 answering from ``route(handler)``; ``seen`` records
    ``(path, lower-cased headers)`` of every GET and HEAD (``handler.command`` says which).
    Use as a context manager."""

    daemon_threads = True

    def __init__(self, route: Route):
        self.route = route
        self.seen: list[tuple[str, dict[str, str]]] = []
        super().__init__(("127.0.0.1", 0), _Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        self.server.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        self.server.route(self)

    do_HEAD = do_GET


def serve_ranges(data_for: Callable[[str], bytes], etag: str | None = '"v1"') -> Route:
    """A route answering ``Range: bytes=a-b`` GETs with 206 and the bytes of ``data_for(path)``;
    with ``etag=None`` the answer has neither ``ETag`` nor ``Last-Modified``."""

    def route(h: BaseHTTPRequestHandler) -> None:
        data = data_for(h.path)
        start, end = (int(v) for v in h.headers.get("Range", "").removeprefix("bytes=").split("-"))
        end = min(end, len(data) - 1)
        body = data[start : end + 1]
        h.send_response(206)
        h.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        h.send_header("Content-Length", str(len(body)))
        if etag is not None:
            h.send_header("ETag", etag)
        h.end_headers()
        h.wfile.write(body)

    return route


def serve_file(data: bytes) -> Route:
    """A route serving ``data`` at every path (ranges only, with an ``ETag``)."""
    return serve_ranges(lambda _path: data)


def serve_folder(root: Path, etag: str | None = '"v1"') -> Route:
    """A route serving the files under ``root`` by URL path (ranges only)."""
    return serve_ranges(lambda path: (root / path.lstrip("/")).read_bytes(), etag=etag)
