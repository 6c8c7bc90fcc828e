"""Business rules (towerrec.rules): exclusions for matching users, allow/deny lists, diversity caps,
and a clear ConfigError for each way a rule can be wrong."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from towerrec.errors import ConfigError
from towerrec.rules import BusinessRules, Condition, ExcludeRule

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets"

ITEMS = pl.DataFrame({
    "item_id": [10, 11, 12, 13, 14, 15],
    "title": ["Scream", "Toy Story", "Alien", "Heat", "Babe", "Se7en"],
    "year": pl.Series([1996, 1995, 1979, 1995, 1995, None], dtype=pl.Int32),
    "genres": [["Horror"], ["Animation", "Comedy"], ["Horror", "Sci-Fi"], ["Crime", "Thriller"], ["Comedy"],
               ["Crime", "Thriller"]],
    "release_date": [dt.date(1996, 12, 20), dt.date(1995, 11, 22), dt.date(1979, 5, 25), dt.date(1995, 12, 15),
                     dt.date(1995, 8, 4), None],
})
USERS = pl.DataFrame({
    "user_id": [1, 2, 3],
    "age": pl.Series([9, 35, None], dtype=pl.Int32),
    "gender": ["F", "M", "F"],
})
CHILD_RULE = {"name": "no-horror-under-13", "items": {"column": "genres", "op": "contains", "value": "Horror"},
              "users": {"column": "age", "op": "<", "value": 13}}


def compiled(**rules):
    return BusinessRules.from_dict(rules).compile(ITEMS, USERS)


def test_exclusion_applies_only_to_matching_users():
    rules = compiled(exclude=[CHILD_RULE])
    ids, scores = [10, 11, 12, 13], [4.0, 3.0, 2.0, 1.0]
    assert rules.apply(ids, scores, 3, user=1) == [11, 13]  # a 9-year-old: both horror films gone
    assert rules.apply(ids, scores, 3, user=2) == [10, 11, 12]  # 35: untouched
    assert rules.apply(ids, scores, 3, user="1") == [11, 13]  # text id finds the integer user
    assert rules.apply(ids, scores, 3, user={"age": 12}) == [11, 13]  # a new user's attributes
    # a missing age (user 3, an unknown user, no user) does not match unless missing = true
    assert rules.apply(ids, scores, 3, user=3) == [10, 11, 12]
    assert rules.apply(ids, scores, 3, user=999) == [10, 11, 12]
    assert rules.apply(ids, scores, 3, user=None) == [10, 11, 12]
    strict = compiled(exclude=[{**CHILD_RULE, "users": {"column": "age", "op": "<", "value": 13, "missing": True}}])
    assert strict.apply(ids, scores, 3, user=3) == [11, 13]
    assert strict.apply(ids, scores, 3, user=None) == [11, 13]
    assert strict.apply(ids, scores, 3, user=2) == [10, 11, 12]


def test_rule_without_users_applies_to_everyone_and_conditions_all_hold():
    rules = compiled(exclude=[{"name": "old-horror", "items": [
        {"column": "genres", "op": "contains", "value": "Horror"}, {"column": "year", "op": "<", "value": 1990}]}])
    assert rules.apply([10, 12, 11], [3.0, 2.0, 1.0], 5, user=2) == [10, 11]  # only Alien (1979) goes


@pytest.mark.parametrize("condition,expected", [
    ({"column": "title", "op": "==", "value": "Heat"}, [13]),
    ({"column": "title", "op": "!=", "value": "Heat"}, [10, 11, 12, 14, 15]),
    ({"column": "year", "op": ">=", "value": 1996}, [10]),  # null year (15) does not match
    ({"column": "year", "op": "<=", "value": 1979}, [12]),
    ({"column": "year", "op": ">", "value": 1995.5}, [10]),
    ({"column": "year", "op": "in", "value": [1979, 1996]}, [10, 12]),
    ({"column": "year", "op": "not in", "value": [1995], "missing": True}, [10, 12, 15]),
    ({"column": "title", "op": "contains", "value": "en"}, [12, 15]),  # substring of a string column
    ({"column": "genres", "op": "contains any", "value": ["Sci-Fi", "Animation"]}, [11, 12]),
    ({"column": "release_date", "op": "<", "value": dt.date(1990, 1, 1)}, [12]),
])
def test_each_operator(condition, expected):
    rules = compiled(exclude=[{"name": "r", "items": condition}])
    assert [rules.catalogue_ids[i] for i in np.flatnonzero(rules.rule_items[0])] == expected


def test_allow_and_deny_lists():
    ids, scores = [10, 11, 12, 13, 14], [5.0, 4.0, 3.0, 2.0, 1.0]
    with pytest.warns(UserWarning, match=r"deny: item id\(s\) 999 are not in the catalogue"):
        assert compiled(deny=[10, 12, 999]).apply(ids, scores, 10) == [11, 13, 14]  # an unknown id is ignored
    with pytest.warns(UserWarning, match=r"allow: item id\(s\) 998 are not in the catalogue"):
        assert compiled(allow=[14, 998]).apply(ids, scores, 10) == [14]
    with pytest.raises(ConfigError, match="allow: none of its item id"):
        compiled(allow=[998, 999])
    assert compiled(allow=[14, 11]).apply(ids, scores, 10) == [11, 14]
    assert compiled(allow=[11, 14], deny=[11]).apply(ids, scores, 10) == [14]


def test_diversity_cap_counts_every_value_of_a_list_column():
    rules = compiled(cap=[{"name": "genre-variety", "column": "genres", "max": 1}])
    # by score: Scream (Horror), Alien (Horror, Sci-Fi) skipped, Toy Story (Animation, Comedy),
    # Babe (Comedy) skipped, Heat (Crime, Thriller), Se7en skipped
    ids, scores = [10, 12, 11, 14, 13, 15], [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    assert rules.apply(ids, scores, 10) == [10, 11, 13]
    two = compiled(cap=[{"name": "genre-variety", "column": "genres", "max": 2}])
    assert two.apply(ids, scores, 10) == [10, 12, 11, 14, 13, 15]
    assert two.apply(ids, scores, 3) == [10, 12, 11]  # the cut comes after the caps
    by_year = compiled(cap=[{"name": "one-per-year", "column": "year", "max": 1}])  # a scalar column
    assert by_year.apply([11, 13, 14, 15, 12], [5.0, 4.0, 3.0, 2.0, 1.0], 10) == [11, 15, 12]  # null year: uncapped


def test_scores_not_input_order_decide_and_ties_keep_candidate_order():
    rules = compiled()
    assert rules.apply([10, 11, 12], [1.0, 3.0, 2.0], 2) == [11, 12]
    assert rules.apply([10, 11, 12], [1.0, 1.0, 1.0], 2) == [10, 11]
    assert rules.select([10, 11, 12], [1.0, 3.0, 2.0], 5).tolist() == [1, 2, 0]


def reference(rules: BusinessRules, candidates, scores, k, user_rules, items):
    """The rules, one candidate at a time, in plain Python."""
    genres = dict(zip(items["item_id"].to_list(), items["genres"].to_list()))
    order = sorted(range(len(candidates)), key=lambda i: (-scores[i], i))
    out, counts = [], {}
    cap = rules.caps[0].max if rules.caps else None
    for i in order:
        item = candidates[i]
        if item < 0 or item in rules.deny:
            continue
        if user_rules[0] and "Horror" in genres[item]:
            continue
        if cap is not None and any(counts.get(g, 0) >= cap for g in genres[item]):
            continue
        for g in genres[item] if cap is not None else ():
            counts[g] = counts.get(g, 0) + 1
        out.append(i)
        if len(out) == k:
            break
    return out


@pytest.mark.parametrize("with_cap", [False, True])
def test_batched_selection_matches_a_plain_python_reference(with_cap):
    rng = np.random.default_rng(0)
    n_items = 40
    genres = ["A", "B", "C", "Horror"]
    items = pl.DataFrame({"item_id": list(range(n_items)),
                          "genres": [sorted(set(rng.choice(genres, rng.integers(1, 3)).tolist()))
                                     for _ in range(n_items)]})
    users = pl.DataFrame({"user_id": list(range(6)), "age": pl.Series([8, 40, 11, 70, 12, 30], dtype=pl.Int32)})
    rules = BusinessRules.from_dict({"deny": [3, 7], "exclude": [CHILD_RULE],
                                     "cap": [{"name": "g", "column": "genres", "max": 2}] if with_cap else []})
    compiled_rules = rules.compile(items, users)
    candidates = np.stack([rng.permutation(n_items)[:25] for _ in range(6)])
    candidates[1, 20:] = -1  # padding
    scores = np.round(rng.normal(size=candidates.shape), 1)  # ties included
    matches = compiled_rules.user_matches(list(range(6)))
    assert matches[:, 0].tolist() == [True, False, True, False, True, False]
    got = compiled_rules.select_batch(candidates, scores, 8, matches)
    for b in range(6):
        expected = reference(rules, candidates[b].tolist(), scores[b].tolist(), 8, matches[b], items)
        assert got[b][got[b] >= 0].tolist() == expected
        assert (got[b][len(expected):] == -1).all()


def test_shipped_rules_file_loads_and_round_trips():
    rules = BusinessRules.load(REPO / "configs" / "rules" / "ml100k_family.toml")
    assert [r.name for r in rules.exclude] == ["no-horror-under-13", "no-crime-thrillers-under-13"]
    assert rules.caps[0].max == 4
    assert BusinessRules.from_dict(rules.to_dict()) == rules
    compiled_rules = rules.compile(ITEMS, USERS)
    assert compiled_rules.apply([10, 13, 11, 15], [4.0, 3.0, 2.0, 1.0], 10, user=1) == [11]
    assert compiled_rules.apply([10, 13, 11, 15], [4.0, 3.0, 2.0, 1.0], 10, user=2) == [10, 13, 11, 15]


@pytest.mark.realdata
def test_shipped_rules_validate_against_movielens():
    if not (DATA / "ml-100k").is_dir():
        pytest.skip("MovieLens-100K not present")
    from towerrec.data.registry import load_dataset

    dataset = load_dataset("movielens-100k", DATA, progress=False)
    compiled_rules = BusinessRules.load(REPO / "configs" / "rules" / "ml100k_family.toml").compile(
        dataset.items, dataset.users)
    children = dataset.users.filter(pl.col("age") < 13)["user_id"].to_list()
    assert children and compiled_rules.user_matches(children).all()
    horror = dataset.items.filter(pl.col("genres").list.contains("Horror"))["item_id"].to_list()
    assert compiled_rules.apply(horror, [1.0] * len(horror), 10, user=children[0]) == []


@pytest.mark.parametrize("rules,message", [
    ({"exclude": [{**CHILD_RULE, "users": {"column": "agee", "op": "<", "value": 13}}]},
     "exclude rule 'no-horror-under-13': users: column 'agee' is not in the users table"),
    ({"exclude": [{"name": "x", "items": {"column": "genre", "op": "contains", "value": "Horror"}}]},
     "exclude rule 'x': items: column 'genre' is not in the items table"),
    ({"exclude": [{"name": "x", "items": {"column": "title", "op": "==", "value": 3}}]},
     "value 3 (a number) cannot be compared with items column 'title' (String)"),
    ({"exclude": [{**CHILD_RULE, "users": {"column": "age", "op": "<", "value": "13"}}]},
     "value '13' (a string) cannot be compared with users column 'age' (Int32)"),
    ({"exclude": [{"name": "x", "items": {"column": "genres", "op": "contains", "value": 1}}]},
     "cannot be compared with items column 'genres' (a list of String)"),
    ({"exclude": [{"name": "x", "items": {"column": "genres", "op": "==", "value": "Horror"}}]},
     "op '==' compares one value, and items column 'genres' holds lists"),
    ({"exclude": [{"name": "x", "items": {"column": "title", "op": "<", "value": "M"}}]},
     "op '<' orders values; items column 'title' is String"),
    ({"exclude": [{"name": "x", "items": {"column": "year", "op": "contains", "value": 1}}]},
     "op 'contains' needs a list or string column"),
    ({"exclude": [{"name": "x", "items": {"column": "release_date", "op": "<", "value": 1990}}]},
     "cannot be compared with items column 'release_date' (Date)"),
    ({"cap": [{"name": "c", "column": "genre", "max": 2}]}, "cap 'c': column 'genre' is not in the items table"),
    ({"deny": ["10"]}, "deny: item id(s) '10' are not numbers"),
])
def test_rules_that_do_not_fit_the_tables_name_rule_and_field(rules, message):
    with pytest.raises(ConfigError) as caught:
        BusinessRules.from_dict(rules, source="family.toml").check(ITEMS, USERS)
    assert caught.value.message.startswith("family.toml: ")
    assert message in caught.value.message


@pytest.mark.parametrize("rules,message", [
    ({"exclude": [{"name": "x", "items": {"column": "year", "op": "~", "value": 1}}]},
     "exclude rule 'x': items: op '~' is not an operator"),
    ({"exclude": [{"name": "x", "items": {"column": "year", "op": "in", "value": 1}}]},
     "op 'in' takes a non-empty list as value"),
    ({"exclude": [{"name": "x", "items": {"column": "year", "op": "==", "value": [1, 2]}}]},
     "op '==' takes a single value"),
    ({"exclude": [{"name": "x", "items": {"column": "year", "op": "==", "value": float("nan")}}]}, "NaN"),
    ({"exclude": [{"name": "x", "items": {"column": "year", "op": "=="}}]}, "a condition needs value"),
    ({"exclude": [{"name": "x", "items": {"column": "year", "op": "==", "value": 1, "colour": 2}}]},
     "unknown key(s) colour in a condition"),
    ({"exclude": [{"name": "x"}]}, "exclude rule 'x': items is missing"),
    ({"exclude": [{"name": "x", "items": []}]}, "items needs at least one condition"),
    ({"exclude": [{"name": "x", "items": [{"column": "a", "op": "==", "value": 1}, 5]}]},
     "exclude rule 'x': items[1]: a condition is a table"),
    ({"cap": [{"name": "c", "column": "genres", "max": 0}]}, "cap 'c': max must be an integer ≥ 1, got 0"),
    ({"cap": [{"name": "c", "column": "genres"}]}, "cap 'c': max missing"),
    ({"cap": [{"name": "x", "column": "genres", "max": 1}], "exclude": [{**CHILD_RULE, "name": "x"}]},
     "rule name(s) x used twice"),
    ({"allow": 5}, "allow must be a list of item ids"),
    ({"deny": [1.5]}, "deny: 1.5 is not an item id"),
    ({"excludes": []}, "unknown key(s) excludes"),
])
def test_malformed_rules_are_refused_when_declared(rules, message):
    with pytest.raises(ConfigError) as caught:
        BusinessRules.from_dict(rules, source="family.toml")
    assert caught.value.message.startswith("family.toml: ")
    assert message in caught.value.message


def test_rule_needing_an_absent_user_table_is_refused():
    with pytest.raises(ConfigError, match="this dataset has no users table"):
        BusinessRules.from_dict({"exclude": [CHILD_RULE]}).check(ITEMS, None)


def test_load_names_the_file(tmp_path):
    bad = tmp_path / "rules.toml"
    bad.write_text("[[exclude]]\nname = 'x'\nitems = { column = 'year', op = 'between', value = 3 }\n")
    with pytest.raises(ConfigError, match=r"rules.toml: exclude rule 'x': items: op 'between' is not an operator"):
        BusinessRules.load(bad)
    bad.write_text("deny = [1,\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        BusinessRules.load(bad)
    with pytest.raises(ConfigError, match="no such rules file"):
        BusinessRules.load(tmp_path / "absent.toml")


def test_objects_and_dicts_declare_the_same_rules():
    as_objects = BusinessRules(exclude=(ExcludeRule("no-horror-under-13", (Condition("genres", "contains", "Horror"),),
                                                    (Condition("age", "<", 13),)),))
    assert as_objects == BusinessRules.from_dict({"exclude": [CHILD_RULE]})


def test_bad_selection_inputs():
    rules = compiled(exclude=[CHILD_RULE])
    with pytest.raises(ValueError, match="NaN"):
        rules.apply([10, 11], [1.0, float("nan")], 2)
    with pytest.raises(ValueError, match="k must be"):
        rules.apply([10, 11], [1.0, 2.0], 0)
    with pytest.raises(ValueError, match="user attribute 'age': 'young' is not a number"):
        rules.apply([10, 11], [1.0, 2.0], 2, user={"age": "young"})
    with pytest.raises(ValueError, match="user attribute\\(s\\) shoe_size are not columns"):
        rules.apply([10, 11], [1.0, 2.0], 2, user={"shoe_size": 40})
    assert rules.apply([10, 999, 11], [1.0, 5.0, 2.0], 5) == [11, 10]  # an id outside the catalogue is dropped
