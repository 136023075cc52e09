"""The edge and the services against clients that are broken or hostile, each case a regression
test of a defect found by probing the running stack.

- Calls whose request never arrives whole (the headers end the stream, an empty body, a
  length prefix cut short or announcing more than comes, a message never finished) end at
  once or when their time is up, through Envoy (native gRPC and gRPC-Web) and straight at a
  service; while twelve hundred of them hang, other users are served.
- The client's address is the one Envoy accepted the connection from, whatever the client
  says in X-Forwarded-For, and a caller at a service's port cannot claim another either.
- Nobody lists a service's methods by reflection.
- Bad input is a clear 4xx naming the limit: NUL in any field, a body or headers too large, a
  unary gRPC-Web call carrying two messages.
- One CORS policy on every route kind: gRPC-Web, JSON (preflights included), WebSocket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2_grpc

from clients.transports import ALL_TRANSPORTS, JSON_HTTP, NATIVE_GRPC, NativeGrpc, Transport, transport_for
from contracts.expect import expect_error
from fixtures.accounts import new_credentials, sign_up
from fixtures.addresses import SourceRelay, new_client_address
from fixtures.knowledge import create_space
from fixtures.raw_grpc import (
    GRPC_WEB_CONTENT_TYPE,
    NO_MESSAGE,
    OVERLONG_PREFIX,
    TRUNCATED_PREFIX,
    TWO_MESSAGES,
    Outcome,
    RawHttp2,
    message_frames,
    raw_call,
    raw_http1,
)
from services.api.auth.v1 import auth_pb2
from services.api.knowledge.v1 import knowledge_pb2
from simulations.endpoints import StackEndpoints
from simulations.envoy_config import DEFAULT_ALLOWED_ORIGINS, EdgeLimits
from simulations.platform import SERVICES

GET_JWKS = "/auth.v1.AuthService/GetJwks"
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
RECEIVE_TIMEOUT_S = 10.0  # services.kit.server.RECEIVE_TIMEOUT_S

# (body, does the client end its stream?) for each way a unary request fails to arrive.
HANGING = {
    "headers end the stream": (None, True),
    "empty body": (NO_MESSAGE, True),
    "prefix cut short": (TRUNCATED_PREFIX, True),
    "prefix announces more": (OVERLONG_PREFIX, True),
    "prefix cut short, stream left open": (TRUNCATED_PREFIX, False),
    "message never finished": (OVERLONG_PREFIX, False),
    "whole message, stream left open": (message_frames(b""), False),
}


@pytest.fixture(scope="module")
async def setup(stack: StackEndpoints) -> AsyncIterator[Transport]:
    transport = transport_for(NATIVE_GRPC, stack.envoy_http, stack.envoy_grpc)
    yield transport
    await transport.aclose()


def envoy_address(stack: StackEndpoints) -> tuple[str, int]:
    host, port = stack.envoy_grpc.rsplit(":", 1)
    return host, int(port)


def ended_clearly(outcome: Outcome, within_s: float) -> bool:
    return outcome.ended and outcome.grpc_status == INVALID_ARGUMENT and outcome.seconds < within_s


# ------------------------------------------------------------ hanging calls


@pytest.mark.parametrize("case", list(HANGING))
@pytest.mark.parametrize("route", ["envoy", "direct"])
async def test_a_unary_call_whose_request_never_arrives_whole_ends(
    stack: StackEndpoints, route: str, case: str
) -> None:
    body, end_stream = HANGING[case]
    host, port = envoy_address(stack) if route == "envoy" else stack.service_grpc("auth").rsplit(":", 1)
    outcome = await raw_call(host, int(port), GET_JWKS, body, end_stream=end_stream, wait_s=RECEIVE_TIMEOUT_S + 5)
    bound = 1.0 if end_stream else RECEIVE_TIMEOUT_S + 3
    assert ended_clearly(outcome, bound), f"{route}, {case}: {outcome}"
    assert ("did not arrive whole" if not end_stream else "request message") in outcome.grpc_message


@pytest.mark.parametrize(
    ("case", "body", "content_length"),
    [
        ("empty body", b"", None),
        ("two messages", TWO_MESSAGES, None),
        ("body announced, never sent", TRUNCATED_PREFIX, 100),
    ],
)
async def test_a_grpc_web_call_whose_request_is_not_one_message_ends(
    stack: StackEndpoints, case: str, body: bytes, content_length: int | None
) -> None:
    host, port = envoy_address(stack)
    headers = (("content-type", GRPC_WEB_CONTENT_TYPE), ("x-grpc-web", "1"))
    outcome = await raw_http1(
        host, port, GET_JWKS, body, content_length=content_length, headers=headers, wait_s=RECEIVE_TIMEOUT_S + 10
    )
    assert outcome.http_status == 200, f"{case}: {outcome}"
    assert ended_clearly(outcome, RECEIVE_TIMEOUT_S + 3), f"{case}: {outcome}"


async def test_twelve_hundred_hanging_calls_do_not_keep_other_users_out(
    stack: StackEndpoints, setup: Transport
) -> None:
    """Before: ~1,100 such calls filled Envoy's per-service limit and everyone got 503, with
    no login needed. Now each ends (at once, or when its request's time is up), they fit the
    limits while they hang, and a signed-in user is served meanwhile."""
    user = await sign_up(setup, "bystander")
    host, port = envoy_address(stack)
    connections = [await RawHttp2.connect(host, port) for _ in range(12)]
    kinds = list(HANGING.values())
    streams = [
        (connection, connection.start(GET_JWKS, kinds[i % len(kinds)][0], end_stream=kinds[i % len(kinds)][1]))
        for connection in connections
        for i in range(100)
    ]
    try:
        served: list[float] = []
        for _ in range(20):
            began = time.monotonic()
            reply = await setup.unary("auth.v1.AuthService/WhoAmI", auth_pb2.WhoAmIRequest(), token=user.access_token)
            assert reply.ok, f"a bystander was refused while the calls hung: {reply.code.name} {reply.details}"
            served.append(time.monotonic() - began)
        assert max(served) < 2.0, f"bystander latencies {served}"
        outcomes = await asyncio.gather(*(c.outcome(s, RECEIVE_TIMEOUT_S + 10) for c, s in streams))
    finally:
        await asyncio.gather(*(connection.close() for connection in connections))
    # Refused, not hung, not turned away for want of capacity (UNAVAILABLE). grpc itself may
    # cancel a call whose stream ends inside a message before the kit has read it.
    ended = {INVALID_ARGUMENT, grpc.StatusCode.CANCELLED.value[0]}
    unfinished = [o for o in outcomes if not (o.ended and o.grpc_status in ended and o.seconds < RECEIVE_TIMEOUT_S + 8)]
    assert not unfinished, f"{len(unfinished)} of {len(outcomes)} calls did not end clearly, e.g. {unfinished[0]}"


# ------------------------------------------------------------ the client's address


async def test_a_caller_at_the_service_port_cannot_claim_another_address(
    stack: StackEndpoints, setup: Transport
) -> None:
    """X-Forwarded-For is believed only next to the edge's credential: a caller reaching
    auth's port directly, spraying addresses, is throttled as the address it calls from."""
    account = await sign_up(setup)
    host, port = stack.service_grpc("auth").rsplit(":", 1)
    relay = await SourceRelay(host, int(port), new_client_address()).start()
    direct = NativeGrpc(f"127.0.0.1:{relay.port}")
    try:
        for attempt in range(50):
            probe = auth_pb2.LoginRequest(email=new_credentials()[0], password="password123456")
            spoofed = [("x-forwarded-for", f"10.1.{attempt}.1"), ("x-edge-credential", "0" * 64)]
            expect_error(
                await direct.unary("auth.v1.AuthService/Login", probe, metadata=spoofed),
                grpc.StatusCode.UNAUTHENTICATED,
            )
        right = auth_pb2.LoginRequest(email=account.email, password=account.password)
        blocked = await direct.unary("auth.v1.AuthService/Login", right, metadata=[("x-forwarded-for", "10.9.9.9")])
        expect_error(blocked, grpc.StatusCode.RESOURCE_EXHAUSTED, "from this address")
    finally:
        await direct.aclose()
        await relay.close()


# ------------------------------------------------------------ reflection


@pytest.mark.parametrize("service", [service.name for service in SERVICES])
async def test_no_service_lists_its_methods_to_strangers(stack: StackEndpoints, service: str) -> None:
    async with grpc.aio.insecure_channel(stack.service_grpc(service)) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        # Nothing is written: a server without reflection refuses the method from its headers
        # alone, and a write racing that refusal turns the call's status into the client's own
        # INTERNAL. A server with reflection would wait for the question until the deadline.
        call = stub.ServerReflectionInfo(timeout=10)
        assert await call.code() == grpc.StatusCode.UNIMPLEMENTED


# ------------------------------------------------------------ bad input


@pytest.fixture(scope="module", params=ALL_TRANSPORTS)
async def transport(request: pytest.FixtureRequest, stack: StackEndpoints) -> AsyncIterator[Transport]:
    chosen = transport_for(request.param, stack.envoy_http, stack.envoy_grpc)
    yield chosen
    await chosen.aclose()


@pytest.mark.parametrize("field", ["email", "password", "display_name"])
async def test_nul_in_a_sign_up_field_is_a_clear_400(transport: Transport, field: str) -> None:
    email, password, name = new_credentials()
    values = {"email": email, "password": password, "display_name": name}
    values[field] = values[field][:3] + "\x00" + values[field][3:]
    reply = await transport.unary("auth.v1.AuthService/SignUp", auth_pb2.SignUpRequest(**values))
    expect_error(reply, grpc.StatusCode.INVALID_ARGUMENT, f"{field}: must not contain the NUL character")
    if transport.name == JSON_HTTP:
        assert reply.http_status == 400


@pytest.mark.parametrize("field", ["email", "password"])
async def test_nul_in_a_login_field_is_a_clear_400(transport: Transport, field: str) -> None:
    values = {"email": "ada@example.com", "password": "a password"}
    values[field] += "\x00"
    reply = await transport.unary("auth.v1.AuthService/Login", auth_pb2.LoginRequest(**values))
    expect_error(reply, grpc.StatusCode.INVALID_ARGUMENT, f"{field}: must not contain the NUL character")


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (
            "/v1/auth/logout",
            {"refreshToken": "r", "allSessions": "yes"},
            "allSessions: must be a JSON bool, not a string",
        ),
        ("/v1/auth/logout", {"refreshToken": "r", "allSessions": "true"}, "allSessions: must be a JSON bool"),
        (
            "/v1/spaces/{space}/documents",
            {"title": "t", "tags": "notalist"},
            "tags: is a list: it must be a JSON array",
        ),
        ("/v1/spaces/{space}/documents", {"title": "t", "tags": [["a"]]}, "tags[0]: must not be a list"),
        ("/v1/spaces/{space}/documents", {"title": "t", "tagz": ["a"]}, "tagz: is not a field of"),
        ("/v1/spaces", {"name": {"first": "x"}}, "name: must be a JSON string, not a object"),
        ("/v1/spaces", {"name": "a\ud800b"}, "Missing low surrogate"),  # the transcoder's words, the edge's shape
    ],
)
async def test_json_is_read_as_the_proto3_json_mapping_reads_it(
    stack: StackEndpoints, setup: Transport, path: str, body: dict[str, object], message: str
) -> None:
    """Envoy's transcoder took each of these silently (a one-element list, a flattened list,
    true, a dropped field); the edge now refuses them, naming the field, and writes nothing."""
    user = await sign_up(setup)
    space = (await create_space(setup, user, "Strict")).space_id
    headers = {"authorization": f"Bearer {user.access_token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{stack.envoy_http}{path.format(space=space)}", json=body, headers=headers) as response,
    ):
        assert response.status == 400
        answer = await response.json()
    assert answer["code"] == 3
    assert answer["message"].startswith(message), answer
    listed = await setup.unary(
        "knowledge.v1.KnowledgeService/ListDocuments",
        knowledge_pb2.ListDocumentsRequest(space_id=space),
        token=user.access_token,
    )
    page = listed.unwrap()
    assert isinstance(page, knowledge_pb2.ListDocumentsResponse)
    assert not page.documents, "nothing was written"


async def test_an_oversized_json_body_is_413_naming_the_limit(stack: StackEndpoints, setup: Transport) -> None:
    user = await sign_up(setup)
    body = b'{"name": "' + b"a" * (EdgeLimits().json_body_bytes + 1) + b'"}'
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{stack.envoy_http}/v1/spaces",
            data=body,
            headers={"authorization": f"Bearer {user.access_token}", "content-type": "application/json"},
        ) as response,
    ):
        assert response.status == 413
        answer = await response.json()
    assert answer["message"] == "the request body is larger than the JSON API's limit of 1 MiB", answer


async def test_oversized_headers_are_431_naming_the_limit(stack: StackEndpoints) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{stack.envoy_http}/v1/auth/jwks", headers={"x-padding": "a" * 20_000}) as response,
    ):
        assert response.status == 431
        answer = await response.json()
    assert answer["message"] == "the request headers are larger than the limit of 16 KiB", answer


async def test_an_oversized_grpc_message_is_refused_with_the_limit(setup: Transport) -> None:
    user = await sign_up(setup)
    request = knowledge_pb2.CreateSpaceRequest(name="a" * (5 * 1024 * 1024))
    reply = await setup.unary("knowledge.v1.KnowledgeService/CreateSpace", request, token=user.access_token)
    expect_error(reply, grpc.StatusCode.RESOURCE_EXHAUSTED, "4194304")


# ------------------------------------------------------------ CORS


ALLOWED, REFUSED = DEFAULT_ALLOWED_ORIGINS[0], "https://evil.example"


@pytest.mark.parametrize(
    ("kind", "path"),
    [("gRPC-Web", "/auth.v1.AuthService/WhoAmI"), ("JSON", "/v1/spaces"), ("JSON with a variable", "/v1/spaces/x")],
)
@pytest.mark.parametrize("origin", [ALLOWED, REFUSED])
async def test_preflights_are_answered_for_allowed_origins_only(
    stack: StackEndpoints, kind: str, path: str, origin: str
) -> None:
    headers = {
        "origin": origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.options(f"{stack.envoy_http}{path}", headers=headers) as response,
    ):
        allowed = response.headers.get("access-control-allow-origin")
    assert response.status == 200, f"{kind}: {response.status}"
    assert allowed == (origin if origin == ALLOWED else None), f"{kind} from {origin}: allow-origin {allowed!r}"


@pytest.mark.parametrize("origin", [ALLOWED, REFUSED])
async def test_json_answers_carry_cors_headers_for_allowed_origins_only(
    stack: StackEndpoints, setup: Transport, origin: str
) -> None:
    user = await sign_up(setup)
    headers = {"origin": origin, "authorization": f"Bearer {user.access_token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{stack.envoy_http}/v1/spaces", headers=headers) as response,
    ):
        assert response.status == 200
        allowed = response.headers.get("access-control-allow-origin")
    assert allowed == (origin if origin == ALLOWED else None)


@pytest.mark.parametrize(("origin", "status"), [(ALLOWED, 101), (None, 101), (REFUSED, 403)])
async def test_a_websocket_opens_only_from_allowed_origins(
    stack: StackEndpoints, setup: Transport, origin: str | None, status: int
) -> None:
    """Browsers apply no CORS to WebSockets: the edge itself refuses other origins' upgrades
    (a client without an Origin is not a browser, and is let through)."""
    user = await sign_up(setup)
    headers = {"authorization": f"Bearer {user.access_token}", **({"origin": origin} if origin else {})}
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(f"{stack.envoy_http}/v1/chat/ws", headers=headers) as socket:
                opened = 101
                await socket.close()
        except aiohttp.WSServerHandshakeError as error:
            opened = error.status
    assert opened == status
