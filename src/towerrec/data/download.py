"""Fetch a file once, verify it, and never leave a bad or half-written copy.

Bytes go to ``<dest>.part`` in the destination folder; only a complete file
whose size and checksum match moves to ``dest`` (``os.replace`` is atomic).
A ``.part`` left by an interrupted transfer is resumed with an HTTP Range
request when the server honours it, otherwise the download restarts.
Standard library only (``urllib``), so it works wherever Python does.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from towerrec import __version__
from towerrec.errors import DownloadError
from towerrec.fsio import io_errors

CHUNK = 1 << 20
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class _Transient(Exception):
    """A failure worth another attempt (dropped connection, short body, 5xx)."""


def file_digests(path: str | Path, algorithms: tuple[str, ...] = ("sha256",)) -> dict[str, str]:
    """Hex digests of ``path`` for each algorithm, computed in one pass over the file."""
    hashers = {name: hashlib.new(name) for name in algorithms}
    with io_errors(path), open(path, "rb") as f:
        while block := f.read(CHUNK):
            for h in hashers.values():
                h.update(block)
    return {name: h.hexdigest() for name, h in hashers.items()}


def sha256_file(path: str | Path) -> str:
    return file_digests(path)["sha256"]


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 1.0,
) -> Path:
    """Download ``url`` to ``dest`` unless a verified copy is already there.

    ``sha256``/``md5``/``size`` are the pinned expectations (``None`` = not
    known, not checked). A copy already at ``dest`` is re-verified locally and
    replaced if it fails. Connection errors, 5xx answers and transfers cut
    short are retried ``retries`` times, waiting ``backoff * 2**n`` seconds.
    """
    dest = Path(dest)
    if dest.is_file():
        if _mismatch(dest, sha256, md5, size) is None:
            return dest
        with io_errors(dest):
            dest.unlink()
    with io_errors(dest.parent):
        dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with _progress_bar(progress, dest.name) as (bar, task):
        attempt = 0
        while True:
            try:
                _fetch(url, part, timeout, size, bar, task)
                break
            except _Transient as exc:
                attempt += 1
                if attempt > retries:
                    raise DownloadError(
                        f"download of {url} failed after {attempt} attempts: {exc}",
                        hint="check the network and run again; the partial file is kept and resumed",
                    ) from None
                time.sleep(backoff * 2 ** (attempt - 1))
    problem = _mismatch(part, sha256, md5, size)
    if problem is not None:
        with io_errors(part):
            part.unlink()
        raise DownloadError(
            f"{problem} for {url}; the file was deleted",
            hint="run again; if it persists, the file on the server changed",
        )
    with io_errors(dest):
        os.replace(part, dest)
    return dest


def _mismatch(path: Path, sha256: str | None, md5: str | None, size: int | None) -> str | None:
    """Describe how ``path`` differs from the expectations, or ``None`` if it matches."""
    with io_errors(path):
        actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return f"size mismatch: expected {size} bytes, got {actual_size}"
    wanted = {name: value.lower() for name, value in (("sha256", sha256), ("md5", md5)) if value}
    if not wanted:
        return None
    actual = file_digests(path, tuple(wanted))
    for name, expected in wanted.items():
        if actual[name] != expected:
            return f"checksum mismatch: expected {name} {expected}, got {actual[name]}"
    return None


def _fetch(url: str, part: Path, timeout: float, size: int | None, bar: Progress, task: TaskID) -> None:
    """One attempt: append to ``part`` from where it stops, or restart it."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"towerrec/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:  # our partial file is not a prefix of theirs: start over
            part.unlink()
            raise _Transient("server refused to resume (HTTP 416); restarting") from None
        if exc.code in _RETRY_STATUS:
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(f"HTTP {exc.code} {exc.reason} for {url}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, FileNotFoundError):
            raise DownloadError(f"no such file: {url}") from None
        raise _Transient(f"cannot connect: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise _Transient(f"{type(exc).__name__}: {exc}") from None
    with resp:
        status = getattr(resp, "status", None) or 200  # file:// answers without a status
        if status == 206 and _range_start(resp) != offset:
            part.unlink(missing_ok=True)
            raise _Transient("server sent a different byte range; restarting")
        if status != 206:
            offset = 0  # the server ignored the Range header: a full body follows
        length = resp.headers.get("Content-Length")
        expected = offset + int(length) if length is not None else size
        bar.update(task, total=expected, completed=offset)
        received = 0
        with io_errors(part):  # the local file: not writable or disk full is no network hiccup
            handle = open(part, "ab" if offset else "wb")
        with handle as f:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Transient(f"transfer interrupted after {offset + received} bytes: {exc}") from None
                if not chunk:
                    break
                with io_errors(part):
                    f.write(chunk)
                received += len(chunk)
                bar.advance(task, len(chunk))
    if length is not None and received < int(length):
        raise _Transient(f"transfer interrupted after {offset + received} of {expected} bytes")


def _range_start(resp: http.client.HTTPResponse) -> int | None:
    """First byte of a 206 body, from ``Content-Range: bytes START-END/TOTAL``."""
    value = resp.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


@contextmanager
def _progress_bar(enabled: bool, label: str) -> Iterator[tuple[Progress, TaskID]]:
    """A Rich bar on stderr (bytes, rate, time left), or a silent one."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )
    with bar:
        yield bar, bar.add_task(f"downloading {label}", total=None)
