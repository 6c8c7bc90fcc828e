"""MovieLens registry, parsers and cache, on tiny fixture files written in each original format."""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from towerrec.data import movielens
from towerrec.data.movielens import (
    find_release,
    get_release,
    load_movielens,
    parse_dat_movies,
    parse_dat_users,
    prepare_movielens,
)
from towerrec.errors import DataError, DownloadError

REAL_100K = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "ml-100k"
REAL_1M = REAL_100K.parent / "ml-1m"

GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip


def _flags(*names: str) -> str:
    return "|".join("1" if g in names else "0" for g in GENRES)


ML100K = {
    "u.data": "1\t10\t4\t881250949\n1\t20\t5\t881250950\n2\t10\t3\t881250951\n3\t30\t1\t881250952\n",
    "u.item": (
        f"10|Toy Box (1995)|01-Jan-1995||http://example.org/10|{_flags('Animation', 'Comedy')}\n"
        f"20|Café Noir (1994) (V)|15-Mar-1994||http://example.org/20|{_flags('Drama')}\n"
        f"30|unknown||||{_flags('unknown')}\n"
    ),
    "u.user": "1|24|M|technician|85711\n2|53|F|other|94043\n3|23|M|writer|T8H1N\n",
    "u.genre": "".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)) + "\n",
}
ML1M = {
    "ratings.dat": "1::10::5::978300760\n1::20::3::978302109\n2::10::4::978301968\n",
    "movies.dat": "10::Café Society (1995)::Comedy|Romance\n20::Heat (1995)::Action|Crime|Thriller\n",
    "users.dat": "1::F::1::10::48067\n2::M::56::16::70072\n",
}
ML10M = {
    "ratings.dat": "1::10::3.5::838985046\n2::20::0.5::838983525\n",
    "movies.dat": "10::Star Wars: Episode IV (1977)::Action|Sci-Fi\n20::Nameless::(no genres listed)\n",
}
CSV = {
    "ratings.csv": "userId,movieId,rating,timestamp\n1,10,4.0,964982703\n1,20,4.5,964981247\n2,10,0.5,964982224\n",
    "movies.csv": (
        "movieId,title,genres\n"
        '10,"American President, The (1995)",Comedy|Drama|Romance\n'
        "20,Untitled Film (2018),(no genres listed)\n"
    ),
}


def write(folder: Path, files: dict[str, str]) -> Path:
    """Write fixture files; the u.item/.dat files in latin-1 as the originals are."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        encoding = "latin-1" if name in ("u.item", "movies.dat") else "utf-8"
        (folder / name).write_bytes(text.encode(encoding))
    return folder


def write_zip(path: Path, folder: str, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            encoding = "latin-1" if name in ("u.item", "movies.dat") else "utf-8"
            zf.writestr(f"{folder}/{name}", text.encode(encoding))
    return path


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TOWERREC_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# --- registry --------------------------------------------------------------------------


def test_names_and_aliases_resolve_to_one_release() -> None:
    assert movielens.NAMES == (
        "movielens-100k", "movielens-1m", "movielens-latest-small", "movielens-10m", "movielens-20m", "movielens-25m",
    )  # fmt: skip
    for alias in ("ml-100k", "ML-100K", " movielens-100k "):
        assert find_release(alias) is movielens.RELEASES["movielens-100k"]
    assert find_release("ml-10M100K") is find_release("ml-10m")
    assert find_release("netflix") is None
    with pytest.raises(DataError, match="unknown MovieLens dataset 'netflix'") as info:
        get_release("netflix")
    assert "movielens-25m" in (info.value.hint or "")


def test_every_release_has_an_official_url_and_the_pins_we_know() -> None:
    for release in movielens.RELEASES.values():
        assert release.url == f"https://files.grouplens.org/datasets/movielens/{release.archive}.zip"
        assert release.sha256 is None or len(release.sha256) == 64
        assert release.sha256 or release.md5  # every download is verified by at least one hash
    assert get_release("ml-1m").sha256 == "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"
    assert get_release("ml-10m").sha256 is None and get_release("ml-10m").folder == "ml-10M100K"


# --- parsing each format ------------------------------------------------------------------


def test_ml100k_folder(tmp_path: Path) -> None:
    ds = load_movielens("ml-100k", write(tmp_path / "ml-100k", ML100K), progress=False)
    assert ds.name == "movielens-100k" and len(ds.fingerprint) == 64
    assert ds.interactions.schema == pl.Schema(
        {"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Float32, "timestamp": pl.Int64}
    )
    assert ds.interactions.rows()[0] == (1, 10, 4.0, 881250949)
    items = ds.items.sort("item_id")
    assert items["title"].to_list() == ["Toy Box (1995)", "Café Noir (1994) (V)", "unknown"]
    assert items["year"].to_list() == [1995, 1994, None]
    assert items.schema["year"] == pl.Int32
    assert items["genres"].to_list() == [["Animation", "Comedy"], ["Drama"], ["unknown"]]
    assert items["release_date"].to_list() == [date(1995, 1, 1), date(1994, 3, 15), None]
    assert items["imdb_url"].to_list() == ["http://example.org/10", "http://example.org/20", None]
    assert ds.users.rows() == [(1, 24, "M", "technician", "85711"), (2, 53, "F", "other", "94043"),
                               (3, 23, "M", "writer", "T8H1N")]  # fmt: skip
    assert ds.users.schema["age"] == pl.Int32
    assert ds.meta["genres"] == GENRES


def test_ml1m_folder_decodes_latin1_and_maps_occupation_codes(tmp_path: Path) -> None:
    ds = load_movielens("movielens-1m", write(tmp_path / "ml-1m", ML1M), progress=False)
    assert ds.interactions.height == 3
    assert ds.items.rows() == [
        (10, "Café Society (1995)", 1995, ["Comedy", "Romance"]),
        (20, "Heat (1995)", 1995, ["Action", "Crime", "Thriller"]),
    ]
    assert ds.users.rows() == [(1, 1, "F", "K-12 student", "48067"), (2, 56, "M", "self-employed", "70072")]
    assert ds.meta["genres"] == ["Action", "Comedy", "Crime", "Romance", "Thriller"]


def test_ml10m_zip_has_half_stars_no_users_and_its_own_folder_name(tmp_path: Path) -> None:
    zip_path = write_zip(tmp_path / "ml-10m.zip", "ml-10M100K", ML10M)
    ds = load_movielens("ml-10m", zip_path, progress=False)
    assert ds.users is None
    assert ds.interactions["rating"].to_list() == [3.5, 0.5]
    assert ds.items.rows() == [(10, "Star Wars: Episode IV (1977)", 1977, ["Action", "Sci-Fi"]), (20, "Nameless", None, [])]


def test_csv_format_with_quoted_titles_and_no_genres(tmp_path: Path) -> None:
    ds = load_movielens("ml-latest-small", write(tmp_path / "x", CSV), progress=False)
    assert ds.interactions.rows() == [(1, 10, 4.0, 964982703), (1, 20, 4.5, 964981247), (2, 10, 0.5, 964982224)]
    assert ds.items.rows() == [
        (10, "American President, The (1995)", 1995, ["Comedy", "Drama", "Romance"]),
        (20, "Untitled Film (2018)", 2018, []),
    ]
    assert ds.users is None


def test_data_dir_may_be_the_folder_its_parent_or_the_zip(tmp_path: Path) -> None:
    write(tmp_path / "parent" / "ml-1m", ML1M)
    (tmp_path / "zips").mkdir()
    write_zip(tmp_path / "zips" / "ml-1m.zip", "ml-1m", ML1M)
    direct = load_movielens("ml-1m", tmp_path / "parent" / "ml-1m", progress=False)
    via_parent = load_movielens("ml-1m", tmp_path / "parent", progress=False)
    via_zip = load_movielens("ml-1m", tmp_path / "zips" / "ml-1m.zip", progress=False)
    via_zip_parent = load_movielens("ml-1m", tmp_path / "zips", progress=False)
    assert direct.fingerprint == via_parent.fingerprint
    # one fingerprint for the same files however they are packed (kind 8)
    assert via_zip.fingerprint == via_zip_parent.fingerprint == direct.fingerprint
    for ds in (via_parent, via_zip, via_zip_parent):
        assert ds.interactions.equals(direct.interactions) and ds.items.equals(direct.items)
        assert ds.users.equals(direct.users)


def test_crlf_line_endings_and_blank_lines_are_tolerated(tmp_path: Path) -> None:
    files = dict(ML1M, **{"ratings.dat": ML1M["ratings.dat"].replace("\n", "\r\n") + "\r\n"})
    ds = load_movielens("ml-1m", write(tmp_path / "ml-1m", files), progress=False)
    assert ds.interactions["timestamp"].to_list() == [978300760, 978302109, 978301968]


def test_year_comes_only_from_a_trailing_year() -> None:
    raw = "1::Blade Runner (1982)::Sci-Fi\n2::2001: A Space Odyssey::Sci-Fi\n3::Show (2006-2007)::Drama\n"
    assert parse_dat_movies(raw.encode())["year"].to_list() == [1982, None, None]


# --- errors name file, line and field -----------------------------------------------------

BAD = [
    # (release, files, broken file, broken content, line, words the message must hold)
    ("ml-100k", ML100K, "u.data", "1\t10\t4\t881250949\n1\t20\t5\t881250950\n2\t10\t3\n", 3, ["expected 4", "found 3"]),
    ("ml-100k", ML100K, "u.data", "1\t10\t4\t881250949\n1\t20\t7\t881250950\n", 2, ["rating", "7", "0.5..5"]),
    ("ml-100k", ML100K, "u.item", ML100K["u.item"].replace("|0|0|0\n", "|0|0|2\n", 1), 1, ["Western", "0 or 1"]),
    ("ml-100k", ML100K, "u.item", ML100K["u.item"].replace("15-Mar-1994", "1994-03-15"), 2, ["release_date"]),
    ("ml-1m", ML1M, "ratings.dat", "1,10,5,978300760\n1,20,3,978302109\n", 1, ["'::'", "','-separated"]),
    ("ml-1m", ML1M, "users.dat", "1::F::1::10::48067\n2::M::56::25::70072\n", 2, ["occupation", "25", "0..20"]),
    ("ml-1m", ML1M, "movies.dat", "10::Heat (1995)::Action\nx::Heat 2::Action\n", 2, ["item_id", "'x' is not an integer"]),
    ("ml-latest-small", CSV, "ratings.csv", CSV["ratings.csv"].replace("2,10,0.5", "2.5,10,0.5"), 4, ["userId", "'2.5'"]),
    ("ml-latest-small", CSV, "ratings.csv", "userId,movieId,rating\n1,10,4.0\n", 1, ["timestamp", "header"]),
    ("ml-latest-small", CSV, "ratings.csv", CSV["ratings.csv"].replace("4.5", "six"), 3, ["rating", "'six'"]),
    ("ml-latest-small", CSV, "movies.csv", CSV["movies.csv"] + "30,Lost\n", 4, ["expected 3", "found 2"]),
    ("ml-latest-small", CSV, "movies.csv", CSV["movies.csv"] + "30,,Drama\n", 4, ["title", "empty"]),
]


@pytest.mark.parametrize(("name", "files", "broken", "content", "line", "words"), BAD)
def test_bad_input_names_file_line_and_field(
    tmp_path: Path, name: str, files: dict, broken: str, content: str, line: int, words: list[str]
) -> None:
    folder = write(tmp_path / "data", {**files, broken: content})
    with pytest.raises(DataError) as info:
        load_movielens(name, folder, progress=False)
    err = info.value
    assert err.file == str(folder / broken) and err.line == line
    message = str(err)
    assert f"{folder / broken}, line {line}" in message
    for word in words:
        assert word in message


def test_errors_inside_a_zip_name_the_member(tmp_path: Path) -> None:
    zip_path = write_zip(tmp_path / "ml-1m.zip", "ml-1m", {**ML1M, "ratings.dat": "1::10::5::1\n1::20\n"})
    with pytest.raises(DataError, match=r"ml-1m\.zip:ml-1m/ratings\.dat, line 2: expected 4 fields"):
        load_movielens("ml-1m", zip_path, progress=False)


def test_an_error_deep_in_a_big_file_is_located(tmp_path: Path) -> None:
    rows = "".join(f"{u}::{u % 7 + 1}::3::97830{u:04d}\n" for u in range(20000))
    files = {**ML1M, "ratings.dat": rows + "5::abc::3::978300000\n"}
    with pytest.raises(DataError, match="line 20001, field 'item_id': 'abc' is not an integer"):
        load_movielens("ml-1m", write(tmp_path / "ml-1m", files), progress=False)


@pytest.mark.parametrize("value, shown", [
    ("99999999999999999999", "'99999999999999999999' is too large for a 64-bit integer"),
    ("9" * 1_000_000, "'" + "9" * 30 + "…' (1,000,000 digits) is too large for a 64-bit integer"),
    ("-9223372036854775809", "'-9223372036854775809' is too small for a 64-bit integer"),
    ("x" * 100_000, "'" + "x" * 30 + "…' (100,000 characters) is not an integer"),
])
@pytest.mark.parametrize("name, files, file, row", [
    ("ml-100k", ML100K, "u.data", "1\t10\t4\t{}"),
    ("ml-1m", ML1M, "ratings.dat", "1::10::5::{}"),
    ("ml-latest-small", CSV, "ratings.csv", "1,30,4.0,{}"),
])
def test_int64_overflow_is_located_and_the_value_shortened(tmp_path, value, shown, name, files, file, row) -> None:
    """rel-04: the line and field are named; the value is cut to a few dozen characters with its size."""
    lines = files[file].splitlines()
    broken = "\n".join([*lines[:2], row.format(value), *lines[2:]]) + "\n"
    folder = write(tmp_path / "d", {**files, file: broken})
    with pytest.raises(DataError) as info:
        load_movielens(name, folder, progress=False)
    assert str(info.value) == f"{folder / file}, line 3, field 'timestamp': {shown}"


def test_missing_file_is_named(tmp_path: Path) -> None:
    folder = write(tmp_path / "ml-100k", {k: v for k, v in ML100K.items() if k != "u.user"})
    with pytest.raises(DataError, match="missing file") as info:
        load_movielens("ml-100k", folder, progress=False)
    assert info.value.file == str(folder / "u.user")


def test_zip_without_a_needed_member(tmp_path: Path) -> None:
    zip_path = write_zip(tmp_path / "ml-1m.zip", "ml-1m", {k: v for k, v in ML1M.items() if k != "users.dat"})
    with pytest.raises(DataError, match="the zip holds no users.dat"):
        load_movielens("ml-1m", zip_path, progress=False)


def test_not_a_zip_and_not_a_path(tmp_path: Path) -> None:
    (tmp_path / "fake.zip").write_text("hello")
    with pytest.raises(DataError, match="not a readable zip file"):
        load_movielens("ml-1m", tmp_path / "fake.zip", progress=False)
    with pytest.raises(DataError, match="no such file or folder"):
        load_movielens("ml-1m", tmp_path / "absent", progress=False)


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"u\.data: file is empty"):
        load_movielens("ml-100k", write(tmp_path / "d", {**ML100K, "u.data": ""}), progress=False)


# --- cache ------------------------------------------------------------------------------------


def test_cache_hit_then_miss_when_a_source_file_changes(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write(tmp_path / "ml-100k", ML100K)
    first = prepare_movielens("ml-100k", folder, progress=False)
    assert not first.hit and first.path.parent == home / "prepared"
    assert (first.path / "interactions.parquet").is_file()
    parses: list[str] = []
    original = movielens.parse_release
    monkeypatch.setattr(movielens, "parse_release", lambda r, *a, **kw: parses.append(r.name) or original(r, *a, **kw))
    again = prepare_movielens("ml-100k", folder, progress=False)
    assert again.hit and again.path == first.path and parses == []
    assert again.dataset.fingerprint == first.dataset.fingerprint
    assert again.dataset.items.equals(first.dataset.items) and again.dataset.meta == first.dataset.meta

    (folder / "u.data").write_text(ML100K["u.data"].replace("3\t30\t1", "3\t30\t2"))
    changed = prepare_movielens("ml-100k", folder, progress=False)
    assert not changed.hit and changed.path != first.path and parses == ["movielens-100k"]
    assert changed.dataset.fingerprint != first.dataset.fingerprint
    assert changed.dataset.interactions["rating"].to_list()[-1] == 2.0

    forced = prepare_movielens("ml-100k", folder, progress=False, force=True)
    assert not forced.hit and forced.path == changed.path


def test_a_broken_cache_is_rebuilt(tmp_path: Path) -> None:
    folder = write(tmp_path / "ml-1m", ML1M)
    first = prepare_movielens("ml-1m", folder, progress=False)
    (first.path / "interactions.parquet").write_bytes(b"not parquet")
    again = prepare_movielens("ml-1m", folder, progress=False)
    assert not again.hit and again.dataset.interactions.height == 3


def test_without_data_dir_the_zip_is_downloaded_into_the_home(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = write_zip(tmp_path / "served.zip", "ml-1m", ML1M)
    sha = hashlib.sha256(served.read_bytes()).hexdigest()
    release = dataclasses.replace(get_release("ml-1m"), url=served.as_uri(), sha256=sha, md5=None, size=None)
    monkeypatch.setitem(movielens.RELEASES, "movielens-1m", release)
    monkeypatch.setitem(movielens._ALIASES, "ml-1m", release)
    first = prepare_movielens("ml-1m", progress=False)
    assert (home / "downloads" / "ml-1m.zip").read_bytes() == served.read_bytes()
    served.unlink()  # the second load needs neither the network nor the source
    second = prepare_movielens("ml-1m", progress=False)
    assert not first.hit and second.hit and second.dataset.interactions.height == 3


def test_a_download_that_fails_its_checksum_is_not_kept(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = write_zip(tmp_path / "served.zip", "ml-1m", ML1M)
    release = dataclasses.replace(get_release("ml-1m"), url=served.as_uri(), sha256="f" * 64, md5=None, size=None)
    monkeypatch.setitem(movielens._ALIASES, "ml-1m", release)
    with pytest.raises(DownloadError, match="checksum mismatch: expected sha256 f{64}") as info:
        load_movielens("ml-1m", progress=False)
    assert "--data-dir" in (info.value.hint or "")
    assert not any((home / "downloads").iterdir())


# --- the real ML-100K copy and ML-1M side files, when present -----------------------------


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_100K.is_dir(), reason="../shared/datasets/ml-100k is absent")
def test_real_ml100k() -> None:
    with pytest.warns(movielens.DuplicateTitlesWarning, match="18 title"):
        ds = load_movielens("movielens-100k", REAL_100K, progress=False, duplicate_titles="keep")
    assert ds.interactions.height == 100_000
    assert ds.num_users == 943 and ds.users.height == 943
    assert ds.num_items == 1682
    assert len(ds.meta["genres"]) == 19
    assert ds.items["genres"].explode().drop_nulls().n_unique() == 19
    assert ds.interactions["rating"].min() == 1 and ds.interactions["rating"].max() == 5
    assert ds.items.filter(pl.col("year").is_null()).height == 1  # only item 267, titled "unknown"


@pytest.mark.realdata
@pytest.mark.skipif(not (REAL_1M / "users.dat").is_file(), reason="../shared/datasets/ml-1m is absent")
def test_real_ml1m_users_and_movies() -> None:
    users = parse_dat_users((REAL_1M / "users.dat").read_bytes(), str(REAL_1M / "users.dat"))
    movies = parse_dat_movies((REAL_1M / "movies.dat").read_bytes(), str(REAL_1M / "movies.dat"))
    assert users.height == 6040 and users["user_id"].n_unique() == 6040
    assert set(users["occupation"].unique()) <= set(movielens.ML1M_OCCUPATIONS)
    assert set(users["gender"].unique()) == {"F", "M"}
    assert movies.height == 3883 and movies["year"].null_count() == 0
    assert movies["genres"].explode().n_unique() == 18
    assert movies["title"].str.contains("é").any()  # latin-1 decoded, not mangled
