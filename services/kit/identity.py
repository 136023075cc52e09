"""Who calls a service besides its end user: another platform service, or the edge.

Service tokens. A service proves who it is to the auth service with its credential (HMAC-SHA256
of its name under the deployment's platform secret; only the operator and the auth service
hold that secret) and gets a short-lived RS256 JWT back (`IssueServiceToken`). It sends that
token in the `x-service-token` metadata of every call to another service; internal methods
(`ServiceSpec.internal_methods`) answer only calls that carry a valid one. The token's
audience is an internal one, so Envoy's JWT check refuses it at the edge, and Envoy removes
the header from whatever clients send.

The edge. Envoy owns the client's address: it overwrites `x-forwarded-for` with the address of
the connection it accepted, and adds `x-edge-credential`, a secret it shares with the
services. A service believes `x-forwarded-for` only next to that credential; for anyone who
reaches its port directly the address is the connection's peer, whatever headers they send.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from services.kit.errors import InvalidArgument, Unavailable

SERVICE_TOKEN_HEADER = "x-service-token"
EDGE_CREDENTIAL_HEADER = "x-edge-credential"
FORWARDED_FOR_HEADER = "x-forwarded-for"
SERVICE_AUDIENCE = "platform-services"
SERVICE_TOKEN_USE = "service"
EDGE = "edge"  # the name whose credential Envoy presents

SERVICE_NAME = re.compile(r"[a-z][a-z0-9-]{0,39}")
CREDENTIAL = re.compile(r"[0-9a-f]{64}")

Metadata = Iterable[tuple[str, str | bytes]]


def credential_for(platform_secret: str, name: str) -> str:
    """The credential of a service (or of the edge) under the platform secret."""
    return hmac.new(platform_secret.encode(), name.encode(), hashlib.sha256).hexdigest()


def check_service_name(service: str) -> str:
    if not SERVICE_NAME.fullmatch(service):
        raise InvalidArgument("service", "must be 1–40 characters of a-z, 0-9 and '-', starting with a letter")
    return service


def check_credential(credential: str) -> str:
    if not CREDENTIAL.fullmatch(credential):
        raise InvalidArgument("credential", "must be 64 lower-case hex characters (HMAC-SHA256)")
    return credential


def credential_matches(platform_secret: str, service: str, presented: str) -> bool:
    return hmac.compare_digest(credential_for(platform_secret, service), presented)


def metadata_value(metadata: Metadata | None, key: str) -> str | None:
    for name, value in metadata or ():
        if name == key:
            return value.decode() if isinstance(value, bytes) else value
    return None


def client_address(metadata: Metadata | None, peer: str, edge_credential: str) -> str:
    """The caller's address: what the edge says when the edge says it (its credential comes
    with the call), else the connection's peer ("ipv4:127.0.0.1:53422" → "127.0.0.1")."""
    presented = metadata_value(metadata, EDGE_CREDENTIAL_HEADER)
    if edge_credential and presented is not None and hmac.compare_digest(presented, edge_credential):
        forwarded = metadata_value(metadata, FORWARDED_FOR_HEADER)
        if forwarded:
            return forwarded.split(",")[-1].strip()
    return peer_host(peer)


def peer_host(peer: str) -> str:
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]") or rest
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return peer or "unknown"


@dataclass(frozen=True)
class IssuedServiceToken:
    token: str
    expires_in_s: float


IssueServiceToken = Callable[[str, str], Awaitable[IssuedServiceToken]]  # (service, credential) → token


class ServiceTokens:
    """This service's current service token: fetched from auth on first use, renewed when
    80% of its life has passed; callers waiting at once share one fetch."""

    RENEW_AT = 0.8

    def __init__(
        self, service: str, credential: str, issue: IssueServiceToken, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.service = service
        self.credential = credential
        self.issue = issue
        self.clock = clock
        self._token = ""
        self._renew_at = float("-inf")
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        if self.clock() < self._renew_at:
            return self._token
        async with self._lock:
            if self.clock() >= self._renew_at:
                try:
                    issued = await self.issue(self.service, self.credential)
                except Exception as error:
                    raise Unavailable(
                        f"cannot get a service token for {self.service} from the auth service; retry"
                    ) from error
                self._token = issued.token
                self._renew_at = self.clock() + issued.expires_in_s * self.RENEW_AT
        return self._token
