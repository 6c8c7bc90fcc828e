"""towerrec.fsio and the dataset store on it: exact paths, atomic replace, ownership, checksums, locks."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import polars as pl
import pytest

from cli_helpers import run_cli
from towerrec import fsio
from towerrec.data import cache, store
from towerrec.data.tables import Dataset
from towerrec.errors import DataError, TowerrecError


def _dataset(users=(1, 2, 3), name="tiny") -> Dataset:
    n = len(users)
    frame = pl.DataFrame({"user_id": list(users), "item_id": [10, 11, 12][:n],
                          "rating": [4.0] * n, "timestamp": list(range(n))},
                         schema_overrides={"rating": pl.Float32})
    return Dataset(name=name, interactions=frame, items=None, users=None, fingerprint="f" * 64, meta={})


def test_readers_open_exactly_the_named_file_not_a_glob(tmp_path: Path) -> None:
    pl.DataFrame({"u": [1, 2]}).write_csv(tmp_path / "data[1].csv")
    pl.DataFrame({"u": [7, 8, 9]}).write_csv(tmp_path / "data1.csv")
    assert fsio.read_csv(tmp_path / "data[1].csv")["u"].to_list() == [1, 2]
    pl.DataFrame({"u": [5]}).write_parquet(tmp_path / "all*.parquet")
    pl.DataFrame({"u": [6, 6]}).write_parquet(tmp_path / "all2.parquet")
    assert fsio.read_parquet(tmp_path / "all*.parquet").height == 1


def test_readers_name_the_file_on_damage(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"bad\.parquet: unreadable Parquet"):
        fsio.read_parquet(tmp_path / "bad.parquet")
    with pytest.raises(TowerrecError, match=r"missing\.csv: no such file or folder"):
        fsio.read_csv(tmp_path / "missing.csv")


def test_import_of_bracketed_file_name_imports_its_own_rows(tmp_path: Path, capsys) -> None:
    (tmp_path / "data[1].csv").write_text("user,item\n1,a\n2,b\n")
    (tmp_path / "data1.csv").write_text("user,item\n7,a\n8,b\n9,c\n")
    code, out, err = run_cli(capsys, "data", "import", str(tmp_path / "data[1].csv"), "--user", "user",
                             "--item", "item", "--out", str(tmp_path / "ds[v2]"))
    assert code == 0, err
    assert store.load_dataset_dir(tmp_path / "ds[v2]").interactions["user_id"].to_list() == [1, 2]
    assert "ds[v2]" in out  # the path is printed verbatim, not eaten as markup


def test_out_refuses_a_folder_towerrec_did_not_write_and_keeps_its_files(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "ratings.csv").write_text("user,item\n1,a\n2,b\n")
    (data / "NOTES.txt").write_text("keep me")
    code, _, err = run_cli(capsys, "data", "import", str(data / "ratings.csv"), "--user", "user", "--item", "item",
                           "--out", str(data))
    assert code == 1
    assert "input" in err or "not a towerrec dataset" in err
    assert sorted(p.name for p in data.iterdir()) == ["NOTES.txt", "ratings.csv"]
    work = tmp_path / "work"
    work.mkdir()
    (work / "thesis.tex").write_text("x")
    code, _, err = run_cli(capsys, "data", "synth", "--users", "5", "--items", "5", "--interactions", "20",
                           "--out", str(work))
    assert code == 1 and "not a towerrec dataset folder (holds thesis.tex)" in err
    assert (work / "thesis.tex").read_text() == "x"


def test_out_dot_never_empties_the_current_folder(tmp_path: Path, capsys, monkeypatch) -> None:
    (tmp_path / "a.txt").write_text("a")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "data", "synth", "--users", "5", "--items", "5", "--interactions", "20",
                           "--out", ".")
    assert code == 1 and "current folder" in err
    assert (tmp_path / "a.txt").read_text() == "a"


def test_out_naming_a_file_is_one_clear_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "outfile").write_text("x")
    code, _, err = run_cli(capsys, "data", "synth", "--users", "5", "--items", "5", "--interactions", "20",
                           "--out", str(tmp_path / "outfile"))
    assert code == 1 and "is a file, not a folder" in err and "internal error" not in err


def test_replacing_a_dataset_keeps_the_old_one_until_the_new_one_is_in_place(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "ds"
    store.save_dataset(_dataset((1, 2, 3)), folder)
    real_replace = os.replace
    calls = []

    def crash_on_swap_in(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if Path(dst) == folder and ".staging-" in str(src):
            raise OSError(5, "simulated crash")
        return real_replace(src, dst)

    monkeypatch.setattr(fsio.os, "replace", crash_on_swap_in)
    with pytest.raises(TowerrecError):
        store.save_dataset(_dataset((4, 5)), folder)
    monkeypatch.undo()
    assert store.load_dataset_dir(folder).interactions["user_id"].to_list() == [1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["ds"]
    store.save_dataset(_dataset((4, 5)), folder)
    assert store.load_dataset_dir(folder).interactions["user_id"].to_list() == [4, 5]


def test_a_flipped_byte_in_a_table_is_detected_on_load(tmp_path: Path) -> None:
    folder = store.save_dataset(_dataset(), tmp_path / "ds")
    manifest = json.loads((folder / "dataset.json").read_text())
    assert set(manifest["checksums"]) == {"interactions.parquet"}
    path = folder / "interactions.parquet"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(TowerrecError, match=r"interactions\.parquet: damaged or changed"):
        store.load_dataset_dir(folder)


def test_a_damaged_cache_is_rebuilt_not_reused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TOWERREC_HOME", str(tmp_path / "home"))
    key = "k" * 64
    good = _dataset((1, 2, 3))
    good = Dataset(good.name, good.interactions, None, None, key, {})
    first = cache.prepare("tiny", key, lambda: good)
    assert not first.hit
    assert cache.prepare("tiny", key, lambda: good).hit
    path = first.path / "interactions.parquet"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match=r"cache cannot be reused, rebuilding it: .*interactions\.parquet"):
        rebuilt = cache.prepare("tiny", key, lambda: good)
    assert not rebuilt.hit
    assert rebuilt.dataset.interactions["user_id"].to_list() == [1, 2, 3]


def _prepare_in_child(home: str, key: str, out: multiprocessing.Queue) -> None:
    os.environ["TOWERREC_HOME"] = home
    try:
        n = 2000
        frame = pl.DataFrame({"user_id": list(range(n)), "item_id": list(range(n)), "rating": [1.0] * n,
                              "timestamp": list(range(n))}, schema_overrides={"rating": pl.Float32})
        data = Dataset("tiny", frame, None, None, key, {})
        prepared = cache.prepare("tiny", key, lambda: data)
        out.put(("ok", prepared.dataset.interactions.height))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        out.put(("error", repr(exc)))


def test_concurrent_preparers_of_one_key_all_succeed(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    for round_ in range(2):
        home = str(tmp_path / f"home{round_}")
        procs = [ctx.Process(target=_prepare_in_child, args=(home, "c" * 64, queue)) for _ in range(4)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(120)
        results = [queue.get(timeout=5) for _ in procs]
        assert results == [("ok", 2000)] * 4


def test_lock_waits_for_the_holder(tmp_path: Path) -> None:
    from filelock import FileLock

    target = tmp_path / "run"
    holder = FileLock(str(tmp_path / ".run.lock"))
    holder.acquire()
    messages: list[str] = []
    with pytest.raises(TowerrecError, match="another towerrec process"):
        with fsio.locked(target, what="run", log=messages.append, timeout_s=0.2):
            pass
    assert messages and "waiting" in messages[0]
    holder.release()
    with fsio.locked(target, what="run"):
        pass


def test_error_lines_keep_brackets_verbatim(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(capsys, "data", "import", str(tmp_path / "ratings[bold].csv"), "--user", "u",
                           "--item", "i", "--out", str(tmp_path / "o"))
    assert code == 1 and "ratings[bold].csv" in err


def test_io_error_names_path_and_reason(tmp_path: Path) -> None:
    err = fsio.io_error(PermissionError(13, "Permission denied", str(tmp_path / "u.data")))
    assert str(err) == f"{tmp_path / 'u.data'}: permission denied"
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TowerrecError, match=r"binary\.toml: not a UTF-8 text file"):
        fsio.read_text(tmp_path / "binary.toml")


def test_a_crash_between_aside_and_swap_in_is_recovered_by_the_next_writer(tmp_path: Path) -> None:
    folder = store.save_dataset(_dataset((1, 2, 3)), tmp_path / "ds")
    aside = tmp_path / ".ds.old-dead"
    aside.mkdir()
    (aside / fsio.STAGING_MARK).write_text("1")
    os.replace(folder, aside / "old")  # what a kill -9 right after the first rename leaves
    fsio.remove_leftovers(folder, older_than_s=0)
    assert store.load_dataset_dir(folder).interactions["user_id"].to_list() == [1, 2, 3]
    assert not aside.exists()


def test_replacing_a_dataset_never_deletes_a_file_towerrec_did_not_write(tmp_path: Path, capsys) -> None:
    folder = store.save_dataset(_dataset((1, 2, 3)), tmp_path / "ds")
    (folder / "mine.txt").write_text("my notes")
    with pytest.raises(TowerrecError, match=r"holds files towerrec did not write \(mine\.txt\)"):
        store.save_dataset(_dataset((4, 5)), folder)
    assert (folder / "mine.txt").read_text() == "my notes"
    assert store.load_dataset_dir(folder).interactions["user_id"].to_list() == [1, 2, 3]
    code, _, err = run_cli(capsys, "data", "synth", "--users", "5", "--items", "5", "--interactions", "20",
                           "--out", str(folder))
    assert code == 1 and "mine.txt" in err and (folder / "mine.txt").is_file()
    (folder / "mine.txt").unlink()
    store.save_dataset(_dataset((4, 5)), folder)
    assert store.load_dataset_dir(folder).interactions["user_id"].to_list() == [4, 5]


def test_atomic_write_file_leaves_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "index.bin"
    fsio.atomic_write_file(target, lambda p: p.write_bytes(b"old"))

    def half_then_crash(path: Path) -> None:
        path.write_bytes(b"ne")
        raise RuntimeError("writer crashed")

    with pytest.raises(RuntimeError):
        fsio.atomic_write_file(target, half_then_crash)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["index.bin"]
