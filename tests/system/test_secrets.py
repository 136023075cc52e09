"""No password, access token or refresh token reaches a log, a span or an event, whichever way a
client comes in.

One traced action per way in: native gRPC, gRPC-Web and JSON through Envoy (sign up, a wrong
and a right login, a refresh, who-am-I), and the chat WebSocket with its token in the
Authorization header, in a subprotocol and in the URL's query string. Then everything the run
left behind is read back: every span in the trace store, the auth service's events, and every
file of the run directory (logs, the stores' data, configuration).

The search cannot pass by finding nothing: first it checks that what it searches holds these
requests (each action's spans, Envoy's and the service's, and an access-log line naming each
action's trace, the WebSocket upgrades' among them).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from clients.transports import ALL_TRANSPORTS, Transport, transport_for
from clients.websocket import TokenCarrier, open_socket
from fixtures.documents import eventually
from fixtures.events import EventLog
from observability.clickhouse import connect
from observability.testing import Action, TraceCapture
from observability.traces import span
from services.api.auth.v1 import auth_pb2
from services.kit.events import EventEnvelope, topic_for
from simulations.endpoints import StackEndpoints

A = "auth.v1.AuthService"
CARRIERS: tuple[TokenCarrier, ...] = ("header", "subprotocol", "query")
CHUNK = 16 * 1024 * 1024


@dataclass
class Drive:
    """What the actions did: the secrets they used and the traces they made."""

    secrets: dict[str, str] = field(default_factory=dict)
    traces: dict[str, str] = field(default_factory=dict)  # action → trace id
    users: list[str] = field(default_factory=list)
    events: list[EventEnvelope] = field(default_factory=list)  # the auth service's, about these users


async def drive_transport(transport: Transport, traces: TraceCapture, drive: Drive) -> str:
    """Sign up, log in wrongly and rightly, refresh, ask who am I: one traced action."""
    name = transport.name
    email, password = f"secretive-{uuid.uuid4().hex[:12]}@example.test", f"pw-{uuid.uuid4().hex}"
    wrong = f"wrong-{uuid.uuid4().hex}"
    async with traces.action(f"secrets over {name}") as action:
        metadata = action.metadata()
        request = auth_pb2.SignUpRequest(email=email, password=password, display_name="Secretive")
        signed_up = (await transport.unary(f"{A}/SignUp", request, metadata=metadata, timeout=20)).unwrap()
        assert isinstance(signed_up, auth_pb2.SignUpResponse)
        login = auth_pb2.LoginRequest(email=email, password=wrong)
        assert not (await transport.unary(f"{A}/Login", login, metadata=metadata)).ok
        login = auth_pb2.LoginRequest(email=email, password=password)
        logged_in = (await transport.unary(f"{A}/Login", login, metadata=metadata, timeout=20)).unwrap()
        assert isinstance(logged_in, auth_pb2.LoginResponse)
        refresh = auth_pb2.RefreshRequest(refresh_token=logged_in.tokens.refresh_token)
        refreshed = (await transport.unary(f"{A}/Refresh", refresh, metadata=metadata)).unwrap()
        assert isinstance(refreshed, auth_pb2.RefreshResponse)
        who = await transport.unary(
            f"{A}/WhoAmI", auth_pb2.WhoAmIRequest(), token=refreshed.tokens.access_token, metadata=metadata
        )
        assert who.ok
    drive.users.append(signed_up.user.user_id)
    drive.traces[name] = action.trace_id
    drive.secrets |= {
        f"{name} password": password,
        f"{name} wrong password": wrong,
        f"{name} sign-up access token": signed_up.tokens.access_token,
        f"{name} sign-up refresh token": signed_up.tokens.refresh_token,
        f"{name} login access token": logged_in.tokens.access_token,
        f"{name} login refresh token": logged_in.tokens.refresh_token,
        f"{name} rotated refresh token": refreshed.tokens.refresh_token,
        f"{name} rotated access token": refreshed.tokens.access_token,
    }
    return action.trace_id


async def use_socket(stack: StackEndpoints, traces: TraceCapture, token: str, carried_in: TokenCarrier) -> Action:
    """Open the chat WebSocket through Envoy, its token carried one way, and close it."""
    async with (
        traces.action(f"websocket, token in the {carried_in}") as action,
        open_socket(stack.envoy_http, "/v1/chat/ws", token, "kp.chat.v1", carried_in, action.headers()) as socket,
    ):
        await socket.send({"type": "cancel", "request_id": "nothing"})
    return action


def about(user_id: str) -> Callable[[EventEnvelope], bool]:
    return lambda envelope: envelope.subject_ids.get("user_id") == user_id


@pytest.fixture(scope="module")
async def driven(stack: StackEndpoints, traces: TraceCapture) -> Drive:
    drive = Drive()
    events = EventLog(stack.kafka_bootstrap, topic_for("auth"))
    await events.start()
    try:
        for name in ALL_TRANSPORTS:
            transport = transport_for(name, stack.envoy_http, stack.envoy_grpc)
            try:
                await drive_transport(transport, traces, drive)
            finally:
                await transport.aclose()
        token = drive.secrets["json rotated access token"]
        for carried_in in CARRIERS:
            action = await use_socket(stack, traces, token, carried_in)
            drive.traces[f"websocket ({carried_in})"] = action.trace_id
        for user_id in drive.users:
            drive.events += await events.wait_for(about(user_id))
    finally:
        await events.stop()
    return drive


# ------------------------------------------------------------ positive controls


@pytest.mark.parametrize("action", [*ALL_TRANSPORTS, *(f"websocket ({carrier})" for carrier in CARRIERS)])
async def test_each_action_left_spans_of_envoy_and_the_service(
    driven: Drive, traces: TraceCapture, action: str
) -> None:
    service = "chat" if action.startswith("websocket") else "auth"
    tree = await traces.wait_for(driven.traces[action], (span("envoy"), span(service, kind="Server")), timeout_s=20)
    assert tree.find(span("envoy"))
    assert tree.find(span(service, kind="Server"))


def access_log_lines(run_dir_root: Path) -> list[str]:
    return (run_dir_root / "logs" / "envoy.log").read_text(errors="replace").splitlines()


@pytest.mark.parametrize("action", [*ALL_TRANSPORTS, "websocket (query)"])
async def test_the_access_log_has_a_line_for_each_action(driven: Drive, run_dir_root: Path, action: str) -> None:
    trace_id = driven.traces[action]

    async def logged() -> list[str] | None:
        return [line for line in access_log_lines(run_dir_root) if trace_id in line] or None

    lines = await eventually(logged, f"no access-log line of {action}", timeout_s=10)
    if action.startswith("websocket"):
        assert any('"path":"/v1/chat/ws"' in line for line in lines), lines


# ------------------------------------------------------------ no secret anywhere


def test_no_secret_is_in_any_span(driven: Drive, stack: StackEndpoints) -> None:
    client = connect(stack.clickhouse_url)
    try:
        for label, secret in driven.secrets.items():
            found = client.query(
                "SELECT count() FROM otel.otel_traces WHERE position(toString(SpanAttributes), %(s)s) > 0 "
                "OR position(toString(ResourceAttributes), %(s)s) > 0 OR position(StatusMessage, %(s)s) > 0 "
                "OR position(SpanName, %(s)s) > 0 OR position(toString(Events.Attributes), %(s)s) > 0",
                parameters={"s": secret},
            ).result_rows[0][0]
            assert found == 0, f"the {label} is in {found} span(s)"
    finally:
        client.close()


def test_no_secret_is_in_any_event(driven: Drive) -> None:
    assert len(driven.events) >= len(driven.users), "the sign-up events arrived"
    for envelope in driven.events:
        for label, secret in driven.secrets.items():
            assert secret.encode() not in envelope.SerializeToString(), f"the {label} is in an event"


def files_of(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            yield path


def test_no_secret_is_in_any_file_of_the_run(driven: Drive, run_dir_root: Path) -> None:
    """Logs, the stores' data and configuration alike; the access-log lines of the actions
    (checked above to exist) are among what is searched."""
    secrets = {label: secret.encode() for label, secret in driven.secrets.items()}
    overlap = max(len(secret) for secret in secrets.values())
    searched = 0
    for path in files_of(run_dir_root):
        try:
            with path.open("rb") as handle:
                tail = b""
                while chunk := handle.read(CHUNK):
                    window = tail + chunk
                    for label, secret in secrets.items():
                        assert secret not in window, f"the {label} is in {path.relative_to(run_dir_root)}"
                    tail = window[-overlap:]
                    searched += len(chunk)
        except (PermissionError, FileNotFoundError):
            continue  # a store's lock file, or a file a component just removed
    assert searched > 0
