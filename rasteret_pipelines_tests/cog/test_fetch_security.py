"""Hostile servers: redirects never carry credentials to another origin, signatures never reach
a message, and a silent server costs seconds (local servers on 127.0.0.1 only)."""

from __future__ import annotations

import logging
import socket
import threading
import time
import traceback

import numpy as np
import pytest
import rasterio

from rasteret_pipelines.cog import FetchConfig, RangeFetcher, read_header, read_window, run_sync
from rasteret_pipelines.cog.http import _BUCKET_REGIONS
from rasteret_pipelines.errors import CogNotFoundError, FetchError, NotATiffError, UnsafeHrefError
from rasteret_pipelines.redaction import redact
from rasteret_pipelines_tests.cog.cogs import s2_cog
from rasteret_pipelines_tests.scripted_http import ScriptedServer, serve_file

FAST = FetchConfig(max_retries=2, backoff_base=0.001, backoff_max=0.01)
SECRET_PARTS = ("AKIDTRUSTTEST", "trust-secret-key", "SESSION-TOKEN-XYZ", "deadbeefsignature")


def redirect_to(location: str, extra: dict | None = None):
    def route(h):
        h.send_response(307)
        h.send_header("Location", location if "://" in location else location)
        for k, v in (extra or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return route


def status(code: int):
    def route(h):
        h.send_response(code)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return route


@pytest.fixture(scope="module")
def cog(tmp_path_factory):
    return s2_cog(tmp_path_factory.mktemp("sec") / "B04.tif", blocksize=256, seed=3)


@pytest.fixture
def aws_session(monkeypatch, tmp_path):
    """Temporary credentials (with a session token) from the environment only."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTRUSTTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "trust-secret-key")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "SESSION-TOKEN-XYZ")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none-credentials"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    _BUCKET_REGIONS.clear()
    yield monkeypatch
    _BUCKET_REGIONS.clear()


def _credential_headers(headers: dict[str, str]) -> list[str]:
    return sorted(k for k in headers if k in ("authorization", "cookie") or k.startswith("x-amz-"))


# -- redirects -----------------------------------------------------------------------------------


def test_s3_credentials_do_not_follow_a_307_to_another_origin(cog, aws_session):
    data = cog.read_bytes()
    with ScriptedServer(serve_file(data)) as other:
        with ScriptedServer(redirect_to(f"{other.origin}/landing/B04.tif")) as endpoint:
            aws_session.setenv("AWS_ENDPOINT_URL_S3", endpoint.origin)
            header = read_header("s3://bucket/scene/B04.tif", config=FAST)
            pixels = read_window(header, (0, 0, 300, 200), config=FAST)
        sent_to_endpoint = endpoint.seen[0][1]
        assert "authorization" in sent_to_endpoint and "x-amz-security-token" in sent_to_endpoint
        assert sent_to_endpoint["x-amz-security-token"] == "SESSION-TOKEN-XYZ"
        assert other.seen, "the redirect was not followed"
        for path, headers in other.seen:
            assert _credential_headers(headers) == [], (path, headers)
            assert not any(s in v for v in headers.values() for s in SECRET_PARTS)
            assert headers["range"].startswith("bytes=")
    with rasterio.open(cog) as src:
        np.testing.assert_array_equal(pixels, src.read(window=((0, 200), (0, 300))))


def test_credentials_stay_on_a_same_origin_redirect(cog, aws_session):
    data = cog.read_bytes()

    def route(h):
        if h.path.startswith("/moved/"):
            serve_file(data)(h)
        else:
            redirect_to("/moved" + h.path)(h)

    with ScriptedServer(route) as endpoint:
        aws_session.setenv("AWS_ENDPOINT_URL_S3", endpoint.origin)
        read_header("s3://bucket/B04.tif", config=FAST)
    moved = [headers for path, headers in endpoint.seen if path.startswith("/moved/")]
    assert moved and all(h.get("x-amz-security-token") == "SESSION-TOKEN-XYZ" for h in moved)


def test_a_cookie_set_before_a_redirect_is_never_sent(cog):
    data = cog.read_bytes()
    with ScriptedServer(serve_file(data)) as other:
        route = redirect_to(f"{other.origin}/B04.tif", {"Set-Cookie": "session=s3cr3t; Path=/"})
        with ScriptedServer(route) as first:
            read_header(f"{first.origin}/B04.tif", config=FAST)
            read_header(f"{first.origin}/B04.tif", config=FAST)
    assert all("cookie" not in h for _, h in first.seen + other.seen)


def test_a_redirect_loop_fails_after_a_bounded_number_of_requests():
    holder = {}

    def route(h):
        redirect_to(f"{holder['origin']}/loop{len(holder.setdefault('n', []))}")(h)
        holder["n"].append(1)

    config = FetchConfig(max_retries=3, max_redirects=4, backoff_base=0.001)
    with ScriptedServer(route) as srv:
        holder["origin"] = srv.origin
        with pytest.raises(FetchError, match="redirects"):
            read_header(f"{srv.origin}/start.tif", config=config)
    assert len(srv.seen) == 5  # the request and 4 redirects, not retried


def test_a_redirect_to_a_local_file_is_not_followed(tmp_path):
    secret = tmp_path / "secret.tif"
    secret.write_bytes(b"II*\x00 local secret")
    with ScriptedServer(redirect_to(f"file://{secret}")) as srv:
        with pytest.raises(FetchError) as info:
            read_header(f"{srv.origin}/x.tif", config=FAST)
    assert "local secret" not in str(info.value)


# -- redaction ----------------------------------------------------------------------------------

PRESIGNED_QUERY = (
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDTRUSTTEST%2F20250101%2Fus-west-2%2Fs3"
    "%2Faws4_request&X-Amz-Date=20250101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
    "&X-Amz-Security-Token=SESSION-TOKEN-XYZ&X-Amz-Signature=deadbeefsignature"
)


def _assert_clean(text: str) -> None:
    for part in SECRET_PARTS:
        assert part not in text, text


@pytest.mark.parametrize(("code", "error"), [(403, FetchError), (404, CogNotFoundError), (503, FetchError)])
def test_presigned_signatures_never_reach_an_error_message(code, error, caplog):
    caplog.set_level(logging.DEBUG)
    with ScriptedServer(status(code)) as srv:
        href = f"{srv.origin}/scene/B04.tif{PRESIGNED_QUERY}"
        with pytest.raises(error) as info:
            read_header(href, config=FAST)
    exc = info.value
    assert "/scene/B04.tif" in str(exc)  # the object is still named
    assert "X-Amz-Signature=REDACTED" in str(exc)
    for text in (str(exc), repr(exc), exc.href, "".join(traceback.format_exception(exc)), caplog.text):
        _assert_clean(text)
    assert srv.seen[0][0].endswith("deadbeefsignature")  # the real URL was requested


def test_a_presigned_non_tiff_is_named_without_its_signature():
    def route(h):
        h.send_response(200)
        h.send_header("Content-Length", "20")
        h.end_headers()
        h.wfile.write(b"<html>not a tiff</ht")

    with ScriptedServer(route) as srv:
        with pytest.raises(NotATiffError) as info:
            read_header(f"{srv.origin}/a.tif{PRESIGNED_QUERY}", config=FAST)
    _assert_clean(str(info.value))


@pytest.mark.parametrize(
    ("text", "kept", "gone"),
    [
        ("https://b.blob.core.windows.net/c/x.tif?sv=2022&se=2025&sig=AbC%2Bd%3D", "sv=2022", "AbC"),
        ("https://h/x.tif?token=eyJhbGciOi.x.y&band=4", "band=4", "eyJhbGciOi"),
        ("https://h/x.tif?access_token=abc123", "/x.tif", "abc123"),
        ("https://storage.googleapis.com/b/x.tif?X-Goog-Signature=0a1b2c", "/b/x.tif", "0a1b2c"),
        ("https://user:hunter2@h.example/x.tif", "h.example/x.tif", "hunter2"),
        ("s3://bucket/key.tif failed: x-amz-security-token: FQoGZXIvYXdz", "s3://bucket/key.tif", "FQoGZXIvYXdz"),
        ("{'Authorization': 'AWS4-HMAC-SHA256 Credential=AKID/x'}", "Authorization", "AKID"),
        ("https://h/x.tif?token=v1:abc:def&x=1", "&x=1", "abc"),
        ("https://h/x.tif?X-Amz-Signature=abc: bytes 0-5 failed", "=REDACTED: bytes 0-5 failed", "abc"),
    ],
)
def test_redact(text, kept, gone):
    out = redact(text)
    assert kept in out and gone not in out, out
    assert redact(out) == out


# -- deadlines ----------------------------------------------------------------------------------


class SilentServer:
    """Accepts connections and never answers (nor closes them)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.stop = False

    def _run(self):
        self.sock.settimeout(0.1)
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(conn)

    def __enter__(self):
        self.thread.start()
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join(2)
        for c in self.accepted:
            c.close()
        self.sock.close()


def test_a_silent_server_costs_a_bounded_number_of_attempts():
    config = FetchConfig(idle_timeout=0.5, backoff_base=0.001, backoff_max=0.01)
    silent = SilentServer()
    with silent as url:
        with pytest.raises(FetchError, match="no complete answer in 2 attempts") as info:
            read_header(f"{url}/x.tif", config=config)
    assert len(silent.accepted) == 2  # timeout_retries=1: one retry, then the error
    assert "idle_timeout 0.5 s" in str(info.value)


def test_default_deadlines_bound_a_silent_server_to_seconds():
    c = FetchConfig()
    worst = (c.timeout_retries + 1) * c.idle_timeout + c.timeout_retries * c.backoff_max
    assert worst <= 15
    assert c.read_timeout <= 60


def test_a_server_dripping_bytes_hits_the_per_attempt_deadline():
    def route(h):
        h.send_response(206)
        h.send_header("Content-Range", "bytes 0-65535/100000")
        h.send_header("Content-Length", "65536")
        h.end_headers()
        try:
            for _ in range(200):  # one byte every 0.1 s: never idle, never done
                h.wfile.write(b"I")
                h.wfile.flush()
                time.sleep(0.1)
        except OSError:
            hung_up.append(h.path)  # the client closed the connection mid-drip
        finally:
            ended.release()

    hung_up: list[str] = []
    ended = threading.Semaphore(0)
    config = FetchConfig(read_timeout=1.0, idle_timeout=0.5, backoff_base=0.001, backoff_max=0.01)
    with ScriptedServer(route) as srv:
        with pytest.raises(FetchError, match="read_timeout 1 s"):
            read_header(f"{srv.origin}/drip.tif", config=config)
        for _ in range(2):  # both drips end, by the client's hang-up or (a failure) by running dry
            assert ended.acquire(timeout=60)
    assert len(srv.seen) == 2
    assert hung_up == ["/drip.tif", "/drip.tif"]  # each attempt gave up before its drip ran dry


# -- local hrefs at the fetcher ------------------------------------------------------------------


def test_the_fetcher_refuses_local_hrefs_when_local_files_is_off(cog, tmp_path):
    missing = tmp_path / "missing.tif"
    config = FetchConfig(local_files=False)

    async def read(href):
        async with RangeFetcher(config) as fetcher:
            return await fetcher.get_range(href, 0, 16)

    messages = []
    for href in (str(cog), f"file://{cog}", str(missing), "/etc/passwd"):
        with pytest.raises(UnsafeHrefError) as info:
            run_sync(read(href))
        messages.append(str(info.value).replace(href, "<href>"))
    assert len(set(messages)) == 1  # existing and missing files are refused alike
    # The engine called directly on a path (the default) still reads it.
    assert read_header(str(cog)).width > 0


# -- bodies larger than asked --------------------------------------------------------------------


def test_a_server_ignoring_range_is_read_only_up_to_the_range_end(cog):
    """A 200 with a huge body (the server ignores Range): only the bytes up to the range end
    are read, and the pixels still equal rasterio's."""
    data = cog.read_bytes()
    sent = {"bytes": 0}

    def route(h):
        h.send_response(200)
        h.send_header("Content-Length", str(len(data) + (1 << 30)))  # a 1 GiB tail never sent
        h.send_header("ETag", '"v1"')
        h.end_headers()
        try:
            h.wfile.write(data)
            sent["bytes"] += len(data)
            for _ in range(1024):
                h.wfile.write(b"\0" * (1 << 20))
                sent["bytes"] += 1 << 20
        except OSError:
            pass

    with ScriptedServer(route) as srv:
        header = read_header(f"{srv.origin}/B04.tif", config=FAST)
        pixels = read_window(header, (0, 0, 100, 100), config=FAST)
    assert header.size == len(data) + (1 << 30)  # the declared size is the version's size
    with rasterio.open(cog) as src:
        np.testing.assert_array_equal(pixels, src.read(window=((0, 100), (0, 100))))
    assert sent["bytes"] < 256 << 20  # the connection was dropped long before the 1 GiB tail


def test_a_range_sent_in_http_chunks_reads_whole(cog):
    """A 206 in chunked transfer encoding (no Content-Length), each range cut into small HTTP
    chunks: the header and the tiles are read whole, and the pixels equal rasterio's."""
    data = cog.read_bytes()

    def route(h):
        start, end = (int(v) for v in h.headers["Range"].removeprefix("bytes=").split("-"))
        end = min(end, len(data) - 1)
        body = data[start : end + 1]
        h.protocol_version = "HTTP/1.1"
        h.send_response(206)
        h.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header("ETag", '"v1"')
        h.send_header("Connection", "close")
        h.end_headers()
        for i in range(0, len(body), 1000):
            piece = body[i : i + 1000]
            h.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        h.wfile.write(b"0\r\n\r\n")

    with ScriptedServer(route) as srv:
        header = read_header(f"{srv.origin}/B04.tif", config=FAST)
        pixels = read_window(header, (0, 0, 600, 600), config=FAST)
    with rasterio.open(cog) as src:
        np.testing.assert_array_equal(pixels, src.read(window=((0, 600), (0, 600))))


def test_a_206_longer_than_asked_is_refused():
    def route(h):
        h.send_response(206)
        h.send_header("Content-Range", "bytes 0-1048575/2000000")
        h.send_header("Content-Length", str(1 << 20))
        h.end_headers()
        h.wfile.write(b"II*\x00" + b"\0" * ((1 << 20) - 4))

    with ScriptedServer(route) as srv:
        with pytest.raises(FetchError, match="the server sent more"):
            read_header(f"{srv.origin}/x.tif", config=FAST)
