"""The part the local test servers share: an aiohttp server on ``127.0.0.1`` (ephemeral port)
whose event loop runs in a daemon thread, with a request log, injected latency and injected
faults.

:class:`BackgroundServer` is the base of
:class:`~rasteret_pipelines_demo.range_server.RangeServer` and
:class:`~rasteret_pipelines_demo.stac_server.StacServer`. A subclass builds its
``aiohttp`` application in :meth:`BackgroundServer._make_app` and, in its request handler,
calls :meth:`BackgroundServer._delay_and_draw_fault` and :meth:`BackgroundServer._record`.
"""

from __future__ import annotations

import abc
import asyncio
import socket
import struct
import threading
from typing import TYPE_CHECKING, Generic, Self, TypeVar

from aiohttp import web

if TYPE_CHECKING:
    from rasteret_pipelines_demo.range_server import FaultPlan

__all__ = ["BackgroundServer", "abort_connection"]

RecordT = TypeVar("RecordT")


class BackgroundServer(abc.ABC, Generic[RecordT]):
    """An HTTP server on ``127.0.0.1`` whose event loop runs in a daemon thread.

    Args:
        latency: Seconds to wait before every response; also settable through ``latency``.
        faults: A :class:`~rasteret_pipelines_demo.range_server.FaultPlan`, or ``None``;
            also settable through ``faults``.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. Error messages
    name the concrete class (``"RangeServer is not running"``).
    """

    def __init__(self, *, latency: float = 0.0, faults: FaultPlan | None = None, port: int = 0):
        self.latency = latency
        self._bind_port = port
        self.faults = faults
        self._log: list[RecordT] = []
        self._log_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # --- hooks -------------------------------------------------------------------------------

    @abc.abstractmethod
    def _make_app(self) -> web.Application:
        """The application to serve, with its routes (called on the server's event loop)."""

    def _thread_name(self) -> str:
        """Name of the server thread."""
        return type(self).__name__

    def _fault_applies(self, plan: FaultPlan, relpath: str) -> bool:
        """Whether ``plan`` may fail a request for ``relpath`` (no leading ``/``).

        By default: whenever the plan's own ``paths`` match (checked by ``plan.draw``).
        """
        return True

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Start serving in a background daemon thread; returns ``self`` once listening.

        Raises:
            RuntimeError: If already started, or if the server could not start.
        """
        name = type(self).__name__
        if self._thread is not None:
            raise RuntimeError(f"{name} already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._startup())
            except BaseException as exc:  # reported to the starting thread
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                if self._runner is not None:
                    loop.run_until_complete(self._runner.cleanup())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
                loop.close()

        thread = threading.Thread(target=run, name=self._thread_name(), daemon=True)
        self._loop, self._thread = loop, thread
        thread.start()
        ready.wait()
        if errors:
            self._loop = self._thread = None
            raise RuntimeError(f"{name} failed to start: {errors[0]!r}") from errors[0]
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and join the thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = self._thread = self._runner = None
        self._port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _startup(self) -> None:
        runner = web.AppRunner(self._make_app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self._bind_port)
        await site.start()
        self._runner = runner
        self._port = runner.addresses[0][1]

    # --- addresses ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """TCP port the server listens on."""
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not running")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234`` (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    # --- request log -------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordT]:
        """A copy of the request log, oldest first.

        A record is added before its body is sent, so it is visible as soon as the client
        has the response.
        """
        with self._log_lock:
            return list(self._log)

    def reset_log(self) -> None:
        """Forget all logged requests."""
        with self._log_lock:
            self._log.clear()

    def _record(self, record: RecordT) -> RecordT:
        with self._log_lock:
            self._log.append(record)
        return record

    # --- request handling --------------------------------------------------------------------

    async def _delay_and_draw_fault(self, relpath: str) -> str | None:
        """Wait the injected latency, then draw this request's fault kind (``None``: none).

        ``relpath`` is the request path without its leading ``/``.
        """
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        plan = self.faults
        if plan is None or not self._fault_applies(plan, relpath):
            return None
        return plan.draw(relpath)


def abort_connection(request: web.Request) -> None:
    """Drop the connection with a TCP RST and no response."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()
