"""Contract of auth.v1.AuthService: every RPC through Envoy over gRPC, gRPC-Web and JSON, for
success and for each documented error, and the auth.user.signed_up event. IssueServiceToken,
internal, is called straight at the auth service, as the platform's services call it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import jwt
import pytest

from clients.transports import JSON_HTTP, MethodRef, NativeGrpc, Transport
from contracts.expect import expect_error, expect_invalid_field, expect_ok
from contracts.registry import contract
from fixtures.accounts import Account, new_credentials, sign_up
from fixtures.addresses import new_client_address, transport_from
from fixtures.events import EventLog
from services.api.auth.v1 import auth_pb2
from services.api.events.v1 import events_pb2
from services.kit.identity import SERVICE_AUDIENCE, credential_for
from services.kit.settings import JWT_AUDIENCE, JWT_ISSUER
from simulations.endpoints import StackEndpoints

SIGN_UP = MethodRef.of("auth.v1.AuthService/SignUp")
LOGIN = MethodRef.of("auth.v1.AuthService/Login")
REFRESH = MethodRef.of("auth.v1.AuthService/Refresh")
LOGOUT = MethodRef.of("auth.v1.AuthService/Logout")
GET_JWKS = MethodRef.of("auth.v1.AuthService/GetJwks")
WHO_AM_I = MethodRef.of("auth.v1.AuthService/WhoAmI")


async def who_am_i(transport: Transport, token: str) -> auth_pb2.User:
    return expect_ok(
        await transport.unary(WHO_AM_I, auth_pb2.WhoAmIRequest(), token=token), auth_pb2.WhoAmIResponse
    ).user


async def login(transport: Transport, email: str, password: str) -> auth_pb2.LoginResponse | None:
    reply = await transport.unary(LOGIN, auth_pb2.LoginRequest(email=email, password=password))
    return expect_ok(reply, auth_pb2.LoginResponse) if reply.ok else None


# ------------------------------------------------------------------ SignUp


@contract("auth.v1.AuthService/SignUp")
async def test_sign_up_creates_the_user_signs_them_in_and_emits_the_event(
    transport: Transport, auth_events: EventLog
) -> None:
    email, password, name = new_credentials()
    request = auth_pb2.SignUpRequest(email=f"  {email.upper()} ", password=password, display_name=f" {name} ")
    response = expect_ok(await transport.unary(SIGN_UP, request, timeout=20), auth_pb2.SignUpResponse)

    user = response.user
    assert uuid.UUID(user.user_id).version == 4
    assert (user.email, user.display_name) == (email, name), "email lower-cased and trimmed, name trimmed"
    assert user.created_at.seconds > 0
    tokens = response.tokens
    assert tokens.token_type == "Bearer"
    assert 0 < tokens.expires_in_seconds < tokens.refresh_expires_in_seconds
    claims = jwt.decode(tokens.access_token, options={"verify_signature": False})
    assert claims["sub"] == user.user_id
    assert (claims["email"], claims["name"]) == (email, name)
    assert (claims["iss"], claims["aud"]) == (JWT_ISSUER, JWT_AUDIENCE)
    assert claims["exp"] - claims["iat"] == tokens.expires_in_seconds
    assert (await who_am_i(transport, tokens.access_token)).user_id == user.user_id

    [event] = await auth_events.wait_for(lambda e: e.subject_ids.get("user_id") == user.user_id)
    assert event.event_type == "auth.user.signed_up"
    assert (event.producer, event.actor_user_id, event.partition_key) == ("auth", user.user_id, user.user_id)
    assert event.schema_version == 1
    assert event.occurred_at.seconds > 0
    assert len(event.trace.traceparent) == 55, "the request's trace context travels with the event"
    payload = events_pb2.UserSignedUp.FromString(event.payload)
    assert (payload.user_id, payload.email, payload.display_name) == (user.user_id, email, name)
    assert password.encode() not in event.SerializeToString(), "the password never leaves the service"


@contract("auth.v1.AuthService/SignUp", "INVALID_ARGUMENT")
@pytest.mark.parametrize(
    ("field", "email", "password", "display_name"),
    [
        ("email", "not-an-address", "long enough password", "Ada"),
        ("email", "a@b.c" + "x" * 260, "long enough password", "Ada"),
        ("password", None, "too short", "Ada"),
        ("password", None, "x" * 129, "Ada"),
        ("display_name", None, "long enough password", "   "),
        ("display_name", None, "long enough password", "n" * 101),
    ],
)
async def test_sign_up_rejects_input_beyond_its_limits_naming_the_field(
    transport: Transport, field: str, email: str | None, password: str, display_name: str
) -> None:
    address = email if email is not None else new_credentials()[0]
    request = auth_pb2.SignUpRequest(email=address, password=password, display_name=display_name)
    expect_invalid_field(await transport.unary(SIGN_UP, request), field)


@contract("auth.v1.AuthService/SignUp", "ALREADY_EXISTS")
async def test_an_email_signs_up_once_whatever_its_case(transport: Transport, setup_transport: Transport) -> None:
    existing = await sign_up(setup_transport)
    request = auth_pb2.SignUpRequest(email=existing.email.upper(), password="another good password", display_name="X")
    expect_error(await transport.unary(SIGN_UP, request), grpc.StatusCode.ALREADY_EXISTS, "already exists")


# ------------------------------------------------------------------- Login


@contract("auth.v1.AuthService/Login")
async def test_login_opens_a_new_session(transport: Transport, setup_transport: Transport) -> None:
    account = await sign_up(setup_transport)
    response = await login(transport, account.email.upper(), account.password)
    assert response is not None
    assert response.user.user_id == account.user_id
    assert response.tokens.refresh_token != account.refresh_token, "a new session, with its own refresh token"
    assert (await who_am_i(transport, response.tokens.access_token)).email == account.email


@contract("auth.v1.AuthService/Login", "INVALID_ARGUMENT")
@pytest.mark.parametrize(("field", "email", "password"), [("email", "", "pw"), ("password", "a@example.test", "")])
async def test_login_needs_both_fields(transport: Transport, field: str, email: str, password: str) -> None:
    expect_invalid_field(await transport.unary(LOGIN, auth_pb2.LoginRequest(email=email, password=password)), field)


@contract("auth.v1.AuthService/Login", "UNAUTHENTICATED")
async def test_wrong_password_and_unknown_email_look_the_same(
    transport: Transport, setup_transport: Transport, stack: StackEndpoints
) -> None:
    account = await sign_up(setup_transport)
    async with transport_from(transport.name, stack, new_client_address()) as client:
        wrong = await client.unary(LOGIN, auth_pb2.LoginRequest(email=account.email, password="not the password!"))
        unknown = await client.unary(
            LOGIN, auth_pb2.LoginRequest(email=new_credentials()[0], password="whatever it is")
        )
    expect_error(wrong, grpc.StatusCode.UNAUTHENTICATED, "email or password is wrong")
    expect_error(unknown, grpc.StatusCode.UNAUTHENTICATED)
    assert wrong.details == unknown.details, "accounts cannot be probed"


@contract("auth.v1.AuthService/Login", "RESOURCE_EXHAUSTED")
async def test_repeated_failures_lock_the_account_for_a_while(
    transport: Transport, setup_transport: Transport, stack: StackEndpoints
) -> None:
    account = await sign_up(setup_transport)
    async with transport_from(transport.name, stack, new_client_address()) as client:
        for _ in range(5):
            guess = auth_pb2.LoginRequest(email=account.email, password="guessing wrongly")
            expect_error(await client.unary(LOGIN, guess), grpc.StatusCode.UNAUTHENTICATED)
    right = auth_pb2.LoginRequest(email=account.email, password=account.password)
    async with transport_from(transport.name, stack, new_client_address()) as elsewhere:
        locked = await elsewhere.unary(LOGIN, right)  # from anywhere
    expect_error(locked, grpc.StatusCode.RESOURCE_EXHAUSTED, "too many failed logins for this account", "retry in")


@contract("auth.v1.AuthService/Login", "RESOURCE_EXHAUSTED")
async def test_an_address_trying_many_accounts_is_stopped(
    transport: Transport, setup_transport: Transport, stack: StackEndpoints
) -> None:
    """The address is the one Envoy accepted the connection from: a client that names
    another address in X-Forwarded-For on every attempt is still counted as itself."""
    account = await sign_up(setup_transport)
    right = auth_pb2.LoginRequest(email=account.email, password=account.password)
    async with transport_from(transport.name, stack, new_client_address()) as client:
        for attempt in range(50):  # one failure for each of 50 different accounts
            probe = auth_pb2.LoginRequest(email=new_credentials()[0], password="password123456")
            spoofed = [("x-forwarded-for", f"10.0.{attempt}.1")]
            expect_error(await client.unary(LOGIN, probe, metadata=spoofed), grpc.StatusCode.UNAUTHENTICATED)
        blocked = await client.unary(LOGIN, right, metadata=[("x-forwarded-for", "10.9.9.9")])
    expect_error(blocked, grpc.StatusCode.RESOURCE_EXHAUSTED, "from this address")
    async with transport_from(transport.name, stack, new_client_address()) as elsewhere:
        assert (await elsewhere.unary(LOGIN, right)).ok, "other addresses are not affected"


# ----------------------------------------------------------------- Refresh


@contract("auth.v1.AuthService/Refresh")
async def test_refresh_rotates_the_refresh_token(transport: Transport, setup_transport: Transport) -> None:
    account = await sign_up(setup_transport)
    reply = await transport.unary(REFRESH, auth_pb2.RefreshRequest(refresh_token=account.refresh_token))
    tokens = expect_ok(reply, auth_pb2.RefreshResponse).tokens
    assert tokens.refresh_token != account.refresh_token
    assert (await who_am_i(transport, tokens.access_token)).user_id == account.user_id
    again = await transport.unary(REFRESH, auth_pb2.RefreshRequest(refresh_token=tokens.refresh_token))
    assert again.ok, "the new refresh token works once"


@contract("auth.v1.AuthService/Refresh", "INVALID_ARGUMENT")
@pytest.mark.parametrize("token", ["", "x" * 513])
async def test_refresh_token_must_be_present_and_bounded(transport: Transport, token: str) -> None:
    expect_invalid_field(await transport.unary(REFRESH, auth_pb2.RefreshRequest(refresh_token=token)), "refresh_token")


@contract("auth.v1.AuthService/Refresh", "UNAUTHENTICATED")
async def test_a_reused_refresh_token_revokes_its_session(transport: Transport, setup_transport: Transport) -> None:
    account = await sign_up(setup_transport)
    first = await setup_transport.unary(REFRESH, auth_pb2.RefreshRequest(refresh_token=account.refresh_token))
    rotated = expect_ok(first, auth_pb2.RefreshResponse).tokens.refresh_token
    replayed = await transport.unary(REFRESH, auth_pb2.RefreshRequest(refresh_token=account.refresh_token))
    expect_error(replayed, grpc.StatusCode.UNAUTHENTICATED, "already used", "session has been revoked")
    after_theft = await transport.unary(REFRESH, auth_pb2.RefreshRequest(refresh_token=rotated))
    expect_error(after_theft, grpc.StatusCode.UNAUTHENTICATED)
    unknown = await transport.unary(REFRESH, auth_pb2.RefreshRequest(refresh_token="never-issued-token"))
    expect_error(unknown, grpc.StatusCode.UNAUTHENTICATED, "log in again")


# ------------------------------------------------------------------ Logout


@contract("auth.v1.AuthService/Logout")
async def test_logout_revokes_one_session_or_all(transport: Transport, setup_transport: Transport) -> None:
    account = await sign_up(setup_transport)
    second = await login(setup_transport, account.email, account.password)
    third = await login(setup_transport, account.email, account.password)
    assert second is not None
    assert third is not None

    one = await transport.unary(LOGOUT, auth_pb2.LogoutRequest(refresh_token=account.refresh_token))
    assert expect_ok(one, auth_pb2.LogoutResponse).sessions_revoked == 1
    expect_error(
        await transport.unary(REFRESH, auth_pb2.RefreshRequest(refresh_token=account.refresh_token)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    everything = auth_pb2.LogoutRequest(refresh_token=second.tokens.refresh_token, all_sessions=True)
    assert expect_ok(await transport.unary(LOGOUT, everything), auth_pb2.LogoutResponse).sessions_revoked == 2
    expect_error(
        await transport.unary(REFRESH, auth_pb2.RefreshRequest(refresh_token=third.tokens.refresh_token)),
        grpc.StatusCode.UNAUTHENTICATED,
    )


@contract("auth.v1.AuthService/Logout", "INVALID_ARGUMENT")
async def test_logout_needs_a_refresh_token(transport: Transport) -> None:
    expect_invalid_field(await transport.unary(LOGOUT, auth_pb2.LogoutRequest()), "refresh_token")


@contract("auth.v1.AuthService/Logout", "UNAUTHENTICATED")
async def test_logout_with_a_revoked_token_is_refused(transport: Transport, setup_transport: Transport) -> None:
    account = await sign_up(setup_transport)
    request = auth_pb2.LogoutRequest(refresh_token=account.refresh_token)
    assert (await setup_transport.unary(LOGOUT, request)).ok
    expect_error(await transport.unary(LOGOUT, request), grpc.StatusCode.UNAUTHENTICATED)


# ----------------------------------------------------------------- GetJwks


@contract("auth.v1.AuthService/GetJwks")
async def test_jwks_publishes_the_keys_that_verify_access_tokens(
    transport: Transport, setup_transport: Transport, stack: StackEndpoints
) -> None:
    keys = expect_ok(await transport.unary(GET_JWKS, auth_pb2.GetJwksRequest()), auth_pb2.GetJwksResponse).keys
    assert keys, "at least the signing key"
    assert {(k.kty, k.use, k.alg) for k in keys} == {("RSA", "sig", "RS256")}
    account = await sign_up(setup_transport)
    kid = jwt.get_unverified_header(account.access_token)["kid"]
    [key] = [k for k in keys if k.kid == kid]
    public = jwt.PyJWK({"kty": key.kty, "kid": key.kid, "use": key.use, "alg": key.alg, "n": key.n, "e": key.e})
    claims = jwt.decode(account.access_token, public.key, algorithms=["RS256"], audience=JWT_AUDIENCE)
    assert claims["sub"] == account.user_id
    if transport.name == JSON_HTTP:
        import aiohttp

        async with aiohttp.ClientSession() as session, session.get(f"{stack.envoy_http}/v1/auth/jwks") as response:
            document = await response.json()
        assert set(document) == {"keys"}
        assert set(document["keys"][0]) == {"kty", "kid", "use", "alg", "n", "e"}, "a standard JWKS document"


# ------------------------------------------------------------------ WhoAmI


@contract("auth.v1.AuthService/WhoAmI")
async def test_who_am_i_names_the_token_s_user(transport: Transport, setup_transport: Transport) -> None:
    account = await sign_up(setup_transport)
    user = await who_am_i(transport, account.access_token)
    assert (user.user_id, user.email, user.display_name) == (account.user_id, account.email, account.display_name)


@contract("auth.v1.AuthService/WhoAmI", "UNAUTHENTICATED")
@pytest.mark.parametrize("token", [None, "not-a-jwt", "eyJhbGciOiJub25lIn0.e30."])
async def test_who_am_i_needs_a_valid_token(transport: Transport, token: str | None) -> None:
    expect_error(
        await transport.unary(WHO_AM_I, auth_pb2.WhoAmIRequest(), token=token), grpc.StatusCode.UNAUTHENTICATED
    )


@contract("auth.v1.AuthService/WhoAmI", "NOT_FOUND")
async def test_who_am_i_for_a_deleted_user_is_not_found(
    transport: Transport, setup_transport: Transport, stack: StackEndpoints
) -> None:
    account: Account = await sign_up(setup_transport)
    connection = await asyncpg.connect(stack.postgres_dsn("auth"))
    try:
        await connection.execute("DELETE FROM users WHERE user_id = $1", uuid.UUID(account.user_id))
    finally:
        await connection.close()
    reply = await transport.unary(WHO_AM_I, auth_pb2.WhoAmIRequest(), token=account.access_token)
    expect_error(reply, grpc.StatusCode.NOT_FOUND, "no longer exists")


# ------------------------------------------------------- IssueServiceToken

ISSUE_SERVICE_TOKEN = MethodRef.of("auth.v1.AuthService/IssueServiceToken")


@pytest.fixture(scope="session")
async def auth_direct(stack: StackEndpoints) -> AsyncIterator[Transport]:
    """Straight to the auth service, as the platform's services call it (Envoy refuses the method)."""
    chosen = NativeGrpc(stack.service_grpc("auth"))
    yield chosen
    await chosen.aclose()


@contract("auth.v1.AuthService/IssueServiceToken")
async def test_a_service_proving_its_name_gets_a_short_lived_internal_token(
    auth_direct: Transport, transport: Transport, stack: StackEndpoints
) -> None:
    request = auth_pb2.IssueServiceTokenRequest(service="vector", credential=stack.service_credential("vector"))
    issued = expect_ok(await auth_direct.unary(ISSUE_SERVICE_TOKEN, request), auth_pb2.IssueServiceTokenResponse)
    assert 0 < issued.expires_in_seconds <= 3600
    claims = jwt.decode(issued.service_token, options={"verify_signature": False})
    assert (claims["sub"], claims["token_use"], claims["iss"]) == ("vector", "service", JWT_ISSUER)
    assert claims["aud"] == SERVICE_AUDIENCE != JWT_AUDIENCE
    assert claims["exp"] - claims["iat"] == issued.expires_in_seconds
    # A service token is no user's token: the edge refuses it like any token of another audience.
    refused = await transport.unary(WHO_AM_I, auth_pb2.WhoAmIRequest(), token=issued.service_token)
    expect_error(refused, grpc.StatusCode.PERMISSION_DENIED, "Audiences in Jwt are not allowed")
    # And the edge does not route the method at all, whoever asks.
    user = await sign_up(transport)
    edge = await transport.unary(ISSUE_SERVICE_TOKEN, request, token=user.access_token)
    assert edge.code == grpc.StatusCode.UNIMPLEMENTED, (edge.code, edge.details)
    assert "internal to the platform" in edge.details


@contract("auth.v1.AuthService/IssueServiceToken", "INVALID_ARGUMENT")
@pytest.mark.parametrize(
    ("field", "service", "credential"),
    [
        ("service", "", "0" * 64),
        ("service", "Vector", "0" * 64),
        ("service", "v" * 41, "0" * 64),
        ("credential", "vector", ""),
        ("credential", "vector", "0" * 63),
        ("credential", "vector", "G" * 64),
    ],
)
async def test_service_and_credential_must_be_well_formed(
    auth_direct: Transport, field: str, service: str, credential: str
) -> None:
    request = auth_pb2.IssueServiceTokenRequest(service=service, credential=credential)
    expect_invalid_field(await auth_direct.unary(ISSUE_SERVICE_TOKEN, request), field)


@contract("auth.v1.AuthService/IssueServiceToken", "UNAUTHENTICATED")
async def test_a_credential_proves_one_service_only(auth_direct: Transport, stack: StackEndpoints) -> None:
    """The chat service's credential does not make its holder the vector service, and a
    credential derived from another secret proves nothing."""
    borrowed = auth_pb2.IssueServiceTokenRequest(service="vector", credential=stack.service_credential("chat"))
    expect_error(await auth_direct.unary(ISSUE_SERVICE_TOKEN, borrowed), grpc.StatusCode.UNAUTHENTICATED, "'vector'")
    guessed = auth_pb2.IssueServiceTokenRequest(service="vector", credential=credential_for("not the secret", "vector"))
    expect_error(await auth_direct.unary(ISSUE_SERVICE_TOKEN, guessed), grpc.StatusCode.UNAUTHENTICATED)
