"""A search space: which config fields a study searches, over which values, checked before any trial runs.

A space file is TOML with one ``[params."section.field"]`` table per searched config field and an
optional ``[study]`` table of defaults (the CLI flags override them)::

    [study]
    metric = "top_10_accuracy"      # a validation metric of the run
    direction = "maximize"          # or "minimize"
    pruner = "median"               # "median" | "successive-halving" | "none"
    validation_fraction = 0.1       # carved from train when the base config has no validation split

    [params."train.learning_rate"]
    type = "float"                  # float | int | categorical
    low = 0.001
    high = 0.03
    log = true                      # optional (float and int); int and float also take step

    [params."model.query_features"]
    type = "categorical"            # any TOML values, lists (feature sets) included
    choices = [["user_id"], ["user_id", "user_history"]]

Each parameter becomes an Optuna distribution (``FloatDistribution``, ``IntDistribution``,
``CategoricalDistribution``; https://optuna.readthedocs.io). A categorical choice that is not a
scalar (a feature list, a table) is offered to Optuna as its JSON text and decoded back.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from towerrec.config import SECTIONS, RunConfig, read_toml
from towerrec.errors import ConfigError, shorten, shorten_text

PARAM_TYPES = ("float", "int", "categorical")
DIRECTIONS = ("maximize", "minimize")
PRUNERS = ("median", "successive-halving", "none")
STUDY_KEYS = ("metric", "direction", "pruner", "validation_fraction")
#: Fields a study sets itself or that choose the data rather than a model: never searched.
NOT_SEARCHABLE = {
    ("data", "validation_fraction"): "it sets the validation split the trials are compared on: set "
                                     "[study] validation_fraction (or --validation-fraction) instead",
    ("sequence", "validation_fraction"): "it sets the validation split the trials are compared on: set "
                                         "[study] validation_fraction (or --validation-fraction) instead",
    ("data", "dataset"): "it chooses the data, not the model",
    ("data", "data_dir"): "it says where the data is, not what is trained",
    ("data", "duplicate_titles"): "it chooses the data, not the model",
}
#: Fields the config hash leaves out because the data fingerprint holds what they change.
_IN_DATA_FINGERPRINT = {("data", "item_features"), ("data", "item_features_on"), ("data", "item_feature_defaults")}


@dataclass(frozen=True)
class Param:
    """One searched config field: ``key`` is ``"section.field"``; ``kind`` one of :data:`PARAM_TYPES`.

    ``low`` / ``high`` (inclusive), ``log`` and ``step`` for ``float`` / ``int``; ``choices`` for
    ``categorical`` (any TOML values: numbers, strings, booleans, lists, tables).
    """

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def section(self) -> str:
        """The config section of the key (``"train"`` of ``"train.learning_rate"``)."""
        return self.key.split(".", 1)[0]

    @property
    def field(self) -> str:
        """The field of the key within its section (``"learning_rate"``)."""
        return self.key.split(".", 1)[1]

    def labels(self) -> list[Any]:
        """The categorical choices as Optuna holds them: scalars as they are, anything else as JSON text."""
        return [_label(c) for c in self.choices]

    def distribution(self) -> Any:
        """The Optuna distribution of this parameter (``optuna.distributions``)."""
        from optuna import distributions

        if self.kind == "float":
            return distributions.FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return distributions.IntDistribution(int(self.low), int(self.high), log=self.log,
                                                 step=int(self.step or 1))
        return distributions.CategoricalDistribution(self.labels())

    def suggest(self, trial: Any) -> Any:
        """This parameter's value for an ``optuna.Trial`` (Optuna's value: a categorical label, see :meth:`decode`)."""
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_categorical(self.key, self.labels())

    def decode(self, value: Any) -> Any:
        """The config value of an Optuna value (a categorical label back to its choice)."""
        if self.kind != "categorical":
            return value
        return self.choices[self.labels().index(value)]

    def representatives(self) -> list[Any]:
        """Config values that stand for the whole range: both ends of a range, every choice."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int":
            step = int(self.step or 1)
            high = int(self.low) + (int(self.high) - int(self.low)) // step * step
            return [int(self.low), high]
        return [self.low, self.high]

    def to_dict(self) -> dict[str, Any]:
        """The parameter as its space-file table (what ``study.json`` records)."""
        out: dict[str, Any] = {"type": self.kind}
        if self.kind == "categorical":
            out["choices"] = [plain(c) for c in self.choices]
            return out
        out.update(low=self.low, high=self.high)
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


@dataclass(frozen=True)
class StudySettings:
    """The ``[study]`` table: defaults for ``metric``, ``direction``, ``pruner``, ``validation_fraction``
    (each None when the file leaves it out)."""

    metric: str | None = None
    direction: str | None = None
    pruner: str | None = None
    validation_fraction: float | None = None


@dataclass(frozen=True)
class SearchSpace:
    """The parameters a study searches (in file order), its ``[study]`` defaults and where it came from
    (``source``: the file, for messages)."""

    params: tuple[Param, ...]
    study: StudySettings = StudySettings()
    source: str = "the search space"

    def to_dict(self) -> dict[str, Any]:
        """``{"params": {key: table}}``: what the space searches (a study folder records it)."""
        return {"params": {p.key: p.to_dict() for p in self.params}}

    def distributions(self) -> dict[str, Any]:
        """Optuna distributions by parameter key."""
        return {p.key: p.distribution() for p in self.params}

    def decode(self, optuna_params: dict[str, Any]) -> dict[str, Any]:
        """Config values by key from a trial's Optuna values."""
        by_key = {p.key: p for p in self.params}
        return {k: by_key[k].decode(v) if k in by_key else v for k, v in optuna_params.items()}

    def to_optuna(self, values: dict[str, Any]) -> dict[str, Any]:
        """Optuna's values of a point given as config values by key (to enqueue it).

        Raises:
            ConfigError: a key the space does not search, a value outside its range or choices.
        """
        by_key = {p.key: p for p in self.params}
        unknown = sorted(set(values) - set(by_key))
        if unknown:
            raise ConfigError(f"{self.source}: a point to try first names {unknown}, which the space does not "
                              f"search; searched: {list(by_key)}")
        out = {}
        for key, value in values.items():
            param = by_key[key]
            if param.kind == "categorical":
                label = _label(_frozen(plain(value)) if isinstance(value, (list, tuple)) else value)
                if label not in param.labels():
                    raise ConfigError(f"{self.source}: [params.{json.dumps(key)}] has no choice {_shown(value)}")
                out[key] = label
            elif (isinstance(value, bool) or not isinstance(value, (int, float))
                  or not param.low <= value <= param.high):
                raise ConfigError(f"{self.source}: [params.{json.dumps(key)}] value {_shown(value)} is outside "
                                  f"{param.low:g}..{param.high:g}")
            else:
                out[key] = value
        return out

    def apply(self, config: RunConfig, values: dict[str, Any]) -> RunConfig:
        """``config`` with each searched field set (``values``: config values by ``"section.field"``).

        Raises:
            ConfigError: a value the config layer refuses.
        """
        sections: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            section, name = key.split(".", 1)
            sections.setdefault(section, {})[name] = plain(value)
        return config.replace(**sections)

    def check(self, config: RunConfig) -> None:
        """Apply every representative value of every parameter to ``config``, one at a time.

        Raises:
            ConfigError: ``<space file>: [params."key"] = value: <the config layer's message>``, or a
                parameter whose values all give the same run (a field this config's kind does not read).
        """
        for param in self.params:
            hashes = set()
            for value in param.representatives():
                try:
                    hashes.add(self.apply(config, {param.key: value}).hash())
                except ConfigError as exc:
                    raise ConfigError(f"{self.source}: [params.{json.dumps(param.key)}] value {_shown(value)}: "
                                      f"{exc.message}", exc.hint) from None
            if (len(hashes) == 1 and len(param.representatives()) > 1
                    and (param.section, param.field) not in _IN_DATA_FINGERPRINT):
                raise ConfigError(f"{self.source}: [params.{json.dumps(param.key)}]: every value gives the same run: "
                                  f"a [model] kind = {config.model.kind!r} run does not read {param.key}",
                                  hint="search fields this config's kind reads")


def load_space(space: str | Path | dict[str, Any] | SearchSpace) -> SearchSpace:
    """A :class:`SearchSpace` from a TOML file, a dict shaped like one, or a space (returned as is).

    Raises:
        ConfigError: an unreadable file, a key that is not ``"section.field"`` of a config field (the
            message names the file and key and lists the section's fields), a type other than float /
            int / categorical, an empty or inverted range, a log range with ``low <= 0``, an empty or
            repeated choice list, an unknown key in a table, a bad ``[study]`` value.
    """
    if isinstance(space, SearchSpace):
        return space
    if isinstance(space, dict):
        return space_from_dict(space, source="the search space")
    path = Path(space)
    return space_from_dict(read_toml(path, what="search space"), source=str(path))


def space_from_dict(values: dict[str, Any], *, source: str) -> SearchSpace:
    """The space a dict shaped like the TOML file describes (see :func:`load_space`); ``source`` names it
    in messages."""
    unknown = sorted(set(values) - {"study", "params"})
    if unknown:
        raise ConfigError(f"{source}: unknown table(s) {unknown}; a space holds [study] and [params.\"section.field\"]")
    params_table = values.get("params", {})
    if not isinstance(params_table, dict) or not params_table:
        raise ConfigError(f"{source}: searches nothing: add [params.\"section.field\"] tables",
                          hint='e.g. [params."train.learning_rate"] type = "float" low = 0.001 high = 0.03 log = true')
    params = tuple(_param(source, key, table) for key, table in params_table.items())
    return SearchSpace(params, _study(source, values.get("study", {})), source)


def _study(source: str, table: Any) -> StudySettings:
    where = f"{source}: [study]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table, got {shorten(table)}")
    unknown = sorted(set(table) - set(STUDY_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid: {list(STUDY_KEYS)}")
    metric = table.get("metric")
    if metric is not None and (not isinstance(metric, str) or not metric):
        raise ConfigError(f"{where} metric must be a metric name, got {_shown(metric)}")
    direction = table.get("direction")
    if direction is not None:
        check_direction(direction, f"{where} direction")
    pruner = table.get("pruner")
    if pruner is not None:
        check_pruner(pruner, f"{where} pruner")
    fraction = table.get("validation_fraction")
    if fraction is not None:
        check_validation_fraction(fraction, f"{where} validation_fraction")
    return StudySettings(metric, direction, pruner, None if fraction is None else float(fraction))


def check_direction(direction: Any, where: str = "direction") -> str:
    """``direction`` if it is ``"maximize"`` or ``"minimize"``; else :class:`ConfigError` naming ``where``."""
    if direction not in DIRECTIONS:
        raise ConfigError(f"{where} must be one of {list(DIRECTIONS)}, got {_shown(direction)}")
    return direction


def check_pruner(pruner: Any, where: str = "pruner") -> str:
    """``pruner`` if it is one of :data:`PRUNERS`; else :class:`ConfigError` naming ``where``."""
    if pruner not in PRUNERS:
        raise ConfigError(f"{where} must be one of {list(PRUNERS)}, got {_shown(pruner)}")
    return pruner


def check_validation_fraction(fraction: Any, where: str = "validation_fraction") -> float:
    """``fraction`` as a float in (0, 1); else :class:`ConfigError` naming ``where``."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError(f"{where} must be a number in (0, 1), got {_shown(fraction)}")
    return float(fraction)


def _param(source: str, key: Any, table: Any) -> Param:
    where = f"{source}: [params.{json.dumps(key)}]"
    section, _, name = str(key).partition(".")
    if section not in SECTIONS or not name:
        raise ConfigError(f"{where}: not a config field: a key is \"section.field\" with a section of "
                          f"{list(SECTIONS)}", hint='e.g. [params."train.learning_rate"]')
    valid = [f.name for f in fields(SECTIONS[section])]
    if name not in valid:
        raise ConfigError(f"{where}: [{section}] has no field {name!r}; valid fields: {valid}")
    if section == "track":
        raise ConfigError(f"{where}: not searchable: [track] says where runs are logged, not what they train")
    if (section, name) in NOT_SEARCHABLE:
        raise ConfigError(f"{where}: not searchable: {NOT_SEARCHABLE[(section, name)]}")
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table with type = \"float\" | \"int\" | \"categorical\", "
                          f"got {shorten(table)}")
    kind = table.get("type")
    if kind not in PARAM_TYPES:
        raise ConfigError(f"{where} type must be one of {list(PARAM_TYPES)}, got {_shown(kind)}")
    allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log", "step"}
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} for type = {kind!r}; valid: {sorted(allowed)}")
    if kind == "categorical":
        return Param(key, kind, choices=_choices(where, table.get("choices")))
    return _range(where, key, kind, table)


def _choices(where: str, choices: Any) -> tuple[Any, ...]:
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{where} choices must be a non-empty list, got {_shown(choices)}")
    labels = [_label(c) for c in choices]
    repeated = sorted({json.dumps(plain(c)) for c, label in zip(choices, labels) if labels.count(label) > 1})
    if repeated:
        raise ConfigError(f"{where} choices repeat {', '.join(repeated)}")
    return tuple(_frozen(c) for c in choices)


def _range(where: str, key: str, kind: str, table: dict[str, Any]) -> Param:
    bounds = {}
    for name in ("low", "high"):
        value = table.get(name)
        if value is None:
            raise ConfigError(f"{where} needs {name} (type = {kind!r} searches a range low..high)")
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or (kind == "int" and not isinstance(value, int))):
            what = "an integer" if kind == "int" else "a finite number"
            raise ConfigError(f"{where} {name} must be {what}, got {_shown(value)}")
        bounds[name] = value
    low, high = bounds["low"], bounds["high"]
    if not low < high:
        raise ConfigError(f"{where}: empty range: low ({low:g}) must be below high ({high:g})")
    log = table.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where} log must be true or false, got {_shown(log)}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got low = {low:g}")
    step = table.get("step")
    if step is not None:
        if log:
            raise ConfigError(f"{where}: step and log = true exclude each other (Optuna samples a log range "
                              "continuously)")
        if (isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step) or step <= 0
                or (kind == "int" and not isinstance(step, int))):
            what = "a positive integer" if kind == "int" else "a positive number"
            raise ConfigError(f"{where} step must be {what}, got {_shown(step)}")
        if step > high - low:
            raise ConfigError(f"{where}: step {step:g} is wider than the range {low:g}..{high:g}")
    if kind == "float":
        return Param(key, kind, float(low), float(high), log, None if step is None else float(step))
    return Param(key, kind, low, high, log, step)


def _label(choice: Any) -> Any:
    if choice is None or isinstance(choice, (bool, int, float, str)):
        return choice
    return json.dumps(plain(choice), sort_keys=True)


def _frozen(value: Any) -> Any:
    """TOML lists as tuples (hashable, as the config holds them); tables stay dicts."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def plain(value: Any) -> Any:
    """Config values as TOML / JSON hold them: tuples as lists (for TOML, JSON and ``RunConfig.replace``)."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def _shown(value: Any) -> str:
    if value is None:
        return "nothing"
    return shorten(value) if isinstance(value, str) else shorten_text(json.dumps(plain(value)), limit=80)
