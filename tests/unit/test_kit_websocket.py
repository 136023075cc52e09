"""services.kit.websocket: the bridge every WebSocket endpoint of the platform stands on, with a
small echo protocol in front of a real server (port 0) and a real client. (Chat's protocol on
it: tests/unit/test_chat_websocket.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from fixtures.tokens import TestIssuer
from services.api.activity.v1 import activity_pb2
from services.kit.auth import Principal
from services.kit.errors import InvalidArgument
from services.kit.websocket import CLOSE_POLICY, Socket, WebSocketBridge, parse_proto_frame, proto_frame

PATH = "/v1/echo/ws"


class Echo:
    """Echoes each frame with the caller's id; "flood" sends far more than a slow reader takes."""

    path = PATH
    subprotocol = "kp.echo.v1"

    async def session(self, socket: Socket, principal: Principal) -> None:
        async for raw in socket.frames():
            if raw == "flood":
                for n in range(20_000):
                    socket.send({"n": n, "padding": "x" * 1000})
                    if n % 100 == 0:
                        await asyncio.sleep(0)
            else:
                socket.send({"user": principal.user_id, "echo": raw})


@pytest.fixture
async def url() -> AsyncIterator[tuple[str, TestIssuer]]:
    issuer = TestIssuer()
    server = await WebSocketBridge(Echo(), issuer.verifier(), send_queue=64).open_server("127.0.0.1", 0)
    await server.start_serving()
    serving = asyncio.create_task(server.serve_forever())
    yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}{PATH}", issuer
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving


async def test_a_browser_s_token_comes_as_a_subprotocol_and_only_the_protocol_is_selected(
    url: tuple[str, TestIssuer],
) -> None:
    address, issuer = url
    token = issuer.token("user-3")
    offered = [Subprotocol("kp.echo.v1"), Subprotocol(f"access_token.{token}")]
    async with connect(address, subprotocols=offered) as connection:
        assert connection.subprotocol == "kp.echo.v1"
        await connection.send("hello")
        assert json.loads(await connection.recv()) == {"user": "user-3", "echo": "hello"}


async def test_other_paths_are_404_and_no_token_is_4401(url: tuple[str, TestIssuer]) -> None:
    address, _ = url
    with pytest.raises(InvalidStatus) as caught:
        async with connect(address.replace(PATH, "/elsewhere")):
            pass
    assert caught.value.response.status_code == 404
    async with connect(address) as connection:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(connection.recv(), 5)
    assert connection.close_code == 4401
    assert "kp.echo.v1" in (connection.close_reason or "")


async def test_a_client_that_falls_behind_is_closed_saying_so(url: tuple[str, TestIssuer]) -> None:
    """Before a bounded queue, a slow reader made the server hold every message for it."""
    address, issuer = url
    async with connect(address, additional_headers={"authorization": f"Bearer {issuer.token()}"}) as connection:
        await connection.send("flood")
        await asyncio.sleep(1.0)  # read nothing while the server floods
        received = await read_until_closed(connection)
    assert connection.close_code == CLOSE_POLICY
    assert "fell behind" in (connection.close_reason or "")
    assert received < 20_000


async def read_until_closed(connection: ClientConnection) -> int:
    received = 0
    with contextlib.suppress(ConnectionClosed):
        while True:
            await asyncio.wait_for(connection.recv(), 10)
            received += 1
    return received


def test_proto_frames_are_the_proto3_json_mapping_both_ways() -> None:
    event = activity_pb2.ActivityEvent(event_id="e1", attributes={"q": "tides"})
    frame = proto_frame(event)
    assert json.loads(frame) == {"eventId": "e1", "attributes": {"q": "tides"}}
    assert parse_proto_frame(frame, activity_pb2.ActivityEvent) == event


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ('{"eventId": "e1", "colour": "red"}', "colour"),
        ('{"eventId": ["e1"]}', "eventId"),
        ('{"eventId": "\\ud800"}', "lone surrogate"),
        ('{"eventId": "a\\u0000b"}', "NUL"),
        ('{"attributes": ' + "[" * 100 + "]" * 100 + "}", "nests deeper"),
        (b"\x00\x01", "binary frame"),
    ],
)
def test_a_proto_frame_that_the_mapping_refuses_is_invalid_argument(raw: str | bytes, problem: str) -> None:
    with pytest.raises(InvalidArgument, match=problem):
        parse_proto_frame(raw, activity_pb2.ActivityEvent)
