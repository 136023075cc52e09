"""Reindexing spaces in the background, one document at a time, without starving search.

ReindexSpace only queues a job. One worker runs the jobs in order, re-embedding a document at
a time and yielding to the event loop between documents, so queries and the event consumer
keep their turn however many reindexes are asked for. A space already queued or running is
not queued again: the caller gets that job's count (the work is idempotent per version). A
caller may have `per_caller` jobs waiting at once; more answer RESOURCE_EXHAUSTED.

A job reads the space as the caller who asked for it (their principal travels with the job),
and its spans are linked to that request's trace.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext

from services.kit.auth import Principal, reset_principal, set_principal
from services.kit.errors import RateLimited
from services.kit.server import set_deadline_in

log = logging.getLogger("services.vector.reindexing")
_tracer = trace.get_tracer("services.vector.reindexing")

ReindexDocument = Callable[[str, str], Awaitable[None]]  # (space_id, document_id)


@dataclass
class ReindexJob:
    space_id: str
    document_ids: list[str]
    caller: Principal
    requested_in: SpanContext | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class ReindexQueue:
    def __init__(self, reindex_document: ReindexDocument, per_caller: int = 2, pause_s: float = 0.0) -> None:
        self.reindex_document = reindex_document
        self.per_caller = per_caller
        self.pause_s = pause_s  # between documents: the other work's turn
        self._jobs: deque[ReindexJob] = deque()
        self._by_space: dict[str, ReindexJob] = {}  # queued or running
        self._wake = asyncio.Event()

    def queued(self, space_id: str) -> ReindexJob | None:
        """The job of this space, waiting or running."""
        return self._by_space.get(space_id)

    def check_caller(self, caller: Principal) -> None:
        waiting = sum(1 for job in self._by_space.values() if job.caller.user_id == caller.user_id)
        if waiting >= self.per_caller:
            raise RateLimited(
                f"you already have {waiting} reindexes queued; ask again when one of them has finished",
                retry_after_s=10,
            )

    def submit(self, space_id: str, caller: Principal, document_ids: list[str]) -> ReindexJob:
        """Queue the space (or return the job already queued for it)."""
        existing = self.queued(space_id)
        if existing is not None:
            return existing
        self.check_caller(caller)
        span_context = trace.get_current_span().get_span_context()
        job = ReindexJob(space_id, document_ids, caller, span_context if span_context.is_valid else None)
        self._by_space[space_id] = job
        self._jobs.append(job)
        self._wake.set()
        return job

    async def run(self) -> None:
        """The worker: every queued job, in order, for as long as the service runs."""
        set_deadline_in(None)  # jobs outlive the RPCs that queued them
        while True:
            while not self._jobs:
                self._wake.clear()
                await self._wake.wait()
            job = self._jobs.popleft()
            try:
                await self._run(job)
            finally:
                del self._by_space[job.space_id]
                job.done.set()

    async def _run(self, job: ReindexJob) -> None:
        links = [Link(job.requested_in)] if job.requested_in is not None else []
        attributes: dict[str, str | int] = {"index.space_id": job.space_id, "index.documents": len(job.document_ids)}
        with _tracer.start_as_current_span("reindex space", links=links, attributes=attributes):
            token = set_principal(job.caller)
            try:
                for document_id in job.document_ids:
                    try:
                        await self.reindex_document(job.space_id, document_id)
                    except Exception:
                        log.exception("reindexing document %s of space %s failed", document_id, job.space_id)
                    await asyncio.sleep(self.pause_s)
            finally:
                reset_principal(token)
