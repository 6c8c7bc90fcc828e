"""The HTTP recommendation service (FastAPI): top-K for known users, new users and similar items.

    GET  /healthz                                    model and catalogue facts
    GET  /recommend?user_id=42&k=10&exclude_seen=true&exclude_ids=50,181  a user seen in training
    POST /recommend {"history": [1, 50], "features": {...}, "k": 10}   a new user (or a known one + recent items)
    GET  /similar?item_id=50&k=10                    items closest to an item
    GET  /docs, /openapi.json                        interactive docs and the schema

A bundle exported with a ranker (``towerrec export RUN --rerank RANKER_RUN``) answers /recommend
by retrieve-then-rank (:mod:`towerrec.serve.ranking`): each item then also carries
``retrieval_score`` and ``ranking_score``, and ``score`` is the final score.

Bad input never reaches the model: unknown ids are 404 with a message, invalid
parameters 422, bodies over ``max_body_bytes`` 413.

Every endpoint runs on the event loop (one process, no worker threads): known
users and similar items take the precomputed path
(:mod:`towerrec.serve.precomputed`: a lookup, one matvec and a top-K, ~25 us),
and requests that need the query tower (new users, known users with recent
items) are batched with the requests parsed alongside them
(:mod:`towerrec.serve.batching`). A thread hand-off would cost more than either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Union

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from towerrec import __version__
from towerrec.errors import RequestError, ServingError, TowerrecError
from towerrec.serve.batching import Batcher, Job
from towerrec.serve.bundle import Bundle, load_bundle
from towerrec.serve.precomputed import Catalogue, KnownUsers

MAX_K = 1000
MAX_HISTORY = 1000
MAX_BODY_BYTES = 64 * 1024
MAX_ID_LENGTH = 256

Id = Union[int, Annotated[str, Field(max_length=MAX_ID_LENGTH)]]
FeatureValue = Union[int, float, bool, Annotated[str, Field(max_length=MAX_ID_LENGTH)], None]


_UNION_MEMBERS = {"int": "an integer", "float": "a number", "bool": "a boolean", "str": "a string",
                  "constrained-str": "a string", "none": "null"}
_JSON_TYPES = {list: "a list", dict: "an object", str: "a string", bool: "a boolean", int: "a number",
               float: "a number", type(None): "null"}


def _merge_union_errors(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic's errors, with the one-per-union-member errors of a field merged into one.

    A value matching no member of ``int | float | str | None`` gets one error per member
    (``features.age.int: …; features.age.float: …``); the client needs one line:
    ``features.age: expected an integer, a number or a string, got a list``.
    """
    merged: dict[tuple[str, ...], dict[str, Any]] = {}
    members: dict[tuple[str, ...], list[str]] = {}
    for e in raw:
        loc = tuple(str(part) for part in e.get("loc", ()))
        if loc and loc[-1] in _UNION_MEMBERS:
            key = loc[:-1]
            members.setdefault(key, []).append(_UNION_MEMBERS[loc[-1]])
            merged.setdefault(key, {"loc": list(key), "msg": "", "type": "union_type", "input": e.get("input")})
        else:
            merged[loc + (str(len(merged)),)] = {"loc": list(loc), "msg": str(e.get("msg", "")),
                                                 "type": str(e.get("type", ""))}
    out = []
    for key, e in merged.items():
        if key in members:
            kinds = list(dict.fromkeys(members[key]))
            expected = kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " or " + kinds[-1]
            got = _JSON_TYPES.get(type(e.pop("input")), "another type")
            e["msg"] = f"expected {expected}, got {got}"
        out.append(e)
    return out


# ------------------------------------------------------------------ schemas
class Item(BaseModel):
    item_id: Id
    title: str
    score: float = Field(description="The final score, best first: the retrieval score (a dot product) of a "
                                     "bundle without a ranker; with a ranker, the ranking score, or with "
                                     "score 'sum' (GET /healthz) the sum of both standardised scores.")
    retrieval_score: float | None = Field(None, description="Bundles with a ranker only: the retrieval model's "
                                                            "score (query · candidate embedding).")
    ranking_score: float | None = Field(None, description="Bundles with a ranker only: the ranker's score "
                                                          "(e.g. a predicted rating).")


class SimilarItem(BaseModel):
    item_id: Id
    title: str
    score: float = Field(description="Similarity to the item asked about (candidate · candidate embedding).")


class Recommendations(BaseModel):
    user_id: Id | None = Field(description="The user asked about (null for an anonymous new user).")
    known_user: bool = Field(description="Whether the user was in the training data.")
    k: int = Field(description="How many items came back: k_requested, or fewer when fewer unseen items are left.")
    k_requested: int = Field(description="The k asked for.")
    items: list[Item] = Field(description="Best first. With a ranker: the retriever's top `candidates`, scored "
                                          "by the ranker, filtered and reordered by the business rules, cut to k "
                                          "(rules may leave fewer than k).")


class SimilarItems(BaseModel):
    item_id: Id
    k: int = Field(description="How many items came back: k_requested, or fewer for a smaller catalogue.")
    k_requested: int = Field(description="The k asked for.")
    items: list[SimilarItem]


class Health(BaseModel):
    status: str
    towerrec_version: str
    run: str
    num_items: int
    num_users: int
    index: str
    user_features: list[str]
    uses_history: bool
    ranker: str | None = Field(None, description="The ranker's run (bundles exported with a ranker).")
    candidates: int | None = Field(None, description="Retrieved items the ranker scores per request.")
    score: str | None = Field(None, description="How the final score is made: 'ranker' (the ranking score) or "
                                                "'sum' (both stages' scores, standardised per request, added).")
    rules: bool = Field(False, description="Whether business rules are applied after ranking.")


class RecommendRequest(BaseModel):
    """A user to recommend for: a known ``user_id``, or a new user's ``features`` and/or ``history``.

    For a known user, ``history`` lists items they interacted with since training
    (added to their train history). For a new user, ``features`` holds the user
    columns the model reads (see GET /healthz ``user_features``) and ``history``
    their items, oldest first; anything missing counts as unknown.

    Feature values (:mod:`towerrec.serve.request_features`): numeric columns take finite
    numbers (``timestamp`` also ISO 8601 dates), clipped to the train range; booleans,
    NaN, Infinity and unparseable strings are 422 naming ``features.<column>``.
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
    exclude_ids: list[Id] = Field(default_factory=list, max_length=MAX_HISTORY,
                                  description="Item ids never to return (ids not in the catalogue are ignored).")


class Problem(BaseModel):
    detail: str = Field(description="What is wrong, in one line.")
    hint: str | None = Field(None, description="What to do about it.")
    errors: list[dict[str, Any]] | None = Field(None, description="Per-field validation errors, when there are several.")


ERRORS = {
    404: {"model": Problem, "description": "Unknown user or item id"},
    413: {"model": Problem, "description": "Request body too large"},
    422: {"model": Problem, "description": "Invalid parameter or body"},
}


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
    device: str = "cpu",
) -> FastAPI:
    """The FastAPI app serving ``bundle`` (a loaded bundle, or its folder, loaded with its model on ``device``)."""
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle, device=device)
    catalogue = Catalogue(bundle)
    users = KnownUsers(bundle, catalogue)
    batcher = Batcher(bundle, catalogue, max_batch=max_batch, enabled=batching)
    user_features = bundle.feature_columns()
    app = FastAPI(
        title="towerrec",
        version=__version__,
        description=f"Top-K recommendations from the {bundle.manifest.get('model_kind')} model "
                    f"`{bundle.manifest.get('run')}`.",
    )
    app.state.bundle = bundle
    app.state.batcher = batcher
    app.state.catalogue = catalogue
    app.state.known_users = users
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = _merge_union_errors(error.errors())
        detail = "; ".join(f"{'.'.join(e['loc'][1:] or e['loc'])}: {e['msg']}" for e in errors[:5]) or "invalid request"
        return JSONResponse({"detail": detail, "hint": None, "errors": errors}, status_code=422)

    @app.exception_handler(TowerrecError)
    async def _invalid(request: Request, error: TowerrecError) -> JSONResponse:
        if isinstance(error, ServingError):  # a valid request the model cannot answer: our fault, said clearly
            return JSONResponse({"detail": error.message, "hint": error.hint}, status_code=500)
        body: dict[str, Any] = {"detail": error.message, "hint": error.hint}
        if isinstance(error, RequestError):
            body["errors"] = [{"loc": ["body", *error.field.split(".")], "msg": error.message, "type": "value_error"}]
        return JSONResponse(body, status_code=422)

    def not_found(message: str, hint: str | None = None) -> JSONResponse:
        return JSONResponse({"detail": message, "hint": hint}, status_code=404)

    # answers are rendered here as JSON text: the response_model documents them in the OpenAPI
    # schema without validating every answer again (tests check the shape)
    def recommendations(user_id: Any, known: bool, k: int, found: tuple[list[int], list[float]]) -> Response:
        body = (f'{{"user_id":{json.dumps(user_id)},"known_user":{"true" if known else "false"},'
                f'"k":{len(found[0])},"k_requested":{k},"items":{catalogue.items_json(*found)}}}')
        return Response(body, media_type="application/json")

    ranking = bundle.ranking
    retrieve = (lambda k: k) if ranking is None else (lambda k: max(k, ranking.candidates))

    def ranked(user_id: Any, known: bool, k: int, found: tuple[list[int], list[float]], queries, attributes) -> Response:
        """The answer: ``found`` as retrieved (no ranker), or re-ranked by the ranking stage and cut to ``k``."""
        if ranking is None:
            return recommendations(user_id, known, k, found)
        final = ranking.rerank(queries, found[0], found[1], k, attributes)
        body = (f'{{"user_id":{json.dumps(user_id)},"known_user":{"true" if known else "false"},'
                f'"k":{len(final)},"k_requested":{k},"items":{catalogue.ranked_items_json(final)}}}')
        return Response(body, media_type="application/json")

    def known_ranking(row: int):
        """(ranker query batch, rule attributes) of known user ``row``; (None, None) without a ranker."""
        if ranking is None:
            return None, None
        return ranking.known_queries(row), ranking.rule_user(row, None)

    def excluded(ids: list[Any] | None) -> np.ndarray:
        """Catalogue positions of the ``exclude_ids`` of a request (unknown ids are ignored)."""
        if not ids:
            return np.empty(0, dtype=np.int64)
        positions = catalogue.item_positions(list(ids))
        return positions[positions >= 0]

    def known_job(row: int, k: int, exclude_seen: bool, extra: np.ndarray | None = None,
                  never: np.ndarray | None = None) -> Job:
        queries = bundle.known_with_recent(row, extra if extra is not None else np.empty(0, dtype=np.int64))
        exclude = bundle.seen_positions(row) if exclude_seen else np.empty(0, dtype=np.int64)
        if exclude_seen and extra is not None:
            exclude = np.concatenate([exclude, extra])
        if never is not None and never.size:
            exclude = np.concatenate([exclude, never])
        return Job(k=k, exclude=exclude, queries=queries)

    @app.get("/", include_in_schema=False)
    def _root() -> RedirectResponse:
        return RedirectResponse("/docs")

    @app.get("/healthz", response_model=Health, summary="Liveness and model facts")
    async def healthz() -> dict[str, Any]:
        index = bundle.manifest.get("index", {})
        return {
            "status": "ok",
            "towerrec_version": __version__,
            "run": str(bundle.manifest.get("run")),
            "num_items": bundle.num_items,
            "num_users": bundle.num_users,
            "index": str(index.get("variant") or index.get("kind")),
            "user_features": user_features,
            "uses_history": bundle.uses_history,
            "ranker": None if ranking is None else str(bundle.manifest["ranker"].get("run")),
            "candidates": bundle.candidates,
            "score": None if ranking is None else ranking.score,
            "rules": ranking is not None and ranking.rules is not None,
        }

    @app.get("/recommend", response_model=Recommendations, responses=ERRORS, summary="Top-K items for a known user")
    async def recommend_known(
        user_id: Annotated[str, Query(min_length=1, max_length=MAX_ID_LENGTH, description="A user id from training.")],
        k: Annotated[int, Query(ge=1, le=MAX_K, description="How many items.")] = 10,
        exclude_seen: Annotated[bool, Query(description="Leave out the user's train items.")] = True,
        exclude_ids: Annotated[str | None, Query(max_length=MAX_ID_LENGTH * MAX_K,
                                                 description="Comma-separated item ids never to return "
                                                             "(ids not in the catalogue are ignored).")] = None,
    ):
        row = users.row(user_id)
        if row < 0:
            return not_found(
                f"user {user_id!r} is not in the training data",
                hint="POST /recommend with the user's features or history to serve a new user",
            )
        never = excluded([v.strip() for v in exclude_ids.split(",") if v.strip()] if exclude_ids else None)
        return ranked(_typed_id(user_id, bundle.user_id_type), True, k,
                      users.recommend(row, retrieve(k), exclude_seen, never), *known_ranking(row))

    @app.post("/recommend", response_model=Recommendations, responses=ERRORS,
              summary="Top-K items for a new user (features, history) or a known user with recent items")
    async def recommend_any(request: RecommendRequest):
        never = excluded(request.exclude_ids)
        history = np.empty(0, dtype=np.int64)
        if request.history:
            history = catalogue.item_positions(list(request.history))
            unknown = [v for v, p in zip(request.history, history.tolist()) if p < 0]
            if unknown:
                return not_found(f"item(s) {unknown[:10]} are not in the catalogue",
                                 hint="history lists item ids of the catalogue")
        row = -1 if request.user_id is None else users.row(request.user_id)
        if row >= 0:
            if request.features:
                raise TowerrecError(
                    f"user {request.user_id!r} is known: their features come from training",
                    hint="drop 'features', or drop 'user_id' to serve them as a new user",
                )
            ranker_queries, attributes = known_ranking(row)
            if not history.size:
                return ranked(request.user_id, True, request.k,
                              users.recommend(row, retrieve(request.k), request.exclude_seen, never),
                              ranker_queries, attributes)
            job = known_job(row, retrieve(request.k), request.exclude_seen, history, never)
        else:
            if request.user_id is not None and not request.features and not request.history:
                return not_found(f"user {request.user_id!r} is not in the training data",
                                 hint="add the user's 'features' or 'history' to serve them as a new user")
            if not request.features and not request.history:
                raise TowerrecError("give a known 'user_id', or a new user's 'features' and/or 'history'")
            queries = bundle.new_user_queries(dict(request.features), history)
            ranker_queries = attributes = None
            if ranking is not None:
                ranker_queries = ranking.new_user_queries(dict(request.features))
                attributes = ranking.rule_user(None, dict(request.features))
            exclude = history if request.exclude_seen else np.empty(0, dtype=np.int64)
            job = Job(k=retrieve(request.k), exclude=np.concatenate([exclude, never]), queries=queries)
        return ranked(request.user_id, row >= 0, request.k, await batcher.submit(job), ranker_queries, attributes)

    @app.get("/similar", response_model=SimilarItems, responses=ERRORS, summary="Items most similar to an item")
    async def similar(
        item_id: Annotated[str, Query(min_length=1, max_length=MAX_ID_LENGTH, description="A catalogue item id.")],
        k: Annotated[int, Query(ge=1, le=MAX_K, description="How many items.")] = 10,
    ):
        position = catalogue.item_position(item_id)
        if position < 0:
            return not_found(f"item {item_id!r} is not in the catalogue")
        found = catalogue.similar(position, k)
        body = (f'{{"item_id":{json.dumps(_typed_id(item_id, bundle.item_id_type))},"k":{len(found[0])},'
                f'"k_requested":{k},"items":{catalogue.items_json(*found)}}}')
        return Response(body, media_type="application/json")

    return app


def _typed_id(value: str, kind: str) -> int | str:
    return int(value) if kind == "int" else value
