"""MovieLens parsing on tiny fixture files the tests write in the exact original formats."""

import zipfile
from pathlib import Path

import pytest

from towerrec.data import movielens
from towerrec.data.movielens import load_movielens
from towerrec.errors import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"

GENRES_100K = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
               "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
               "War", "Western"]


def _flags(*on):
    return "|".join("1" if g in on else "0" for g in GENRES_100K)


def write_100k(folder: Path, ratings: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text(ratings or "1\t1\t5\t874965758\n1\t2\t3\t876893171\n2\t1\t4\t888550871\n")
    items = (
        f"1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|{_flags('Animation', 'Comedy')}\n"
        f"2|Caf\xe9 (1996)|01-Jan-1996||http://x|{_flags('Drama')}\n"
    )
    (folder / "u.item").write_bytes(items.encode("latin-1"))
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    (folder / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES_100K)) + "\n")
    return folder


def write_1m(folder: Path, ratings: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text(ratings or "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    (folder / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::James and the Giant Peach (1996)::Animation|Children's|Musical\n".encode("latin-1")
    )
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    return folder


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TOWERREC_HOME", str(tmp_path / "home"))


def test_parse_100k_folder(tmp_path):
    ds = load_movielens("movielens-100k", write_100k(tmp_path / "ml-100k"), progress=False)
    assert ds.interactions.height == 3 and ds.num_users == 2 and ds.num_items == 2
    item = ds.items.filter(ds.items["item_id"] == 1).row(0, named=True)
    assert item["title"] == "Toy Story (1995)" and item["year"] == 1995
    assert item["genres"] == ["Animation", "Comedy"]
    assert ds.items.filter(ds.items["item_id"] == 2)["title"][0] == "Caf\xe9 (1996)"  # latin-1 decoded
    assert ds.users.row(0, named=True)["occupation"] == "technician"
    assert ds.meta["genres"] == GENRES_100K


def test_parse_1m_folder_and_zip_alike(tmp_path):
    folder = write_1m(tmp_path / "ml-1m")
    from_folder = load_movielens("ml-1m", folder, progress=False)
    archive = tmp_path / "zips" / "ml-1m.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for f in folder.iterdir():
            zf.write(f, f"ml-1m/{f.name}")
    from_zip = load_movielens("movielens-1m", archive, progress=False)
    assert from_zip.interactions.equals(from_folder.interactions)
    assert from_folder.items.filter(from_folder.items["item_id"] == 661)["genres"][0].to_list() == [
        "Animation", "Children's", "Musical"]
    assert from_folder.users.row(0, named=True)["occupation"] == "K-12 student"


def test_parse_csv_release(tmp_path):
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n")
    (folder / "movies.csv").write_text(
        'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n3,"Grumpier Old Men, The (1995)",(no genres listed)\n')
    ds = load_movielens("movielens-latest-small", folder, progress=False)
    assert ds.interactions["rating"].to_list() == [4.0, 4.5]
    assert ds.items.filter(ds.items["item_id"] == 3)["genres"][0].to_list() == []


@pytest.mark.parametrize(
    "ratings, line, words",
    [
        ("1::1193::5::978300760\n1::661::3\n", 2, ["ratings.dat"]),  # truncated line
        ("1::1193::5::978300760\n1,661,3,978302109\n", 2, ["ratings.dat"]),  # wrong separator
        ("1::1193::5::978300760\nx::661::3::978302109\n", 2, ["user_id"]),  # non-integer id
        ("1::1193::5::978300760\n1::661::9::978302109\n", 2, ["rating"]),  # out of range
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, ratings, line, words):
    folder = write_1m(tmp_path / "ml-1m", ratings)
    with pytest.raises(DataError) as info:
        load_movielens("movielens-1m", folder, progress=False)
    message = str(info.value)
    assert f"line {line}" in message, message
    for word in words:
        assert word in message, message


def test_missing_file_is_named(tmp_path):
    folder = write_1m(tmp_path / "ml-1m")
    (folder / "users.dat").unlink()
    with pytest.raises(DataError, match="users.dat"):
        load_movielens("movielens-1m", folder, progress=False)


def test_cache_hit_and_miss_on_changed_source(tmp_path, monkeypatch):
    folder = write_100k(tmp_path / "ml-100k")
    first = load_movielens("movielens-100k", folder, progress=False)
    calls = []
    original = movielens.parse_release
    monkeypatch.setattr(movielens, "parse_release", lambda *a, **k: calls.append(1) or original(*a, **k))
    again = load_movielens("movielens-100k", folder, progress=False)
    assert calls == [] and again.fingerprint == first.fingerprint
    (folder / "u.data").write_text("1\t1\t5\t874965758\n")
    changed = load_movielens("movielens-100k", folder, progress=False)
    assert calls == [1] and changed.interactions.height == 1 and changed.fingerprint != first.fingerprint


def test_unknown_name_lists_valid_ones():
    with pytest.raises(DataError, match="unknown MovieLens dataset 'movielens-7k'") as info:
        load_movielens("movielens-7k", progress=False)
    assert "movielens-100k" in info.value.hint and "movielens-25m" in info.value.hint


def test_download_path_uses_pinned_checksum(tmp_path, monkeypatch):
    folder = write_100k(tmp_path / "src" / "ml-100k")
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in folder.iterdir():
            zf.write(f, f"ml-100k/{f.name}")
    from dataclasses import replace

    from towerrec.data.download import sha256_file

    release = replace(movielens.RELEASES["movielens-100k"], url=archive.as_uri(), size=None, md5=None,
                      sha256=sha256_file(archive))
    monkeypatch.setitem(movielens._ALIASES, "movielens-100k", release)
    ds = load_movielens("movielens-100k", progress=False)
    assert ds.interactions.height == 3
    bad = replace(release, sha256="f" * 64)
    monkeypatch.setitem(movielens._ALIASES, "movielens-100k", bad)
    (Path(tmp_path / "home" / "downloads" / "ml-100k.zip")).unlink()
    with pytest.raises(Exception, match="checksum mismatch"):
        load_movielens("movielens-100k", progress=False, force=True)


@pytest.mark.realdata
@pytest.mark.skipif(not (SHARED / "ml-100k" / "u.data").is_file(), reason="../shared/datasets/ml-100k absent")
def test_real_ml100k():
    ds = load_movielens("movielens-100k", SHARED / "ml-100k", progress=False)
    assert ds.interactions.height == 100_000
    assert ds.num_users == 943 and ds.items.height == 1682
    assert len(ds.meta["genres"]) == 19


@pytest.mark.realdata
@pytest.mark.skipif(not (SHARED / "ml-1m" / "users.dat").is_file(), reason="../shared/datasets/ml-1m absent")
def test_real_ml1m_side_tables():
    users = movielens.parse_dat_users((SHARED / "ml-1m" / "users.dat").read_bytes())
    movies = movielens.parse_dat_movies((SHARED / "ml-1m" / "movies.dat").read_bytes())
    assert users.height == 6040 and movies.height == 3883
    assert movies["year"].null_count() == 0
