"""Hostile servers through the real `apps/data urls` command on loopback: redirects off http(s), a huge
declared body, a body trickled forever and a decompression-bomb image are refused or cut by the
per-request deadline, counted by reason in the printed report and stats.json, and the command ends
(a subprocess timeout fails the test instead of hanging it). eg-data's own tests cover each case alone
(packages/eg-data/tests/test_download_hostile.py)."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import REPO, app_env

STOP = threading.Event()


def _png(width: int, height: int, idat: bytes | None = None) -> bytes:
    """A real PNG, or (with `idat`) one whose header declares width x height over a few bytes."""
    if idat is None:
        buf = io.BytesIO()
        Image.new("RGB", (width, height), (0, 120, 0)).save(buf, format="PNG")
        return buf.getvalue()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


GOOD = _png(16, 16)
BOMB = _png(50_000, 50_000, zlib.compress(b"\0" * 1000))  # 7.5 GB decoded from ~100 bytes


class Hostile(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        try:
            self._route()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as intended

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _route(self) -> None:
        if self.path == "/good.png":
            self._head(200, {"content-type": "image/png", "content-length": str(len(GOOD))})
            self.wfile.write(GOOD)
        elif self.path == "/to-file":
            self._head(302, {"location": "file:///etc/passwd", "content-length": "0"})
        elif self.path == "/to-gopher":
            self._head(302, {"location": "gopher://127.0.0.1/x.png", "content-length": "0"})
        elif self.path == "/huge":
            self._head(200, {"content-type": "image/png", "content-length": str(10**13)})
            self.wfile.write(GOOD)
        elif self.path == "/trickle":  # a byte every 50 ms: every read is well inside the read timeout
            self._head(200, {"content-type": "image/png", "content-length": "100000"})
            while not STOP.is_set():
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(0.05)
        elif self.path == "/bomb.png":
            self._head(200, {"content-type": "image/png", "content-length": str(len(BOMB))})
            self.wfile.write(BOMB)
        else:
            self.send_error(404)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server():
    STOP.clear()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    STOP.set()
    httpd.shutdown()
    httpd.server_close()


def test_data_app_refuses_hostile_urls_and_ends(tmp_path: Path, server: str) -> None:
    """Guarantee: `apps/data urls` over a list of hostile URLs and one good one ends within a bounded
    time (the trickle is cut by the per-request deadline, 6 x timeout_s), stores the good image, and
    reports each failure under its reason: bad_redirect (file://, gopher://), too_large (10 TB declared),
    timeout (trickle), too_many_pixels (a PNG declaring 50000 x 50000)."""
    paths = ["/to-file", "/to-gopher", "/huge", "/trickle", "/bomb.png", "/good.png"]
    listing = tmp_path / "list.jsonl"
    listing.write_text("\n".join(json.dumps({"image_url": server + p, "caption": p}) for p in paths))
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "apps" / "data"),
            "urls",
            "--input",
            str(listing),
            "--out",
            str(tmp_path / "out"),
        ]
        + ["--set", "timeout_s=0.4", "--set", "retries=0", "--set", "num_threads=2"]
        + ["--set", "allow_private_addresses=true"],  # the server is on loopback
        check=False,
        cwd=tmp_path,
        env=app_env(),
        capture_output=True,
        text=True,
        timeout=90,  # a hang fails here
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert time.monotonic() - started < 60
    report = json.loads(done.stdout)
    want = {"bad_redirect": 2, "timeout": 1, "too_large": 1, "too_many_pixels": 1}
    assert report["failed"] == want and report["ok"] == 1
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["failed"] == want
