"""What every Locust user of our scenarios shares: the run it belongs to, the two ways it calls
the platform (JSON through Envoy, or native gRPC through Envoy), and the pacing of its actions.

- `LoadRun`: read from the environment the runner sets (`KP_LOAD_*`): the run's id and
  scenario, the seed manifest, Envoy's addresses, the open-loop arrival rate. Every request
  carries the run's baggage (`synthetic_request=true`, `load.run`, `load.scenario`), which the
  services copy onto their spans, so the report selects exactly this run's traces.
- `JsonEdge` and `GrpcEdge`: one call = one Locust request, named by the user action (e.g.
  "search"), typed by transport ("JSON", "gRPC"); a failure is reported with its gRPC code and
  message. Both have the same `call`/`stream` interface, so one action serves both.
- `paced(action)`: closed loop, the action runs and the user thinks (`wait_time`); open loop
  (`--arrival-rate`), actions start on a fixed schedule whatever earlier ones are doing, and the
  first request of each is timed from when it should have started, not from when it could
  (coordinated omission, as wrk2 corrects it). At most MAX_IN_FLIGHT actions per user run at
  once; an arrival beyond that is reported as a failed "arrival dropped", never silently lost.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import gevent.local
import gevent.pool
import grpc
from geventhttpclient import HTTPClient
from google.protobuf import json_format
from google.protobuf.message import Message
from locust import TaskSet, User, between

from clients.http_rules import binding_for, build_http_request, parse_response
from clients.transports import MethodRef, json_failure, parse_json_stream
from loadtests.seeding import Manifest
from services.api.auth.v1 import auth_pb2

T = TypeVar("T")
MAX_IN_FLIGHT = 50
LOGIN = "auth.v1.AuthService/Login"
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class LoadRun:
    run: str
    scenario: str
    manifest: Manifest
    http_base: str  # Envoy, e.g. http://127.0.0.1:18080
    grpc_target: str  # Envoy, e.g. 127.0.0.1:18080
    arrivals_per_user_s: float  # 0: closed loop
    workers: int  # Locust worker processes (0: one local process)

    @classmethod
    def from_environment(cls) -> LoadRun:
        return cls(
            run=os.environ["KP_LOAD_RUN"],
            scenario=os.environ["KP_LOAD_SCENARIO"],
            manifest=Manifest.load(Path(os.environ["KP_LOAD_MANIFEST"])),
            http_base=os.environ["KP_LOAD_HTTP"],
            grpc_target=os.environ["KP_LOAD_GRPC"],
            arrivals_per_user_s=float(os.environ.get("KP_LOAD_ARRIVALS_PER_USER_S", "0")),
            workers=int(os.environ.get("KP_LOAD_WORKERS", "0")),
        )

    @property
    def baggage(self) -> str:
        return f"synthetic_request=true,load.run={self.run},load.scenario={self.scenario}"


@functools.cache
def load_run() -> LoadRun:
    return LoadRun.from_environment()


class LoadError(Exception):
    """A call that did not succeed, as its gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


# Greenlet-local: when the action that is running should have started (open loop).
_scheduled = gevent.local.local()


def began_at() -> float:
    """The start of a request's time: now, or, for the first request of an open-loop action,
    when the action was due."""
    due: float | None = getattr(_scheduled, "due", None)
    _scheduled.due = None
    return due if due is not None else time.perf_counter()


def fire_request(
    events: Any, request_type: str, name: str, milliseconds: float, error: LoadError | None, length: int = 0
) -> None:
    """One request in Locust's statistics (a failure when `error` is given)."""
    events.request.fire(
        request_type=request_type,
        name=name,
        response_time=milliseconds,
        response_length=length,
        exception=error,
        context={},
    )


class _Reporting:
    request_type = ""

    def __init__(self, user: User) -> None:
        self.events = user.environment.events
        self.last_error: LoadError | None = None

    def report(self, name: str, began: float, length: int, error: LoadError | None) -> None:
        self.last_error = error
        fire_request(self.events, self.request_type, name, (time.perf_counter() - began) * 1000, error, length)


class JsonEdge(_Reporting):
    """The platform's JSON API through Envoy (the transcoder), as browsers and scripts call it;
    requests built from each method's `google.api.http` rule (clients.http_rules)."""

    request_type = "JSON"

    def __init__(self, user: User, run: LoadRun) -> None:
        super().__init__(user)
        self.baggage = run.baggage
        self.http = HTTPClient.from_url(run.http_base, concurrency=MAX_IN_FLIGHT, network_timeout=TIMEOUT_S)

    def call(self, name: str, method: str, request: Message, token: str = "") -> Any:
        return self._exchange(name, method, request, token, _unary)

    def stream(self, name: str, method: str, request: Message, token: str = "") -> list[Any] | None:
        """A server stream, timed to its last message (a JSON array, read whole)."""
        return self._exchange(name, method, request, token, _streamed)

    def _exchange(
        self, name: str, method: str, request: Message, token: str, decode: Callable[[MethodRef, bytes], T]
    ) -> T | None:
        ref = MethodRef.of(method)
        http = build_http_request(ref.descriptor, request)
        headers = {"accept": "application/json", "baggage": self.baggage}
        if token:
            headers["authorization"] = f"Bearer {token}"
        body = http.body_bytes()
        if body is not None:
            headers["content-type"] = "application/json"
        began = began_at()
        try:
            response = self.http.request(http.method, http.target, body=body, headers=headers)
            raw = response.read()
            received = tuple((key.lower(), value) for key, value in response.items())
        except OSError as error:  # refused, reset, timed out
            self.report(name, began, 0, LoadError(grpc.StatusCode.UNAVAILABLE, repr(error)))
            return None
        failure = json_failure(response.status_code, received, raw)
        if failure is not None:
            self.report(name, began, len(raw), LoadError(failure.code, failure.message))
            return None
        try:
            result = decode(ref, raw)
        except (ValueError, json_format.ParseError) as error:
            self.report(name, began, len(raw), LoadError(grpc.StatusCode.INTERNAL, f"unparseable answer: {error}"))
            return None
        self.report(name, began, len(raw), None)
        return result

    def close(self) -> None:
        self.http.close()


class GrpcEdge(_Reporting):
    """Native gRPC through Envoy, as services and native apps call it. Needs gRPC initialised
    for gevent (`grpc.experimental.gevent.init_gevent()`) before the first channel."""

    request_type = "gRPC"

    def __init__(self, user: User, run: LoadRun) -> None:
        super().__init__(user)
        self.baggage = run.baggage
        self.channel = grpc.insecure_channel(run.grpc_target)

    def _metadata(self, token: str) -> tuple[tuple[str, str], ...]:
        return (("baggage", self.baggage), *((("authorization", f"Bearer {token}"),) if token else ()))

    def call(self, name: str, method: str, request: Message, token: str = "") -> Any:
        ref = MethodRef.of(method)
        stub = self.channel.unary_unary(ref.path, _serialize, ref.response_class().FromString)
        answered = self._invoke(name, lambda: [stub(request, metadata=self._metadata(token), timeout=TIMEOUT_S)])
        return answered[0] if answered else None

    def stream(self, name: str, method: str, request: Message, token: str = "") -> list[Any] | None:
        ref = MethodRef.of(method)
        stub = self.channel.unary_stream(ref.path, _serialize, ref.response_class().FromString)
        return self._invoke(name, lambda: list(stub(request, metadata=self._metadata(token), timeout=TIMEOUT_S)))

    def _invoke(self, name: str, exchange: Callable[[], list[Message]]) -> list[Message] | None:
        """Every message of one call, reported as one request (timed to its last message)."""
        began = began_at()
        try:
            messages = exchange()
        except grpc.RpcError as error:
            self.report(name, began, 0, LoadError(error.code(), error.details() or ""))
            return None
        self.report(name, began, sum(message.ByteSize() for message in messages), None)
        return messages

    def close(self) -> None:
        self.channel.close()


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _unary(ref: MethodRef, raw: bytes) -> Message:
    return parse_response(json.loads(raw), ref.response_class(), binding_for(ref.descriptor).response_body)


def _streamed(ref: MethodRef, raw: bytes) -> list[Message]:
    return [parse_response(item, ref.response_class()) for item in parse_json_stream(raw)]


# ------------------------------------------------------------------ people and pacing

_local_users = itertools.count()


def next_person(user: User, run: LoadRun) -> int:
    """A seeded person for a new Locust user, distinct across worker processes: the k-th user
    of worker w (of W) is person k·W + w (modulo the people seeded)."""
    worker = max(0, getattr(user.environment.runner, "worker_index", 0))
    return (next(_local_users) * max(1, run.workers) + worker) % len(run.manifest.people)


class ScenarioUser(User):
    """A seeded person using the platform: signs in as they start, calls through `edge`, signs
    in again when their access token has expired."""

    abstract = True
    edge_class: type[JsonEdge] | type[GrpcEdge] = JsonEdge

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.load = load_run()
        self.person_index = next_person(self, self.load)
        self.person = self.load.manifest.people[self.person_index]
        self.rng = random.Random(f"{self.load.manifest.seed}-{self.person_index}")
        self.edge: JsonEdge | GrpcEdge = self.edge_class(self, self.load)
        self.in_flight = gevent.pool.Pool(MAX_IN_FLIGHT)
        self.next_arrival = 0.0
        self._token = ""

    def on_start(self) -> None:
        self.sign_in()

    def on_stop(self) -> None:
        self.in_flight.kill(block=False)
        self.edge.close()

    def sign_in(self) -> None:
        request = auth_pb2.LoginRequest(email=self.person.email, password=self.person.password)
        response = self.edge.call("sign in", LOGIN, request)
        self._token = response.tokens.access_token if response is not None else ""

    @property
    def token(self) -> str:
        expired = self.edge.last_error is not None and self.edge.last_error.code == grpc.StatusCode.UNAUTHENTICATED
        if expired or not self._token:
            self.sign_in()
        return self._token


def paced(action: Callable[[Any], None]) -> Callable[[Any], None]:
    """A Locust task running `action(user)`: directly (closed loop), or, when the run has an
    arrival rate, in its own greenlet, timed from when it was due."""
    if load_run().arrivals_per_user_s <= 0:
        return action

    @functools.wraps(action)
    def arrive(user: ScenarioUser) -> None:
        if user.next_arrival == 0.0:  # the first arrival: now, once signed in
            user.next_arrival = time.perf_counter()
        due = user.next_arrival
        if user.in_flight.full():
            too_many = LoadError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{MAX_IN_FLIGHT} actions already in flight")
            fire_request(user.environment.events, "LOAD", "arrival dropped", 0, too_many)
            return

        def run() -> None:
            _scheduled.due = due
            action(user)

        user.in_flight.spawn(run)

    return arrive


def open_loop_wait(user: ScenarioUser) -> float:
    """Time until the next arrival of a fixed schedule: one every 1/rate seconds."""
    user.next_arrival += 1.0 / load_run().arrivals_per_user_s
    return max(0.0, user.next_arrival - time.perf_counter())


def think_time(low_s: float, high_s: float) -> Callable[[Any], float]:
    """A user's `wait_time`: a think time between `low_s` and `high_s` (closed loop), or the
    fixed schedule of the run's arrival rate (open loop)."""
    if load_run().arrivals_per_user_s > 0:
        return open_loop_wait
    wait: Callable[[Any], float] = between(low_s, high_s)
    return wait


def weighted(actions: Iterable[tuple[Callable[[Any], None], int]]) -> list[TaskSet | Callable[..., Any]]:
    """Locust's `tasks`: each action paced, as many times as its weight (as Locust expands a
    weight table itself)."""
    return [task for action, weight in actions for task in [paced(action)] * weight]
