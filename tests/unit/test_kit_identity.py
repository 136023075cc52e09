"""services.kit.identity: service credentials, service tokens and the client's address."""

from __future__ import annotations

import asyncio

import pytest

from services.kit.errors import InvalidArgument, Unavailable
from services.kit.identity import (
    EDGE_CREDENTIAL_HEADER,
    IssuedServiceToken,
    ServiceTokens,
    check_credential,
    check_service_name,
    client_address,
    credential_for,
    credential_matches,
    peer_host,
)

EDGE = "e" * 64


def test_a_credential_belongs_to_one_name_under_one_secret() -> None:
    credential = credential_for("secret", "vector")
    assert len(credential) == 64
    assert check_credential(credential) == credential
    assert credential_matches("secret", "vector", credential)
    assert not credential_matches("secret", "chat", credential)
    assert not credential_matches("another secret", "vector", credential)


@pytest.mark.parametrize("name", ["", "Vector", "1vector", "v" * 41, "vec tor"])
def test_service_names_are_short_lower_case_words(name: str) -> None:
    with pytest.raises(InvalidArgument, match="service"):
        check_service_name(name)
    assert check_service_name("notifications") == "notifications"


@pytest.mark.parametrize(
    ("metadata", "peer", "expected"),
    [
        pytest.param(
            [("x-forwarded-for", "203.0.113.9"), (EDGE_CREDENTIAL_HEADER, EDGE)],
            "ipv4:127.0.0.1:5000",
            "203.0.113.9",
            id="from-the-edge",
        ),
        pytest.param([("x-forwarded-for", "203.0.113.9")], "ipv4:127.0.0.9:5000", "127.0.0.9", id="no-credential"),
        pytest.param(
            [("x-forwarded-for", "203.0.113.9"), (EDGE_CREDENTIAL_HEADER, "f" * 64)],
            "ipv4:127.0.0.9:5000",
            "127.0.0.9",
            id="wrong-credential",
        ),
        pytest.param([(EDGE_CREDENTIAL_HEADER, EDGE)], "ipv4:127.0.0.9:5000", "127.0.0.9", id="edge-without-address"),
        pytest.param([], "ipv6:[::1]:5000", "::1", id="ipv6-peer"),
    ],
)
def test_the_address_is_the_edge_s_word_or_the_peer(metadata: list[tuple[str, str]], peer: str, expected: str) -> None:
    assert client_address(metadata, peer, EDGE) == expected


def test_without_an_edge_credential_configured_nobody_is_the_edge() -> None:
    metadata = [("x-forwarded-for", "203.0.113.9"), (EDGE_CREDENTIAL_HEADER, "")]
    assert client_address(metadata, "ipv4:127.0.0.9:1", "") == "127.0.0.9"
    assert peer_host("unix:/tmp/socket") == "unix:/tmp/socket"


async def test_service_tokens_are_fetched_once_and_renewed_before_they_expire() -> None:
    now = [0.0]
    issued: list[str] = []

    async def issue(service: str, credential: str) -> IssuedServiceToken:
        await asyncio.sleep(0)
        issued.append(f"{service}-{len(issued)}")
        return IssuedServiceToken(issued[-1], expires_in_s=100)

    tokens = ServiceTokens("vector", "c" * 64, issue, clock=lambda: now[0])
    assert await asyncio.gather(*(tokens.token() for _ in range(5))) == ["vector-0"] * 5, "one fetch for all"
    now[0] = 79.0
    assert await tokens.token() == "vector-0"
    now[0] = 80.0
    assert await tokens.token() == "vector-1", "renewed at 80% of its life"


async def test_a_failed_fetch_is_unavailable() -> None:
    async def issue(service: str, credential: str) -> IssuedServiceToken:
        raise ConnectionError("auth is down")

    with pytest.raises(Unavailable, match="service token for vector"):
        await ServiceTokens("vector", "c" * 64, issue).token()
