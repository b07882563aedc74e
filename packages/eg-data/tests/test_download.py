"""The URL-list downloader against a loopback HTTP server: good images land in shards, every failure
is counted by reason, a second run fetches nothing, and list formats/columns are read as configured.

Needs the `eg-data[download]` extra (httpx, tqdm; pyarrow for parquet lists)."""

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from eg_data import DataError, DownloadConfig, download_urls, load_index, read_all, read_url_list
from PIL import Image

pytest.importorskip("httpx", reason="needs the eg-data[download] extra (httpx)")
pytest.importorskip("tqdm", reason="needs the eg-data[download] extra (tqdm)")


def _png(color: int, size: int = 40) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (color, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


BIG = _png(7, size=300) + b"\0" * 50_000


class Handler(BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self):
        Handler.hits.append(self.path)
        if self.path.startswith("/img"):
            body, ctype = _png(int(self.path[4:7])), "image/png"
        elif self.path == "/slow":
            time.sleep(1.0)
            body, ctype = _png(1), "image/png"
        elif self.path == "/text":
            body, ctype = b"<html>not an image</html>", "text/html"
        elif self.path == "/big":
            body, ctype = BIG, "image/png"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (byte cap or timeout), as intended

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Handler.hits = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_good_bad_and_resume(tmp_path, server):
    urls = [
        f"{server}/img010",
        f"{server}/missing",
        f"{server}/img020",
        f"{server}/slow",
        f"{server}/text",
        f"{server}/big",
        "ftp://127.0.0.1/x.png",
        f"{server}/img030",
        "file:///etc/hostname",
    ]
    listing = tmp_path / "list.jsonl"
    listing.write_text(
        "\n".join(json.dumps({"image_url": u, "caption": f"cap {i}"}) for i, u in enumerate(urls))
    )
    cfg = DownloadConfig(
        allow_private_addresses=True,
        samples_per_shard=4,
        num_threads=4,
        timeout_s=0.3,
        retries=1,
        backoff_s=0.05,
        max_bytes=20_000,
    )
    out = tmp_path / "out"
    report = download_urls(listing, out, cfg)
    assert report["ok"] == 3
    assert report["failed"] == {"bad_scheme": 2, "http_404": 1, "not_image": 1, "timeout": 1, "too_large": 1}
    assert report["shards_fetched"] == 3 and report["shards_skipped"] == 0
    assert Handler.hits.count("/slow") == 2  # one retry after the timeout
    samples = read_all(out)
    assert [json.loads(s["json"])["url"] for s in samples] == [urls[0], urls[2], urls[7]]
    assert [s["txt"].decode() for s in samples] == ["cap 0", "cap 2", "cap 7"]
    assert samples[1]["png"] == _png(20)  # stored as served
    assert [s.num_samples for s in load_index(out)] == [2, 1]  # shard 1 holds no success
    hits = len(Handler.hits)
    again = download_urls(listing, out, cfg)
    assert len(Handler.hits) == hits  # nothing fetched again
    assert again["shards_skipped"] == 3 and again["ok"] == 3 and again["failed"] == report["failed"]


def test_csv_parquet_columns_and_resize(tmp_path, server):
    pa = pytest.importorskip("pyarrow", reason="needs the eg-data[download] extra (pyarrow)")
    pq = pytest.importorskip("pyarrow.parquet", reason="needs the eg-data[download] extra (pyarrow)")
    table = pa.table({"url": [f"{server}/img100", f"{server}/img200"], "text": ["a", "b"], "src": ["x", "y"]})
    pq.write_table(table, tmp_path / "l.parquet")
    cfg = DownloadConfig(
        allow_private_addresses=True,
        url_col="url",
        caption_col="text",
        extra_cols=["src"],
        resize_max_side=16,
        num_samples=1,
        timeout_s=2.0,
    )
    report = download_urls(tmp_path / "l.parquet", tmp_path / "o", cfg)
    assert report["ok"] == 1
    (sample,) = read_all(tmp_path / "o")
    assert json.loads(sample["json"])["src"] == "x"
    assert Image.open(io.BytesIO(sample["jpg"])).size == (16, 16)
    (tmp_path / "l.csv").write_text("url,text,src\nhttp://a/b.png,hello,z\n")
    assert read_url_list(tmp_path / "l.csv", cfg)[0]["text"] == "hello"
    with pytest.raises(DataError, match="lacks column"):
        read_url_list(tmp_path / "l.csv", DownloadConfig())
    (tmp_path / "l.txt").write_text("x")
    with pytest.raises(DataError, match="unknown format"):
        read_url_list(tmp_path / "l.txt", cfg)
