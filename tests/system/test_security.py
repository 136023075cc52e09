"""Security of the identity and permission backbone, by every route a client has.

- Bad tokens (expired, forged, wrong issuer, wrong audience) are refused at Envoy, and also by
  the services themselves when called directly, bypassing Envoy.
- A non-member reaches nothing of a space; a viewer cannot write; a removed member loses access
  at once — over native gRPC, gRPC-Web and JSON through Envoy, and directly.
(That no password or token reaches a log, span or event is test_secrets.py's.)
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.protobuf.message import Message

from clients.transports import ALL_TRANSPORTS, NativeGrpc, Transport, transport_for
from contracts.expect import expect_error
from fixtures.accounts import Account, sign_up
from fixtures.tokens import TestIssuer
from services.api.auth.v1 import auth_pb2
from services.api.knowledge.v1 import knowledge_pb2
from simulations.endpoints import StackEndpoints

ROUTES = (*ALL_TRANSPORTS, "direct")
WHO_AM_I = "auth.v1.AuthService/WhoAmI"
LIST_SPACES = "knowledge.v1.KnowledgeService/ListSpaces"
K = "knowledge.v1.KnowledgeService"


@pytest.fixture(scope="module", params=ROUTES)
async def route(request: pytest.FixtureRequest, stack: StackEndpoints) -> AsyncIterator[tuple[str, Transport]]:
    """Envoy's three transports, and "direct": native gRPC straight to each service."""
    if request.param == "direct":
        transport: Transport = NativeGrpc(stack.service_grpc("knowledge"))
    else:
        transport = transport_for(request.param, stack.envoy_http, stack.envoy_grpc)
    yield request.param, transport
    await transport.aclose()


@pytest.fixture(scope="module")
async def setup(stack: StackEndpoints) -> AsyncIterator[Transport]:
    transport = transport_for("grpc", stack.envoy_http, stack.envoy_grpc)
    yield transport
    await transport.aclose()


async def current_signing_key(stack: StackEndpoints) -> tuple[str, rsa.RSAPrivateKey]:
    """The auth service's own signing key, read from its database: only with it can a test make
    tokens that are validly signed yet wrong in another way (expired, other issuer, ...)."""
    connection = await asyncpg.connect(stack.postgres_dsn("auth"))
    try:
        row = await connection.fetchrow(
            "SELECT kid, private_pem FROM signing_keys WHERE active_from <= now() "
            "AND (retired_at IS NULL OR retired_at > now()) ORDER BY active_from DESC LIMIT 1"
        )
    finally:
        await connection.close()
    assert row is not None, "auth has no signing key"
    key = serialization.load_pem_private_key(row["private_pem"].encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return row["kid"], key


# ------------------------------------------------------------------ tokens


@pytest.mark.parametrize("flaw", ["expired", "forged", "wrong issuer", "wrong audience", "refresh-typed"])
async def test_bad_tokens_are_refused_at_the_edge_and_by_each_service(
    stack: StackEndpoints, setup: Transport, flaw: str
) -> None:
    account = await sign_up(setup)
    kid, key = await current_signing_key(stack)
    real = TestIssuer(kid=kid, key=key)
    now = int(time.time())
    claims = {"sub": account.user_id, "email": account.email}
    tokens = {
        "expired": real.token(**claims, iat=now - 7200, exp=now - 3600),
        "forged": TestIssuer(kid=kid).token(**claims),  # the real kid, another key
        "wrong issuer": real.token(**claims, iss="https://evil.example"),
        "wrong audience": real.token(**claims, aud="someone-else"),
        "refresh-typed": real.token(**claims, token_use="refresh"),
    }
    sound = real.token(**claims)
    routes = {
        "envoy": transport_for("grpc", stack.envoy_http, stack.envoy_grpc),
        "auth directly": NativeGrpc(stack.service_grpc("auth")),
        "knowledge directly": NativeGrpc(stack.service_grpc("knowledge")),
    }
    try:
        for name, transport in routes.items():
            method = WHO_AM_I if name != "knowledge directly" else LIST_SPACES
            request: Message = auth_pb2.WhoAmIRequest() if method == WHO_AM_I else knowledge_pb2.ListSpacesRequest()
            control = await transport.unary(method, request, token=sound)
            assert control.ok, f"{name}: a sound token signed the same way must pass ({control.details})"
            if flaw == "refresh-typed" and name == "envoy":
                continue  # Envoy checks signature, issuer, audience and expiry; token_use is the services' rule
            reply = await transport.unary(method, request, token=tokens[flaw])
            # Envoy's jwt_authn answers an audience it does not accept with 403, the rest with 401.
            edge_audience = name == "envoy" and flaw == "wrong audience"
            expect_error(reply, grpc.StatusCode.PERMISSION_DENIED if edge_audience else grpc.StatusCode.UNAUTHENTICATED)
    finally:
        for transport in routes.values():
            await transport.aclose()


# ------------------------------------------------------------- membership


async def space_with(setup: Transport) -> tuple[Account, Account, knowledge_pb2.Space, knowledge_pb2.Document]:
    """An owner with a space holding one document, and a viewer member."""
    owner, viewer = await sign_up(setup, "owner"), await sign_up(setup, "viewer")
    space = (
        await setup.unary(
            f"{K}/CreateSpace", knowledge_pb2.CreateSpaceRequest(name="Private"), token=owner.access_token
        )
    ).unwrap()
    assert isinstance(space, knowledge_pb2.CreateSpaceResponse)
    add = knowledge_pb2.AddMemberRequest(
        space_id=space.space.space_id, user_id=viewer.user_id, role=knowledge_pb2.ROLE_VIEWER
    )
    assert (await setup.unary(f"{K}/AddMember", add, token=owner.access_token)).ok
    created = (
        await setup.unary(
            f"{K}/CreateDocument",
            knowledge_pb2.CreateDocumentRequest(space_id=space.space.space_id, title="Plans", content="secret plans"),
            token=owner.access_token,
        )
    ).unwrap()
    assert isinstance(created, knowledge_pb2.CreateDocumentResponse)
    return owner, viewer, space.space, created.document


def reads(space_id: str, document_id: str) -> dict[str, Message]:
    return {
        "GetSpace": knowledge_pb2.GetSpaceRequest(space_id=space_id),
        "ListMembers": knowledge_pb2.ListMembersRequest(space_id=space_id),
        "ListDocuments": knowledge_pb2.ListDocumentsRequest(space_id=space_id),
        "GetDocument": knowledge_pb2.GetDocumentRequest(space_id=space_id, document_id=document_id),
        "ListDocumentVersions": knowledge_pb2.ListDocumentVersionsRequest(space_id=space_id, document_id=document_id),
        "GetDocumentVersion": knowledge_pb2.GetDocumentVersionRequest(
            space_id=space_id, document_id=document_id, version=1
        ),
    }


def writes(space_id: str, document_id: str, someone: str) -> dict[str, Message]:
    return {
        "CreateDocument": knowledge_pb2.CreateDocumentRequest(space_id=space_id, title="Mine", content="x"),
        "UpdateDocument": knowledge_pb2.UpdateDocumentRequest(
            space_id=space_id, document_id=document_id, expected_version=1, title="Changed"
        ),
        "DeleteDocument": knowledge_pb2.DeleteDocumentRequest(
            space_id=space_id, document_id=document_id, expected_version=1
        ),
        "AddMember": knowledge_pb2.AddMemberRequest(space_id=space_id, user_id=someone, role=knowledge_pb2.ROLE_OWNER),
        "RemoveMember": knowledge_pb2.RemoveMemberRequest(space_id=space_id, user_id=someone),
    }


async def test_a_non_member_reaches_nothing_of_a_space(route: tuple[str, Transport], setup: Transport) -> None:
    name, transport = route
    owner, _, space, document = await space_with(setup)
    outsider = await sign_up(setup, "outsider")
    requests = {
        **reads(space.space_id, document.document_id),
        **writes(space.space_id, document.document_id, owner.user_id),
    }
    for method, request in requests.items():
        reply = await transport.unary(f"{K}/{method}", request, token=outsider.access_token)
        assert reply.code == grpc.StatusCode.PERMISSION_DENIED, f"{name} {method}: {reply.code.name} {reply.details}"
        assert "secret plans" not in repr(reply.message), f"{name} {method} leaked content"
    listed = await transport.unary(f"{K}/ListSpaces", knowledge_pb2.ListSpacesRequest(), token=outsider.access_token)
    assert space.space_id not in {s.space_id for s in listed.unwrap().spaces}  # type: ignore[attr-defined]


async def test_a_viewer_reads_but_cannot_write(route: tuple[str, Transport], setup: Transport) -> None:
    name, transport = route
    owner, viewer, space, document = await space_with(setup)
    for method, request in reads(space.space_id, document.document_id).items():
        reply = await transport.unary(f"{K}/{method}", request, token=viewer.access_token)
        assert reply.ok, f"{name} {method}: a viewer reads ({reply.code.name} {reply.details})"
    for method, request in writes(space.space_id, document.document_id, owner.user_id).items():
        if method == "RemoveMember":
            continue  # removing someone else needs owner; removing oneself is allowed (tested below)
        reply = await transport.unary(f"{K}/{method}", request, token=viewer.access_token)
        expect_error(reply, grpc.StatusCode.PERMISSION_DENIED)


async def test_a_removed_member_loses_access_at_once(route: tuple[str, Transport], setup: Transport) -> None:
    _, transport = route
    owner, viewer, space, document = await space_with(setup)
    get = knowledge_pb2.GetDocumentRequest(space_id=space.space_id, document_id=document.document_id)
    assert (await transport.unary(f"{K}/GetDocument", get, token=viewer.access_token)).ok
    remove = knowledge_pb2.RemoveMemberRequest(space_id=space.space_id, user_id=viewer.user_id)
    assert (await setup.unary(f"{K}/RemoveMember", remove, token=owner.access_token)).ok
    after = await transport.unary(f"{K}/GetDocument", get, token=viewer.access_token)
    expect_error(after, grpc.StatusCode.PERMISSION_DENIED)
