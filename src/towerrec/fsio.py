"""Safe file-system primitives for every artefact towerrec reads or writes.

One place for the rules the rest of the package relies on:

- **Exact paths.** :func:`read_parquet` / :func:`read_csv` open the file they are given;
  Polars would otherwise expand ``[ ] * ?`` in a path as a glob pattern and silently
  read other files.
- **Atomic writes.** :func:`atomic_write_text` / :func:`atomic_write_bytes` write a
  sibling temporary file, fsync it and ``os.replace`` it over the target, so a reader
  sees the old file or the new one, never half of one.
- **Deleting only what we wrote.** :func:`replace_dir` swaps a finished staging folder
  in for an existing towerrec folder: the old folder must carry towerrec's marker file
  (its manifest), and it is renamed aside, not deleted, until the new one is in place.
  :func:`check_replaceable` runs the same checks before any work starts, and
  :func:`replacing` wraps the whole write (lock, staging folder, swap, clean-up).
- **Checksums.** :func:`checksums` records the SHA-256 of each file a folder holds;
  :func:`verify_checksums` recomputes them on load and raises one clear error naming
  the damaged file.
- **Locks.** :func:`locked` is an inter-process file lock (the ``filelock`` library)
  around caches and run folders; a second process waits, saying who it waits for.
- **I/O errors.** :func:`io_error` turns an ``OSError`` into a one-line
  :class:`~towerrec.errors.TowerrecError` naming the path and the reason.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import polars as pl

from towerrec.errors import DataError, TowerrecError, first_line, listing

STAGING_MARK = ".towerrec-staging"
"""File written into every staging folder, so a leftover one can be proven ours and removed."""

_CHUNK = 1 << 20


# --------------------------------------------------------------------------- errors


_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "a file stands where a folder is needed",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOSPC: "no space left on the device",
    errno.EROFS: "read-only file system",
    errno.EEXIST: "already exists",
    errno.ENOTEMPTY: "folder is not empty",
    errno.EDQUOT: "disk quota exceeded",
}


def io_error(exc: OSError, path: str | Path | None = None, hint: str | None = None) -> TowerrecError:
    """``exc`` as a one-line user error: ``<path>: <reason>`` plus a hint.

    Args:
        exc: the ``OSError`` (``PermissionError``, ``NotADirectoryError``, ...).
        path: the path to name; defaults to the exception's own ``filename``.
        hint: what to do next; a sensible default is chosen per error number.
    """
    where = path if path is not None else (exc.filename if exc.filename is not None else "")
    reason = _REASONS.get(exc.errno or -1) or (exc.strerror or str(exc)).lower()
    if hint is None:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            hint = "check the file's permissions, or choose another location"
        elif exc.errno == errno.ENOTDIR:
            hint = "a path component is a file: choose a folder path"
        elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
            hint = "free some space, or choose another location"
    return TowerrecError(f"{where}: {reason}" if str(where) else reason, hint=hint)


@contextlib.contextmanager
def io_errors(path: str | Path | None = None, hint: str | None = None) -> Iterator[None]:
    """Context manager: any ``OSError`` inside becomes :func:`io_error` (``UnicodeDecodeError`` too)."""
    try:
        yield
    except TowerrecError:
        raise
    except UnicodeDecodeError as exc:
        raise TowerrecError(f"{path}: not a UTF-8 text file (byte {exc.start})", hint=hint) from exc
    except OSError as exc:
        raise io_error(exc, path, hint) from exc


def read_text(path: str | Path, *, hint: str | None = None) -> str:
    """A UTF-8 text file's content; unreadable or binary files raise one clear error."""
    with io_errors(path, hint):
        return Path(path).read_text(encoding="utf-8")


# --------------------------------------------------------------------------- exact-path readers


def read_parquet(path: str | Path, *, hint: str | None = None, **options) -> pl.DataFrame:
    """Read exactly the Parquet file ``path`` (no glob expansion); Polars options pass through.

    Raises:
        DataError: the file is missing, unreadable or not valid Parquet; names the file.
    """
    return _read(pl.read_parquet, "unreadable Parquet ({})", path, hint, options)


def read_csv(path: str | Path, *, hint: str | None = None, **options) -> pl.DataFrame:
    """Read exactly the CSV file ``path`` (no glob expansion); Polars options pass through.

    Raises:
        DataError: the file is missing, unreadable or malformed; names the file.
    """
    return _read(pl.read_csv, "cannot read: {}", path, hint, options)


def _read(reader, message: str, path: str | Path, hint: str | None, options: dict) -> pl.DataFrame:
    """``reader`` on an open handle of exactly ``path``: Polars never sees a path it could glob."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return reader(handle, **options)
    except OSError as exc:
        raise io_error(exc, path, hint) from exc
    except pl.exceptions.PolarsError as exc:
        raise DataError(message.format(first_line(exc)), file=path, hint=hint) from exc


# --------------------------------------------------------------------------- atomic writes


def atomic_write_file(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write ``path`` atomically through ``write(temporary_path)``: a fresh sibling file,
    fsynced, then ``os.replace``-d over ``path`` (for writers that only take a path)."""
    path = Path(path)
    with io_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            write(Path(tmp))
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary sibling + fsync + ``os.replace``)."""
    return atomic_write_file(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


# --------------------------------------------------------------------------- checksums


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, streamed in 1 MiB chunks."""
    return hash_file_into(hashlib.sha256(), path).hexdigest()


def hash_file_into(digest, path: str | Path):
    """Feed a file's bytes to a ``hashlib`` ``digest`` in 1 MiB chunks; returns ``digest``."""
    with io_errors(path), open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest


def checksums(folder: str | Path, names: Iterable[str]) -> dict[str, str]:
    """``{relative name: sha256}`` for the named files of ``folder`` (sorted by name)."""
    folder = Path(folder)
    return {name: sha256_file(folder / name) for name in sorted(names)}


def verify_checksums(folder: str | Path, recorded: dict[str, str], *, hint: str) -> None:
    """Recompute each recorded checksum; the first missing or changed file raises.

    Raises:
        TowerrecError: ``<folder>/<file>: damaged or changed since towerrec wrote it
            (SHA-256 abcd… ≠ 1234…)`` with ``hint``.
    """
    folder = Path(folder)
    for name, expected in recorded.items():
        path = folder / name
        if not path.is_file():
            raise TowerrecError(f"{path}: missing (listed in the manifest)", hint=hint)
        actual = sha256_file(path)
        if actual != expected:
            raise TowerrecError(
                f"{path}: damaged or changed since towerrec wrote it (SHA-256 {actual[:12]}… ≠ {expected[:12]}…)",
                hint=hint,
            )


# --------------------------------------------------------------------------- folders we own


def _is_cwd_or_ancestor(path: Path) -> bool:
    try:
        cwd = Path.cwd().resolve()
    except OSError:
        return False
    target = path.resolve()
    return target == cwd or target in cwd.parents


def check_replaceable(
    target: str | Path,
    marker: str,
    *,
    what: str,
    option: str = "--out",
    protect: Iterable[str | Path] = (),
    known: Iterable[str] = (),
) -> None:
    """Refuse, before any work, to write ``target`` where that would destroy foreign data.

    ``target`` may be absent, an empty folder, or a folder towerrec wrote: it holds
    ``marker`` (e.g. ``dataset.json``) and nothing but the files that manifest's
    ``checksums`` list (or the ``known`` names towerrec writes there). Anything else
    raises, as does a target that is the current folder or one of its parents, or one
    that contains a ``protect``ed path (the input being read).

    Raises:
        TowerrecError: naming the folder and what it holds.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise TowerrecError(f"{option} {target}: is a file, not a folder", hint=f"choose a folder path for {option}")
    if _is_cwd_or_ancestor(target) and target.exists() and any(target.iterdir()):
        raise TowerrecError(
            f"{option} {target}: refusing to replace the current folder (or one above it)",
            hint=f"choose a new folder for {option}",
        )
    resolved = target.resolve()
    for path in protect:
        p = Path(path).resolve()
        if p == resolved or resolved in p.parents:
            raise TowerrecError(
                f"{option} {target}: holds the input {path}; writing there would delete it",
                hint=f"choose another folder for {option}",
            )
    if not target.is_dir():
        return
    with io_errors(target):
        entries = sorted(entry.name for entry in target.iterdir())
    if entries and marker not in entries:
        raise TowerrecError(
            f"{option} {target}: exists and is not a towerrec {what} folder (holds {listing(entries)})",
            hint=f"choose another {option}, or empty that folder first",
        )
    foreign = [name for name in entries if name not in _owned_names(target / marker, known)] if entries else []
    if foreign:
        raise TowerrecError(
            f"{option} {target}: holds files towerrec did not write ({listing(foreign)}); replacing the "
            f"{what} would delete them",
            hint=f"move those files out of {target}, or choose another {option}",
        )


def _owned_names(manifest: Path, known: Iterable[str]) -> set[str]:
    """Names in a towerrec folder that towerrec wrote: the manifest, what its ``checksums`` list, ``known``."""
    import json

    owned = {manifest.name, STAGING_MARK, *known}
    try:
        recorded = json.loads(manifest.read_text(encoding="utf-8")).get("checksums")
    except (OSError, ValueError, AttributeError):
        return owned
    if isinstance(recorded, dict):
        owned.update(str(name).split("/", 1)[0] for name in recorded)
    return owned


def staging_dir(target: str | Path, *, lock_held: bool = False) -> Path:
    """A fresh, marked scratch folder beside ``target``; removes our own leftovers of it.

    With ``lock_held`` (the caller holds :func:`locked` on ``target``) every leftover is a
    dead writer's and goes; otherwise only those older than an hour.
    """
    target = Path(target)
    with io_errors(target.parent):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(target, older_than_s=0.0 if lock_held else 3600.0)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
        (tmp / STAGING_MARK).write_text(str(os.getpid()))
    return tmp


def remove_leftovers(target: str | Path, older_than_s: float = 3600.0) -> None:
    """Delete staging/aside folders of ``target`` left by a crash: only those carrying our mark.

    A folder younger than ``older_than_s`` may belong to a writer still running and is kept
    (callers that hold the target's lock pass 0). If ``target`` itself is missing because a
    writer died between moving the old folder aside and moving the new one in, the old
    folder is put back first.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return
    now = time.time()
    if not target.exists():  # a crash between "old aside" and "new in": put the old folder back
        for entry in sorted(target.parent.glob(f".{glob_escape(target.name)}.old-*")):
            if (entry / STAGING_MARK).is_file() and (entry / "old").is_dir():
                with contextlib.suppress(OSError):
                    os.replace(entry / "old", target)
                    break
    for entry in target.parent.glob(f".{glob_escape(target.name)}.*"):
        if entry.is_dir() and (entry / STAGING_MARK).is_file():
            with contextlib.suppress(OSError):
                if now - (entry / STAGING_MARK).stat().st_mtime >= older_than_s:
                    shutil.rmtree(entry, ignore_errors=True)


def glob_escape(name: str) -> str:
    """``name`` with glob metacharacters escaped for :meth:`Path.glob`."""
    return "".join(f"[{c}]" if c in "[]*?" else c for c in name)


def replace_dir(staging: str | Path, target: str | Path, marker: str, *, what: str, option: str = "--out",
                known: Iterable[str] = ()) -> Path:
    """Put the finished folder ``staging`` in place of ``target``, never losing the old one.

    The old ``target`` (which must be absent, empty, or hold ``marker``) is renamed aside,
    the new folder renamed in, and only then the old one deleted. A crash at any point
    leaves either the old or the new folder complete at ``target`` (plus, at worst, a
    marked leftover that the next writer removes).

    Raises:
        TowerrecError: ``target`` holds data towerrec did not write (see :func:`check_replaceable`).
    """
    staging, target = Path(staging), Path(target)
    check_replaceable(target, marker, what=what, option=option, known=known)
    aside = None
    with io_errors(target):
        try:
            if target.exists():
                aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
                (aside / STAGING_MARK).write_text(str(os.getpid()))
                os.replace(target, aside / "old")
            os.replace(staging, target)
        except BaseException:
            if aside is not None and (aside / "old").exists() and not target.exists():
                os.replace(aside / "old", target)  # put the old folder back
            raise
        finally:
            if aside is not None and not (aside / "old").exists():
                shutil.rmtree(aside, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (target / STAGING_MARK).unlink()
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    return target


@contextlib.contextmanager
def replacing(target: str | Path, marker: str, *, what: str, option: str = "--out",
              known: Iterable[str] = ()) -> Iterator[Path]:
    """Write a new version of the towerrec folder ``target``: the body fills the yielded staging folder.

    Holds ``target``'s lock throughout; when the body returns, :func:`replace_dir` swaps the
    staging folder in; when it raises, the staging folder is discarded and ``target`` is
    untouched. Usage::

        with fsio.replacing(out, "bundle.json", what="bundle") as staging:
            write_files(staging)

    Raises:
        TowerrecError: ``target`` holds data towerrec did not write, or is not writable.
    """
    target = Path(target)
    with locked(target, what=what):
        staging = staging_dir(target, lock_held=True)
        try:
            yield staging
            replace_dir(staging, target, marker, what=what, option=option, known=known)
        except BaseException:
            discard(staging)
            raise


def discard(staging: str | Path) -> None:
    """Remove a staging folder made by :func:`staging_dir` (only if it carries our mark)."""
    staging = Path(staging)
    if (staging / STAGING_MARK).is_file():
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------- locks


@contextlib.contextmanager
def locked(path: str | Path, *, what: str, log: Callable[[str], None] | None = None,
           timeout_s: float = -1) -> Iterator[None]:
    """Hold an inter-process lock on ``path`` (a ``.lock`` file beside it) for the body.

    A second process blocks until the first is done, printing once via ``log`` whom it
    waits for. ``timeout_s`` < 0 waits forever.

    Raises:
        TowerrecError: the lock could not be taken within ``timeout_s``, or its folder is not writable.
    """
    from filelock import FileLock, Timeout

    path = Path(path)
    lock_path = path.with_name(f".{path.name}.lock")
    with io_errors(lock_path.parent):
        lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if log is not None:
            log(f"waiting: another towerrec process is writing {what} {path}")
        try:
            lock.acquire(timeout=timeout_s)
        except Timeout as exc:
            raise TowerrecError(f"{path}: another towerrec process is still writing this {what}",
                                hint="wait for it to finish, then run again") from exc
    except OSError as exc:
        raise io_error(exc, lock_path) from exc
    try:
        yield
    finally:
        lock.release()


def read_tensors(path: Path, *, hint: str) -> dict:
    """The tensors of a safetensors file (never a pickle); a damaged or missing one is one error naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as exc:
        raise TowerrecError(f"{path}: unreadable ({first_line(exc)})", hint=hint) from None
    except OSError as exc:
        raise io_error(exc, path, hint) from None


def read_json(path: Path, *, hint: str) -> object:
    """A JSON file's value; an unreadable file or invalid JSON is one error naming the file and line."""
    import json

    try:
        return json.loads(read_text(path, hint=hint))
    except json.JSONDecodeError as exc:
        raise TowerrecError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}", hint=hint) from None
