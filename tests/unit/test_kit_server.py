"""services.kit.server: a real in-process gRPC server (port 0) called through a real channel.

Token checks, error mapping, deadlines, requests that are not one whole message, strings that
hold NUL, health and reflection, as a client of the platform sees them. Servicers implement a
few methods of the generated auth and chat services.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from fixtures.raw_grpc import NO_MESSAGE, OVERLONG_PREFIX, TRUNCATED_PREFIX, TWO_MESSAGES, message_frames, raw_call
from fixtures.tokens import TestIssuer
from services.api.auth.v1 import auth_pb2, auth_pb2_grpc
from services.api.chat.v1 import chat_pb2, chat_pb2_grpc
from services.kit.auth import current_principal, optional_principal
from services.kit.errors import InvalidArgument, NotFound, RateLimited
from services.kit.identity import SERVICE_TOKEN_HEADER
from services.kit.server import BuiltServer, ServiceSpec, build_server, remaining_time

AUTH_SERVICE = "auth.v1.AuthService"
CHAT_SERVICE = "chat.v1.ChatService"
SECRET = "postgres://admin:hunter2@db.internal"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


class Auth(auth_pb2_grpc.AuthServiceServicer):
    async def WhoAmI(self, request: auth_pb2.WhoAmIRequest, context: Any) -> auth_pb2.WhoAmIResponse:
        principal = current_principal()
        return auth_pb2.WhoAmIResponse(user=auth_pb2.User(user_id=principal.user_id, email=principal.email))

    async def SignUp(self, request: auth_pb2.SignUpRequest, context: Any) -> auth_pb2.SignUpResponse:
        raise InvalidArgument("email", "must be a valid address like name@example.com")

    async def Login(self, request: auth_pb2.LoginRequest, context: Any) -> auth_pb2.LoginResponse:
        raise RateLimited("too many login attempts; try again in 30 s", retry_after_s=30)

    async def Logout(self, request: auth_pb2.LogoutRequest, context: Any) -> auth_pb2.LogoutResponse:
        raise RuntimeError(SECRET)

    async def GetJwks(self, request: auth_pb2.GetJwksRequest, context: Any) -> auth_pb2.GetJwksResponse:
        # Reports what the handler saw: the remaining deadline and whether a caller was known.
        principal = optional_principal()
        return auth_pb2.GetJwksResponse(
            keys=[auth_pb2.JsonWebKey(kid=repr(remaining_time(10)), use=principal.user_id if principal else "")]
        )


class Chat(chat_pb2_grpc.ChatServiceServicer):
    async def Ask(self, request: chat_pb2.AskRequest, context: Any) -> AsyncIterator[chat_pb2.AskResponse]:
        for word in ("hello", "world"):
            yield chat_pb2.AskResponse(delta=chat_pb2.AnswerDelta(text=word))
        if request.question == "missing":
            raise NotFound(f"conversation {request.conversation_id} does not exist")
        if request.question == "crash":
            raise RuntimeError(SECRET)
        yield chat_pb2.AskResponse(complete=chat_pb2.AnswerComplete(text="hello world"))


async def echo_raw(request: bytes, context: Any) -> bytes:
    """A method that parses its own request (as the OTLP receiver's do): it gets the bytes."""
    return request[::-1]


def register(server: grpc.aio.Server) -> None:
    # The methods not implemented here answer UNIMPLEMENTED, as generated.
    auth_pb2_grpc.add_AuthServiceServicer_to_server(Auth(), server)  # type: ignore[abstract]
    chat_pb2_grpc.add_ChatServiceServicer_to_server(Chat(), server)  # type: ignore[abstract]
    raw: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(echo_raw)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("raw.v1.Raw", {"Echo": raw})])


SPEC = ServiceSpec(
    name="unit",
    version="0",
    grpc_services=[AUTH_SERVICE, CHAT_SERVICE],
    register=register,
    public_methods=frozenset({f"/{AUTH_SERVICE}/GetJwks", "/raw.v1.Raw/Echo"}),
    # Only other services may call it (the user's token is optional).
    internal_methods=frozenset({f"/{AUTH_SERVICE}/Refresh"}),
)


@pytest.fixture(scope="module")
def issuer() -> TestIssuer:
    return TestIssuer()


@pytest.fixture(scope="module")
def token(issuer: TestIssuer) -> str:
    return issuer.token("user-7", email="grace@example.com")


@pytest.fixture(scope="module")
async def built(issuer: TestIssuer) -> AsyncIterator[BuiltServer]:
    server = await build_server(
        SPEC,
        issuer.verifier(),
        port=0,
        reflection_enabled=True,
        receive_timeout_s=1.0,
        service_verifier=issuer.service_verifier(),
    )
    yield server
    await server.server.stop(None)


@pytest.fixture(scope="module")
async def channel(built: BuiltServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{built.port}") as channel:
        yield channel


@pytest.fixture
def auth(channel: grpc.aio.Channel) -> auth_pb2_grpc.AuthServiceAsyncStub:
    return auth_pb2_grpc.AuthServiceStub(channel)


@pytest.fixture
def chat(channel: grpc.aio.Channel) -> chat_pb2_grpc.ChatServiceAsyncStub:
    return chat_pb2_grpc.ChatServiceStub(channel)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


# ------------------------------------------------------------ authentication


async def test_missing_token_is_unauthenticated(auth: auth_pb2_grpc.AuthServiceAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.WhoAmI(auth_pb2.WhoAmIRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "bearer token" in (caught.value.details() or "")


@pytest.mark.parametrize("value", ["Bearer not-a-jwt", "Basic dXNlcjpwYXNz"])
async def test_bad_token_is_unauthenticated(auth: auth_pb2_grpc.AuthServiceAsyncStub, value: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=(("authorization", value),), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_expired_token_is_unauthenticated(auth: auth_pb2_grpc.AuthServiceAsyncStub, issuer: TestIssuer) -> None:
    expired = issuer.token(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(expired), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in (caught.value.details() or "")


async def test_valid_token_reaches_handler_with_principal(auth: auth_pb2_grpc.AuthServiceAsyncStub, token: str) -> None:
    reply = await auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(token), timeout=5)
    assert reply.user.user_id == "user-7"
    assert reply.user.email == "grace@example.com"


async def test_principals_do_not_leak_between_calls(
    auth: auth_pb2_grpc.AuthServiceAsyncStub, issuer: TestIssuer
) -> None:
    other = issuer.token("user-8", email="other@example.com")
    assert (await auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(other), timeout=5)).user.user_id == "user-8"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.WhoAmI(auth_pb2.WhoAmIRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_public_method_needs_no_token(auth: auth_pb2_grpc.AuthServiceAsyncStub) -> None:
    reply = await auth.GetJwks(auth_pb2.GetJwksRequest(), timeout=5)
    assert reply.keys[0].use == ""  # anonymous


async def test_public_method_ignores_a_bad_token(auth: auth_pb2_grpc.AuthServiceAsyncStub) -> None:
    reply = await auth.GetJwks(auth_pb2.GetJwksRequest(), metadata=bearer("garbage"), timeout=5)
    assert reply.keys[0].use == ""


async def test_public_method_still_sees_a_valid_caller(auth: auth_pb2_grpc.AuthServiceAsyncStub, token: str) -> None:
    reply = await auth.GetJwks(auth_pb2.GetJwksRequest(), metadata=bearer(token), timeout=5)
    assert reply.keys[0].use == "user-7"


# ------------------------------------------------------------ internal methods


async def test_an_internal_method_answers_a_platform_service(
    auth: auth_pb2_grpc.AuthServiceAsyncStub, issuer: TestIssuer
) -> None:
    """The servicer's Refresh is not implemented: UNIMPLEMENTED means the call got through."""
    metadata = ((SERVICE_TOKEN_HEADER, issuer.service_token("vector")),)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.Refresh(auth_pb2.RefreshRequest(), metadata=metadata, timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("credentials", ["none", "user token", "user token as service token", "expired", "other key"])
async def test_an_internal_method_refuses_everyone_else(
    auth: auth_pb2_grpc.AuthServiceAsyncStub, issuer: TestIssuer, token: str, credentials: str
) -> None:
    stranger = TestIssuer()
    metadata = {
        "none": (),
        "user token": bearer(token),
        "user token as service token": ((SERVICE_TOKEN_HEADER, token),),
        "expired": (
            (SERVICE_TOKEN_HEADER, issuer.service_token(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)),
        ),
        "other key": ((SERVICE_TOKEN_HEADER, stranger.service_token()),),
    }[credentials]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.Refresh(auth_pb2.RefreshRequest(), metadata=metadata, timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_service_token_is_no_user_token(auth: auth_pb2_grpc.AuthServiceAsyncStub, issuer: TestIssuer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(issuer.service_token()), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


# ------------------------------------------------------------ error mapping


async def test_invalid_argument_carries_bad_request(auth: auth_pb2_grpc.AuthServiceAsyncStub, token: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.SignUp(auth_pb2.SignUpRequest(email="nope"), metadata=bearer(token), timeout=5)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("email:")
    status = rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [v.field for v in bad_request.field_violations] == ["email"]


async def test_rate_limited_is_resource_exhausted_with_retry_info(
    auth: auth_pb2_grpc.AuthServiceAsyncStub, token: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.Login(auth_pb2.LoginRequest(), metadata=bearer(token), timeout=5)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(caught.value)
    assert status is not None
    retry = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(retry)
    assert retry.retry_delay.seconds == 30


async def test_unexpected_error_is_internal_without_internals(
    auth: auth_pb2_grpc.AuthServiceAsyncStub, token: str
) -> None:
    traceparent = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.Logout(auth_pb2.LogoutRequest(), metadata=(*bearer(token), ("traceparent", traceparent)), timeout=5)
    details = caught.value.details() or ""
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in details
    assert "RuntimeError" not in details
    assert TRACE_ID in details


# ------------------------------------------------------------ deadlines


async def test_caller_deadline_caps_remaining_time(auth: auth_pb2_grpc.AuthServiceAsyncStub) -> None:
    reply = await auth.GetJwks(auth_pb2.GetJwksRequest(), timeout=2)
    remaining = float(reply.keys[0].kid)
    # gRPC's deadline clock may run a few ms apart from the client's; the cap is what matters.
    assert 1 < remaining < 2.5


async def test_without_deadline_the_default_applies(auth: auth_pb2_grpc.AuthServiceAsyncStub) -> None:
    reply = await auth.GetJwks(auth_pb2.GetJwksRequest())
    assert float(reply.keys[0].kid) == 10


# ------------------------------------------------------------ one whole request message

GET_JWKS = f"/{AUTH_SERVICE}/GetJwks"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        pytest.param(None, "ended without one", id="headers-end-the-stream"),
        pytest.param(NO_MESSAGE, "ended without one", id="empty-body"),
        pytest.param(TRUNCATED_PREFIX, "ended without one", id="truncated-prefix"),
        pytest.param(OVERLONG_PREFIX, "ended without one", id="overlong-prefix"),
        pytest.param(TWO_MESSAGES, "sent more", id="two-messages"),
    ],
)
async def test_a_unary_call_without_exactly_one_message_is_refused_at_once(
    built: BuiltServer, body: bytes | None, problem: str
) -> None:
    outcome = await raw_call("127.0.0.1", built.port, GET_JWKS, body, wait_s=5)
    assert outcome.ended, "grpcio alone leaves such a call open forever"
    assert outcome.grpc_status == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert problem in outcome.grpc_message
    assert outcome.seconds < 0.5


@pytest.mark.parametrize(
    "body", [TRUNCATED_PREFIX, OVERLONG_PREFIX, message_frames(b"")], ids=["3-of-5", "3-of-4096", "no-end"]
)
async def test_a_unary_request_that_stops_arriving_is_refused_when_its_time_is_up(
    built: BuiltServer, body: bytes
) -> None:
    outcome = await raw_call("127.0.0.1", built.port, GET_JWKS, body, end_stream=False, wait_s=5)
    assert outcome.ended
    assert outcome.grpc_status == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "did not arrive whole within 1 s" in outcome.grpc_message
    assert 0.9 < outcome.seconds < 3


async def test_a_method_without_a_deserializer_gets_the_bytes(channel: grpc.aio.Channel) -> None:
    echo: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/raw.v1.Raw/Echo")
    assert await echo(b"\x00abc", timeout=5) == b"cba\x00"


async def test_a_string_holding_nul_is_refused_naming_its_field(
    auth: auth_pb2_grpc.AuthServiceAsyncStub, chat: chat_pb2_grpc.ChatServiceAsyncStub, token: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.SignUp(auth_pb2.SignUpRequest(email="ada\x00@example.com"), metadata=bearer(token), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "email: must not contain the NUL character (U+0000)"
    repeated = chat_pb2.CreateConversationRequest(title="t", space_ids=["a", "b\x00"])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await chat.CreateConversation(repeated, metadata=bearer(token), timeout=5)
    assert caught.value.details() == "space_ids[1]: must not contain the NUL character (U+0000)"
    received, error = await drain(chat.Ask(chat_pb2.AskRequest(question="\x00"), metadata=bearer(token), timeout=5))
    assert received == []
    assert error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


# ------------------------------------------------------------ streaming


async def drain(call: Any) -> tuple[list[str], grpc.aio.AioRpcError | None]:
    """The delta texts a stream delivered, and the error that ended it (None when it ended OK)."""
    received: list[str] = []
    try:
        async for message in call:
            received.append(message.delta.text)
    except grpc.aio.AioRpcError as error:
        return received, error
    return received, None


async def test_stream_succeeds(chat: chat_pb2_grpc.ChatServiceAsyncStub, token: str) -> None:
    call = chat.Ask(chat_pb2.AskRequest(conversation_id="c1", question="hi"), metadata=bearer(token), timeout=5)
    messages = [message async for message in call]
    assert [m.WhichOneof("event") for m in messages] == ["delta", "delta", "complete"]
    assert await call.code() == grpc.StatusCode.OK


async def test_stream_error_after_messages_maps_to_status(chat: chat_pb2_grpc.ChatServiceAsyncStub, token: str) -> None:
    call = chat.Ask(chat_pb2.AskRequest(conversation_id="c1", question="missing"), metadata=bearer(token), timeout=5)
    received, error = await drain(call)
    assert received == ["hello", "world"]
    assert error is not None
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "c1" in (error.details() or "")


async def test_stream_unexpected_error_is_internal(chat: chat_pb2_grpc.ChatServiceAsyncStub, token: str) -> None:
    call = chat.Ask(chat_pb2.AskRequest(question="crash"), metadata=bearer(token), timeout=5)
    received, error = await drain(call)
    assert received == ["hello", "world"]
    assert error is not None
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in (error.details() or "")


async def test_stream_without_token_is_unauthenticated(chat: chat_pb2_grpc.ChatServiceAsyncStub) -> None:
    received, error = await drain(chat.Ask(chat_pb2.AskRequest(question="hi"), timeout=5))
    assert received == []
    assert error is not None
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


# ------------------------------------------------------------ health and reflection


async def test_health_follows_set_serving(channel: grpc.aio.Channel, built: BuiltServer) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", AUTH_SERVICE, CHAT_SERVICE):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == not_serving
    await built.set_serving(True)
    try:
        for name in ("", AUTH_SERVICE, CHAT_SERVICE):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == serving
    finally:
        await built.set_serving(False)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=AUTH_SERVICE), timeout=5)
    assert reply.status == not_serving


async def test_health_is_serving_only_while_accepting_with_every_dependency_up(
    channel: grpc.aio.Channel, built: BuiltServer
) -> None:
    health = health_pb2_grpc.HealthStub(channel)

    async def status() -> int:
        return int((await health.Check(health_pb2.HealthCheckRequest(service=AUTH_SERVICE), timeout=5)).status)

    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    try:
        await built.set_accepting(True)
        assert await status() == serving
        await built.set_dependencies_up(False)
        assert await status() == not_serving, "a hard dependency is down"
        await built.set_dependencies_up(True)
        assert await status() == serving, "it is back"
        await built.set_accepting(False)
        await built.set_dependencies_up(True)
        assert await status() == not_serving, "draining wins over a dependency coming back"
    finally:
        await built.set_accepting(False)
        await built.set_dependencies_up(True)


async def test_health_of_unknown_service_is_not_found(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health.Check(health_pb2.HealthCheckRequest(service="nope.v1.Nope"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_services(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {service.name async for reply in call for service in reply.list_services_response.service}
    assert {AUTH_SERVICE, CHAT_SERVICE, "grpc.health.v1.Health"} <= names


async def test_reflection_is_off_unless_asked_for() -> None:
    quiet = await build_server(SPEC, None, port=0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{quiet.port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                _ = [reply async for reply in stub.ServerReflectionInfo(iter([request]), timeout=5)]
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await quiet.server.stop(None)


async def test_second_server_on_a_taken_port_fails(built: BuiltServer) -> None:
    with pytest.raises(OSError, match="cannot listen"):
        await build_server(SPEC, None, port=built.port)
