"""The platform's WebSocket endpoints as a client reaches them: JSON messages in text frames, the
access token carried one of the three ways the edge and the kit's bridge accept.

    async with open_socket(stack.envoy_http, "/v1/chat/ws", token, "kp.chat.v1") as socket:
        await socket.send({"type": "ask", ...})
        event = await socket.receive()

`carried_in`: "subprotocol" (what a browser does: the protocol's name plus `access_token.<token>`),
"header" (Authorization: Bearer, for clients that can set headers) or "query" (`?access_token=`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

TokenCarrier = Literal["subprotocol", "header", "query"]


def websocket_url(http_base: str, path: str) -> str:
    """ws:// (or wss://) for an http:// (or https://) base URL, e.g. Envoy's."""
    return http_base.replace("http://", "ws://", 1).replace("https://", "wss://", 1).rstrip("/") + path


class JsonSocket:
    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection

    async def send(self, message: Mapping[str, Any] | str | bytes) -> None:
        """A JSON object as a text frame; a str or bytes frame is sent as it is (to test refusals)."""
        await self.connection.send(message if isinstance(message, str | bytes) else json.dumps(message))

    async def receive(self) -> dict[str, Any]:
        raw = await self.connection.recv(decode=True)
        assert isinstance(raw, str), f"expected a text frame, got {raw!r}"
        message: dict[str, Any] = json.loads(raw)
        return message


@contextlib.asynccontextmanager
async def open_socket(
    http_base: str,
    path: str,
    token: str | None,
    subprotocol: str,
    carried_in: TokenCarrier = "subprotocol",
    headers: Mapping[str, str] | None = None,
) -> AsyncIterator[JsonSocket]:
    """A socket to `path` behind `http_base`, the token (if any) carried as asked."""
    url = websocket_url(http_base, path)
    extra = dict(headers or {})
    protocols = [Subprotocol(subprotocol)]
    if token is not None:
        if carried_in == "subprotocol":
            protocols.append(Subprotocol(f"access_token.{token}"))
        elif carried_in == "header":
            extra["authorization"] = f"Bearer {token}"
        else:
            url += f"?access_token={quote(token, safe='')}"
    async with connect(url, subprotocols=protocols, additional_headers=extra) as connection:
        yield JsonSocket(connection)
