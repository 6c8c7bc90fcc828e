"""download(): a local HTTP server stands in for GroupLens; nothing touches the internet."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from towerrec.data.download import download, sha256_file
from towerrec.errors import DownloadError


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ml-test/u.data", "".join(f"{u}\t{i}\t3\t{880000000 + u}\n" for u in range(50) for i in range(20)))
    return buf.getvalue()


PAYLOAD = _zip_bytes()
SHA = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class Server:
    """Serves PAYLOAD at /data.zip.

    ``mode``: ok, no-range (ignores Range), bad-range (answers 206 from byte 0),
    cut-once / cut-always (sends half the body, then closes), or an HTTP status.
    """

    def __init__(self) -> None:
        self.mode: str | int = "ok"
        self.requests: list[str | None] = []  # the Range header of each request
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.requests.append(self.headers.get("Range"))
                server.handle(self)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data.zip"

    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        if isinstance(self.mode, int):
            h.send_error(self.mode)
            return
        start = 0
        rng = h.headers.get("Range")
        if rng and self.mode not in ("no-range", "bad-range"):
            start = int(rng.removeprefix("bytes=").split("-")[0])
        body = PAYLOAD[start:]
        h.send_response(206 if start or (rng and self.mode == "bad-range") else 200)
        if start or (rng and self.mode == "bad-range"):
            h.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        cut = self.mode == "cut-always" or (self.mode == "cut-once" and len(self.requests) == 1)
        h.wfile.write(body[: len(body) // 2] if cut else body)
        h.close_connection = True


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def fetch(url: str, dest: Path, **kw: object) -> Path:
    kw = {"sha256": SHA, "progress": False, "backoff": 0.0, **kw}
    return download(url, dest, **kw)  # type: ignore[arg-type]


def test_downloads_verifies_and_reuses_the_cached_file(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "data.zip"
    assert fetch(server.url, dest, md5=MD5, size=len(PAYLOAD)) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("data.zip.part").exists()
    assert fetch(server.url, dest) == dest
    assert len(server.requests) == 1  # second call verified locally, no request


def test_a_corrupted_cached_file_is_downloaded_again(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "data.zip"
    dest.write_bytes(b"garbage")
    fetch(server.url, dest)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests) == 1


def test_checksum_mismatch_deletes_the_file_and_names_both_hashes(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "data.zip"
    wrong = "0" * 64
    with pytest.raises(DownloadError) as info:
        fetch(server.url, dest, sha256=wrong)
    message = str(info.value)
    assert server.url in message and wrong in message and SHA in message
    assert not dest.exists() and not dest.with_name("data.zip.part").exists()


def test_md5_mismatch_is_caught_when_no_sha256_is_pinned(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="expected md5 f+, got " + MD5):
        fetch(server.url, tmp_path / "data.zip", sha256=None, md5="f" * 32)


def test_size_mismatch_is_an_error(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=f"expected {len(PAYLOAD) + 1} bytes, got {len(PAYLOAD)}"):
        fetch(server.url, tmp_path / "data.zip", sha256=None, size=len(PAYLOAD) + 1)
    assert list(tmp_path.iterdir()) == []


def test_not_found_fails_at_once(server: Server, tmp_path: Path) -> None:
    server.mode = 404
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        fetch(server.url, tmp_path / "data.zip", retries=3)
    assert server.url in str(info.value)
    assert len(server.requests) == 1


def test_server_error_is_retried_then_reported(server: Server, tmp_path: Path) -> None:
    server.mode = 500
    with pytest.raises(DownloadError, match="failed after 3 attempts: HTTP 500"):
        fetch(server.url, tmp_path / "data.zip", retries=2)
    assert len(server.requests) == 3
    assert not (tmp_path / "data.zip").exists()


def test_interrupted_transfer_resumes_with_a_range_request(server: Server, tmp_path: Path) -> None:
    server.mode = "cut-once"
    dest = fetch(server.url, tmp_path / "data.zip")
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [None, f"bytes={len(PAYLOAD) // 2}-"]


def test_interrupted_transfer_restarts_when_the_server_ignores_range(server: Server, tmp_path: Path) -> None:
    server.mode = "no-range"
    stale = b"stale bytes from another file"
    (tmp_path / "data.zip.part").write_bytes(stale)
    dest = fetch(server.url, tmp_path / "data.zip")
    assert dest.read_bytes() == PAYLOAD  # the 200 answer replaced the partial file, not appended
    assert server.requests == [f"bytes={len(stale)}-"]


def test_a_206_for_the_wrong_range_restarts_cleanly(server: Server, tmp_path: Path) -> None:
    server.mode = "bad-range"
    (tmp_path / "data.zip.part").write_bytes(PAYLOAD[:100])
    dest = fetch(server.url, tmp_path / "data.zip")
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == ["bytes=100-", None]


def test_transfer_cut_every_time_gives_a_clear_error(server: Server, tmp_path: Path) -> None:
    server.mode = "cut-always"
    with pytest.raises(DownloadError, match="failed after 3 attempts: transfer interrupted after"):
        fetch(server.url, tmp_path / "data.zip", retries=2)
    assert not (tmp_path / "data.zip").exists()
    # each attempt resumed from where the previous one stopped
    assert server.requests[0] is None and all(r and r.startswith("bytes=") for r in server.requests[1:])


def test_file_url(tmp_path: Path) -> None:
    src = tmp_path / "src.zip"
    src.write_bytes(PAYLOAD)
    dest = fetch(src.as_uri(), tmp_path / "out" / "data.zip")
    assert sha256_file(dest) == SHA


def test_missing_file_url_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="no such file"):
        fetch((tmp_path / "absent.zip").as_uri(), tmp_path / "data.zip")
