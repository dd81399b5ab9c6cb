"""The offline demo mirror: the demo world written once and served on 127.0.0.1.

The demo and ``ui`` commands (:mod:`rasteret_pipelines_demo.demo`) start and stop the mirror; the
Dagster resources only look for it (:func:`running_mirror_url`, :func:`port_state`) and never start
one. This module imports neither the Dagster layer nor the demo command, so neither depends on the
other.

The mirror listens on two consecutive ports (STAC API on ``port``, COGs on ``port + 1``);
:func:`free_port_pair` finds such a pair for tests and benchmarks.

``python -m rasteret_pipelines_demo.demo_mirror serve --demo-dir D --port P`` serves a world in
the foreground, until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import random
import secrets
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rasteret_pipelines.errors import LocalServerDownError, StacApiError

DEMO_TITLE = "rasteret-pipelines demo mirror (Sentinel-2 L2A, MGRS 43PGQ)"
"""Title of the demo STAC API's landing page; identifies a running mirror."""
WORLD_FILE = "world.json"
WORLD_VERSION = 1
IDLE_TIMEOUT = 0.0
"""Seconds without a request after which ``serve`` exits (0: never)."""
MIRROR_KEY = "rasteret:demo_mirror"
"""Landing-page field naming what a mirror serves: ``{"id": mirror_identity, "demo_dir": path}``."""
PORT_FILE = "mirror.json"
"""In the demo folder: the port its mirror last used (``{"port": P}``), for later runs to find it."""


# --- the demo world ---------------------------------------------------------------------------


def ensure_ignored_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and missing parents); the topmost folder created gets a ``.gitignore``."""
    target = Path(path).expanduser().absolute()
    created_top = None
    probe = target
    while not probe.exists():
        created_top = probe
        probe = probe.parent
    target.mkdir(parents=True, exist_ok=True)
    if created_top is not None:
        (created_top / ".gitignore").write_text("# written by rasteret-pipelines: data, never committed\n*\n")
    return target


@contextlib.contextmanager
def _locked(folder: Path, name: str = ".lock") -> Iterator[None]:
    """An exclusive lock on ``folder/name`` across processes (``.lock``: writing the world;
    ``.mirror.lock``: choosing a port and starting a mirror)."""
    with open(folder / name, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def prepare_world(
    demo_dir: str | os.PathLike,
    months: Sequence[str] = ("2024-01", "2024-02", "2024-03"),
    *,
    size_10m: int | None = None,
    log=print,
) -> dict:
    """Write the demo world under ``demo_dir`` once; later calls reuse it.

    Args:
        demo_dir: Folder of the world: ``cogs/<item id>/{B04,B08,SCL}.tif`` and ``world.json``
            (the STAC items, hrefs relative to ``demo_dir``).
        months: ``YYYY-MM`` months, two acquisitions each (``demo_data.default_scenes``).
        size_10m: Side of the 10 m grid (default: the real 10980).
        log: Where progress lines go (``None``: nowhere).

    Returns:
        The ``world.json`` document: ``months``, ``size_10m`` and ``items``.
    """
    from rasteret_pipelines_demo import demo_data

    size = size_10m or demo_data.SIZE_10M
    folder = ensure_ignored_dir(demo_dir)
    wanted = {"version": WORLD_VERSION, "months": list(months), "size_10m": size}
    with _locked(folder):
        world_path = folder / WORLD_FILE
        if world_path.exists():
            world = json.loads(world_path.read_text())
            if {k: world.get(k) for k in wanted} == wanted:
                if not world.get("token"):  # a world written before mirrors had an identity
                    world["token"] = secrets.token_hex(8)
                    _write_json(world_path, world)
                return world
        t0 = time.perf_counter()
        scenes = demo_data.default_scenes(tuple(months))
        if log:
            log(
                f"writing the demo world: {len(scenes)} Sentinel-2 L2A scenes of MGRS {demo_data.TILE} "
                f"({size} x {size} at 10 m, sparse outside the AOIs) under {folder} ..."
            )
        cogs = folder / "cogs"
        cogs.mkdir(exist_ok=True)
        items = demo_data.write_world(cogs, lambda rel: f"cogs/{rel}", scenes, size_10m=size)
        world = {**wanted, "token": secrets.token_hex(8), "items": items}
        _write_json(world_path, world)
        if log:
            log(f"  done in {time.perf_counter() - t0:.1f} s ({_du(cogs) / 1e6:.0f} MB on disk)")
        return world


def _write_json(path: Path, doc: dict) -> None:
    """Write ``doc`` to ``path`` through a temporary file and a rename (readers never see half)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def _du(folder: Path) -> int:
    total = 0
    for p in folder.rglob("*.tif"):
        st = p.stat()
        total += getattr(st, "st_blocks", 0) * 512 or st.st_size
    return total


# --- ports ------------------------------------------------------------------------------------


class NoFreePortPairError(RuntimeError):
    """No two consecutive free ports were found on the host within the attempts allowed."""


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux's default when it cannot be read)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port_pair(host: str = "127.0.0.1", *, attempts: int = 200, rng: random.Random | None = None) -> int:
    """A port ``P`` such that ``P`` and ``P + 1`` are both free on ``host`` (the demo mirror's pair).

    Both ports are bound (and released) before ``P`` is returned, so neither was taken at that
    moment. Candidates are drawn at random below the kernel's ephemeral range when there is room
    (10000 ports or more), so that ports handed out for outgoing connections or ``bind(0)``
    cannot take ``P + 1`` between this check and the mirror's start; otherwise from ``bind(0)``.

    Raises:
        NoFreePortPairError: no pair was found in ``attempts`` tries.
    """
    rng = rng or random.Random()
    low, _high = _ephemeral_range()
    below = (max(1024, low - 20000), low - 1) if low - 1 - max(1024, low - 20000) >= 10000 else None
    for _ in range(attempts):
        with contextlib.ExitStack() as stack:
            first = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                first.bind((host, rng.randrange(*below) if below else 0))
            except OSError:
                continue
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            second = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                second.bind((host, port + 1))
            except OSError:
                continue
            return port
    raise NoFreePortPairError(f"no two consecutive free ports on {host} in {attempts} attempts")


# --- the mirror ---------------------------------------------------------------------------------


class DemoMirror:
    """The demo world served on 127.0.0.1: a STAC API and a range-capable COG server.

    Args:
        demo_dir: A folder prepared by :func:`prepare_world`.
        port: STAC API port; the COG server listens on ``port + 1``. 0 picks free ports.

    Use as a context manager; :attr:`stac_url`, :attr:`cog_url`, :attr:`stac` and
    :attr:`cogs` (the servers, with their request logs) are available inside.
    """

    def __init__(self, demo_dir: str | os.PathLike, port: int = 0):
        self.demo_dir = Path(demo_dir).absolute()
        self.port = port
        self.stac = None
        self.cogs = None

    def start(self) -> DemoMirror:
        from rasteret_pipelines_demo.range_server import RangeServer
        from rasteret_pipelines_demo.stac_server import StacServer, rewrite_hrefs

        world = json.loads((self.demo_dir / WORLD_FILE).read_text())
        cog_port = self.port + 1 if self.port else 0
        self.cogs = RangeServer(self.demo_dir, port=cog_port).start()
        try:
            items = [
                rewrite_hrefs(item, lambda _key, href: self.cogs.url_for(href) if href.startswith("cogs/") else None)
                for item in world["items"]
            ]
            identity = {"id": mirror_identity(self.demo_dir), "demo_dir": str(self.demo_dir.resolve())}
            self.stac = StacServer(
                items, title=DEMO_TITLE, port=self.port, landing_extra={MIRROR_KEY: identity}
            ).start()
        except BaseException:
            self.cogs.stop()
            raise
        return self

    def stop(self) -> None:
        for server in (self.stac, self.cogs):
            if server is not None:
                server.stop()

    def __enter__(self) -> DemoMirror:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def stac_url(self) -> str:
        return self.stac.url

    @property
    def cog_url(self) -> str:
        return self.cogs.url


def mirror_identity(demo_dir: str | os.PathLike) -> str:
    """What a mirror of ``demo_dir`` calls itself: a hash of the folder's resolved path and of the
    token its world was written with, so another checkout's folder, or this folder's world
    rewritten since, never matches."""
    folder = Path(demo_dir).expanduser().resolve()
    try:
        token = json.loads((folder / WORLD_FILE).read_text()).get("token", "")
    except (OSError, ValueError):
        token = ""
    return hashlib.sha256(f"{folder}\0{token}".encode()).hexdigest()[:16]


def mirror_at(url: str, timeout: float = 2.0) -> dict | None:
    """The identity a demo mirror at ``url`` reports (``{"id", "demo_dir"}``; empty for a mirror
    of a version that did not report one), or None when nothing listens there.

    Raises:
        StacApiError: something else answers on that port.
    """
    try:
        with urllib.request.urlopen(url + "/", timeout=timeout) as resp:
            doc = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise StacApiError(
            f"{url} answers HTTP {exc.code}: the demo port is used by another program "
            "(set RASTERET_DEMO_PORT to a free port)"
        ) from exc
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None
    except ValueError as exc:
        raise StacApiError(f"{url} is not the demo mirror (set RASTERET_DEMO_PORT to a free port)") from exc
    if not isinstance(doc, dict) or doc.get("title") != DEMO_TITLE:
        raise StacApiError(f"{url} is not the demo mirror (set RASTERET_DEMO_PORT to a free port)")
    info = doc.get(MIRROR_KEY)
    return dict(info) if isinstance(info, dict) else {}


def probe_demo_mirror(url: str, timeout: float = 2.0, demo_dir: str | os.PathLike | None = None) -> bool:
    """True when a demo mirror answers at ``url`` (with ``demo_dir``: the mirror of that folder);
    False when nothing listens there (or another folder's mirror does).

    Raises:
        StacApiError: something else than a demo mirror answers on that port.
    """
    info = mirror_at(url, timeout)
    if info is None:
        return False
    return demo_dir is None or info.get("id") == mirror_identity(demo_dir)


@dataclass(frozen=True)
class PortState:
    """What occupies a demo port pair (``port`` and ``port + 1``), seen from one demo folder."""

    port: int
    kind: str
    """``"ours"`` (this folder's mirror), ``"free"``, ``"other-mirror"`` (another folder's
    mirror) or ``"other-program"``."""
    detail: str = ""
    """Who else is there: the other mirror's folder (empty for a mirror of an older
    rasteret-pipelines, which does not say), or what answered."""

    def holder(self) -> str:
        """Who holds the port, in words."""
        if self.kind == "other-mirror":
            return (
                f"the demo mirror of another folder ({self.detail})"
                if self.detail
                else "the demo mirror of an older rasteret-pipelines, which does not say which folder it serves"
            )
        return self.detail

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _pair_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether both ports could be listened on now. SO_REUSEADDR, as the servers set it: a port
    whose last connections linger in TIME_WAIT is free for them (Linux still refuses a port
    something listens on)."""
    with contextlib.ExitStack() as stack:
        for p in (port, port + 1):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, p))
            except OSError:
                return False
    return True


def port_state(demo_dir: str | os.PathLike, port: int, timeout: float = 2.0) -> PortState:
    """Who holds the demo port pair ``port`` / ``port + 1``, from ``demo_dir``'s point of view."""
    try:
        info = mirror_at(f"http://127.0.0.1:{port}", timeout)
    except StacApiError as exc:
        return PortState(port, "other-program", str(exc))
    if info is None:
        if _pair_free(port):
            return PortState(port, "free")
        return PortState(port, "other-program", f"port {port} or {port + 1} is in use by another program")
    if info.get("id") == mirror_identity(demo_dir):
        return PortState(port, "ours")
    return PortState(port, "other-mirror", info.get("demo_dir") or "")


def recorded_port(demo_dir: str | os.PathLike) -> int | None:
    """The port ``demo_dir``'s mirror last used (its :data:`PORT_FILE`), or None."""
    try:
        port = json.loads((Path(demo_dir).expanduser() / PORT_FILE).read_text()).get("port")
    except (OSError, ValueError, AttributeError):
        return None
    return port if isinstance(port, int) and 1024 <= port < 65535 else None


def record_port(demo_dir: str | os.PathLike, port: int) -> Path:
    """Record ``port`` as ``demo_dir``'s mirror port (atomically); returns the file."""
    path = Path(demo_dir).expanduser() / PORT_FILE
    if recorded_port(demo_dir) != port:
        _write_json(path, {"port": int(port)})
    return path


def choose_mirror_port(
    demo_dir: str | os.PathLike, preferred: int, *, default: int | None = None
) -> tuple[PortState, str | None]:
    """Where ``demo_dir``'s mirror runs or should start: ``(state, note)``.

    A mirror of this folder already running on the recorded or the preferred port is reused
    (``state.kind == "ours"``). Otherwise the first free pair of these two is taken: the
    preferred port first when it was chosen (``preferred != default``; a ``default`` of None
    means it always was), else the recorded one (the collections built by its mirror point
    there). When both are held by another folder's
    mirror or another program, a free pair is drawn (:func:`free_port_pair`). ``note`` says
    why the mirror is not on ``preferred``, or is None. The caller records the port it starts on.
    """
    recorded = recorded_port(demo_dir)
    order = [preferred, recorded] if preferred != default else [recorded, preferred]
    candidates = list(dict.fromkeys(p for p in order if p))
    states = [port_state(demo_dir, p) for p in candidates]
    for state in states:
        if state.kind == "ours":
            return state, None
    busy = [s for s in states if s.kind != "free"]
    reason = "; ".join(f"port {s.port} is held by {s.holder()}" for s in busy)
    for state in states:
        if state.kind == "free":
            note = (
                None
                if state.port == preferred
                else (
                    f"this folder's demo mirror uses its recorded port {state.port} ({Path(demo_dir) / PORT_FILE})"
                    + (f"; {reason}" if reason else "")
                )
            )
            return state, note
    port = free_port_pair()
    return PortState(port, "free"), (
        f"{reason}: this folder's demo mirror uses port {port} instead (recorded in {Path(demo_dir) / PORT_FILE})"
    )


def running_mirror_url(demo_dir: str | os.PathLike, port: int, *, default_port: int | None = None) -> str:
    """URL of ``demo_dir``'s demo STAC API, which must be running: nothing is started here.

    Only a mirror that serves this folder counts (:func:`choose_mirror_port`: the recorded port,
    or ``port``); another checkout's mirror on ``port`` does not.

    Args:
        port: The preferred port (``RASTERET_DEMO_PORT``).
        default_port: The default of that setting (see :func:`choose_mirror_port`).

    Raises:
        LocalServerDownError: this folder's mirror is not running; the message says how to start it.
    """
    folder = Path(demo_dir).expanduser().absolute()
    state, note = choose_mirror_port(demo_dir, port, default=default_port)
    if state.kind == "ours":
        return state.url
    raise LocalServerDownError(
        f"the offline demo mirror of {folder} is not running (its STAC API would be {state.url}): "
        f"{START_HINT}" + (f". {note}" if note else "")
    )


START_HINT = (
    "start it with `rasteret-pipelines demo --serve` (it serves until Ctrl-C) or run the Dagster UI on "
    "the demo with `rasteret-pipelines ui` (it serves the mirror while the UI runs)"
)
"""How to start the demo mirror, for the errors of whoever finds it down."""


def start_mirror(
    demo_dir: str | os.PathLike,
    port: int,
    *,
    months: Sequence[str] = ("2024-01", "2024-02", "2024-03"),
    default_port: int | None = None,
    log=print,
) -> tuple[DemoMirror | None, str]:
    """Write ``demo_dir``'s world if needed and serve it from this process (:func:`open_mirror`).

    For the commands and notebooks that own the mirror: it runs in background threads of the
    caller and stops with :meth:`DemoMirror.stop` or when the process ends.

    Returns:
        ``(mirror started here, or None when this folder's mirror already runs; STAC API URL)``.
    """
    prepare_world(demo_dir, months, log=log)
    return open_mirror(demo_dir, port, default=default_port, log=log)


def open_mirror(
    demo_dir: str | os.PathLike, preferred: int, *, default: int | None = None, log=print
) -> tuple[DemoMirror | None, str]:
    """``demo_dir``'s mirror for this process: ``(mirror started here or None, STAC API URL)``.

    This folder's mirror already running (on its recorded or the preferred port) is reused;
    otherwise one is started in this process (background threads) on the port
    :func:`choose_mirror_port` picks, and the port is recorded. ``log`` gets one line saying
    which mirror is used, and why it is not on ``preferred`` when it is not.
    """
    folder = Path(demo_dir).expanduser().absolute()
    with _locked(folder, ".mirror.lock"):
        state, note = choose_mirror_port(demo_dir, preferred, default=default)
        if state.kind == "ours":
            log(f"using this folder's demo mirror, already running at {state.url} (serving {folder})")
            return None, state.url
        mirror = DemoMirror(demo_dir, state.port).start()
        record_port(demo_dir, state.port)
    if note:
        log(note)
    log(f"demo mirror of {folder}: STAC API {mirror.stac_url}, COGs {mirror.cog_url}")
    return mirror, mirror.stac_url


def serve(demo_dir: str | os.PathLike, port: int, months: Sequence[str], idle_timeout: float = IDLE_TIMEOUT) -> int:
    """Serve the demo world until interrupted or idle for ``idle_timeout`` seconds (0: forever)."""
    prepare_world(demo_dir, months)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        mirror = DemoMirror(demo_dir, port).start()
    except RuntimeError as exc:
        print(f"demo mirror: cannot listen on 127.0.0.1:{port}/{port + 1}: {exc}", flush=True)
        return 1
    print(f"demo mirror: STAC API {mirror.stac_url}, COGs {mirror.cog_url} (pid {os.getpid()})", flush=True)
    last = time.monotonic()
    try:
        while not stop.wait(5.0):
            active = len(mirror.stac.requests) + len(mirror.cogs.requests)
            mirror.stac.reset_log()
            mirror.cogs.reset_log()
            now = time.monotonic()
            if active:
                last = now
            elif idle_timeout and now - last > idle_timeout:
                print(f"demo mirror: idle for {idle_timeout:.0f} s, exiting", flush=True)
                break
    finally:
        mirror.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rasteret_pipelines_demo.demo_mirror serve ...``: the demo mirror in the foreground."""
    parser = argparse.ArgumentParser(prog="python -m rasteret_pipelines_demo.demo_mirror")
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("serve", help="serve the demo world on 127.0.0.1")
    srv.add_argument("--demo-dir", required=True)
    srv.add_argument("--port", type=int, required=True)
    srv.add_argument("--months", default="2024-01,2024-02,2024-03")
    srv.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT)
    args = parser.parse_args(argv)
    months = [m.strip() for m in args.months.split(",") if m.strip()]
    return serve(args.demo_dir, args.port, months, args.idle_timeout)


if __name__ == "__main__":
    sys.exit(main())
