"""Domain errors and the one place that turns them into gRPC statuses.

A use case raises a `DomainError` subclass with a message a user can act on; the server
interceptor maps it to exactly one status code (and, through Envoy, one HTTP code). Invalid
input carries the offending field as a `google.rpc.BadRequest` detail, so JSON and gRPC
clients both see which field to fix. Anything else becomes INTERNAL with a reference to the
trace, never the exception text.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2


class DomainError(Exception):
    """An expected failure of a use case. Subclasses pick the status code."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DomainError):
    """A field breaks its documented limit. Name the field; say what is allowed."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Conflict(DomainError):
    """Optimistic concurrency: the caller's expected version is stale. Re-read and retry."""

    code = grpc.StatusCode.ABORTED


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class RateLimited(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(DomainError):
    """A dependency is down; the call may succeed if retried later."""

    code = grpc.StatusCode.UNAVAILABLE


# How a failed call to a peer reads when the peer was not there to answer.
PEER_NOT_ANSWERING = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def peer_not_answering(error: BaseException) -> bool:
    """A call to a peer failed because the peer is down or too slow (not because of a bug)."""
    return isinstance(error, grpc.aio.AioRpcError) and error.code() in PEER_NOT_ANSWERING


@dataclass(frozen=True)
class StatusReply:
    """What the caller receives for a failed call."""

    code: grpc.StatusCode
    message: str
    details: status_pb2.Status | None = None


def status_for(error: BaseException, trace_id: str = "") -> StatusReply:
    """Map any exception to the reply the caller sees. Pure, so every mapping is unit-tested."""
    if isinstance(error, InvalidArgument):
        violation = error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.problem)
        return StatusReply(
            error.code,
            error.message,
            _rich_status(error, error_details_pb2.BadRequest(field_violations=[violation])),
        )
    if isinstance(error, RateLimited):
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(int(error.retry_after_s * 1000))
        return StatusReply(error.code, error.message, _rich_status(error, retry))
    if isinstance(error, DomainError):
        return StatusReply(error.code, error.message)
    if isinstance(error, NotImplementedError):  # a generated servicer method left unimplemented
        return StatusReply(grpc.StatusCode.UNIMPLEMENTED, "this method is not implemented by the service")
    if peer_not_answering(error):
        # A peer this call needed is down or too slow: the caller can retry; nothing is broken.
        return StatusReply(
            grpc.StatusCode.UNAVAILABLE, "a service this call needs is not answering right now; try again in a moment"
        )
    reference = f" (trace {trace_id})" if trace_id else ""
    return StatusReply(grpc.StatusCode.INTERNAL, f"internal error{reference}; the service log has the details")


def _rich_status(
    error: DomainError, detail: error_details_pb2.BadRequest | error_details_pb2.RetryInfo
) -> status_pb2.Status:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return status_pb2.Status(code=_rpc_code(error.code), message=error.message, details=[packed])


def _rpc_code(code: grpc.StatusCode) -> int:
    return int(code_pb2.Code.Value(code.name))
