"""services.kit.errors.status_for: one status code per domain error, rich details where promised."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2

from services.kit import errors
from services.kit.errors import (
    AlreadyExists,
    Conflict,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
    status_for,
)

EXPECTED_CODES: dict[type[DomainError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    Conflict: grpc.StatusCode.ABORTED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def make(cls: type[DomainError]) -> DomainError:
    if cls is InvalidArgument:
        return InvalidArgument("title", "must be 1-200 characters")
    if cls is RateLimited:
        return RateLimited("too many attempts; wait a minute", retry_after_s=60)
    return cls("something the user can act on")


def test_every_domain_error_subclass_is_covered() -> None:
    defined = {
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, DomainError) and value is not DomainError
    }
    assert defined == set(EXPECTED_CODES)


@pytest.mark.parametrize(("cls", "code"), list(EXPECTED_CODES.items()), ids=lambda v: getattr(v, "__name__", ""))
def test_domain_error_maps_to_its_status(cls: type[DomainError], code: grpc.StatusCode) -> None:
    error = make(cls)
    reply = status_for(error, trace_id="abc")
    assert reply.code == code
    assert reply.message == error.message
    if reply.details is not None:
        assert reply.details.code == code_pb2.Code.Value(code.name)
        assert reply.details.message == error.message


def test_distinct_codes_per_subclass() -> None:
    codes = [status_for(make(cls)).code for cls in EXPECTED_CODES]
    assert len(set(codes)) == len(codes)


def test_invalid_argument_names_the_field_in_bad_request() -> None:
    reply = status_for(InvalidArgument("email", "must contain '@'"))
    assert reply.code == grpc.StatusCode.INVALID_ARGUMENT
    assert reply.message == "email: must contain '@'"
    assert reply.details is not None
    assert reply.details.code == code_pb2.INVALID_ARGUMENT
    assert len(reply.details.details) == 1
    bad_request = error_details_pb2.BadRequest()
    assert reply.details.details[0].Unpack(bad_request)
    [violation] = bad_request.field_violations
    assert violation.field == "email"
    assert violation.description == "must contain '@'"


def test_rate_limited_carries_retry_info() -> None:
    reply = status_for(RateLimited("slow down", retry_after_s=2.5))
    assert reply.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reply.details is not None
    assert reply.details.code == code_pb2.RESOURCE_EXHAUSTED
    retry = error_details_pb2.RetryInfo()
    assert reply.details.details[0].Unpack(retry)
    assert retry.retry_delay.ToMilliseconds() == 2500


def test_plain_domain_errors_have_no_details() -> None:
    assert status_for(NotFound("document 42 does not exist")).details is None


def test_unexpected_exception_is_internal_with_trace_but_no_internals() -> None:
    secret = "password=hunter2 at db.internal:5432"
    reply = status_for(RuntimeError(secret), trace_id="0af7651916cd43dd8448eb211c80319c")
    assert reply.code == grpc.StatusCode.INTERNAL
    assert "0af7651916cd43dd8448eb211c80319c" in reply.message
    assert "hunter2" not in reply.message
    assert "RuntimeError" not in reply.message
    assert reply.details is None


def test_unexpected_exception_without_trace_id_is_still_internal() -> None:
    reply = status_for(KeyError("user_id"))
    assert reply.code == grpc.StatusCode.INTERNAL
    assert "user_id" not in reply.message
    assert "trace" not in reply.message


def peer_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="peer said no")


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
def test_a_peer_that_does_not_answer_makes_the_call_unavailable_not_internal(code: grpc.StatusCode) -> None:
    reply = status_for(peer_error(code), trace_id="abc")
    assert reply.code == grpc.StatusCode.UNAVAILABLE
    assert reply.message == "a service this call needs is not answering right now; try again in a moment"


def test_a_peer_s_other_failures_stay_internal_errors() -> None:
    reply = status_for(peer_error(grpc.StatusCode.INVALID_ARGUMENT), trace_id="abc")
    assert reply.code == grpc.StatusCode.INTERNAL, "our request to a peer was wrong: a bug here, not the caller's"
    assert "trace abc" in reply.message
