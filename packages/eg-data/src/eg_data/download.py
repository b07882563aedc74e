"""URL list -> webdataset shards: a small parallel downloader on httpx (img2dataset does not install
cleanly in this workspace). Reads parquet, CSV or JSONL url lists (PixMo-Cap's `image_url` / `caption`
columns by default), fetches with timeouts, retries with backoff and a byte cap, keeps only http(s)
URLs and images that decode, optionally downsizes, and writes img2dataset-layout shards with
`{shard}_stats.json` (`successes`, failures by reason). Finished shards are never fetched again.

A URL list cannot turn the downloader on its own host or network: every URL and every redirect target is
resolved before a connection is made, and a name with any loopback, private, link-local, multicast,
reserved or unspecified address is refused (`blocked_address`) unless `allow_private_addresses`. The
connection then goes to the address that was checked, so a second DNS answer cannot swap it
(DNS rebinding).

httpx, tqdm and pyarrow come with the `eg-data[download]` extra and are imported on first use."""

from __future__ import annotations

import contextlib
import csv
import io
import ipaddress
import json
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from PIL import Image

from eg_data.errors import DataError, is_missing, require_extra
from eg_data.shards import ShardInfo, ShardWriter, write_index

if TYPE_CHECKING:
    import httpx

FORMAT_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
REQUEST_DEADLINE_TIMEOUTS = 6  # one attempt (connect, headers, body) ends within this many timeout_s


@dataclass
class DownloadConfig:
    """How rows of a URL list become shards."""

    url_col: str = "image_url"
    """Column of the list holding each image URL."""
    caption_col: str = "caption"
    """Column holding each caption ("" when the list has no captions)."""
    extra_cols: list[str] = field(default_factory=list)
    """Columns copied into each sample's json."""
    num_samples: int = 0
    """Download the first N rows only (0 = all)."""
    samples_per_shard: int = 1000
    """Rows per shard (a shard holds the rows that succeeded)."""
    num_threads: int = 16
    """Concurrent downloads."""
    timeout_s: float = 10.0
    """Timeout of each connect/read operation, in seconds."""
    retries: int = 2
    """Extra attempts after timeouts, connection errors, HTTP 429 and 5xx."""
    backoff_s: float = 0.5
    """Sleep before retry r is backoff_s * 2**r seconds."""
    max_bytes: int = 20_000_000
    """Larger responses are dropped (counted as too_large)."""
    resize_max_side: int = 0
    """Downsize images so the longer side is at most this many pixels (0 = keep the original)."""
    user_agent: str = "edge-glass-data/0.1"
    """The HTTP User-Agent header sent."""
    allow_private_addresses: bool = False
    """Allow URLs and redirects to loopback, private, link-local, multicast and reserved addresses (off:
    they are refused before any connection, counted as blocked_address)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise DataError naming the first bad key (relative to this dataclass)."""
        if not is_missing(self.url_col) and not self.url_col:
            raise DataError("url_col is empty; name the column holding the URLs")
        for key, low in (
            ("num_samples", 0),
            ("samples_per_shard", 1),
            ("num_threads", 1),
            ("retries", 0),
            ("backoff_s", 0),
            ("max_bytes", 1),
            ("resize_max_side", 0),
        ):
            value = getattr(self, key)
            if not is_missing(value) and not value >= low:
                raise DataError(f"{key} must be >= {low}, got {value}")
        if not is_missing(self.timeout_s) and not self.timeout_s > 0:
            raise DataError(f"timeout_s must be > 0, got {self.timeout_s}")


def read_url_list(path: str | Path, cfg: DownloadConfig) -> list[dict[str, Any]]:
    """Rows of a .parquet, .csv or .jsonl file as dicts holding at least `cfg.url_col`."""
    src = Path(path)
    if not src.exists():
        raise DataError(f"url list {src} does not exist")
    suffix = src.suffix.lower()
    if suffix == ".parquet":
        pq = require_extra("pyarrow.parquet", "download", "reading a parquet url list")
        rows = pq.read_table(src).to_pylist()
    elif suffix == ".csv":
        with src.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    elif suffix in (".jsonl", ".json"):
        try:
            rows = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
        except ValueError as exn:
            raise DataError(f"{src} is not JSON lines ({exn})") from exn
    else:
        raise DataError(f"url list {src}: unknown format {suffix!r}; use .parquet, .csv or .jsonl")
    needed = [cfg.url_col] + ([cfg.caption_col] if cfg.caption_col else []) + list(cfg.extra_cols)
    if rows:
        missing = [c for c in needed if c not in rows[0]]
        if missing:
            raise DataError(
                f"{src} lacks column(s) {missing}; found {sorted(rows[0])}; set url_col/caption_col"
            )
    return rows[: cfg.num_samples] if cfg.num_samples > 0 else rows


# the most specific first: 169.254.169.254 is reported link-local, though Python counts it private too
BLOCKING_PROPERTIES = (
    "is_loopback",
    "is_link_local",
    "is_multicast",
    "is_reserved",
    "is_unspecified",
    "is_private",
)


class BlockedAddress(Exception):
    """A URL's host resolves to an address the downloader may not connect to."""


def blocked_property(address: str) -> str:
    """The first of BLOCKING_PROPERTIES an IP address has ("" when it is a public address).

    An IPv4 address mapped into IPv6 (`::ffff:127.0.0.1`) is judged as the IPv4 address it carries."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return next((prop for prop in BLOCKING_PROPERTIES if getattr(ip, prop)), "")


def resolve_checked(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, refused as a whole (BlockedAddress) when any one is blocked: a
    name answering with one public and one private address must not reach the private one."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exn:
        raise OSError(f"cannot resolve {host!r}: {exn}") from exn
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        if prop := blocked_property(address):
            raise BlockedAddress(f"{host} resolves to {address} ({prop.removeprefix('is_')})")
    return addresses


def _guarded_client(httpx: Any, cfg: DownloadConfig) -> httpx.Client:
    """An httpx client (redirects followed, no kept-alive connections) that checks every request's host,
    redirects included, before connecting, and connects to the checked address only."""
    import httpcore  # httpx's own transport layer: installed with httpx

    class GuardedBackend(httpcore.SyncBackend):
        """Resolves and checks the host itself, then connects to the checked address (TLS still
        verifies the certificate against the URL's host name, which httpcore passes separately)."""

        def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
            return super().connect_tcp(resolve_checked(host, port)[0], port, *args, **kwargs)

    def check_request(request: httpx.Request) -> None:
        # Also before a proxy is asked to connect (the proxy resolves the name itself).
        resolve_checked(request.url.host, request.url.port or (443 if request.url.scheme == "https" else 80))

    hooks = {} if cfg.allow_private_addresses else {"request": [check_request]}
    client = httpx.Client(
        follow_redirects=True,
        headers={"user-agent": cfg.user_agent},
        limits=httpx.Limits(max_keepalive_connections=0),
        event_hooks=hooks,
    )
    if not cfg.allow_private_addresses:
        # httpx has no public switch for httpcore's network backend: its transport for direct connections
        # (proxies from the environment have their own) gets ours here; test_download_hostile.py shows
        # the check in effect.
        pool = getattr(client._transport, "_pool", None)
        if not isinstance(pool, httpcore.ConnectionPool):
            raise RuntimeError(f"httpx {httpx.__version__}: no httpcore pool to guard")  # a bug: be loud
        pool._network_backend = GuardedBackend()
    return client


class _Watchdog:
    """Shuts the request's socket down at its deadline, so a server that trickles bytes (each read well
    inside the read timeout) cannot hold a request, its headers included, past the deadline."""

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.fired = False
        self._timer: threading.Timer | None = None

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore trace hook: arm on each new connection (the client keeps none alive)."""
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            sock = info["return_value"].get_extra_info("socket")
            if sock is not None:
                self.cancel()
                self._timer = threading.Timer(max(0.0, self.deadline - time.monotonic()), self._fire, (sock,))
                self._timer.daemon = True
                self._timer.start()

    def _fire(self, sock: socket.socket) -> None:
        self.fired = True
        with contextlib.suppress(OSError):  # already closed: nothing to cut
            sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        """Disarm (the request ended)."""
        if self._timer is not None:
            self._timer.cancel()


def fetch(client: httpx.Client, url: str, cfg: DownloadConfig) -> tuple[bytes | None, str]:
    """Fetch one URL; returns (bytes, "") or (None, failure reason).

    Each attempt must end within REQUEST_DEADLINE_TIMEOUTS x timeout_s in all (reason `timeout`), and
    may redirect only to http(s) (`bad_redirect`) at most httpx's 20 times (`too_many_redirects`). A host
    (first or redirected to) that resolves to a blocked address ends it at once (`blocked_address`).
    """
    import httpx  # the caller made the client: installed

    if urlparse(str(url)).scheme not in ("http", "https"):
        return None, "bad_scheme"
    reason = "unknown"
    for attempt in range(cfg.retries + 1):
        if attempt:
            time.sleep(cfg.backoff_s * 2 ** (attempt - 1))
        deadline = time.monotonic() + REQUEST_DEADLINE_TIMEOUTS * cfg.timeout_s
        watchdog = _Watchdog(deadline)
        try:
            with client.stream(
                "GET", url, timeout=cfg.timeout_s, extensions={"trace": watchdog.trace}
            ) as resp:
                if resp.status_code == 429 or resp.status_code >= 500:
                    reason = f"http_{resp.status_code}"
                    continue
                if resp.status_code != 200:
                    return None, f"http_{resp.status_code}"
                if int(resp.headers.get("content-length", 0) or 0) > cfg.max_bytes:
                    return None, "too_large"
                buf = bytearray()
                for chunk in resp.iter_bytes():
                    buf += chunk
                    if len(buf) > cfg.max_bytes:
                        return None, "too_large"
                    if time.monotonic() > deadline:
                        raise httpx.ReadTimeout("request deadline passed")
                if watchdog.fired:  # a body without a length "ends" when the watchdog cuts the socket
                    raise httpx.ReadTimeout("request deadline passed")
                return bytes(buf), ""
        except BlockedAddress:
            return None, "blocked_address"
        except httpx.UnsupportedProtocol:  # the URL was http(s): a redirect left it
            return None, "bad_redirect"
        except httpx.TooManyRedirects:
            return None, "too_many_redirects"
        except httpx.TimeoutException:
            reason = "timeout"
        except (httpx.HTTPError, OSError):
            reason = "timeout" if watchdog.fired else "connection_error"
        finally:
            watchdog.cancel()
    return None, reason


class _TooManyPixels(Exception):
    pass


def verify_image(data: bytes, resize_max_side: int) -> tuple[bytes, str]:
    """Decode to prove the bytes are an image; returns (bytes, ext), re-encoded when resized or exotic.

    Raises _TooManyPixels, before decoding, for an image over PIL's Image.MAX_IMAGE_PIXELS (where PIL
    itself only warns up to twice that)."""
    with Image.open(io.BytesIO(data)) as img:
        limit = Image.MAX_IMAGE_PIXELS
        if limit and img.width * img.height > limit:
            raise _TooManyPixels
        img.load()
        fmt = img.format or ""
        if resize_max_side > 0 and max(img.size) > resize_max_side:
            img = img.convert("RGB")
            img.thumbnail((resize_max_side, resize_max_side), Image.BICUBIC)
        elif fmt in FORMAT_EXT:
            return data, FORMAT_EXT[fmt]
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=95)
        return buf.getvalue(), "jpg"


def _process(client: httpx.Client, row: dict[str, Any], cfg: DownloadConfig) -> tuple[Any, str]:
    data, reason = fetch(client, str(row[cfg.url_col]), cfg)
    if data is None:
        return None, reason
    try:
        return verify_image(data, cfg.resize_max_side), ""
    except (_TooManyPixels, Image.DecompressionBombError):
        return None, "too_many_pixels"
    except Exception:  # noqa: BLE001 (PIL raises many types on non-image bytes)
        return None, "not_image"


def download_urls(
    input_path: str | Path, out_dir: str | Path, cfg: DownloadConfig | None = None
) -> dict[str, Any]:
    """Download a URL list into shards under `out_dir`; returns and writes `stats.json`.

    Stats: `ok`, `failed` (reason -> count) over all shards, and `shards_fetched` / `shards_skipped`
    for this run (a shard with a `_stats.json` is complete and skipped).
    """
    cfg = cfg or DownloadConfig()
    cfg.validate()
    httpx = require_extra("httpx", "download", "download_urls")
    tqdm = require_extra("tqdm", "download", "download_urls").tqdm
    rows = read_url_list(input_path, cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    num_shards = -(-len(rows) // cfg.samples_per_shard)
    fetched = skipped = 0
    with (
        # one connection per URL (as img2dataset): each gets the deadline watchdog (see fetch)
        _guarded_client(httpx, cfg) as client,
        ThreadPoolExecutor(cfg.num_threads) as pool,
    ):
        bar = tqdm(total=len(rows), desc="download", unit="url")
        for shard in range(num_shards):
            chunk = rows[shard * cfg.samples_per_shard : (shard + 1) * cfg.samples_per_shard]
            stats_path = out / f"{shard:05d}_stats.json"
            if stats_path.exists():
                skipped += 1
                bar.update(len(chunk))
                continue
            failed: Counter[str] = Counter()
            tmp_dir = out / f".{shard:05d}.partial"
            with ShardWriter(tmp_dir, max_samples_per_shard=len(chunk) or 1) as writer:
                for i, (row, (result, reason)) in enumerate(
                    zip(chunk, pool.map(lambda r: _process(client, r, cfg), chunk))
                ):
                    bar.update(1)
                    if result is None:
                        failed[reason] += 1
                        continue
                    key = f"{shard:05d}{i:04d}"
                    meta = {"key": key, "url": str(row[cfg.url_col]), **{c: row[c] for c in cfg.extra_cols}}
                    caption = str(row[cfg.caption_col]) if cfg.caption_col and row[cfg.caption_col] else ""
                    meta["caption"] = caption
                    writer.write(
                        {
                            "key": key,
                            "image": result[0],
                            "image_ext": result[1],
                            "text": caption,
                            "json": meta,
                        }
                    )
            successes = writer.shards[0].num_samples if writer.shards else 0
            if writer.shards:
                (tmp_dir / writer.shards[0].path).replace(out / f"{shard:05d}.tar")
            for leftover in tmp_dir.iterdir():
                leftover.unlink()
            tmp_dir.rmdir()
            stats_path.write_text(
                json.dumps({"successes": successes, "count": len(chunk), "failed": dict(failed)})
            )
            fetched += 1
        bar.close()
    return _summarize(out, num_shards, fetched, skipped)


def _summarize(out: Path, num_shards: int, fetched: int, skipped: int) -> dict[str, Any]:
    ok, failed, shards = 0, Counter(), []
    for shard in range(num_shards):
        stats = json.loads((out / f"{shard:05d}_stats.json").read_text())
        ok += int(stats["successes"])
        failed.update(stats["failed"])
        if stats["successes"] and (out / f"{shard:05d}.tar").exists():
            shards.append(ShardInfo(f"{shard:05d}.tar", int(stats["successes"])))
    write_index(out, shards)
    report = {
        "ok": ok,
        "failed": dict(sorted(failed.items())),
        "shards_fetched": fetched,
        "shards_skipped": skipped,
    }
    (out / "stats.json").write_text(json.dumps(report, indent=1))
    return report
