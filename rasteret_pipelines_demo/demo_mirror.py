"""The offline demo mirror: the demo world written once and served on 127.0.0.1.

The demo command (:mod:`rasteret_pipelines_demo.demo`), the Dagster resources (which start a mirror on
demand when a run needs it) and the tests all call these functions; this module imports neither
the Dagster layer nor the demo command, so neither depends on the other.

The mirror listens on two consecutive ports (STAC API on ``port``, COGs on ``port + 1``);
:func:`free_port_pair` finds such a pair for tests and benchmarks.

``python -m rasteret_pipelines_demo.demo_mirror serve --demo-dir D --port P`` serves a world in
the foreground (the detached mirror that :func:`demo_stac_url` starts runs this).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from rasteret_pipelines.errors import StacApiError

DEMO_TITLE = "rasteret-pipelines demo mirror (Sentinel-2 L2A, MGRS 43PGQ)"
"""Title of the demo STAC API's landing page; identifies a running mirror."""
WORLD_FILE = "world.json"
WORLD_VERSION = 1
IDLE_TIMEOUT = 3600.0


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
def _locked(folder: Path) -> Iterator[None]:
    with open(folder / ".lock", "w") as fh:
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
                return world
        t0 = time.perf_counter()
        scenes = demo_data.default_scenes(tuple(months))
        if log:
            log(f"writing the demo world: {len(scenes)} Sentinel-2 L2A scenes of MGRS {demo_data.TILE} "
                f"({size} x {size} at 10 m, sparse outside the AOIs) under {folder} ...")
        cogs = folder / "cogs"
        cogs.mkdir(exist_ok=True)
        items = demo_data.write_world(cogs, lambda rel: f"cogs/{rel}", scenes, size_10m=size)
        world = {**wanted, "items": items}
        tmp = world_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(world))
        os.replace(tmp, world_path)
        if log:
            log(f"  done in {time.perf_counter() - t0:.1f} s ({_du(cogs) / 1e6:.0f} MB on disk)")
        return world


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
            self.stac = StacServer(items, title=DEMO_TITLE, port=self.port).start()
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


def probe_demo_mirror(url: str, timeout: float = 2.0) -> bool:
    """True when the demo mirror answers at ``url``; False when nothing listens there.

    Raises:
        StacApiError: something else answers on that port.
    """
    try:
        with urllib.request.urlopen(url + "/", timeout=timeout) as resp:
            doc = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise StacApiError(f"{url} answers HTTP {exc.code}: the demo port is used by another program "
                           "(set RASTERET_DEMO_PORT to a free port)") from exc
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False
    except ValueError as exc:
        raise StacApiError(f"{url} is not the demo mirror (set RASTERET_DEMO_PORT to a free port)") from exc
    if not isinstance(doc, dict) or doc.get("title") != DEMO_TITLE:
        raise StacApiError(f"{url} is not the demo mirror (set RASTERET_DEMO_PORT to a free port)")
    return True


def demo_stac_url(
    demo_dir: str | os.PathLike,
    port: int,
    *,
    months: Sequence[str] = ("2024-01", "2024-02", "2024-03"),
    start: bool = True,
    wait: float = 60.0,
) -> str:
    """URL of the demo STAC API on ``port``, starting a detached mirror if none is running.

    The detached mirror (``python -m rasteret_pipelines_demo.demo_mirror serve``) writes its log to
    ``<demo_dir>/mirror.log`` and exits after an hour without requests.

    Raises:
        StacApiError: the mirror is not running and ``start`` is False, the port is used by
            another program, or the mirror did not come up within ``wait`` seconds.
    """
    url = f"http://127.0.0.1:{port}"
    if probe_demo_mirror(url):
        return url
    if not start:
        raise StacApiError(
            f"the offline demo STAC API is not running at {url}; run a partition (it starts the "
            "mirror) or `rasteret-pipelines demo --serve`"
        )
    proc = spawn_demo_mirror(demo_dir, port, months)
    folder = Path(demo_dir).absolute()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if probe_demo_mirror(url):
            return url
        if proc.poll() is not None:
            time.sleep(0.5)  # another process may have taken the port first; give it a moment
            if probe_demo_mirror(url):
                return url
            raise StacApiError(f"the demo mirror could not start on {url}; see {folder / 'mirror.log'}")
        time.sleep(0.2)
    raise StacApiError(f"the demo mirror did not answer at {url} within {wait:.0f} s; see {folder / 'mirror.log'}")


def spawn_demo_mirror(
    demo_dir: str | os.PathLike,
    port: int,
    months: Sequence[str] = ("2024-01", "2024-02", "2024-03"),
    idle_timeout: float = IDLE_TIMEOUT,
) -> subprocess.Popen:
    """Start ``python -m rasteret_pipelines_demo.demo_mirror serve`` detached (own session); returns it at once.

    The world is written first (in this process) if needed; the mirror's output goes to
    ``<demo_dir>/mirror.log``.
    """
    prepare_world(demo_dir, months, log=None)
    folder = Path(demo_dir).absolute()
    cmd = [sys.executable, "-m", "rasteret_pipelines_demo.demo_mirror", "serve", "--demo-dir", str(folder),
           "--port", str(port), "--months", ",".join(months), "--idle-timeout", str(idle_timeout)]
    with open(folder / "mirror.log", "ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True)


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
    """``python -m rasteret_pipelines_demo.demo_mirror serve ...``: the detached demo mirror."""
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
