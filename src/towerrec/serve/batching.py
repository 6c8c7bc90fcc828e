"""Request batching for the query tower, on the event loop.

Why on the event loop and not in worker threads: on a small CPU box a thread
hand-off (and the GIL tug-of-war that follows, up to the 5 ms switch interval)
costs more than the ~120 us tower pass it would offload. Instead, a request
that needs the tower queues its job and, if no flush is scheduled, schedules
one with ``call_soon``: every request the server parsed in the same loop
iteration queues behind it, and the flush runs them as one batch. The server
never waits to fill a batch; under load, batches grow by themselves.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import torch

from towerrec.serve.bundle import Bundle
from towerrec.serve.precomputed import Catalogue

Result = tuple[list[int], list[float]]


@dataclass
class Job:
    """One query for the tower: its features (one row), what to exclude, how many results."""

    k: int
    exclude: np.ndarray
    queries: dict[str, torch.Tensor]


class Batcher:
    """Runs tower jobs in batches of up to ``max_batch`` (1 when disabled); counts batches and jobs."""

    def __init__(self, bundle: Bundle, catalogue: Catalogue | None = None, *, max_batch: int = 256,
                 enabled: bool = True) -> None:
        self.bundle = bundle
        self.catalogue = catalogue or Catalogue(bundle)
        self.max_batch = max(1, max_batch) if enabled else 1
        self._pending: list[tuple[Job, asyncio.Future]] = []
        self._scheduled = False
        self.batches = 0
        self.jobs = 0

    async def submit(self, job: Job) -> Result:
        """The job's top-K, computed with whatever else is queued in this loop iteration."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((job, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def run(self, jobs: list[Job]) -> list[Result | BaseException]:
        """Runs ``jobs`` as one tower batch; each job's result, or the error that stopped it."""
        self.batches += 1
        self.jobs += len(jobs)
        names = jobs[0].queries.keys()
        stacked = {name: torch.cat([job.queries[name] for job in jobs]) for name in names}
        try:
            embeddings = self.bundle.embed(stacked).float().numpy()
        except Exception as error:  # noqa: BLE001 - every job of the batch gets it
            return [error] * len(jobs)
        out: list[Result | BaseException] = []
        for job, embedding in zip(jobs, embeddings):
            try:
                out.append(self.catalogue.top_k(embedding, job.k, job.exclude))
            except Exception as error:  # noqa: BLE001 - only this job's request fails
                out.append(error)
        return out

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            live = [(job, future) for job, future in batch if not future.done()]  # skip cancelled requests
            if not live:
                continue
            for (_, future), result in zip(live, self.run([job for job, _ in live])):
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
