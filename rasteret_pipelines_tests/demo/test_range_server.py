"""The test HTTP server itself: ranges, validators, latency, faults, request log."""

from __future__ import annotations

import asyncio
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from rasteret_pipelines_demo import range_server as rs
from rasteret_pipelines_demo.range_server import FAULT_KINDS, FaultPlan, RangeServer

SIZE = 1000


@pytest.fixture
def root(tmp_path: Path) -> Path:
    served = tmp_path / "served"
    (served / "sub dir").mkdir(parents=True)
    (served / "data.bin").write_bytes(bytes(range(256)) * 3 + bytes(SIZE - 768))
    (served / "sub dir" / "x y.bin").write_bytes(b"hello world")
    (served / "empty.bin").write_bytes(b"")
    (tmp_path / "outside.txt").write_text("secret")
    return served


@pytest.fixture
def server(root: Path):
    with RangeServer(root) as srv:
        yield srv


def get(url: str, headers: dict[str, str] | None = None, method: str = "GET"):
    """Return (status, headers, body) with urllib, HTTP errors included."""
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def raw_get(srv: RangeServer, raw_path: str) -> int:
    """Send a request line with a path that clients would normalise; return the status."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.putrequest("GET", raw_path, skip_host=False, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


# --- plain GET / HEAD ---------------------------------------------------------------------------


def test_full_get_sends_whole_file_with_validators(server: RangeServer, root: Path):
    status, headers, body = get(server.url_for("data.bin"))
    assert status == 200
    assert body == (root / "data.bin").read_bytes()
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["Content-Length"] == str(SIZE)
    assert "Content-Range" not in headers
    etag = headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
    st = os.stat(root / "data.bin")
    assert etag == f'"{st.st_mtime_ns:x}-{st.st_size:x}"' == server.etag_for("data.bin")
    assert headers["Last-Modified"].endswith("GMT")


def test_url_for_quotes_and_accepts_absolute_paths(server: RangeServer, root: Path):
    url = server.url_for("sub dir/x y.bin")
    assert url == f"{server.url}/sub%20dir/x%20y.bin"
    assert server.url_for(root / "sub dir" / "x y.bin") == url
    assert get(url)[2] == b"hello world"
    assert server.url.startswith("http://127.0.0.1:")


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-9", 0, 9),
        ("bytes=10-19", 10, 19),
        ("bytes=999-999", 999, 999),
        ("bytes=990-", 990, 999),
        ("bytes=0-", 0, 999),
        ("bytes=-10", 990, 999),
        ("bytes=-1", 999, 999),
        ("bytes=-5000", 0, 999),  # suffix longer than the file: the whole file
        ("bytes=500-5000", 500, 999),  # end past EOF is clamped
    ],
)
def test_range_requests(server: RangeServer, root: Path, header: str, start: int, end: int):
    data = (root / "data.bin").read_bytes()
    status, headers, body = get(server.url_for("data.bin"), {"Range": header})
    assert status == 206
    assert headers["Content-Range"] == f"bytes {start}-{end}/{SIZE}"
    assert headers["Content-Length"] == str(end - start + 1)
    assert body == data[start : end + 1]
    (rec,) = server.requests
    assert rec.range == (start, end)
    assert rec.range_header == header
    assert rec.status == 206 and rec.bytes_sent == end - start + 1


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=1000-1010", "bytes=5000-6000", "bytes=-0"])
def test_unsatisfiable_range_is_416(server: RangeServer, header: str):
    status, headers, body = get(server.url_for("data.bin"), {"Range": header})
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{SIZE}"
    assert server.requests[-1].status == 416
    assert server.requests[-1].range is None


def test_suffix_range_of_empty_file_is_416(server: RangeServer):
    assert get(server.url_for("empty.bin"), {"Range": "bytes=-10"})[0] == 416
    status, headers, body = get(server.url_for("empty.bin"))
    assert (status, headers["Content-Length"], body) == (200, "0", b"")


@pytest.mark.parametrize("header", ["items=0-9", "bytes=9-0", "bytes=a-b", "bytes=0-1,5-6", "bytes="])
def test_unusable_range_header_is_ignored(server: RangeServer, root: Path, header: str):
    status, headers, body = get(server.url_for("data.bin"), {"Range": header})
    assert status == 200
    assert body == (root / "data.bin").read_bytes()
    assert server.requests[-1].range is None


def test_head(server: RangeServer):
    status, headers, body = get(server.url_for("data.bin"), method="HEAD")
    assert (status, body) == (200, b"")
    assert headers["Content-Length"] == str(SIZE)
    assert headers["ETag"] == server.etag_for("data.bin")
    status, headers, body = get(server.url_for("data.bin"), {"Range": "bytes=-16"}, method="HEAD")
    assert (status, body) == (206, b"")
    assert headers["Content-Range"] == f"bytes 984-999/{SIZE}"
    assert [r.bytes_sent for r in server.requests] == [0, 0]
    assert server.count("HEAD") == 2 and server.count("GET") == 0


def test_other_methods_are_405(server: RangeServer):
    assert get(server.url_for("data.bin"), method="POST")[0] == 405


# --- 404 and path traversal ---------------------------------------------------------------------


def test_missing_file_is_404(server: RangeServer):
    assert get(server.url_for("nope.bin"))[0] == 404
    assert get(server.url_for("nope.bin"), {"Range": "bytes=0-1"})[0] == 404
    assert get(server.url_for("sub dir"))[0] == 404  # directories are not served
    assert get(server.url + "/")[0] == 404
    assert [r.status for r in server.requests] == [404, 404, 404, 404]


@pytest.mark.parametrize(
    "raw_path", ["/../outside.txt", "/sub%20dir/../../outside.txt", "/%2e%2e/outside.txt", "/..%2foutside.txt"]
)
def test_path_traversal_is_refused(server: RangeServer, raw_path: str):
    assert raw_get(server, raw_path) in (400, 404)


def test_symlink_out_of_root_is_refused(server: RangeServer, root: Path):
    link = root / "link.txt"
    try:
        link.symlink_to(root.parent / "outside.txt")
    except OSError:
        pytest.skip("symlinks not available")
    assert get(server.url_for("link.txt"))[0] == 404


def test_large_sparse_file_serves_only_requested_bytes(server: RangeServer, root: Path, monkeypatch):
    """A range of a multi-GB file is answered without reading the rest of it."""
    size = 5 * 1024**3
    big = root / "big.bin"
    with open(big, "wb") as fh:
        fh.truncate(size)
        fh.seek(size - 4)
        fh.write(b"TAIL")
    read_bytes = []
    real_pread = rs._pread

    def counting_pread(fh, offset, n):
        read_bytes.append(n)
        return real_pread(fh, offset, n)

    monkeypatch.setattr(rs, "_pread", counting_pread)
    status, headers, body = get(server.url_for("big.bin"), {"Range": "bytes=-8"})
    assert (status, body) == (206, b"\0\0\0\0TAIL")
    assert headers["Content-Range"] == f"bytes {size - 8}-{size - 1}/{size}"
    status, _, body = get(server.url_for("big.bin"), {"Range": "bytes=4096-4099"})
    assert (status, body) == (206, b"\0\0\0\0")
    # sendfile(2) hands the kernel exactly the range; the fallback reads exactly the range
    assert [r.bytes_sent for r in server.requests if r.path == "/big.bin"] == [8, 4]
    assert sum(read_bytes) in (0, 12)


def test_a_file_shorter_than_its_stat_ends_the_body_short(server: RangeServer, root: Path, monkeypatch):
    """A file that shrinks between the stat and the send: the body stops where the file does
    and the connection closes, so the client sees a short body, never padding."""
    (root / "shrinking.bin").write_bytes(b"x" * 100)
    resolve = server._resolve

    class StaleStat(type(Path())):
        def stat(self, **kwargs):
            st = super().stat(**kwargs)
            # the size before it shrank (what the server reads of a stat: size and times)
            return SimpleNamespace(st_size=1000, st_mtime=st.st_mtime, st_mtime_ns=st.st_mtime_ns)

    monkeypatch.setattr(
        server, "_resolve", lambda rel: StaleStat(resolve(rel)) if rel == "shrinking.bin" else resolve(rel)
    )
    with pytest.raises(http.client.IncompleteRead) as info:
        get(server.url_for("shrinking.bin"))
    assert info.value.partial == b"x" * 100
    assert server.requests[-1].bytes_sent == 100


# --- ETag / If-Match / changed objects ----------------------------------------------------------


def test_if_match(server: RangeServer):
    url = server.url_for("data.bin")
    etag = server.etag_for("data.bin")
    assert get(url, {"If-Match": etag, "Range": "bytes=0-3"})[0] == 206
    assert get(url, {"If-Match": f'"nope", {etag}'})[0] == 200
    assert get(url, {"If-Match": "*"})[0] == 200
    status, headers, _ = get(url, {"If-Match": '"nope"', "Range": "bytes=0-3"})
    assert status == 412
    assert headers["ETag"] == etag
    assert get(url, {"If-Match": "W/" + etag})[0] == 412  # weak tags never match strongly
    assert server.requests[-1].status == 412


def test_rewritten_file_changes_etag(server: RangeServer, root: Path):
    url = server.url_for("data.bin")
    old = get(url)[1]["ETag"]
    # same size, rewritten immediately: replace_file still guarantees a new tag
    new = server.replace_file("data.bin", bytes(SIZE))
    assert new != old
    assert get(url)[1]["ETag"] == new
    assert get(url, {"If-Match": old})[0] == 412
    # a plain rewrite with a different size changes the tag as well
    (root / "data.bin").write_bytes(b"shorter")
    status, headers, body = get(url)
    assert body == b"shorter" and headers["ETag"] not in (old, new)


# --- request log --------------------------------------------------------------------------------


def test_request_log(server: RangeServer):
    get(server.url_for("data.bin"), {"Range": "bytes=0-99", "X-Test": "1"})
    get(server.url_for("data.bin"), method="HEAD")
    get(server.url_for("sub dir/x y.bin"))
    first = server.requests[0]
    assert first.method == "GET" and first.path == "/data.bin"
    assert first.range == (0, 99) and first.status == 206 and first.bytes_sent == 100
    assert first.headers["X-Test"] == "1" and first.headers["Range"] == "bytes=0-99"
    assert first.fault is None
    assert server.requests[2].path == "/sub dir/x y.bin"
    assert server.count() == 2
    assert server.count("GET", "data.bin") == 1
    assert server.count("GET", "/data.bin") == 1
    assert server.count(None, "data.bin") == 2
    assert server.count("HEAD") == 1
    server.reset_log()
    assert server.requests == [] and server.count(None) == 0


# --- latency ------------------------------------------------------------------------------------


async def _fetch_many(urls: list[str], headers: dict[str, str] | None = None) -> list[bytes]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:

        async def one(url: str) -> bytes:
            async with session.get(url, headers=headers) as resp:
                assert resp.status == 206
                return await resp.read()

        return await asyncio.gather(*(one(u) for u in urls))


def test_latency_does_not_serialise_requests(server: RangeServer, monkeypatch):
    # Count the requests that are inside their injected latency at once: a latency that blocked
    # the server's loop (or a lock around it) would never let a second one in.
    waiting, most = 0, 0
    delay_and_draw = server._delay_and_draw_fault

    async def counted(relpath):
        nonlocal waiting, most
        waiting += 1
        most = max(most, waiting)
        try:
            return await delay_and_draw(relpath)
        finally:
            waiting -= 1

    monkeypatch.setattr(server, "_delay_and_draw_fault", counted)
    server.latency = 0.5
    url = server.url_for("data.bin")
    bodies = asyncio.run(_fetch_many([url] * 20, {"Range": "bytes=0-9"}))
    assert len(bodies) == 20 and all(b == bytes(range(10)) for b in bodies)
    assert server.count("GET") == 20
    assert most > 1, "the requests waited their latency one after another"


def test_latency_is_applied_and_settable_at_runtime(root: Path, server_waits):
    with RangeServer(root, latency=0.2) as srv:
        get(srv.url_for("data.bin"))
        assert server_waits == [0.2]
        srv.latency = 0.0
        get(srv.url_for("data.bin"))
        assert server_waits == [0.2], "no wait once the latency is 0"
        srv.latency = 0.01
        get(srv.url_for("data.bin"))
        assert server_waits == [0.2, 0.01]


# --- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["500", "503", "429"])
def test_status_faults(server: RangeServer, kind: str):
    server.faults = FaultPlan(rate=1.0, kinds=[kind], seed=0)
    status, headers, _ = get(server.url_for("data.bin"), {"Range": "bytes=0-9"})
    assert status == int(kind)
    assert headers["Retry-After"] == "0"
    (rec,) = server.requests
    assert rec.fault == kind and rec.status == int(kind)
    server.faults = None
    assert get(server.url_for("data.bin"), {"Range": "bytes=0-9"})[0] == 206
    assert server.requests[-1].fault is None


def test_reset_fault_urllib(server: RangeServer):
    server.faults = FaultPlan(rate=1.0, kinds=["reset"], seed=0)
    with pytest.raises((ConnectionError, http.client.HTTPException, urllib.error.URLError)):
        get(server.url_for("data.bin"))
    (rec,) = server.requests
    assert rec.fault == "reset" and rec.status is None and rec.bytes_sent == 0


def test_reset_fault_aiohttp(server: RangeServer):
    server.faults = FaultPlan(rate=1.0, kinds=["reset"], seed=0)

    async def go():
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url_for("data.bin"), headers={"Range": "bytes=0-9"}) as r:
                await r.read()

    with pytest.raises((aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)):
        asyncio.run(go())
    assert server.requests[-1].fault == "reset"


def test_truncate_fault_aiohttp(server: RangeServer):
    server.faults = FaultPlan(rate=1.0, kinds=["truncate"], seed=0)
    seen = {}

    async def go():
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url_for("data.bin"), headers={"Range": "bytes=0-99"}) as r:
                seen["status"] = r.status
                seen["length"] = r.headers["Content-Length"]
                seen["range"] = r.headers["Content-Range"]
                await r.read()

    with pytest.raises(aiohttp.ClientPayloadError):
        asyncio.run(go())
    assert seen == {"status": 206, "length": "100", "range": f"bytes 0-99/{SIZE}"}
    (rec,) = server.requests
    assert rec.fault == "truncate" and rec.status == 206 and rec.bytes_sent == 50


def test_truncate_fault_urllib(server: RangeServer):
    server.faults = FaultPlan(rate=1.0, kinds=["truncate"], seed=0)
    with pytest.raises(http.client.IncompleteRead) as info:
        get(server.url_for("data.bin"))
    assert len(info.value.partial) == SIZE // 2


def test_truncate_on_head_is_a_reset(server: RangeServer):
    server.faults = FaultPlan(rate=1.0, kinds=["truncate"], seed=0)
    with pytest.raises((ConnectionError, http.client.HTTPException, urllib.error.URLError)):
        get(server.url_for("data.bin"), method="HEAD")
    assert server.requests[-1].fault == "reset"


def _fault_sequence(root: Path, plan: FaultPlan, n: int) -> list[str | None]:
    with RangeServer(root, faults=plan) as srv:
        for _ in range(n):
            try:
                get(srv.url_for("data.bin"), {"Range": "bytes=0-9"})
            except (ConnectionError, http.client.HTTPException, urllib.error.URLError):
                pass
        return [r.fault for r in srv.requests]


def test_faults_are_deterministic_for_a_seed(root: Path):
    first = _fault_sequence(root, FaultPlan(0.4, FAULT_KINDS, seed=7), 40)
    second = _fault_sequence(root, FaultPlan(0.4, FAULT_KINDS, seed=7), 40)
    other = _fault_sequence(root, FaultPlan(0.4, FAULT_KINDS, seed=8), 40)
    assert first == second
    assert first != other
    assert 0 < sum(f is not None for f in first) < 40
    # the plan alone reproduces the server's decisions
    plan = FaultPlan(0.4, FAULT_KINDS, seed=7)
    expected = [plan.draw("data.bin") for _ in range(40)]
    assert first == expected


def test_max_faults_and_paths_filter(root: Path):
    plan = FaultPlan(1.0, ["503"], seed=0, max_faults=2, paths=["sub dir/*"])
    with RangeServer(root, faults=plan) as srv:
        assert get(srv.url_for("data.bin"))[0] == 200  # not matched by the filter
        statuses = [get(srv.url_for("sub dir/x y.bin"))[0] for _ in range(4)]
        assert statuses == [503, 503, 200, 200]
        assert plan.injected == 2
        assert [r.fault for r in srv.requests] == [None, "503", "503", None, None]
        plan.reset()
        assert get(srv.url_for("sub dir/x y.bin"))[0] == 503
    callable_plan = FaultPlan(1.0, ["500"], seed=0, paths=lambda p: p.endswith(".bin") and "x" in p)
    assert callable_plan.draw("sub dir/x y.bin") == "500"
    assert callable_plan.draw("data.bin") is None


def test_fault_plan_validates_arguments():
    with pytest.raises(ValueError, match=r"rate must be within \[0, 1\], got 1.5"):
        FaultPlan(1.5, ["500"], seed=0)
    with pytest.raises(ValueError, match=r"unknown fault kinds \['404'\]"):
        FaultPlan(0.5, ["404"], seed=0)
    with pytest.raises(ValueError, match="kinds must not be empty"):
        FaultPlan(0.5, [], seed=0)


# --- lifecycle ----------------------------------------------------------------------------------


def test_start_stop(root: Path):
    srv = RangeServer(root)
    with pytest.raises(RuntimeError, match="RangeServer is not running"):
        _ = srv.url
    srv.start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            srv.start()
        assert get(srv.url_for("data.bin"))[0] == 200
    finally:
        srv.stop()
    srv.stop()  # idempotent
    with pytest.raises(NotADirectoryError):
        RangeServer(root / "data.bin")


def test_works_beside_a_running_event_loop(server: RangeServer):
    """A test running its own loop can use the server: it lives on another thread's loop."""

    async def go():
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url_for("data.bin"), headers={"Range": "bytes=-4"}) as r:
                return r.status, await r.read()

    assert asyncio.run(go()) == (206, bytes(4))
