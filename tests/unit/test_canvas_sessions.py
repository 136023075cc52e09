"""A Collaborate session's end, apart from any transport: a client that falls behind is ended
with RESOURCE_EXHAUSTED and what waited for it is dropped; a session that ends normally
still delivers what it queued; either way nothing more is queued after the end."""

from __future__ import annotations

import uuid
from typing import Any

import grpc

from services.api.canvas.v1 import canvas_pb2
from services.canvas.collaboration import Session
from services.kit.auth import Principal

Response = canvas_pb2.CollaborateResponse


class Hub:
    """What a session asks of its hub when it ends."""

    def __init__(self) -> None:
        self.detached: list[Session] = []

    def detach(self, session: Session) -> None:
        self.detached.append(session)


def new_session(max_queued: int) -> tuple[Session, Hub]:
    hub = Hub()
    principal = Principal(str(uuid.uuid4()), "a@example.test", "t", 2**31, "token", "Ada")
    service: Any = None  # ending a session needs no use case
    session = Session(hub, service, principal, leeway_s=30, max_queued=max_queued)  # type: ignore[arg-type]
    session.space_id = str(uuid.uuid4())
    return session, hub


def heartbeat_echo(n: int) -> Response:
    return Response(rejected=Response.Rejected(client_request_id=f"m{n}", code="NOT_FOUND", message="x"))


async def drained(session: Session) -> list[Response]:
    return [message async for message in session.responses()]


async def test_a_client_that_falls_behind_is_ended_and_its_queue_dropped() -> None:
    session, hub = new_session(max_queued=5)
    for n in range(20):
        session.emit(heartbeat_echo(n))
    failure = session.failure()
    assert failure is not None
    assert getattr(failure, "code", None) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "fell behind" in str(failure)
    assert await drained(session) == []
    assert hub.detached == [session]


async def test_a_session_that_ends_normally_sends_what_it_queued_and_no_more() -> None:
    session, _ = new_session(max_queued=50)
    for n in range(3):
        session.emit(heartbeat_echo(n))
    session.end(None)
    session.emit(heartbeat_echo(99))
    assert [m.rejected.client_request_id for m in await drained(session)] == ["m0", "m1", "m2"]
    assert session.failure() is None
