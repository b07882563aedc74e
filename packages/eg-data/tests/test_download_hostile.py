"""The URL-list downloader against hostile servers on loopback: redirects off http(s), redirect loops, a
huge declared or endless body, bytes trickled forever (in the body or in the headers) and
decompression-bomb images are each refused or cut by the overall per-request deadline, counted under
their own reason, and nothing hangs: every download runs under a hard wall-clock limit."""

from __future__ import annotations

import io
import json
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from eg_data import DownloadConfig, download_urls, read_all
from eg_data.download import REQUEST_DEADLINE_TIMEOUTS
from PIL import Image

pytest.importorskip("httpx", reason="needs the eg-data[download] extra (httpx)")
pytest.importorskip("tqdm", reason="needs the eg-data[download] extra (tqdm)")

TIMEOUT_S = 0.4  # per connect/read operation in these tests
DEADLINE_S = REQUEST_DEADLINE_TIMEOUTS * TIMEOUT_S  # the whole request, headers and body
STOP = threading.Event()  # set when the server shuts down: trickling handlers end


def _png(width: int, height: int, idat: bytes | None = None) -> bytes:
    """A PNG whose header declares width x height; `idat` replaces the (real) pixel data."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    if idat is None:
        buf = io.BytesIO()
        Image.new("RGB", (width, height), (200, 10, 10)).save(buf, format="PNG")
        return buf.getvalue()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


GOOD = _png(24, 24)
# 50000 x 50000 RGB = 7.5 GB decoded, from 100 bytes: PIL refuses it at open (> 2x MAX_IMAGE_PIXELS)
BOMB = _png(50_000, 50_000, zlib.compress(b"\0" * 1000))
# 10000 x 10000 = 1e8 pixels: above MAX_IMAGE_PIXELS (8.9e7) but below 2x, where PIL only warns and
# would allocate 300 MB per decoding thread
BOMB_WARN_ONLY = _png(10_000, 10_000, zlib.compress(b"\0" * 1000))


class Hostile(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        try:
            self._route()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as intended

    def _send(self, body: bytes, ctype: str = "image/png", length: int | None = None) -> None:
        self.send_response(200)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("location", location)
        self.send_header("content-length", "0")
        self.end_headers()

    def _trickle(self, head: bytes) -> None:
        self.wfile.write(head)
        self.wfile.flush()
        while not STOP.is_set():  # one byte every 50 ms: each read succeeds long before timeout_s
            self.wfile.write(b"\0")
            self.wfile.flush()
            time.sleep(0.05)

    def _route(self) -> None:
        path = self.path
        if path == "/good.png":
            self._send(GOOD)
        elif path == "/redirect-file":
            self._redirect("file:///etc/hostname")
        elif path == "/redirect-ftp":
            self._redirect("ftp://127.0.0.1/x.png")
        elif path == "/redirect-loop":
            self._redirect("/redirect-loop")
        elif path == "/huge-declared":
            self._send(GOOD, length=10**13)  # 10 TB declared, a few bytes sent
        elif path == "/endless":  # no length, bytes as fast as the client reads them
            self.send_response(200)
            self.send_header("content-type", "image/png")
            self.send_header("connection", "close")
            self.end_headers()
            while not STOP.is_set():
                self.wfile.write(b"\0" * 65536)
        elif path == "/trickle-body":
            head = b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: 100000\r\n\r\n"
            self._trickle(head + GOOD[:16])
        elif path == "/trickle-unsized":  # no length: the body ends when the connection does
            head = b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\nconnection: close\r\n\r\n"
            self._trickle(head + GOOD[:16])
        elif path == "/trickle-headers":
            self._trickle(b"HTTP/1.1 200 OK\r\nx-padding: ")
        elif path == "/bomb.png":
            self._send(BOMB)
        elif path == "/bomb-warn.png":
            self._send(BOMB_WARN_ONLY)
        else:
            self.send_error(404)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    STOP.clear()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    STOP.set()
    httpd.shutdown()
    httpd.server_close()


def _download_within(limit_s: float, listing: Path, out: Path, cfg: DownloadConfig) -> dict[str, Any]:
    """download_urls in a thread; fails the test (instead of hanging it) past `limit_s` seconds."""
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["report"] = download_urls(listing, out, cfg)
        except BaseException as e:  # noqa: BLE001 (re-raised in the test's thread)
            result["error"] = e

    thread = threading.Thread(target=work, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(limit_s)
    assert not thread.is_alive(), f"download_urls still running after {limit_s} s: it hangs"
    if "error" in result:
        raise result["error"]
    result["report"]["seconds"] = time.monotonic() - started
    return result["report"]


def _listing(tmp_path: Path, urls: list[str]) -> Path:
    path = tmp_path / "list.jsonl"
    path.write_text("\n".join(json.dumps({"image_url": u, "caption": f"c{i}"}) for i, u in enumerate(urls)))
    return path


CASES = [
    ("/redirect-file", "bad_redirect"),
    ("/redirect-ftp", "bad_redirect"),
    ("/redirect-loop", "too_many_redirects"),
    ("/huge-declared", "too_large"),
    ("/endless", "too_large"),
    ("/trickle-body", "timeout"),
    ("/trickle-unsized", "timeout"),
    ("/trickle-headers", "timeout"),
    ("/bomb.png", "too_many_pixels"),
    ("/bomb-warn.png", "too_many_pixels"),
]


@pytest.mark.parametrize("path, reason", CASES, ids=[p.strip("/") for p, _ in CASES])
def test_hostile_url_is_refused_and_counted(tmp_path: Path, server: str, path: str, reason: str) -> None:
    """Guarantee: a hostile response is refused or cut within the overall per-request deadline (plus one
    read timeout), counted under its own reason, and the good URL next to it is still stored."""
    cfg = DownloadConfig(
        allow_private_addresses=True,
        num_threads=2,
        timeout_s=TIMEOUT_S,
        retries=1,
        backoff_s=0.01,
        max_bytes=200_000,
        samples_per_shard=8,
    )
    listing = _listing(tmp_path, [f"{server}{path}", f"{server}/good.png"])
    # two attempts (one retry) of at most the deadline each, plus slack for 2 shared cores
    report = _download_within(2 * (DEADLINE_S + TIMEOUT_S) + 10, listing, tmp_path / "out", cfg)
    assert report["failed"] == {reason: 1}
    assert report["ok"] == 1
    (sample,) = read_all(tmp_path / "out")
    assert sample["png"] == GOOD


def test_trickle_is_cut_by_the_deadline_not_the_read_timeout(tmp_path: Path, server: str) -> None:
    """Guarantee: a body trickled byte by byte (each read well inside timeout_s) ends at the per-request
    deadline: one attempt, no retry, takes about REQUEST_DEADLINE_TIMEOUTS x timeout_s, not forever."""
    cfg = DownloadConfig(
        allow_private_addresses=True, num_threads=1, timeout_s=TIMEOUT_S, retries=0, max_bytes=10_000_000
    )
    listing = _listing(tmp_path, [f"{server}/trickle-body"])
    report = _download_within(DEADLINE_S + 15, listing, tmp_path / "out", cfg)
    assert report["failed"] == {"timeout": 1}
    assert DEADLINE_S - 0.1 <= report["seconds"] <= DEADLINE_S + TIMEOUT_S + 3


def test_all_hostile_urls_in_one_list(tmp_path: Path, server: str) -> None:
    """Guarantee: one list mixing every hostile case with good URLs finishes, with every failure
    counted by reason in stats.json and the good images stored in order."""
    urls = [f"{server}{path}" for path, _ in CASES] + [f"{server}/good.png"] * 3
    cfg = DownloadConfig(
        allow_private_addresses=True,
        num_threads=4,
        timeout_s=TIMEOUT_S,
        retries=0,
        max_bytes=200_000,
        samples_per_shard=len(urls),
    )
    report = _download_within(3 * DEADLINE_S + 20, _listing(tmp_path, urls), tmp_path / "out", cfg)
    expected: dict[str, int] = {}
    for _, reason in CASES:
        expected[reason] = expected.get(reason, 0) + 1
    assert report["failed"] == dict(sorted(expected.items())) and report["ok"] == 3
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["failed"] == report["failed"]
    n = len(CASES)
    assert [s["txt"].decode() for s in read_all(tmp_path / "out")] == [f"c{n}", f"c{n + 1}", f"c{n + 2}"]
