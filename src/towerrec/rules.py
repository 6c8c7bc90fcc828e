"""Business rules applied after ranking, before the top-K cut.

A real recommender retrieves a few hundred candidates, ranks them, then applies
rules the models know nothing about. Three kinds, declared in a TOML file (or as
dicts / objects from Python):

* **exclusions**: items matching a condition are removed for users matching a
  condition (no horror films for users under 13);
* **allow / deny lists** of item ids (only the allowed items may be recommended;
  denied ones never are);
* **diversity caps**: at most ``max`` items per value of a column in one list
  (at most 3 per genre); a multi-valued (list) column counts each of its values.

The rules file::

    deny = [666]                       # item ids never recommended
    # allow = [1, 2, 3]                # when present: only these item ids may be recommended

    [[exclude]]
    name = "no-horror-under-13"
    items = { column = "genres", op = "contains", value = "Horror" }
    users = { column = "age", op = "<", value = 13 }   # omitted: every user

    [[cap]]
    name = "genre-variety"
    column = "genres"
    max = 3

``items`` / ``users`` is one condition or a list of conditions that must all hold.
A condition is ``{ column, op, value }`` plus an optional ``missing`` (bool, default
false: whether a missing value, or a user without attributes, matches). Operators:

==============================  ==========================================================
``==`` ``!=``                   numeric, string, boolean, date columns
``<`` ``<=`` ``>`` ``>=``       numeric and date columns
``in`` ``not in``               scalar columns; ``value`` is a list
``contains``                    list columns: one of the values equals ``value``;
                                string columns: ``value`` is a substring
``contains any``                as ``contains``, for any of a list of values
==============================  ==========================================================

Declaring checks the shape (keys, operators, value kinds); :meth:`BusinessRules.check`
validates it against the item and user tables (unknown column, a value of another type than
the column's: a number compared with a string column...), each a :class:`~towerrec.errors.ConfigError`
naming the rule and the field. :meth:`BusinessRules.compile` turns the rules into numpy masks
over a catalogue (:class:`CompiledRules`) so that applying them to 300 candidates of
thousands of users costs microseconds per user.

Order of application (:meth:`CompiledRules.select_batch`): candidates are sorted by score
(descending; ties keep candidate order), every excluded / denied / not-allowed candidate
is dropped, then the list is filled greedily best first, skipping an item that would
take a capped value over its cap, until ``k`` items are chosen (fewer when the
candidates run out).
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from towerrec.errors import ConfigError, listing, shorten

#: The operators a condition may use.
OPERATORS = ("==", "!=", "<", "<=", ">", ">=", "in", "not in", "contains", "contains any")
_ORDERING = ("<", "<=", ">", ">=")
_LIST_VALUE = ("in", "not in", "contains any")
_TOP_KEYS = ("allow", "deny", "exclude", "cap")


@dataclass(frozen=True)
class Condition:
    """``column op value`` over one table (items or users).

    ``missing``: whether a null value (or a user without attributes) matches. Built
    from a dict by :meth:`from_dict`.

    Raises (at construction):
        ConfigError: an unknown operator; a list ``value`` for a single-value operator or the
            reverse; an empty list; a NaN value.
    """

    column: str
    op: str
    value: Any
    missing: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.column, str) or not self.column:
            raise ConfigError(f"column must be a column name (a string), got {shorten(self.column)}")
        if self.op not in OPERATORS:
            raise ConfigError(f"op {shorten(self.op)} is not an operator",
                              hint=f"use one of: {', '.join(OPERATORS)}")
        if not isinstance(self.missing, bool):
            raise ConfigError(f"missing must be true or false, got {shorten(self.missing)}")
        values = self.value
        if self.op in _LIST_VALUE:
            if not isinstance(values, (list, tuple)) or not values:
                raise ConfigError(f"op {self.op!r} takes a non-empty list as value, got {shorten(values)}")
            object.__setattr__(self, "value", tuple(values))
            values = self.value
        else:
            if isinstance(values, (list, tuple, dict)):
                raise ConfigError(f"op {self.op!r} takes a single value, got {shorten(values)}",
                                  hint="use 'in' or 'contains any' to match any of several values")
            values = (values,)
        for v in values:
            if not isinstance(v, (str, int, float, bool, dt.date)):
                raise ConfigError(f"value {shorten(v)} is not a string, number, boolean or date")
            if isinstance(v, float) and math.isnan(v):
                raise ConfigError("value is NaN: a NaN never compares equal or ordered")

    @classmethod
    def from_dict(cls, value: Any) -> Condition:
        """A condition from ``{"column": ..., "op": ..., "value": ..., "missing": ...}``.

        Raises:
            ConfigError: not a table, an unknown or missing key, or as the constructor.
        """
        if isinstance(value, Condition):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"a condition is a table {{ column, op, value }}, got {shorten(value)}")
        unknown = sorted(set(value) - {"column", "op", "value", "missing"})
        if unknown:
            raise ConfigError(f"unknown key(s) {listing(unknown)} in a condition",
                              hint="a condition has column, op, value and optional missing")
        absent = [key for key in ("column", "op", "value") if key not in value]
        if absent:
            raise ConfigError(f"a condition needs {', '.join(absent)}")
        return cls(value["column"], value["op"], value["value"], value.get("missing", False))

    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON form :meth:`from_dict` reads."""
        out = {"column": self.column, "op": self.op,
               "value": list(self.value) if isinstance(self.value, tuple) else self.value}
        if self.missing:
            out["missing"] = True
        return out

    @property
    def values(self) -> tuple[Any, ...]:
        """The compared value(s) as a tuple."""
        return self.value if isinstance(self.value, tuple) else (self.value,)

    def check(self, schema: Mapping[str, pl.DataType], table: str) -> None:
        """That this condition can be evaluated on a table of ``schema`` (``table``: "items" / "users").

        Raises:
            ConfigError: an unknown column (the message lists the table's columns); an operator the
                column's type does not support; a value of another type than the column's.
        """
        if self.column not in schema:
            raise ConfigError(f"column {self.column!r} is not in the {table} table "
                              f"(its columns: {listing(list(schema), 12)})")
        dtype = schema[self.column]
        if isinstance(dtype, (pl.List, pl.Array)):
            if self.op not in ("contains", "contains any"):
                raise ConfigError(f"op {self.op!r} compares one value, and {table} column {self.column!r} holds "
                                  f"lists ({dtype})", hint="use 'contains' or 'contains any' on a list column")
            element = dtype.inner
        else:
            element = dtype
            if self.op in ("contains", "contains any") and not _is_string(dtype):
                raise ConfigError(f"op {self.op!r} needs a list or string column; {table} column "
                                  f"{self.column!r} is {dtype}", hint="use '==' or 'in'")
            if self.op in _ORDERING and not (dtype.is_numeric() or dtype.is_temporal()):
                raise ConfigError(f"op {self.op!r} orders values; {table} column {self.column!r} is {dtype}, "
                                  "which has no order here", hint="use '==', '!=', 'in' or 'not in'")
        for v in self.values:
            if not _compatible(v, element):
                held = f"a list of {element}" if element is not dtype else f"{element}"
                raise ConfigError(f"value {shorten(v)} ({_kind(v)}) cannot be compared with {table} column "
                                  f"{self.column!r} ({held})",
                                  hint=f"give a {_kind_of_dtype(element)} value")


def _is_string(dtype: pl.DataType) -> bool:
    return dtype == pl.String or isinstance(dtype, (pl.Categorical, pl.Enum))


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dt.datetime):
        return "a date-time"
    return "a date"


def _kind_of_dtype(dtype: pl.DataType) -> str:
    if dtype == pl.Boolean:
        return "boolean"
    if dtype.is_numeric():
        return "number"
    if _is_string(dtype):
        return "string"
    if dtype == pl.Date:
        return "date"
    if dtype.is_temporal():
        return "date-time"
    return str(dtype)


def _compatible(value: Any, dtype: pl.DataType) -> bool:
    if dtype == pl.Boolean:
        return isinstance(value, bool)
    if dtype.is_numeric():
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if _is_string(dtype):
        return isinstance(value, str)
    if dtype == pl.Date:
        return isinstance(value, dt.date) and not isinstance(value, dt.datetime)
    if isinstance(dtype, pl.Datetime):
        return isinstance(value, dt.datetime)
    return False


def condition_mask(conditions: Sequence[Condition], frame: pl.DataFrame) -> np.ndarray:
    """``[frame.height]`` bool: rows of ``frame`` where every condition holds (all rows for none).

    The conditions must have been checked against ``frame``'s schema (:meth:`Condition.check`).
    """
    mask = np.ones(frame.height, dtype=bool)
    for condition in conditions:
        mask &= _condition_mask(condition, frame)
    return mask


def _condition_mask(condition: Condition, frame: pl.DataFrame) -> np.ndarray:
    """``[frame.height]`` bool of one condition, nulls replaced by ``condition.missing``."""
    dtype = frame.schema[condition.column]
    column = pl.col(condition.column)
    op, value, values = condition.op, condition.value, list(condition.values)
    if op in ("contains", "contains any"):
        if isinstance(dtype, (pl.List, pl.Array)):
            inner = column.list if isinstance(dtype, pl.List) else column.arr
            test = pl.any_horizontal([inner.contains(v) for v in values])
        else:
            test = pl.any_horizontal([column.cast(pl.String).str.contains(v, literal=True) for v in values])
    elif op == "in":
        test = column.is_in(values)
    elif op == "not in":
        test = ~column.is_in(values)
    else:
        test = {"==": column.__eq__, "!=": column.__ne__, "<": column.__lt__, "<=": column.__le__,
                ">": column.__gt__, ">=": column.__ge__}[op](pl.lit(value))
    expression = pl.when(column.is_null()).then(pl.lit(condition.missing)).otherwise(test.fill_null(False))
    return frame.select(expression.alias("m"))["m"].fill_null(condition.missing).to_numpy().astype(bool)


def _conditions(value: Any, where: str) -> tuple[Condition, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for i, item in enumerate(items):
        try:
            out.append(Condition.from_dict(item))
        except ConfigError as exc:
            label = where if len(items) == 1 and not isinstance(value, (list, tuple)) else f"{where}[{i}]"
            raise ConfigError(f"{label}: {exc.message}", exc.hint) from None
    return tuple(out)


@dataclass(frozen=True)
class ExcludeRule:
    """Items matching every condition of ``items`` are removed for users matching every condition of
    ``users`` (no ``users`` conditions: for every user).

    Raises (at construction):
        ConfigError: no item condition, or a condition that is not valid (named by rule and field).
    """

    name: str
    items: tuple[Condition, ...]
    users: tuple[Condition, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"exclude rule name must be a non-empty string, got {shorten(self.name)}")
        object.__setattr__(self, "items", _conditions(self.items, f"exclude rule {self.name!r}: items"))
        object.__setattr__(self, "users", _conditions(self.users, f"exclude rule {self.name!r}: users"))
        if not self.items:
            raise ConfigError(f"exclude rule {self.name!r}: items needs at least one condition",
                              hint="to drop items for everyone, use a condition and no users, or deny")

    @classmethod
    def from_dict(cls, value: Any, default_name: str) -> ExcludeRule:
        """A rule from ``{"name", "items", "users"}`` (``name`` defaults to ``default_name``).

        Raises:
            ConfigError: not a table, an unknown key, or as the constructor.
        """
        if isinstance(value, ExcludeRule):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{default_name}: an exclude rule is a table (name, items, users)")
        name = value.get("name", default_name)
        unknown = sorted(set(value) - {"name", "items", "users"})
        if unknown:
            raise ConfigError(f"exclude rule {shorten(name)}: unknown key(s) {listing(unknown)}",
                              hint="an exclude rule has name, items and optional users")
        if "items" not in value:
            raise ConfigError(f"exclude rule {shorten(name)}: items is missing (the condition items must match)")
        return cls(name, value["items"], value.get("users") or ())

    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON form :meth:`from_dict` reads."""
        out: dict[str, Any] = {"name": self.name, "items": [c.to_dict() for c in self.items]}
        if self.users:
            out["users"] = [c.to_dict() for c in self.users]
        return out


@dataclass(frozen=True)
class DiversityCap:
    """At most ``max`` items per value of item column ``column`` in one list (a list column counts each
    of its values; an item with a missing value is not capped by this rule).

    Raises (at construction):
        ConfigError: ``max`` not an integer ≥ 1, or an empty column name.
    """

    name: str
    column: str
    max: int

    def __post_init__(self) -> None:
        if not isinstance(self.column, str) or not self.column:
            raise ConfigError(f"cap {self.name!r}: column must be a column name, got {shorten(self.column)}")
        if isinstance(self.max, bool) or not isinstance(self.max, int) or self.max < 1:
            raise ConfigError(f"cap {self.name!r}: max must be an integer ≥ 1, got {shorten(self.max)}")

    @classmethod
    def from_dict(cls, value: Any, default_name: str) -> DiversityCap:
        """A cap from ``{"name", "column", "max"}``.

        Raises:
            ConfigError: not a table, an unknown or missing key, or as the constructor.
        """
        if isinstance(value, DiversityCap):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{default_name}: a cap is a table (name, column, max)")
        name = value.get("name", default_name)
        unknown = sorted(set(value) - {"name", "column", "max"})
        if unknown:
            raise ConfigError(f"cap {shorten(name)}: unknown key(s) {listing(unknown)}",
                              hint="a cap has name, column and max")
        absent = [key for key in ("column", "max") if key not in value]
        if absent:
            raise ConfigError(f"cap {shorten(name)}: {', '.join(absent)} missing")
        return cls(name, value["column"], value["max"])

    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON form :meth:`from_dict` reads."""
        return {"name": self.name, "column": self.column, "max": self.max}


def _id_list(value: Any, key: str) -> tuple[Any, ...] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key} must be a list of item ids, got {shorten(value)}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, str, np.integer)):
            raise ConfigError(f"{key}: {shorten(v)} is not an item id (an integer or a string)")
    return tuple(int(v) if isinstance(v, np.integer) else v for v in value)


@dataclass(frozen=True)
class BusinessRules:
    """A set of business rules (see the module docstring for the file format and semantics).

    ``allow``: None (every item allowed) or the only item ids that may be recommended;
    ``deny``: item ids never recommended; ``exclude``: :class:`ExcludeRule` s;
    ``caps``: :class:`DiversityCap` s. Rules and conditions may be given as dicts.

    Example::

        rules = BusinessRules.load("configs/rules/ml100k_family.toml")
        compiled = rules.compile(dataset.items, dataset.users, catalogue_ids=run.catalogue["item_id"])
        order = compiled.select(candidate_ids, scores, k=10, user=42)   # indices into candidate_ids

    Raises (at construction):
        ConfigError: a malformed rule, an id list that is not ids, two rules of one name.
    """

    exclude: tuple[ExcludeRule, ...] = ()
    caps: tuple[DiversityCap, ...] = ()
    allow: tuple[Any, ...] | None = None
    deny: tuple[Any, ...] = ()
    source: str = field(default="rules", compare=False)

    def __post_init__(self) -> None:
        try:
            exclude = tuple(ExcludeRule.from_dict(r, f"exclude[{i}]") for i, r in enumerate(self.exclude))
            caps = tuple(DiversityCap.from_dict(c, f"cap[{i}]") for i, c in enumerate(self.caps))
            names = [r.name for r in exclude] + [c.name for c in caps]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ConfigError(f"rule name(s) {listing(twice)} used twice", hint="give every rule its own name")
            object.__setattr__(self, "exclude", exclude)
            object.__setattr__(self, "caps", caps)
            object.__setattr__(self, "allow", _id_list(self.allow, "allow"))
            object.__setattr__(self, "deny", _id_list(self.deny, "deny") or ())
        except ConfigError as exc:
            raise ConfigError(f"{self.source}: {exc.message}", exc.hint) from None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "rules") -> BusinessRules:
        """Rules from the TOML/JSON structure (keys ``allow``, ``deny``, ``exclude``, ``cap``).

        Raises:
            ConfigError: an unknown key, or any malformed rule; the message starts with ``source``.
        """
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: rules are a table (allow, deny, exclude, cap)")
        unknown = sorted(set(values) - set(_TOP_KEYS))
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {listing(unknown)}",
                              hint=f"a rules file has {', '.join(_TOP_KEYS)}")
        for key in ("exclude", "cap"):
            if not isinstance(values.get(key, []), (list, tuple)):
                raise ConfigError(f"{source}: {key} must be an array of tables ([[{key}]])")
        return cls(exclude=tuple(values.get("exclude", ())), caps=tuple(values.get("cap", ())),
                   allow=values.get("allow"), deny=values.get("deny", ()), source=source)

    @classmethod
    def load(cls, path: str | Path) -> BusinessRules:
        """Rules from a TOML file (format in the module docstring).

        Raises:
            ConfigError: a missing, unreadable or malformed file, or a malformed rule; named by file and rule.
        """
        from towerrec.config import read_toml

        return cls.from_dict(read_toml(path, "rules"), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON form :meth:`from_dict` reads (what a bundle stores)."""
        out: dict[str, Any] = {}
        if self.allow is not None:
            out["allow"] = list(self.allow)
        if self.deny:
            out["deny"] = list(self.deny)
        if self.exclude:
            out["exclude"] = [r.to_dict() for r in self.exclude]
        if self.caps:
            out["cap"] = [c.to_dict() for c in self.caps]
        return out

    @property
    def empty(self) -> bool:
        """Whether these rules change nothing."""
        return self.allow is None and not self.deny and not self.exclude and not self.caps

    def check(self, items: pl.DataFrame | None, users: pl.DataFrame | None = None) -> None:
        """Validate the rules against the item and user tables (``item_id`` / ``user_id`` plus attributes).

        Raises:
            ConfigError: ``<source>: <rule kind> '<name>': <items|users> column 'x' ...``: a column the
                table lacks, an operator its type does not support, a value of another type; an id in
                allow/deny of another type than the item ids; rules needing a table that is absent.
        """
        item_schema = _schema(items, "item_id")
        user_schema = _schema(users, "user_id")
        for rule in self.exclude:
            for table, schema, conditions in (("items", item_schema, rule.items), ("users", user_schema, rule.users)):
                for i, condition in enumerate(conditions):
                    where = f"exclude rule {rule.name!r}: {table}" + (f"[{i}]" if len(conditions) > 1 else "")
                    if schema is None:
                        raise ConfigError(f"{self.source}: {where}: this dataset has no {table} table",
                                          hint=f"drop the rule, or give the dataset a {table} table")
                    try:
                        condition.check(schema, table)
                    except ConfigError as exc:
                        raise ConfigError(f"{self.source}: {where}: {exc.message}", exc.hint) from None
        for cap in self.caps:
            if item_schema is None or cap.column not in item_schema:
                columns = "none" if item_schema is None else listing(list(item_schema), 12)
                raise ConfigError(f"{self.source}: cap {cap.name!r}: column {cap.column!r} is not in the items "
                                  f"table (its columns: {columns})")
        id_dtype = (item_schema or {}).get("item_id")
        for key, ids in (("allow", self.allow or ()), ("deny", self.deny)):
            bad = [v for v in ids if id_dtype is not None and not _compatible(v, id_dtype)]
            if bad:
                raise ConfigError(f"{self.source}: {key}: item id(s) {listing(bad, 5, shorten)} are not "
                                  f"{_kind_of_dtype(id_dtype)}s, as this catalogue's item ids are")

    def compile(self, items: pl.DataFrame | None, users: pl.DataFrame | None = None, *,
                catalogue_ids: Sequence[Any] | np.ndarray | pl.Series | None = None) -> CompiledRules:
        """Check the rules (:meth:`check`), then precompute them over the catalogue.

        ``catalogue_ids``: the item ids in catalogue (model) order; candidates are then named by
        their catalogue positions. Default: ``items["item_id"]`` in table order. Catalogue items
        absent from ``items`` have missing attributes. Allow/deny ids not in the catalogue are ignored
        with a warning naming them.

        Raises:
            ConfigError: as :meth:`check`; an allow list naming no item of the catalogue (nothing could
                ever be recommended).
        """
        self.check(items, users)
        if catalogue_ids is None:
            if items is None:
                raise ConfigError(f"{self.source}: compiling rules needs the item table or the catalogue ids")
            catalogue = items["item_id"]
        else:
            dtype = items.schema["item_id"] if items is not None else None
            catalogue = pl.Series("item_id", list(catalogue_ids), dtype=dtype)
        ids = catalogue.to_list()
        num_items = len(ids)
        if items is not None:
            frame = pl.DataFrame({"item_id": catalogue}).join(items, on="item_id", how="left", maintain_order="left")
        else:
            frame = pl.DataFrame({"item_id": catalogue})
        blocked = np.zeros(num_items, dtype=bool)
        position = {v: i for i, v in enumerate(ids)}
        for key, listed in (("allow", self.allow or ()), ("deny", self.deny)):
            unknown = [v for v in listed if v not in position]
            if key == "allow" and listed and len(unknown) == len(listed):
                raise ConfigError(f"{self.source}: allow: none of its item id(s) {listing(unknown, 5, shorten)} "
                                  "is in the catalogue, so nothing could be recommended",
                                  hint="list item ids of this catalogue, or drop the allow list")
            if unknown:
                warnings.warn(f"{self.source}: {key}: item id(s) {listing(unknown, 5, shorten)} are not in the "
                              "catalogue and are ignored", stacklevel=2)
        if self.allow is not None:
            blocked[:] = True
            blocked[[position[v] for v in self.allow if v in position]] = False
        blocked[[position[v] for v in self.deny if v in position]] = True
        rule_items = np.zeros((len(self.exclude), num_items), dtype=bool)
        for r, rule in enumerate(self.exclude):
            rule_items[r] = condition_mask(rule.items, frame)
        caps = [_cap_values(frame[cap.column]) for cap in self.caps]
        return CompiledRules(self, ids, blocked, rule_items, caps, users)


def _schema(frame: pl.DataFrame | None, key: str) -> dict[str, pl.DataType] | None:
    if frame is None:
        return None
    if not isinstance(frame, pl.DataFrame):
        raise TypeError(f"the {key.split('_')[0]}s table must be a polars DataFrame, got {type(frame).__name__}")
    return dict(frame.schema)


def _cap_values(column: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """CSR of a column's values per catalogue item as dense codes: (offsets [n + 1], codes [nnz])."""
    if isinstance(column.dtype, pl.Array):
        column = column.cast(pl.List(column.dtype.inner))
    if not isinstance(column.dtype, pl.List):
        column = column.cast(column.dtype).to_frame().select(pl.concat_list(pl.col(column.name)))[column.name]
    lengths = column.list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = column.explode()
    flat = flat.filter(flat.is_not_null()) if flat.null_count() else flat
    if flat.len() != lengths.sum():  # null elements inside lists: recount without them
        values = [[v for v in (row or []) if v is not None] for row in column.to_list()]
        lengths = np.array([len(v) for v in values], dtype=np.int64)
        flat = pl.Series([v for row in values for v in row], dtype=column.dtype.inner)
    codes = flat.rank("dense").to_numpy().astype(np.int64) - 1 if flat.len() else np.zeros(0, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return offsets, codes


class CompiledRules:
    """Business rules precomputed over one catalogue (:meth:`BusinessRules.compile`).

    Attributes:
        rules: the :class:`BusinessRules`.
        catalogue_ids: item ids in catalogue order (candidates are named by positions in it).
        blocked: ``[num_items]`` bool, denied or not allowed for everyone.
        rule_items: ``[num_rules, num_items]`` bool, the items each exclude rule removes.
    """

    def __init__(self, rules: BusinessRules, catalogue_ids: list[Any], blocked: np.ndarray, rule_items: np.ndarray,
                 caps: list[tuple[np.ndarray, np.ndarray]], users: pl.DataFrame | None) -> None:
        self.rules = rules
        self.catalogue_ids = catalogue_ids
        self.blocked = blocked
        self.rule_items = rule_items
        self._caps = caps
        self._users = users
        self._user_rows: dict[Any, int] | None = None
        self._user_matches: np.ndarray | None = None
        self._position = {v: i for i, v in enumerate(catalogue_ids)}

    @property
    def num_items(self) -> int:
        """Catalogue size."""
        return len(self.catalogue_ids)

    def user_matches(self, users: Sequence[Any] | None) -> np.ndarray:
        """``[len(users), num_rules]`` bool: which exclude rules apply to each user.

        Each user is a user id of the compiled user table, a mapping of attributes (a new user;
        absent attributes are missing) or None (no attributes). A rule without user conditions
        applies to everyone; a user id not in the table has no attributes.

        Raises:
            ValueError: an attribute that is not a column of the user table, or whose value cannot
                take the column's type (named).
        """
        if users is None:
            return np.ones((0, len(self.rules.exclude)), dtype=bool)
        out = np.zeros((len(users), len(self.rules.exclude)), dtype=bool)
        for r, rule in enumerate(self.rules.exclude):
            if not rule.users:
                out[:, r] = True
        conditional = [r for r, rule in enumerate(self.rules.exclude) if rule.users]
        if not conditional:
            return out
        table = self._table_matches()
        attributes = [(j, u) for j, u in enumerate(users) if isinstance(u, Mapping)]
        for j, user in enumerate(users):
            if user is None or isinstance(user, Mapping):
                continue
            row = self._rows().get(user, self._rows().get(_alternative(user)))
            if row is not None:
                out[j, conditional] = table[row, conditional]
        missing_row = self._missing_matches()
        for j, user in enumerate(users):
            if user is None or (not isinstance(user, Mapping) and self._rows().get(
                    user, self._rows().get(_alternative(user))) is None):
                out[j, conditional] = missing_row[conditional]
        if attributes:
            frame = self._attribute_frame([u for _, u in attributes])
            for r in conditional:
                mask = condition_mask(self.rules.exclude[r].users, frame)
                for (j, _), hit in zip(attributes, mask.tolist()):
                    out[j, r] = hit
        return out

    def _rows(self) -> dict[Any, int]:
        if self._user_rows is None:
            ids = [] if self._users is None else self._users["user_id"].to_list()
            self._user_rows = {v: i for i, v in enumerate(ids)}
        return self._user_rows

    def _table_matches(self) -> np.ndarray:
        if self._user_matches is None:
            rules = self.rules.exclude
            height = 0 if self._users is None else self._users.height
            self._user_matches = np.ones((height, len(rules)), dtype=bool)
            for r, rule in enumerate(rules):
                if rule.users and self._users is not None:
                    self._user_matches[:, r] = condition_mask(rule.users, self._users)
        return self._user_matches

    def _missing_matches(self) -> np.ndarray:
        """Which rules apply to a user with no attributes at all (every user condition ``missing = true``)."""
        return np.array([all(c.missing for c in rule.users) for rule in self.rules.exclude], dtype=bool)

    def _attribute_frame(self, users: list[Mapping[str, Any]]) -> pl.DataFrame:
        schema = {} if self._users is None else dict(self._users.schema)
        columns: dict[str, pl.Series] = {}
        for name, dtype in schema.items():
            values = [u.get(name) for u in users]
            try:
                columns[name] = pl.Series(name, values, dtype=dtype, strict=True)
            except (TypeError, ValueError, pl.exceptions.PolarsError):
                bad = next((v for v in values if v is not None), None)
                raise ValueError(f"user attribute {name!r}: {shorten(bad)} is not a {_kind_of_dtype(dtype)}, "
                                 f"as the user table's {name!r} is") from None
        unknown = sorted({k for u in users for k in u} - set(schema))
        if unknown:
            raise ValueError(f"user attribute(s) {listing(unknown)} are not columns of the user table "
                             f"({listing(list(schema), 12)})")
        return pl.DataFrame(columns)

    def select_batch(self, candidates: np.ndarray, scores: np.ndarray, k: int,
                     user_rules: np.ndarray | None = None) -> np.ndarray:
        """The final top-``k`` of each row after the rules, as indices into the candidate axis.

        Args:
            candidates: ``[batch, n]`` int catalogue positions (``-1``: padding, never chosen).
            scores: ``[batch, n]`` float ranking scores, higher first (``-inf`` allowed, NaN not).
            k: list length (≥ 1).
            user_rules: ``[batch, num_rules]`` bool from :meth:`user_matches`; None: the rules
                without user conditions apply, the others do not.
        Returns:
            ``[batch, k]`` int64 indices into ``n`` (best first), ``-1`` past a row's last item.
        Raises:
            ValueError: shapes that disagree, NaN scores, ``k`` < 1, a position outside the catalogue.
        """
        candidates = np.asarray(candidates)
        scores = np.asarray(scores, dtype=np.float64)
        if candidates.ndim != 2 or scores.shape != candidates.shape:
            raise ValueError(f"candidates [batch, n] and scores of the same shape expected, got "
                             f"{candidates.shape} and {scores.shape}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an integer ≥ 1, got {k!r}")
        if np.isnan(scores).any():
            raise ValueError("scores contain NaN: a NaN score cannot be ranked")
        if candidates.size and (candidates.max() >= self.num_items or candidates.min() < -1):
            raise ValueError(f"candidate positions must lie in [-1, {self.num_items}), got "
                             f"{candidates.min()}..{candidates.max()}")
        batch, n = candidates.shape
        num_rules = len(self.rules.exclude)
        if user_rules is None:
            user_rules = np.broadcast_to(~self._conditional(), (batch, num_rules))
        user_rules = np.asarray(user_rules, dtype=bool)
        if user_rules.shape != (batch, num_rules):
            raise ValueError(f"user_rules must be [batch, {num_rules}], got {user_rules.shape}")
        safe = np.where(candidates < 0, 0, candidates)
        drop = (candidates < 0) | self.blocked[safe]
        for r in range(num_rules):
            drop |= user_rules[:, r:r + 1] & self.rule_items[r][safe]
        # best first among the kept; dropped candidates sort last (lexsort: last key is primary)
        order = np.lexsort((np.arange(n)[None, :].repeat(batch, 0), -scores, drop), axis=1)
        kept = (~drop).sum(axis=1)
        out = np.full((batch, k), -1, dtype=np.int64)
        if not self._caps:
            width = min(k, n)
            head = order[:, :width]
            valid = np.arange(width)[None, :] < kept[:, None]
            out[:, :width] = np.where(valid, head, -1)
            return out
        for b in range(batch):
            chosen = 0
            counts: list[dict[int, int]] = [{} for _ in self._caps]
            for index in order[b, : kept[b]].tolist():
                item = int(candidates[b, index])
                if self._fits(item, counts):
                    out[b, chosen] = index
                    chosen += 1
                    if chosen == k:
                        break
        return out

    def _conditional(self) -> np.ndarray:
        return np.array([bool(rule.users) for rule in self.rules.exclude], dtype=bool)

    def _fits(self, item: int, counts: list[dict[int, int]]) -> bool:
        """Whether ``item`` keeps every capped value within its cap; if so, counts it."""
        values = []
        for (offsets, codes), cap, seen in zip(self._caps, self.rules.caps, counts):
            mine = codes[offsets[item]:offsets[item + 1]].tolist()
            if any(seen.get(v, 0) >= cap.max for v in mine):
                return False
            values.append(mine)
        for mine, seen in zip(values, counts):
            for v in mine:
                seen[v] = seen.get(v, 0) + 1
        return True

    def positions(self, item_ids: Sequence[Any]) -> np.ndarray:
        """``[n]`` catalogue positions of item ids (``-1`` for ids not in the catalogue)."""
        return np.array([self._position.get(v, self._position.get(_alternative(v), -1)) for v in item_ids],
                        dtype=np.int64)

    def select(self, item_ids: Sequence[Any], scores: Sequence[float] | np.ndarray, k: int,
               user: Any = None) -> np.ndarray:
        """One user's final order: indices into ``item_ids`` (best first, at most ``k``) after the rules.

        Args:
            item_ids: ``[n]`` candidate item ids (ids not in the catalogue are dropped).
            scores: ``[n]`` their ranking scores, higher first.
            k: list length.
            user: a user id of the user table, a mapping of the user's attributes, or None (see
                :meth:`user_matches`).
        Raises:
            ValueError: as :meth:`select_batch` and :meth:`user_matches`.
        """
        candidates = self.positions(item_ids)[None, :]
        scores = np.asarray(scores, dtype=np.float64).reshape(1, -1)
        order = self.select_batch(candidates, scores, k, self.user_matches([user]))[0]
        return order[order >= 0]

    def apply(self, item_ids: Sequence[Any], scores: Sequence[float] | np.ndarray, k: int,
              user: Any = None) -> list[Any]:
        """One user's final list of item ids after the rules and the top-``k`` cut (see :meth:`select`)."""
        return [item_ids[i] for i in self.select(item_ids, scores, k, user).tolist()]


def _alternative(value: Any) -> Any:
    """An id in its other spelling ("42" <-> 42), so that text from a CLI or URL finds integer ids."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return None
