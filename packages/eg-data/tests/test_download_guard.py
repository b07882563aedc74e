"""The downloader cannot be turned on its own host: URLs and redirect targets that resolve to loopback,
private, link-local, multicast, reserved or unspecified addresses are refused before any connection is
made (counted as `blocked_address`), unless `allow_private_addresses`; and the connection goes to the
address that was checked, so a second DNS answer (rebinding) is checked again."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from eg_data import DownloadConfig, download_urls, read_all
from eg_data import download as dl

pytest.importorskip("httpx", reason="needs the eg-data[download] extra (httpx)")
pytest.importorskip("tqdm", reason="needs the eg-data[download] extra (tqdm)")


@pytest.mark.parametrize(
    "address, prop",
    [
        ("127.0.0.1", "is_loopback"),
        ("127.0.0.2", "is_loopback"),
        ("::1", "is_loopback"),
        ("::ffff:127.0.0.1", "is_loopback"),  # IPv4 mapped into IPv6 is judged as the IPv4 address
        ("10.1.2.3", "is_private"),
        ("172.16.0.1", "is_private"),
        ("192.168.1.1", "is_private"),
        ("fd00::1", "is_private"),
        ("169.254.169.254", "is_link_local"),  # the cloud metadata address
        ("fe80::1%eth0", "is_link_local"),
        ("224.0.0.1", "is_multicast"),
        ("ff02::1", "is_multicast"),
        ("240.0.0.1", "is_reserved"),  # class E
        ("0.0.0.0", "is_unspecified"),
        ("8.8.8.8", ""),
        ("2001:4860:4860::8888", ""),
        ("93.184.216.34", ""),
    ],
)
def test_blocked_property_of_addresses(address: str, prop: str) -> None:
    assert dl.blocked_property(address) == prop


class Counting:
    """A TCP listener on loopback that counts the connections it accepts (and answers none)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_server((host, 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Counting]:
    server = Counting()
    yield server
    server.close()


def _listing(tmp_path: Path, urls: list[str]) -> Path:
    path = tmp_path / "list.jsonl"
    path.write_text("\n".join(json.dumps({"image_url": u, "caption": f"c{i}"}) for i, u in enumerate(urls)))
    return path


def _cfg(**kw: Any) -> DownloadConfig:
    return DownloadConfig(**{"num_threads": 1, "timeout_s": 2.0, "retries": 2, "backoff_s": 0.01, **kw})


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
def test_loopback_url_is_refused_without_any_connection(
    tmp_path: Path, listener: Counting, host: str
) -> None:
    """With the option off (the default), a loopback URL, by address or by name, is refused before a
    connection is made (the listener accepts none), counted once (no retry) as blocked_address."""
    report = download_urls(
        _listing(tmp_path, [f"http://{host}:{listener.port}/x.png"]), tmp_path / "o", _cfg()
    )
    assert report["failed"] == {"blocked_address": 1} and report["ok"] == 0
    assert listener.accepted == 0


def test_private_address_literal_is_refused(tmp_path: Path) -> None:
    """No connection is even tried for a private or link-local literal (these would hang until the
    connect timeout if one were tried on this machine's closed network)."""
    urls = ["http://10.255.255.1/x.png", "http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/x"]
    report = download_urls(_listing(tmp_path, urls), tmp_path / "o", _cfg(timeout_s=30.0))
    assert report["failed"] == {"blocked_address": 3}


GOOD_PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"
    b"\x00\x00\x00\x0cIDATx\x9cc\xf8\xcf\xc0\x00\x00\x03\x01\x01\x00\xc9\xfe\x92\xef\x00\x00\x00\x00IEND"
    b"\xaeB`\x82"
)


def _http_server(host: str, routes: dict[str, tuple[int, dict[str, str], bytes]]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, headers, body = routes.get(self.path, (404, {}, b""))
            self.send_response(status)
            for k, v in {**headers, "content-length": str(len(body))}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer((host, 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture
def public_127_0_0_1(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let 127.0.0.1 pass as a public address (these machines reach no real one), while every other
    loopback address, 127.0.0.2 included, stays blocked: a stand-in for a public server."""
    real = dl.blocked_property
    monkeypatch.setattr(dl, "blocked_property", lambda a: "" if a == "127.0.0.1" else real(a))


def test_redirect_to_a_blocked_address_is_refused(tmp_path: Path, public_127_0_0_1: None) -> None:
    """A 'public' server redirecting to a loopback and to a private address: each redirect target is
    checked before its connection; the loopback target accepts none; the good URL beside them is stored."""
    target = Counting("127.0.0.2")
    origin = _http_server(
        "127.0.0.1",
        {
            "/to-loopback": (302, {"location": f"http://127.0.0.2:{target.port}/x.png"}, b""),
            "/to-private": (302, {"location": "http://10.255.255.1/x.png"}, b""),
            "/good.png": (200, {"content-type": "image/png"}, GOOD_PNG),
        },
    )
    base = f"http://127.0.0.1:{origin.server_address[1]}"
    try:
        urls = [f"{base}/to-loopback", f"{base}/to-private", f"{base}/good.png"]
        report = download_urls(_listing(tmp_path, urls), tmp_path / "o", _cfg())
    finally:
        origin.shutdown()
        origin.server_close()
        target.close()
    assert report["failed"] == {"blocked_address": 2} and report["ok"] == 1
    assert target.accepted == 0
    assert [s["png"] for s in read_all(tmp_path / "o")] == [GOOD_PNG]


def test_connection_goes_to_the_checked_address_after_rebinding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, public_127_0_0_1: None
) -> None:
    """A name that answers 'public' to the first lookup and loopback to the next (DNS rebinding): the
    connection step resolves and checks again and connects only to an address it checked, so the
    loopback listener is never reached."""
    target = Counting("127.0.0.2")
    answers = iter(["127.0.0.1", "127.0.0.2", "127.0.0.2", "127.0.0.2", "127.0.0.2", "127.0.0.2"])
    real_getaddrinfo = socket.getaddrinfo

    def rebinding(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.test":
            return real_getaddrinfo(next(answers), port, *args, **kwargs)
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(dl.socket, "getaddrinfo", rebinding)
    try:
        report = download_urls(
            _listing(tmp_path, [f"http://rebind.test:{target.port}/x.png"]), tmp_path / "o", _cfg()
        )
    finally:
        target.close()
    assert report["failed"] == {"blocked_address": 1}
    assert target.accepted == 0


def test_allow_private_addresses_reaches_loopback(tmp_path: Path) -> None:
    """With the option on, a loopback server is fetched as before (how the other tests run)."""
    origin = _http_server("127.0.0.1", {"/good.png": (200, {"content-type": "image/png"}, GOOD_PNG)})
    try:
        url = f"http://127.0.0.1:{origin.server_address[1]}/good.png"
        report = download_urls(_listing(tmp_path, [url]), tmp_path / "o", _cfg(allow_private_addresses=True))
    finally:
        origin.shutdown()
        origin.server_close()
    assert report == {"ok": 1, "failed": {}, "shards_fetched": 1, "shards_skipped": 0}
