"""apps/data end to end: --help, the `urls` command against a loopback server, `speak` over a process
pool, `audio-captions` with a bad file, and user errors printed as one line with exit status 2 (the
builders themselves are covered by eg-data's own tests)."""

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


def test_help_lists_every_command():
    result = run_app("--help")
    assert result.returncode == 0
    for command in ("demo", "urls", "speak", "audio-captions"):
        assert command in result.stdout
    help_text = run_app("urls", "--help").stdout
    for key in ("num_samples", "timeout_s", "num_threads", "backoff_s", "user_agent", "extra_cols"):
        assert key in help_text  # every DownloadConfig field is settable with --set
    help_text = run_app("speak", "--help").stdout
    for key in ("voices", "rate_min", "pitch_max", "max_words", "max_seconds", "num_workers", "seed"):
        assert key in help_text
    help_text = run_app("audio-captions", "--help").stdout
    for key in ("file_col", "file_format", "caption_cols", "min_peak", "samples_per_shard"):
        assert key in help_text


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
        "--set",
        "allow_private_addresses=true",  # the server is on loopback
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


def test_speak_command_over_a_process_pool(tmp_path):
    """Two worker processes, three shards; the report is JSON on stdout and the output loads."""
    pytest.importorskip("espeakng_loader", reason="needs eg-data[demo] (espeakng-loader)")
    from eg_data import ShardWriter, read_all

    with ShardWriter(tmp_path / "in", 2) as writer:
        for i in range(6):
            writer.write({"key": f"k{i}", "text": "" if i == 5 else f"caption number {i}", "json": {"i": i}})
    result = run_app(
        "speak", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--set", "num_workers=2"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] == 5 and report["failed"] == {"empty_caption": 1} and report["shards_written"] == 3
    samples = read_all(tmp_path / "out")
    assert [s["__key__"] for s in samples] == ["k0", "k1", "k2", "k3", "k4"]
    assert all("flac" in s and json.loads(s["json"])["speech"]["seconds"] > 0.5 for s in samples)
    result = run_app(
        "speak", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "o2"), "--set", "rate_min=0"
    )
    assert (
        result.returncode == 2
        and result.stderr.startswith("error: ")
        and "rate_min must be >= 1" in result.stderr
    )


def test_audio_captions_command_counts_a_bad_file(tmp_path):
    import numpy as np
    import soundfile

    audio = tmp_path / "audio"
    audio.mkdir()
    soundfile.write(audio / "ok.wav", 0.2 * np.sin(np.arange(16000) / 5.0), 16000)
    (audio / "bad.wav").write_bytes(b"not a wav")
    table = tmp_path / "clotho.csv"
    table.write_text("file_name,caption_1,caption_2\nok.wav,a hum,a tone\nbad.wav,broken,\n")
    args = ["--input", str(table), "--audio-dir", str(audio), "--out", str(tmp_path / "out")]
    result = run_app("audio-captions", *args, "--set", "num_workers=1")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] == 1 and report["failed"] == {"unreadable": 1}
    assert report["examples"] == {"unreadable": "bad.wav"}
    result = run_app("audio-captions", *args[:4], "--out", str(tmp_path / "o2"), "--set", "file_col=name")
    assert result.returncode == 2 and "lacks column(s) ['name']" in result.stderr
