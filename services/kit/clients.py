"""Channels for calling other services, the same way from every service.

A channel made here traces each call (OpenTelemetry client interceptors, so the callee's
span joins the caller's trace), bounds it by what is left of the caller's own deadline,
forwards the caller's bearer token, so the callee authorises the same user, and (given this
service's `ServiceTokens`) says which service is calling, as internal methods require.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from services.kit.auth import optional_principal
from services.kit.identity import SERVICE_TOKEN_HEADER, ServiceTokens
from services.kit.server import remaining_time

DEFAULT_CALL_TIMEOUT_S = 5.0


def call_metadata(extra: Sequence[tuple[str, str]] | None) -> list[tuple[str, str]]:
    """The caller's token (unless one is given explicitly) plus any metadata already set."""
    metadata = list(extra or ())
    principal = optional_principal()
    if principal is not None and not any(key == "authorization" for key, _ in metadata):
        metadata.append(("authorization", f"Bearer {principal.raw_token}"))
    return metadata


def bounded_timeout(requested: float | None, default_s: float = DEFAULT_CALL_TIMEOUT_S) -> float:
    """Never wait longer than the caller that is waiting on us."""
    return remaining_time(requested if requested is not None else default_s)


class _Propagating:
    """Shared logic of the four client interceptor shapes."""

    def __init__(self, default_timeout_s: float, service_tokens: ServiceTokens | None) -> None:
        self.default_timeout_s = default_timeout_s
        self.service_tokens = service_tokens

    async def details(self, call_details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = call_metadata([(k, str(v)) for k, v in (call_details.metadata or ())])
        if self.service_tokens is not None:
            metadata.append((SERVICE_TOKEN_HEADER, await self.service_tokens.token()))
        return grpc.aio.ClientCallDetails(
            method=call_details.method,
            timeout=bounded_timeout(call_details.timeout, self.default_timeout_s),
            metadata=grpc.aio.Metadata(*metadata),
            credentials=call_details.credentials,
            wait_for_ready=call_details.wait_for_ready,
        )


class PropagatingUnaryUnary(_Propagating, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Callable[..., Any], call_details: Any, request: Any) -> Any:
        return await continuation(await self.details(call_details), request)


class PropagatingUnaryStream(_Propagating, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Callable[..., Any], call_details: Any, request: Any) -> Any:
        return await continuation(await self.details(call_details), request)


class PropagatingStreamUnary(_Propagating, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Callable[..., Any], call_details: Any, requests: Any) -> Any:
        return await continuation(await self.details(call_details), requests)


class PropagatingStreamStream(_Propagating, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Callable[..., Any], call_details: Any, requests: Any) -> Any:
        return await continuation(await self.details(call_details), requests)


def service_channel(
    target: str, default_timeout_s: float = DEFAULT_CALL_TIMEOUT_S, service_tokens: ServiceTokens | None = None
) -> grpc.aio.Channel:
    """An insecure (loopback) channel to another service with tracing and propagation."""
    propagating: list[grpc.aio.ClientInterceptor] = [
        shape(default_timeout_s, service_tokens)
        for shape in (PropagatingUnaryUnary, PropagatingUnaryStream, PropagatingStreamUnary, PropagatingStreamStream)
    ]
    tracing: list[grpc.aio.ClientInterceptor] = aio_client_interceptors()  # type: ignore[no-untyped-call]
    return grpc.aio.insecure_channel(target, interceptors=[*propagating, *tracing])
