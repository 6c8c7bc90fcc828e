"""The ranking stage of a serving bundle: retrieve ``candidates`` items, score them with a ranker, apply rules.

A bundle exported with a ranker (``towerrec export RUN --out B --rerank RANKER_RUN --candidates 300
[--rules rules.toml]``) answers every request in three steps:

1. retrieval: the bundle's retrieval model and index return the best ``candidates`` items
   (seen items and ``exclude_ids`` left out, as without a ranker);
2. ranking: the ranker (a :class:`~towerrec.model.RankingModel`) scores the ``[1, C]``
   candidates of the user's query features (``score(batch) -> [1, C]``);
3. the final score: the ranking score (``score="ranker"``) or the sum of both stages' scores
   standardised over the user's candidates (``score="sum"``; :func:`towerrec.pipeline.combine_scores`);
4. business rules (:mod:`towerrec.rules`, compiled over the catalogue at load) drop candidates
   and fill the list best first under the diversity caps, up to ``k`` items (fewer when the
   rules leave fewer),

steps 2-4 by :func:`towerrec.pipeline.rerank`, the function ``towerrec recommend --rerank``
uses. Each returned item carries ``score`` (final), ``retrieval_score`` and ``ranking_score``.

Files (inside the bundle, listed with SHA-256 in ``bundle.json`` like every other)::

    ranker/model/              the ranker, saved by towerrec.save (model.json + model.safetensors)
    ranker/features.json       the ranker's fitted features (vocabularies, catalogue, users' attribute rows)
    ranker/candidates.safetensors  the catalogue's candidate features as the ranker encodes them, [N, ...]
    ranker/users.safetensors   each known user's ranker query batch (query.<key> [U, ...], users.parquet order)
    ranker/config.toml         the ranker run's configuration (checked against its config_hash)
    rules/rules.json           the business rules (BusinessRules.to_dict; only with rules)
    rules/items.parquet        item_id and the item columns the rules read, catalogue order
    rules/users.parquet        user_id and the user columns the rules read, users.parquet order
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import Tensor

from towerrec import fsio
from towerrec.errors import RequestError, ServingError, TowerrecError, first_line
from towerrec.features import FittedFeatures
from towerrec.model import USER_ROW, RankingModel
from towerrec.pipeline import check_same_catalogue, check_score, ranking_scores, rerank
from towerrec.rules import BusinessRules, CompiledRules
from towerrec.serve.queries import AGAIN, FEATURES_FILE, QUERY_PREFIX, TwoTowerQueries

RANKER_FOLDER = "ranker"
RULES_FOLDER = "rules"
RULES_FILE = "rules.json"
DEFAULT_CANDIDATES = 300
MAX_CANDIDATES = 100_000


@dataclass
class RankerParts:
    """What export writes for a ranker: the model, its features, and the tensors it scores with."""

    model: RankingModel
    features: FittedFeatures
    candidates: dict[str, Tensor]  # [N, ...] candidate features, catalogue order
    user_queries: dict[str, Tensor]  # [U, ...] known users' ranker query batch
    latest_timestamp: int
    source: dict[str, Any]
    config_path: Path | None = None


@dataclass
class RankingStage:
    """A loaded ranking stage: the ranker with its catalogue, known users' ranker queries and the rules.

    Attributes:
        model: the ranker, eval mode, its catalogue given by ``set_catalogue``.
        queries: builds a new user's ranker query batch from raw user features.
        user_queries: ``{key: [U, ...]}`` each known user's ranker query batch.
        candidates: C, how many retrieved items the ranker scores per request.
        rules: the business rules compiled over the catalogue; None without rules.
        user_ids: known user ids in row order (how the compiled rules find a known user's attributes).
        user_columns: the user columns the rules read (a new user's features give them).
        score, retrieval_weight: how the final score is made (:func:`towerrec.pipeline.combine_scores`).
    """

    model: RankingModel
    queries: TwoTowerQueries
    user_queries: dict[str, Tensor]
    candidates: int
    rules: CompiledRules | None
    user_ids: list[Any]
    user_columns: tuple[str, ...] = ()
    score: str = "ranker"
    retrieval_weight: float = 1.0

    def feature_columns(self) -> list[str]:
        """User columns a new user's ``features`` may give this stage: those the ranker reads, then those the
        rules read."""
        columns = self.queries.feature_columns()
        return columns + [c for c in self.user_columns if c not in columns]

    def known_queries(self, row: int) -> dict[str, Tensor]:
        """``[1, ...]`` ranker query batch of known user ``row``."""
        return {key: value[row : row + 1] for key, value in self.user_queries.items()}

    def new_user_queries(self, features: dict[str, Any]) -> dict[str, Tensor]:
        """``[1, ...]`` ranker query batch of a new user's raw features (those the ranker reads).

        Raises:
            RequestError: a bad value, naming ``features.<column>``.
        """
        mine = set(self.queries.feature_columns())
        queries = self.queries.new_user({k: v for k, v in features.items() if k in mine}, np.empty(0, dtype=np.int64))
        return {**queries, USER_ROW: torch.full((1,), -1, dtype=torch.int64)}

    def rule_user(self, row: int | None, features: dict[str, Any] | None) -> Any:
        """Who the rules see: a known user's id (their attributes are in the rule table), or a new user's
        raw features that are columns of the rule table (absent ones are missing)."""
        if row is not None and row >= 0:
            return self.user_ids[row]
        columns = self.user_columns
        return {k: v for k, v in (features or {}).items() if k in columns}

    def rerank(self, queries: dict[str, Tensor], positions: list[int], retrieval_scores: list[float], k: int,
               user: Any) -> list[tuple[int, float, float, float]]:
        """``(position, final score, retrieval score, ranking score)`` of the final list, best first, at most ``k``.

        The retrieved ``positions`` (best first) and their ``retrieval_scores`` go through
        :func:`towerrec.pipeline.rerank` with this user's ``[1, ...]`` ranker ``queries`` and ``user``
        (from :meth:`rule_user`); rules that remove everything give an empty list.

        Raises:
            RequestError: a new user's feature value the rules' user table cannot hold (``features.<column>``).
            ServingError: the ranker fails or its scores are not finite.
        """
        if not positions:
            return []
        user_rules = None
        if self.rules is not None:
            try:
                user_rules = self.rules.user_matches([user])
            except ValueError as exc:
                name = next((c for c in self.user_columns if f"'{c}'" in str(exc)), None)
                raise RequestError(f"features.{name}" if name else "features", first_line(exc)) from None
        try:
            found = rerank(self.model, queries, np.asarray([positions], dtype=np.int64),
                           np.asarray([retrieval_scores], dtype=np.float64), k, rules=self.rules,
                           user_rules=user_rules, score=self.score, retrieval_weight=self.retrieval_weight)
        except (IndexError, KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise ServingError(f"the ranker cannot score this request ({type(exc).__name__}: {first_line(exc)})",
                               hint="if the request is valid, the ranker is broken: retrain it and export the "
                                    "bundle again") from None
        count = int(found.counts[0])
        return list(zip(found.items[0, :count].tolist(), found.scores[0, :count].tolist(),
                        found.retrieval_scores[0, :count].tolist(), found.ranking_scores[0, :count].tolist()))


# ------------------------------------------------------------------ export
def ranker_parts(ranker: Any, ranker_features: FittedFeatures | None, item_ids: list, user_ids: pl.Series,
                 latest_timestamp: int) -> RankerParts:
    """The ranker of ``export_bundle(ranker=...)``, checked against the retriever's catalogue and scored once.

    Args:
        ranker: a ranking run's directory (or :class:`~towerrec.runs.LoadedRun`), or a
            :class:`~towerrec.model.RankingModel` with ``ranker_features``.
        ranker_features: the fitted features a Python ranker reads (a run brings its own).
        item_ids: the retriever's N catalogue item ids, in catalogue order.
        user_ids: the bundle's known users (their ranker query batch is encoded here).
        latest_timestamp: the query time of known users (the data's latest timestamp).
    Raises:
        TowerrecError: not a ranking run, or a catalogue other than the retriever's (named).
        TypeError / ValueError: a Python ranker without features, or one that cannot score its catalogue.
    """
    from towerrec.runs import LoadedRun, load_run

    config_path = None
    if isinstance(ranker, RankingModel):
        if not isinstance(ranker_features, FittedFeatures):
            raise TypeError("ranker=<RankingModel> needs ranker_features= (the FittedFeatures it reads)")
        ranker.get_config()  # TypeError naming the arguments, if the ranker cannot be saved
        model, features = ranker, ranker_features
        source = {"run": type(ranker).__name__, "model_class": type(ranker).__name__}
    else:
        if ranker_features is not None:
            raise TypeError("ranker_features= goes with ranker=<RankingModel>; a ranking run brings its own")
        run = ranker if isinstance(ranker, LoadedRun) else load_run(ranker)
        if not isinstance(run.model, RankingModel):
            raise TowerrecError(f"{run.run_dir}: a {run.config.model.kind} run is not a ranking run: it cannot "
                                "re-rank", hint='pass a run trained with [model] kind = "ranking" to --rerank')
        model, features = run.model, run.features
        config_path = run.run_dir / "config.toml"
        source = {"run": run.run_dir.name, "run_name": run.config.name, "config_hash": run.meta.get("config_hash"),
                  "data_fingerprint": run.meta.get("data_fingerprint")}
        check_same_catalogue(item_ids, run.catalogue["item_id"].to_list(), ranker=str(run.run_dir))
    if features is None:
        raise TowerrecError("the ranker has no fitted features: it cannot encode queries", hint="retrain the ranker")
    check_same_catalogue(item_ids, features.catalogue_ids, ranker="the ranker")
    candidates = {k: v.detach().cpu().contiguous() for k, v in features.encode_candidates().items()}
    builder = TwoTowerQueries(features, latest_timestamp, None)
    queries = {k: v.detach().cpu().contiguous() for k, v in builder.known_users(user_ids, None).items()}
    queries[USER_ROW] = torch.from_numpy(features.user_index(user_ids)).to(torch.int64).contiguous()
    parts = RankerParts(model.eval(), features, candidates, queries, latest_timestamp, source, config_path)
    _try_scoring(parts, len(item_ids))
    return parts


@torch.no_grad()
def _try_scoring(parts: RankerParts, num_items: int) -> None:
    """Give the ranker its catalogue and score a few known users' first candidates: errors now, not per request."""
    model = parts.model
    attach(model, parts.candidates)
    users = min(4, next(iter(parts.user_queries.values())).shape[0]) if parts.user_queries else 0
    if not users:
        return
    width = min(8, num_items)
    queries = {k: v[:users] for k, v in parts.user_queries.items()}
    try:
        scores = ranking_scores(model, queries, np.broadcast_to(np.arange(width), (users, width)))
    except (IndexError, KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"the ranker cannot score its query features {sorted(parts.user_queries)} with candidate "
                         f"features {sorted(parts.candidates)} ({type(exc).__name__}: {first_line(exc)})") from None
    if not np.isfinite(scores).all():
        raise ValueError("the ranker's scores are not finite (NaN or infinity): retrain it")


def attach(model: RankingModel, candidates: dict[str, Tensor]) -> None:
    """Give ``model`` the catalogue's candidate features (``set_catalogue``), if it takes them."""
    if hasattr(model, "set_catalogue"):
        model.set_catalogue({k: v.to(model.device) for k, v in candidates.items()})


def write_ranker(staging: Path, parts: RankerParts, candidates: int, score: str = "ranker",
                 retrieval_weight: float = 1.0) -> dict[str, Any]:
    """Write ``ranker/`` into a bundle being staged; the manifest's ``ranker`` entry."""
    from safetensors.torch import save_file

    from towerrec.saving import write_model_files
    from towerrec.train.checkpoint import save_json

    folder = staging / RANKER_FOLDER
    write_model_files(parts.model, folder / "model")
    save_json(parts.features.to_json(), folder / FEATURES_FILE)
    save_file({k: v.contiguous() for k, v in parts.candidates.items()} or {"_empty": torch.zeros(0)},
              str(folder / "candidates.safetensors"))
    save_file({QUERY_PREFIX + k: v for k, v in parts.user_queries.items()} or {"_empty": torch.zeros(0)},
              str(folder / "users.safetensors"))
    if parts.config_path is not None:
        shutil.copy(parts.config_path, folder / "config.toml")
    from towerrec.model import class_name

    return {**parts.source, "model_class": class_name(type(parts.model)), "candidates": candidates,
            "score": score, "retrieval_weight": retrieval_weight, "latest_timestamp": parts.latest_timestamp, "query_keys": sorted(parts.user_queries),
            "candidate_keys": sorted(parts.candidates)}


def check_candidates_count(candidates: Any) -> int:
    """``candidates`` as a count of items the ranker scores per request (1..100,000).

    Raises:
        ValueError: not a positive integer within range.
    """
    if isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer)) or not \
            1 <= candidates <= MAX_CANDIDATES:
        raise ValueError(f"candidates must be an integer from 1 to {MAX_CANDIDATES:,}, got {candidates!r}")
    return int(candidates)


# ------------------------------------------------------------------ load
def load_ranking_stage(folder: Path, manifest: dict[str, Any], item_ids: list, user_ids: list,
                       device: torch.device) -> RankingStage | None:
    """The ranking stage of a bundle whose manifest has a ``ranker`` entry (None without one), checked.

    Checks the ranker (a RankingModel, its own checksums), its config against its hash, its
    features, one candidate row per catalogue item and one query row per known user, and the rules
    against the rule tables.

    Raises:
        TowerrecError: one line naming the file and what is wrong, hint "export the bundle again".
    """
    entry = manifest.get("ranker")
    if entry is None:
        if manifest.get("rules") is not None:
            raise TowerrecError(f"{folder / 'bundle.json'}: lists rules but no ranker", hint=AGAIN)
        return None
    num_items, num_users = len(item_ids), len(user_ids)
    path = folder / "bundle.json"
    if not isinstance(entry, dict):
        raise TowerrecError(f"{path}: ranker must be an object", hint=AGAIN)
    candidates = entry.get("candidates")
    try:
        candidates = check_candidates_count(candidates)
    except ValueError as exc:
        raise TowerrecError(f"{path}: ranker.{exc}", hint=AGAIN) from None
    try:
        score, weight = check_score(entry.get("score"), entry.get("retrieval_weight"))
    except ValueError as exc:
        raise TowerrecError(f"{path}: ranker.{exc}", hint=AGAIN) from None
    latest = entry.get("latest_timestamp")
    if isinstance(latest, bool) or not isinstance(latest, int):
        raise TowerrecError(f"{path}: ranker.latest_timestamp must be an integer", hint=AGAIN)
    base = folder / RANKER_FOLDER
    for name in ("model/model.json", "model/model.safetensors", FEATURES_FILE, "candidates.safetensors",
                 "users.safetensors"):
        if not (base / name).is_file():
            raise TowerrecError(f"{base / name}: missing", hint="the bundle is incomplete: export it again")
    if entry.get("config_hash") is not None:
        from towerrec.runs import load_run_config

        load_run_config(base / "config.toml", entry["config_hash"], hint=AGAIN)
    model = _load_ranker(base / "model", device)
    from towerrec.runs import read_features

    features = read_features(base / FEATURES_FILE, fsio.read_json(base / FEATURES_FILE, hint=AGAIN), hint=AGAIN)
    try:
        check_same_catalogue(item_ids, features.catalogue_ids, ranker=str(base / FEATURES_FILE))
    except TowerrecError as error:
        raise TowerrecError(error.message, hint=AGAIN) from None
    candidate_features = {k: v for k, v in fsio.read_tensors(base / "candidates.safetensors", hint=AGAIN).items()
                          if k != "_empty"}
    for key, value in candidate_features.items():
        if value.dim() == 0 or value.shape[0] != num_items:
            raise TowerrecError(f"{base / 'candidates.safetensors'}: {key} must have one row per item ({num_items}), "
                                f"has shape {list(value.shape)}", hint=AGAIN)
    stored = fsio.read_tensors(base / "users.safetensors", hint=AGAIN)
    queries = {k.removeprefix(QUERY_PREFIX): v for k, v in stored.items() if k.startswith(QUERY_PREFIX)}
    for key, value in queries.items():
        if value.dim() == 0 or value.shape[0] != num_users:
            raise TowerrecError(f"{base / 'users.safetensors'}: {QUERY_PREFIX}{key} must have one row per known user "
                                f"({num_users}), has shape {list(value.shape)}", hint=AGAIN)
    _check_query_ranges(base / "users.safetensors", features, queries)
    attach(model, candidate_features)
    rules, user_columns = _load_rules(folder, manifest, item_ids, user_ids)
    return RankingStage(model=model, queries=TwoTowerQueries(features, latest, None), user_queries=queries,
                        candidates=candidates, rules=rules, user_ids=user_ids, user_columns=user_columns,
                        score=score, retrieval_weight=weight)


def _check_query_ranges(path: Path, features: FittedFeatures, queries: dict[str, Tensor]) -> None:
    """Index-valued query tensors stay inside their vocabularies and ``user_row`` within the ranker's training
    users (-1: unknown), so an edited file never indexes out of range."""
    from towerrec.serve.queries import in_range

    if USER_ROW not in queries:
        raise TowerrecError(f"{path}: lacks {QUERY_PREFIX}{USER_ROW}", hint=AGAIN)
    in_range(path, QUERY_PREFIX + USER_ROW, queries[USER_ROW], -1, features.num_users)

    for feature in features.side("query"):
        value = queries.get(feature.spec.name)
        spec = feature.input_spec()
        if value is None or value.is_floating_point() or not spec.cardinality:
            continue
        in_range(path, QUERY_PREFIX + feature.spec.name, value, 0, spec.cardinality)


def _load_ranker(folder: Path, device: torch.device) -> RankingModel:
    from towerrec.saving import load

    try:
        model = load(folder, map_location=device)
    except TowerrecError as error:
        raise TowerrecError(error.message, hint=error.hint if "import" in (error.hint or "") else AGAIN) from None
    if not isinstance(model, RankingModel):
        raise TowerrecError(f"{folder}: a {type(model).__name__} is not a RankingModel: it cannot re-rank", hint=AGAIN)
    return model


# ------------------------------------------------------------------ rules
def rule_tables(rules: BusinessRules, items: pl.DataFrame, users: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``items`` (catalogue order) and ``users`` (known-user order) cut to the id and the columns ``rules`` read,
    after checking the rules against the whole tables.

    Raises:
        ConfigError: a rule naming a column the tables lack, or comparing incompatible types (named).
    """
    rules.check(items, users)
    item_columns = {c.column for rule in rules.exclude for c in rule.items} | {cap.column for cap in rules.caps}
    user_columns = {c.column for rule in rules.exclude for c in rule.users}
    return (items.select(["item_id", *[c for c in items.columns if c in item_columns and c != "item_id"]]),
            users.select(["user_id", *[c for c in users.columns if c in user_columns and c != "user_id"]]))


def write_rules(staging: Path, rules: BusinessRules, items: pl.DataFrame, users: pl.DataFrame) -> dict[str, Any]:
    """Write ``rules/`` (the rules as JSON, the attribute tables they read); the manifest's ``rules`` entry.

    ``items`` and ``users`` come from :func:`rule_tables`.
    """
    from towerrec.train.checkpoint import save_json

    folder = staging / RULES_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    save_json(rules.to_dict(), folder / RULES_FILE)
    items.write_parquet(folder / "items.parquet")
    users.write_parquet(folder / "users.parquet")
    return {"source": rules.source, "item_columns": items.columns[1:], "user_columns": users.columns[1:]}


def _load_rules(folder: Path, manifest: dict[str, Any], item_ids: list,
                user_ids: list) -> tuple[CompiledRules | None, tuple[str, ...]]:
    """The bundle's rules compiled over its catalogue (checked against the rule tables again) and the user
    columns they read; (None, ()) without rules."""
    entry = manifest.get("rules")
    if entry is None:
        return None, ()
    base = folder / RULES_FOLDER
    for name in (RULES_FILE, "items.parquet", "users.parquet"):
        if not (base / name).is_file():
            raise TowerrecError(f"{base / name}: missing", hint="the bundle is incomplete: export it again")
    items = fsio.read_parquet(base / "items.parquet", hint=AGAIN)
    users = fsio.read_parquet(base / "users.parquet", hint=AGAIN)
    if "item_id" not in items.columns or items["item_id"].to_list() != item_ids:
        raise TowerrecError(f"{base / 'items.parquet'}: its item_id column is not the bundle's catalogue", hint=AGAIN)
    if "user_id" not in users.columns or users["user_id"].to_list() != user_ids:
        raise TowerrecError(f"{base / 'users.parquet'}: its user_id column is not the bundle's known users",
                            hint=AGAIN)
    try:
        rules = BusinessRules.from_dict(fsio.read_json(base / RULES_FILE, hint=AGAIN), source=str(base / RULES_FILE))
        return rules.compile(items, users, catalogue_ids=item_ids), tuple(users.columns[1:])
    except TowerrecError as error:
        raise TowerrecError(error.message, hint=AGAIN) from None


def split_features(features: dict[str, Any], retriever: list[str], ranker: list[str]) -> dict[str, Any]:
    """The request's features the retriever reads; a feature neither stage reads is a RequestError."""
    unknown = sorted(set(features) - set(retriever) - set(ranker))
    if unknown:
        raise RequestError("features", f"unknown user feature(s) {unknown[:10]}; this bundle reads "
                           f"{sorted(set(retriever) | set(ranker)) or 'no user features'}")
    return {k: v for k, v in features.items() if k in retriever}
