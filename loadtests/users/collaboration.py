"""Locust scenario `collaboration`: people on shared canvases over the WebSocket bridge
(`/v1/canvas/ws` through Envoy, as a browser connects), each moving their own card now and then
and their cursor twice a second, as people do while they work on a board together.

Request types (all "WS"):
- "join": from opening the socket to the snapshot;
- "move": from sending a move to the node_changed that answers it;
- "change delivered": each change made by someone else, from the moment the instance accepted it
  (the node's `updated_at`, stamped by the service; one clock, one machine) to its arrival here:
  what a person waits to see a colleague's move. Every session of the canvas counts each change.
A socket the server closes, a refused move and an unanswered move are failures.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime
from typing import Any

import gevent
import grpc
import websocket
from locust import constant_pacing

from clients.websocket import websocket_url
from loadtests.users.kit import TIMEOUT_S, LoadError, ScenarioUser, fire_request

WS_PATH, SUBPROTOCOL = "/v1/canvas/ws", "kp.canvas.v1"
CURSOR_INTERVAL_S = 0.5
TICKS_BETWEEN_MOVES = (4, 8)  # a move every 2–4 s
REJOIN_AFTER_S = 2.0


def epoch_of(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def join_error(error: Exception) -> LoadError:
    """The failure of a join, worded the same each time it happens (so Locust counts it once)."""
    if isinstance(error, websocket.WebSocketBadStatusException):
        return LoadError(grpc.StatusCode.UNAVAILABLE, f"the handshake was refused with HTTP {error.status_code}")
    return LoadError(grpc.StatusCode.UNAVAILABLE, f"{type(error).__name__}: {error}")


class Collaborator(ScenarioUser):
    wait_time = constant_pacing(CURSOR_INTERVAL_S)

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        canvas = self.load.manifest.canvas_of(self.person_index)
        if canvas is None:
            raise ValueError(f"person {self.person_index} has no canvas: the seed was not made for collaboration")
        self.space_id, self.node_id = canvas.space_id, canvas.nodes[self.person_index]
        self.socket: websocket.WebSocket | None = None
        self.receiver: gevent.Greenlet | None = None
        self.node_version = 0
        self.moving: tuple[str, float] | None = None  # the move in flight: its request id, when sent
        self.ticks_to_move = 0
        self.stopping = False
        self.rejoin_at = 0.0

    def on_start(self) -> None:
        super().on_start()
        self.join()

    def on_stop(self) -> None:
        self.stopping = True
        if self.socket is not None:
            self.socket.close()
        if self.receiver is not None:
            self.receiver.kill(block=False)
        super().on_stop()

    def report(self, name: str, milliseconds: float, error: LoadError | None = None) -> None:
        fire_request(self.environment.events, "WS", name, milliseconds, error)

    def join(self) -> None:
        began = time.perf_counter()
        try:
            socket = websocket.create_connection(
                websocket_url(self.load.http_base, WS_PATH),
                subprotocols=[SUBPROTOCOL, f"access_token.{self.token}"],
                header=[f"baggage: {self.load.baggage}"],
                suppress_origin=True,  # not a browser: no page origin to vouch for
                timeout=TIMEOUT_S,
            )
            socket.send(json.dumps({"join": {"spaceId": self.space_id}}))
            snapshot = json.loads(socket.recv())["snapshot"]
        except (websocket.WebSocketException, OSError, KeyError, ValueError) as error:
            self.rejoin_at = time.monotonic() + REJOIN_AFTER_S
            self.report("join", (time.perf_counter() - began) * 1000, join_error(error))
            return
        self.report("join", (time.perf_counter() - began) * 1000)
        mine = next(node for node in snapshot.get("nodes", []) if node["nodeId"] == self.node_id)
        self.node_version = int(mine["version"])
        socket.settimeout(None)
        self.socket, self.moving = socket, None
        self.ticks_to_move = self.rng.randint(*TICKS_BETWEEN_MOVES)
        self.receiver = gevent.spawn(self.receive, socket)

    def tick(self) -> None:
        """Twice a second: the cursor moves; every few seconds, the card too."""
        if self.socket is None:
            if time.monotonic() >= self.rejoin_at:
                self.join()
            return
        x, y = self.rng.uniform(0, 1200), self.rng.uniform(0, 800)
        try:
            self.socket.send(json.dumps({"cursorMoved": {"x": x, "y": y}}))
            self.ticks_to_move -= 1
            if self.ticks_to_move <= 0 and self.moving is None:
                self.ticks_to_move = self.rng.randint(*TICKS_BETWEEN_MOVES)
                self.move(x, y)
            elif self.moving is not None and time.perf_counter() - self.moving[1] > TIMEOUT_S:
                self.report("move", TIMEOUT_S * 1000, LoadError(grpc.StatusCode.DEADLINE_EXCEEDED, "no answer"))
                self.moving = None
        except (websocket.WebSocketException, OSError):
            # The socket is gone: the receiver reports how it ended; the next tick joins again.
            self.socket = None

    tasks = [tick]

    def move(self, x: float, y: float) -> None:
        assert self.socket is not None
        request_id = uuid.uuid4().hex[:16]
        self.moving = (request_id, time.perf_counter())
        move = {"nodeId": self.node_id, "x": x, "y": y, "expectedVersion": str(self.node_version)}
        self.socket.send(json.dumps({"clientRequestId": request_id, "moveNode": move}))

    def receive(self, socket: websocket.WebSocket) -> None:
        ended = "the connection was lost"
        try:
            while True:
                opcode, data = socket.recv_data()
                arrived = time.time()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                    ended = f"the server closed the socket: {code} {data[2:].decode(errors='replace')}"
                    break
                text = data.decode()
                if '"presenceChanged"' not in text:
                    self.handle(json.loads(text), arrived)
        except (websocket.WebSocketException, OSError) as error:
            ended = f"the connection was lost: {type(error).__name__}"
        if not self.stopping:
            self.report("session", 0, LoadError(grpc.StatusCode.UNAVAILABLE, ended))
            if self.socket is socket:  # not a session joined since
                self.socket = None

    def handle(self, message: dict[str, Any], arrived: float) -> None:
        if "nodeChanged" in message:
            changed = message["nodeChanged"]
            node = changed["node"]
            if self.moving is not None and changed.get("clientRequestId") == self.moving[0]:
                self.node_version = int(node["version"])
                self.report("move", (time.perf_counter() - self.moving[1]) * 1000)
                self.moving = None
            elif changed.get("actorUserId") != self.person.user_id:
                self.report("change delivered", max(0.0, (arrived - epoch_of(node["updatedAt"])) * 1000))
        elif "rejected" in message and self.moving is not None:
            rejected = message["rejected"]
            if "currentNode" in rejected:
                self.node_version = int(rejected["currentNode"]["version"])
            error = LoadError(grpc.StatusCode.ABORTED, f"{rejected.get('code')}: {rejected.get('message')}")
            self.report("move", (time.perf_counter() - self.moving[1]) * 1000, error)
            self.moving = None
