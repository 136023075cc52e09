"""What contract tests assert about a reply, the same way on every transport."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2

from clients.http_rules import http_status_for_grpc_code
from clients.transports import JSON_HTTP, MethodRef, Reply, Transport
from contracts.values import BAD_TOKENS, forged_token, new_id
from fixtures.accounts import Account

M = TypeVar("M", bound=Message)


def expect_ok(reply: Reply, message_type: type[M]) -> M:
    message = reply.unwrap()
    assert isinstance(message, message_type), f"{reply.transport}: got {type(message).__name__}"
    return message


def expect_error(reply: Reply, code: grpc.StatusCode, *fragments: str) -> None:
    """The call failed with `code` (and, over JSON, its HTTP status), and its message says
    each of `fragments` (case-insensitive), so a user can tell what to do."""
    assert reply.code == code, (
        f"{reply.transport} {reply.method}: expected {code.name}, got {reply.code.name}: {reply.details}"
    )
    if reply.transport == JSON_HTTP:
        assert reply.http_status == http_status_for_grpc_code(code), (
            f"JSON: expected HTTP {http_status_for_grpc_code(code)} for {code.name}, got {reply.http_status}"
        )
    for fragment in fragments:
        assert fragment.lower() in reply.details.lower(), f"{reply.transport}: {fragment!r} not in {reply.details!r}"


def bad_request_fields(reply: Reply) -> list[str]:
    """The fields named by a google.rpc.BadRequest detail of the reply."""
    fields: list[str] = []
    for detail in reply.status.details if reply.status else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields += [violation.field for violation in bad_request.field_violations]
    return fields


def expect_invalid_field(reply: Reply, field: str) -> None:
    """INVALID_ARGUMENT naming the field, in the message and in a BadRequest detail."""
    expect_error(reply, grpc.StatusCode.INVALID_ARGUMENT, field)
    assert field in bad_request_fields(reply), f"{reply.transport}: no BadRequest violation for {field!r}"


async def expect_needs_a_valid_token(transport: Transport, method: MethodRef, request: Message) -> None:
    """Envoy refuses the call at the edge without a token, with a malformed one and with a forged one."""
    for token in (*BAD_TOKENS, forged_token()):
        expect_error(await transport.unary(method, request, token=token), grpc.StatusCode.UNAUTHENTICATED)


async def expect_outsiders_and_missing_spaces_denied(
    transport: Transport, method: MethodRef, request_for: Callable[[str], Message], outsider: Account, space_id: str
) -> None:
    """PERMISSION_DENIED, naming the space, for a space the caller is not a member of and for a
    space that does not exist."""
    missing = new_id()
    there = await transport.unary(method, request_for(space_id), token=outsider.access_token)
    nowhere = await transport.unary(method, request_for(missing), token=outsider.access_token)
    expect_error(there, grpc.StatusCode.PERMISSION_DENIED, f"space {space_id}")
    expect_error(nowhere, grpc.StatusCode.PERMISSION_DENIED, f"space {missing}")


def assert_canonical_id(value: str) -> None:
    assert str(uuid.UUID(value)) == value, f"{value!r} is not a lower-case canonical UUID"


def assert_recent(stamp: Timestamp) -> None:
    assert abs(stamp.seconds - time.time()) < 300, f"timestamp {stamp.ToJsonString()} is not set to now"
