"""``towerrec data synth`` / ``towerrec data import`` write loadable dataset folders."""

import pytest

from towerrec.cli.app import main
from towerrec.data.store import load_dataset_dir


def _run(args):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    return exit_.value.code


def test_synth_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "synth"
    code = _run(["data", "synth", "--users", "40", "--items", "30", "--interactions", "400", "--seed", "3",
                 "--out", str(out)])  # fmt: skip
    assert code in (0, None)
    assert "400 interactions, 40 users, 30 items" in capsys.readouterr().out
    ds = load_dataset_dir(out)
    assert ds.interactions.height == 400 and ds.items.height == 30 and ds.meta["params"]["seed"] == 3


def test_import_writes_a_dataset(tmp_path, capsys):
    data = tmp_path / "r.csv"
    data.write_text("user,sku,ts,stars\na,1,10,4\nb,2,20,5\na,2,30,3\n")
    items = tmp_path / "items.csv"
    items.write_text("id,title\n1,One\n2,Two\n")
    out = tmp_path / "imported"
    code = _run(["data", "import", str(data), "--user", "user", "--item", "sku", "--timestamp", "ts",
                 "--rating", "stars", "--item-features", str(items), "--on", "items=id", "--out", str(out)])  # fmt: skip
    assert code in (0, None)
    assert "3 interactions, 2 users, 2 items" in capsys.readouterr().out
    ds = load_dataset_dir(out)
    assert ds.items["title"].to_list() == ["One", "Two"]
    assert ds.interactions["timestamp"].to_list() == [10, 20, 30]


def test_import_error_is_one_located_line(tmp_path, capsys):
    data = tmp_path / "r.csv"
    data.write_text("u,i,r\n1,1,good\n")
    code = _run(["data", "import", str(data), "--user", "u", "--item", "i", "--rating", "r",
                 "--out", str(tmp_path / "x")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "line 2" in err and "field 'r'" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_bad_join_key_spec(tmp_path, capsys):
    data = tmp_path / "r.csv"
    data.write_text("u,i\n1,1\n")
    assert _run(["data", "import", str(data), "--user", "u", "--item", "i", "--on", "things=x",
                 "--out", str(tmp_path / "x")]) == 1  # fmt: skip
    assert "items=COL" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["synth", "import"])
def test_help_has_examples(command, capsys):
    assert _run(["data", command, "--help"]) == 0
    assert "Examples" in capsys.readouterr().out


def test_header_only_csv_is_refused(tmp_path, capsys):
    """rel-17: a table with a header and no rows is not written as an empty dataset."""
    data = tmp_path / "header_only.csv"
    data.write_text("user,item,ts\n")
    code = _run(["data", "import", str(data), "--user", "user", "--item", "item", "--timestamp", "ts",
                 "--out", str(tmp_path / "empty")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "header_only.csv: no data rows" in err
    assert not (tmp_path / "empty").exists()


@pytest.mark.parametrize("option, value", [("--interactions", "0"), ("--seed", "-1"), ("--seed", str(2**63)),
                                           ("--users", "0")])
def test_synth_options_out_of_range_are_usage_errors(tmp_path, capsys, option, value):
    """rel-14 / rel-17: the option is named and nothing is written."""
    code = _run(["data", "synth", option, value, "--users", "5", "--items", "5", "--out", str(tmp_path / "s")]
                if option != "--users" else ["data", "synth", option, value, "--out", str(tmp_path / "s")])
    assert code == 2 and option in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
