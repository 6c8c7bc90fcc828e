"""The HTTP recommendation service (FastAPI): top-K for known users, new users and similar items.

    GET  /healthz                                    model and catalogue facts
    GET  /recommend?user_id=42&k=10&exclude_seen=true  a user seen in training
    POST /recommend {"history": [1, 50], "features": {...}, "k": 10}   a new user (or a known one + recent items)
    GET  /similar?item_id=50&k=10                    items closest to an item
    GET  /docs, /openapi.json                        interactive docs and the schema

Bad input never reaches the model: unknown ids are 404 with a message, invalid
parameters 422, bodies over ``max_body_bytes`` 413. Concurrent requests are
combined: while one batch runs through the query tower and the index, the
requests that arrive queue up and run together as the next batch, so the
server never waits to fill a batch and throughput grows with load.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Union

import numpy as np
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from towerrec import __version__
from towerrec.errors import TowerrecError
from towerrec.metrics.topk import CSR
from towerrec.serve.bundle import HISTORY, Bundle, history_row, load_bundle

MAX_K = 1000
MAX_HISTORY = 1000
MAX_BODY_BYTES = 64 * 1024
MAX_ID_LENGTH = 256

Id = Union[int, Annotated[str, Field(max_length=MAX_ID_LENGTH)]]
FeatureValue = Union[int, float, bool, Annotated[str, Field(max_length=MAX_ID_LENGTH)], None]


# ------------------------------------------------------------------ schemas
class Item(BaseModel):
    item_id: Id
    title: str
    score: float


class Recommendations(BaseModel):
    user_id: Id | None = Field(description="The user asked about (null for an anonymous new user).")
    known_user: bool = Field(description="Whether the user was in the training data.")
    k: int
    items: list[Item]


class SimilarItems(BaseModel):
    item_id: Id
    k: int
    items: list[Item]


class Health(BaseModel):
    status: str
    towerrec_version: str
    run: str
    num_items: int
    num_users: int
    index: str
    user_features: list[str]
    uses_history: bool


class RecommendRequest(BaseModel):
    """A user to recommend for: a known ``user_id``, or a new user's ``features`` and/or ``history``.

    For a known user, ``history`` lists items they interacted with since training
    (added to their train history). For a new user, ``features`` holds the user
    columns the model reads (see GET /healthz ``user_features``) and ``history``
    their items, oldest first; anything missing counts as unknown.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"history": [50, 181, 258], "k": 10}, {"user_id": 42, "k": 5}]},
    )

    user_id: Id | None = None
    features: dict[Annotated[str, Field(max_length=64)], FeatureValue] = Field(default_factory=dict, max_length=64)
    history: list[Id] = Field(default_factory=list, max_length=MAX_HISTORY)
    k: int = Field(10, ge=1, le=MAX_K)
    exclude_seen: bool = Field(True, description="Leave out the user's train items and the given history.")


class Problem(BaseModel):
    detail: str = Field(description="What is wrong, in one line.")
    hint: str | None = Field(None, description="What to do about it.")
    errors: list[dict[str, Any]] | None = Field(None, description="Per-field validation errors, when there are several.")


ERRORS = {
    404: {"model": Problem, "description": "Unknown user or item id"},
    413: {"model": Problem, "description": "Request body too large"},
    422: {"model": Problem, "description": "Invalid parameter or body"},
}


# ------------------------------------------------------------------ batching
@dataclass
class Job:
    """One query: its features (one row) or a ready embedding, what to exclude, how many results."""

    k: int
    exclude: np.ndarray
    queries: dict[str, torch.Tensor] | None = None
    embedding: torch.Tensor | None = None
    result: tuple[list[int], list[float]] | None = None
    error: BaseException | None = None
    done: bool = False
    wake: threading.Event = field(default_factory=threading.Event)


class Combiner:
    """Runs jobs in batches without waiting for a batch to fill (flat combining).

    A caller whose job arrives while no batch runs becomes the leader and runs
    every queued job (up to ``max_batch``) at once; callers that arrive during a
    run wait, then the first of them leads the next batch. Thread-safe; used
    from FastAPI's worker threads.
    """

    def __init__(self, bundle: Bundle, max_batch: int = 256, enabled: bool = True) -> None:
        self.bundle = bundle
        self.max_batch = max_batch if enabled else 1
        self._lock = threading.Lock()
        self._pending: list[Job] = []
        self._busy = False
        self.batches = 0
        self.jobs = 0

    def submit(self, job: Job) -> tuple[list[int], list[float]]:
        with self._lock:
            self._pending.append(job)
        while True:
            with self._lock:
                if job.done:
                    break
                lead = not self._busy
                if lead:
                    self._busy = True
                    batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                else:
                    job.wake.clear()
            if not lead:
                job.wake.wait()
                continue
            try:
                self._run(batch)
            finally:
                with self._lock:
                    self._busy = False
                    if self._pending:
                        self._pending[0].wake.set()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _run(self, batch: list[Job]) -> None:
        try:
            self.batches += 1
            self.jobs += len(batch)
            embeddings = self._embed(batch)
            self._search(batch, embeddings)
        except BaseException as error:  # noqa: BLE001 - handed to every waiting request
            for job in batch:
                if not job.done:
                    job.error = error
        finally:
            for job in batch:
                job.done = True
                job.wake.set()

    def _embed(self, batch: list[Job]) -> torch.Tensor:
        with_features = [j for j, job in enumerate(batch) if job.embedding is None]
        dim = self.bundle.candidate_embeddings.shape[1]
        out = torch.empty(len(batch), dim)
        if with_features:
            names = batch[with_features[0]].queries.keys()
            stacked = {name: torch.cat([batch[j].queries[name] for j in with_features]) for name in names}
            out[with_features] = self.bundle.embed(stacked).float()
        for j, job in enumerate(batch):
            if job.embedding is not None:
                out[j] = job.embedding
        return out

    def _search(self, batch: list[Job], embeddings: torch.Tensor) -> None:
        n = self.bundle.num_items
        k = max(job.k for job in batch)
        fits = [j for j, job in enumerate(batch) if n - len(np.unique(job.exclude)) >= k]
        alone = [j for j in range(len(batch)) if j not in set(fits)]
        groups = ([fits] if fits else []) + [[j] for j in alone]
        for group in groups:
            group_k = max(batch[j].k for j in group)
            exclude = CSR.from_lists([batch[j].exclude for j in group])
            found = self.bundle.index.search(embeddings[group], group_k, exclude=exclude)
            indices, scores = found.indices.tolist(), found.scores.tolist()
            for row, j in enumerate(group):
                job = batch[j]
                job.result = (indices[row][: job.k], scores[row][: job.k])


# ------------------------------------------------------------------ app
class BodyLimit:
    """ASGI middleware: answers 413 to request bodies over ``limit`` bytes (declared or streamed)."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._reject(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message]), send)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                return await self._reject(scope, receive, send)
        body = b"".join(chunks)
        return await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send)

    async def _reject(self, scope, receive, send) -> None:
        response = JSONResponse({"detail": f"request body over {self.limit} bytes"}, status_code=413)
        await response(scope, receive, send)


def _replay(messages: list[dict], then=None):
    queue = list(messages)

    async def receive():
        if queue:
            return queue.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


def create_app(
    bundle: Bundle | str | Path,
    *,
    batching: bool = True,
    max_batch: int = 256,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The FastAPI app serving ``bundle`` (a loaded :class:`Bundle` or its folder)."""
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    combiner = Combiner(bundle, max_batch=max_batch, enabled=batching)
    known_queries = bundle.known_user_queries(np.arange(bundle.num_users))  # encoded once, gathered per request
    user_features = bundle.feature_columns()
    app = FastAPI(
        title="towerrec",
        version=__version__,
        description=f"Top-K recommendations from the two-tower run `{bundle.manifest.get('run')}`.",
    )
    app.state.bundle = bundle
    app.state.combiner = combiner
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(part) for part in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in error.errors()
        ]
        detail = "; ".join(f"{'.'.join(e['loc'][1:] or e['loc'])}: {e['msg']}" for e in errors[:5]) or "invalid request"
        return JSONResponse({"detail": detail, "hint": None, "errors": errors}, status_code=422)

    @app.exception_handler(TowerrecError)
    async def _invalid(request: Request, error: TowerrecError) -> JSONResponse:
        return JSONResponse({"detail": error.message, "hint": error.hint}, status_code=422)

    def not_found(message: str, hint: str | None = None) -> JSONResponse:
        return JSONResponse({"detail": message, "hint": hint}, status_code=404)

    def check_k(k: int, excluded: int) -> None:
        if k > bundle.num_items - excluded:
            raise TowerrecError(
                f"k = {k} is more than the {bundle.num_items - excluded} items left to recommend",
                hint=f"ask for at most {bundle.num_items - excluded}",
            )

    def results(found: tuple[list[int], list[float]]) -> list[dict[str, Any]]:
        # responses are built here and returned as JSONResponse: the response_model documents
        # them in the OpenAPI schema without validating every answer again (tests check the shape)
        return bundle.records(*found)

    def known_job(row: int, k: int, exclude_seen: bool, extra: np.ndarray | None = None) -> Job:
        queries = {name: value[row : row + 1] for name, value in known_queries.items()}
        if extra is not None and extra.size and HISTORY in queries:
            stored = queries[HISTORY][0]
            merged = np.concatenate([stored[stored > 0].numpy() - 1, extra])
            queries[HISTORY] = history_row(merged, bundle.history_length)
        exclude = bundle.seen_positions(row) if exclude_seen else np.empty(0, dtype=np.int64)
        if exclude_seen and extra is not None:
            exclude = np.concatenate([exclude, extra])
        return Job(k=k, exclude=exclude, queries=queries)

    @app.get("/", include_in_schema=False)
    def _root() -> RedirectResponse:
        return RedirectResponse("/docs")

    @app.get("/healthz", response_model=Health, summary="Liveness and model facts")
    def healthz() -> dict[str, Any]:
        index = bundle.manifest.get("index", {})
        return {
            "status": "ok",
            "towerrec_version": __version__,
            "run": str(bundle.manifest.get("run")),
            "num_items": bundle.num_items,
            "num_users": bundle.num_users,
            "index": str(index.get("variant") or index.get("kind")),
            "user_features": user_features,
            "uses_history": bundle.history is not None,
        }

    @app.get("/recommend", response_model=Recommendations, responses=ERRORS, summary="Top-K items for a known user")
    def recommend_known(
        user_id: Annotated[str, Query(min_length=1, max_length=MAX_ID_LENGTH, description="A user id from training.")],
        k: Annotated[int, Query(ge=1, le=MAX_K, description="How many items.")] = 10,
        exclude_seen: Annotated[bool, Query(description="Leave out the user's train items.")] = True,
    ):
        row = int(bundle.user_rows([user_id])[0])
        if row < 0:
            return not_found(
                f"user {user_id!r} is not in the training data",
                hint="POST /recommend with the user's features or history to serve a new user",
            )
        job = known_job(row, k, exclude_seen)
        check_k(k, len(np.unique(job.exclude)))
        return JSONResponse({"user_id": _typed_id(user_id, bundle.user_id_type), "known_user": True, "k": k,
                             "items": results(combiner.submit(job))})

    @app.post("/recommend", response_model=Recommendations, responses=ERRORS,
              summary="Top-K items for a new user (features, history) or a known user with recent items")
    def recommend_any(request: RecommendRequest):
        history = np.empty(0, dtype=np.int64)
        if request.history:
            history = bundle.item_positions(list(request.history))
            unknown = [v for v, p in zip(request.history, history.tolist()) if p < 0]
            if unknown:
                return not_found(f"item(s) {unknown[:10]} are not in the catalogue",
                                 hint="history lists item ids of the catalogue")
        row = -1 if request.user_id is None else int(bundle.user_rows([request.user_id])[0])
        if row >= 0:
            if request.features:
                raise TowerrecError(
                    f"user {request.user_id!r} is known: their features come from training",
                    hint="drop 'features', or drop 'user_id' to serve them as a new user",
                )
            job = known_job(row, request.k, request.exclude_seen, history)
        else:
            if request.user_id is not None and not request.features and not request.history:
                return not_found(f"user {request.user_id!r} is not in the training data",
                                 hint="add the user's 'features' or 'history' to serve them as a new user")
            if not request.features and not request.history:
                raise TowerrecError("give a known 'user_id', or a new user's 'features' and/or 'history'")
            queries = bundle.new_user_queries(dict(request.features), history)
            exclude = history if request.exclude_seen else np.empty(0, dtype=np.int64)
            job = Job(k=request.k, exclude=exclude, queries=queries)
        check_k(request.k, len(np.unique(job.exclude)))
        return JSONResponse({"user_id": request.user_id, "known_user": row >= 0, "k": request.k,
                             "items": results(combiner.submit(job))})

    @app.get("/similar", response_model=SimilarItems, responses=ERRORS, summary="Items most similar to an item")
    def similar(
        item_id: Annotated[str, Query(min_length=1, max_length=MAX_ID_LENGTH, description="A catalogue item id.")],
        k: Annotated[int, Query(ge=1, le=MAX_K, description="How many items.")] = 10,
    ):
        position = int(bundle.item_positions([item_id])[0])
        if position < 0:
            return not_found(f"item {item_id!r} is not in the catalogue")
        check_k(k, 1)
        job = Job(k=k, exclude=np.array([position]), embedding=bundle.candidate_embeddings[position].float())
        return JSONResponse({"item_id": _typed_id(item_id, bundle.item_id_type), "k": k,
                             "items": results(combiner.submit(job))})

    return app


def _typed_id(value: str, kind: str) -> int | str:
    return int(value) if kind == "int" else value
