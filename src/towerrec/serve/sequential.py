"""Serving bundles of sequential runs (GRU / SASRec): the query is the encoded item history.

Layout (beside the two-tower files' names where they mean the same)::

    bundle.json            manifest, with "model_kind": "sequential"
    config.toml            the run's configuration
    model.json             the sequential model as towerrec.saving stores it (class, config, checksums)
    model.safetensors      its weights (history encoder, item tables)
    candidates.safetensors [N, d] candidate embeddings, [N] train counts
    users.safetensors      per known user: seen items (CSR), left-padded history row, user-embedding index
    users.parquet          known user ids, in row order
    items.parquet          item_id, title; catalogue order
    index/                 brute force or FAISS over the candidate embeddings

Known users are every user with a timeline in the run's data (ratings >= the
run's ``min_rating``), queried exactly as ``towerrec recommend --user`` queries
them: their full timeline is the history (last ``max_length`` items) and what
is excluded as seen, ratings count as unknown, and a run with a user embedding
adds the user's learned vector. A new user is a history alone.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from safetensors.torch import save_file
from torch import Tensor

from towerrec import fsio
from towerrec.config import RunConfig
from towerrec.errors import RequestError, TowerrecError, shorten_text
from towerrec.index import Index, load_index
from towerrec.metrics.topk import CSR
from towerrec.models.sequential import SequentialModel
from towerrec.serve.bundle import BundleFacts
from towerrec.train.prepared import HISTORY

USERS = "users"  # query key: user-embedding index + 1 (0 = none)
FILES = ("config.toml", "model.json", "model.safetensors", "candidates.safetensors", "users.safetensors",
         "users.parquet", "items.parquet")


@dataclass
class SequentialBundle(BundleFacts):
    """A loaded sequential bundle; offers the same queries / embed / ids interface as :class:`Bundle`."""

    folder: Path
    manifest: dict[str, Any]
    config: RunConfig
    model: SequentialModel
    candidate_embeddings: Tensor  # [N, d]
    item_counts: Tensor  # [N]
    seen: CSR  # rows = known users: their full timelines
    history: Tensor  # [num_users, L] catalogue index + 1, left-padded
    user_index: Tensor  # [num_users] user-embedding index + 1 (0 = none)
    users: pl.Series
    items: pl.DataFrame
    index: Index

    def __post_init__(self) -> None:
        self._item_ids = self.items["item_id"].to_list()
        self._titles = [str(t) if t is not None else str(i) for i, t in zip(self._item_ids, self.items["title"].to_list())]
        self._user_rows = {u: r for r, u in enumerate(self.users.to_list())}
        self._item_rows = {i: p for p, i in enumerate(self._item_ids)}
        self._uses_ratings = "rating" in self.model.step_features

    # ---------------------------------------------------------------- facts
    @property
    def history_length(self) -> int:
        return int(self.history.shape[1])

    @property
    def user_ids(self) -> np.ndarray:
        return self.users.to_numpy()

    def feature_columns(self) -> list[str]:
        """A sequential model reads no user columns: a new user is their history."""
        return []

    # ------------------------------------------------------------------ ids
    def user_rows(self, user_ids: list[Any]) -> np.ndarray:
        from towerrec.serve.bundle import _typed

        return np.array([self._user_rows.get(v, -1) for v in _typed(user_ids, self.user_id_type).tolist()], dtype=np.int64)

    def item_positions(self, item_ids: list[Any]) -> np.ndarray:
        from towerrec.serve.bundle import _typed

        return np.array([self._item_rows.get(v, -1) for v in _typed(item_ids, self.item_id_type).tolist()], dtype=np.int64)

    def seen_positions(self, row: int) -> np.ndarray:
        return self.seen.indices[self.seen.indptr[row] : self.seen.indptr[row + 1]].numpy()

    # -------------------------------------------------------------- queries
    def history_row(self, positions: np.ndarray) -> Tensor:
        """[1, L] the last L positions (+1), oldest first, left-padded as the model was trained."""
        return left_padded([np.asarray(positions, dtype=np.int64)], self.history_length)

    def known_user_queries(self, rows: np.ndarray) -> dict[str, Tensor]:
        rows = torch.as_tensor(rows, dtype=torch.int64)
        return {HISTORY: self.history[rows], USERS: self.user_index[rows]}

    def new_user_queries(self, features: dict[str, Any], history: np.ndarray) -> dict[str, Tensor]:
        if features:
            raise RequestError("features", f"unknown user feature(s) {shorten_text(str(sorted(features)))}; this "
                               "sequential model reads only 'history'")
        return {HISTORY: self.history_row(history), USERS: torch.zeros(1, dtype=torch.int64)}

    @torch.no_grad()
    def embed(self, queries: dict[str, Tensor]) -> Tensor:
        """[n, d] query embeddings (ratings unknown, as ``towerrec recommend`` encodes histories)."""
        items = queries[HISTORY]
        ratings = torch.zeros_like(items) if self._uses_ratings else None
        users = queries[USERS] if self.model.num_users else None
        return self.model.encode(items, ratings, users)

    def records(self, indices: list[int], scores: list[float]) -> list[dict[str, Any]]:
        ids, titles = self._item_ids, self._titles
        return [{"item_id": ids[i], "title": titles[i], "score": s} for i, s in zip(indices, scores)]


def left_padded(rows: list[np.ndarray], width: int) -> Tensor:
    """[len(rows), width] the last ``width`` positions of each row (+1), right-aligned, 0 before."""
    out = torch.zeros(len(rows), width, dtype=torch.int64)
    for r, positions in enumerate(rows):
        recent = positions[-width:] + 1
        if recent.size:
            out[r, width - recent.size :] = torch.from_numpy(recent)
    return out


# ------------------------------------------------------------------ export
def write_sequential_bundle(run, folder: Path, dataset, index_builder) -> dict[str, Any]:
    """Writes a sequential run's bundle files into ``folder``; returns the manifest's model facts.

    Args:
        run: a loaded sequential run (:func:`towerrec.runs.load_run`).
        dataset: the run's dataset (timelines of the known users come from it).
        index_builder: ``embeddings, ids -> Index`` (the export's index choice).
    """
    from towerrec.recommend import run_user_indices
    from towerrec.train.sequence_data import timeline_events

    model: SequentialModel = run.model
    model.eval()
    catalogue = run.catalogue
    item_ids = np.asarray(catalogue["item_id"].to_list())
    events = timeline_events(dataset, item_ids, run.config.sequence.min_rating).with_row_index("__row")
    timelines = (events.sort(["user_id", "timestamp", "__row"])
                 .group_by("user_id", maintain_order=True).agg(pl.col("__item")))
    users = timelines["user_id"]
    lists = [np.asarray(t, dtype=np.int64) for t in timelines["__item"].to_list()]
    seen = CSR.from_lists(lists)
    user_index = run_user_indices(run, users.to_list())
    embeddings = model.candidate_weight().detach().float().contiguous()
    built = index_builder(embeddings, catalogue["item_id"].to_list())
    built.save(folder / "index")
    shutil.copy(run.run_dir / "config.toml", folder / "config.toml")
    shutil.copy(run.run_dir / "model.json", folder / "model.json")
    shutil.copy(run.run_dir / "model.safetensors", folder / "model.safetensors")
    counts = torch.as_tensor(catalogue["train_count"].to_numpy().copy(), dtype=torch.float32)
    save_file({"embeddings": embeddings, "item_counts": counts}, str(folder / "candidates.safetensors"))
    save_file({"seen_indptr": seen.indptr.contiguous(), "seen_indices": seen.indices.contiguous(),
               "history": left_padded(lists, run.config.sequence.max_length),
               "user_index": (torch.zeros(len(lists), dtype=torch.int64) if user_index is None
                              else user_index.to(torch.int64).contiguous())},
              str(folder / "users.safetensors"))
    users.to_frame("user_id").write_parquet(folder / "users.parquet")
    catalogue.select("item_id", "title").write_parquet(folder / "items.parquet")
    return {
        "model_kind": "sequential",
        "dim": int(embeddings.shape[1]),
        "num_items": int(embeddings.shape[0]),
        "num_users": len(lists),
        "history_length": run.config.sequence.max_length,
        "user_id_type": "int" if users.dtype.is_integer() else "str",
        "item_id_type": "int" if catalogue.schema["item_id"].is_integer() else "str",
        "index": {"kind": built.kind, "variant": getattr(built, "variant", None)},
    }


def load_sequential_bundle(folder: Path, manifest: dict[str, Any]) -> SequentialBundle:
    """Opens a sequential bundle (the manifest is already read and checked; :func:`load_bundle` verifies
    the checksums after this returns). Every table the service indexes is range-checked."""
    from towerrec.runs import load_run_config
    from towerrec.serve.bundle import AGAIN, EDITED, _tensors, check_candidates, check_rows, check_seen
    from towerrec import saving

    for name in FILES:
        if not (folder / name).is_file():
            raise TowerrecError(f"{folder / name}: missing", hint="the bundle is incomplete: export it again")
    config = load_run_config(folder / "config.toml", manifest.get("config_hash"), hint=EDITED)
    try:
        model = saving.load(folder)
    except TowerrecError as error:  # the bundle's remedy, not a saved model's
        raise TowerrecError(error.message, hint=AGAIN) from None
    if not isinstance(model, SequentialModel):
        raise TowerrecError(f"{folder / 'model.json'}: holds a {type(model).__name__}, not a sequential model",
                            hint=AGAIN)
    candidates = _tensors(folder / "candidates.safetensors")
    users_path = folder / "users.safetensors"
    users = _tensors(users_path)
    index = load_index(folder / "index")
    items = fsio.read_parquet(folder / "items.parquet", hint=AGAIN)
    embeddings, item_counts = check_candidates(folder, candidates, index, items, model.num_items,
                                               manifest["dim"])
    seen = check_seen(users_path, users, model.num_items)
    user_ids = fsio.read_parquet(folder / "users.parquet", hint=AGAIN)
    if "user_id" not in user_ids.columns or user_ids.height != seen.num_rows:
        raise TowerrecError(f"{folder / 'users.parquet'}: needs a user_id column with one row per known user "
                            f"({seen.num_rows})", hint=AGAIN)
    history, user_index = users.get("history"), users.get("user_index")
    if history is None or user_index is None:
        raise TowerrecError(f"{users_path}: lacks history / user_index", hint=AGAIN)
    check_rows(users_path, "history", history, seen.num_rows, model.num_items)
    check_rows(users_path, "user_index", user_index.unsqueeze(1) if user_index.dim() == 1 else user_index,
               seen.num_rows, int(model.num_users))
    return SequentialBundle(
        folder=folder, manifest=manifest, config=config, model=model.eval(), candidate_embeddings=embeddings,
        item_counts=item_counts, seen=seen, history=history, user_index=user_index,
        users=user_ids["user_id"], items=items, index=index,
    )
