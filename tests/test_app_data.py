"""apps/data end to end: --help, the `urls` command against a loopback server, and a user error printed
as one line with exit status 2 (the `demo` command's builder is covered by eg-data's own tests)."""

import io
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def run_app(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "apps" / "data"), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        cwd=ROOT,
    )


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/good.png":
            self.send_error(404)
            return
        buf = io.BytesIO()
        Image.new("RGB", (24, 24), (0, 200, 0)).save(buf, format="PNG")
        self.send_response(200)
        self.send_header("content-length", str(len(buf.getvalue())))
        self.end_headers()
        self.wfile.write(buf.getvalue())

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_help_lists_both_commands():
    result = run_app("--help")
    assert result.returncode == 0 and "demo" in result.stdout and "urls" in result.stdout
    help_text = run_app("urls", "--help").stdout
    for key in ("num_samples", "timeout_s", "num_threads", "backoff_s", "user_agent", "extra_cols"):
        assert key in help_text  # every DownloadConfig field is settable with --set


def test_urls_command_writes_shards(tmp_path, server):
    listing = tmp_path / "list.csv"
    listing.write_text(
        f"image_url,caption\n{server}/good.png,a green square\n{server}/gone.png,lost\n"
        f"{server}/good.png,third\n"
    )
    result = run_app(
        "urls",
        "--input",
        str(listing),
        "--out",
        str(tmp_path / "out"),
        "--set",
        "num_samples=2",
        "--set",
        "timeout_s=5",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] == 1 and report["failed"] == {"http_404": 1}
    index = json.loads((tmp_path / "out" / "shards.json").read_text())
    assert index["num_samples"] == 1


def test_bad_setting_is_refused_naming_the_key(tmp_path):
    result = run_app("urls", "--input", "x.csv", "--out", str(tmp_path / "o"), "--set", "timeout_s=abc")
    assert result.returncode == 2 and "timeout_s" in result.stderr and "Traceback" not in result.stderr
    result = run_app("urls", "--input", "x.csv", "--out", str(tmp_path / "o"), "--set", "threads=4")
    assert result.returncode == 2 and "threads" in result.stderr
    assert not (tmp_path / "o").exists()


def test_user_error_is_one_line_and_exit_2(tmp_path):
    result = run_app("urls", "--input", str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "missing.parquet" in result.stderr
    assert "Traceback" not in result.stderr
