"""services.kit.auth: access-token verification, bearer parsing and JWKS refresh."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fixtures.tokens import TestIssuer, new_rsa_key, public_jwk
from services.kit.auth import ALGORITHM, Principal, RefreshingKeys, TokenVerifier, bearer_token
from services.kit.errors import Unauthenticated

ISSUER = "https://auth.platform.local"
AUDIENCE = "platform"
KID = "key-2024-01"
USER = "user-123"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(header: Mapping[str, Any], payload: Mapping[str, Any], secret: bytes | None = None) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = b"" if secret is None else hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


@pytest.fixture(scope="module")
def issuer() -> TestIssuer:
    return TestIssuer(ISSUER, AUDIENCE, KID)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return new_rsa_key()


@pytest.fixture
def verifier(issuer: TestIssuer) -> TokenVerifier:
    return issuer.verifier("other-audience")


async def rejection(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(Unauthenticated) as caught:
        await verifier.verify(token)
    return caught.value.message.lower()


# ------------------------------------------------------------------ verify


async def test_valid_token_gives_principal(verifier: TokenVerifier, issuer: TestIssuer) -> None:
    payload = issuer.claims(USER, email="ada@example.com")
    token = issuer.sign(payload)
    principal = await verifier.verify(token)
    assert principal == Principal(
        user_id="user-123",
        email="ada@example.com",
        token_id=payload["jti"],
        expires_at=payload["exp"],
        raw_token=token,
    )


async def test_any_configured_audience_is_accepted(verifier: TokenVerifier, issuer: TestIssuer) -> None:
    principal = await verifier.verify(issuer.token(USER, aud="other-audience"))
    assert principal.user_id == "user-123"


async def test_expired_token(verifier: TokenVerifier, issuer: TestIssuer) -> None:
    now = int(time.time())
    message = await rejection(verifier, issuer.token(iat=now - 3600, exp=now - 600))
    assert "expired" in message
    assert "refresh" in message


async def test_expiry_within_leeway_is_accepted(verifier: TokenVerifier, issuer: TestIssuer) -> None:
    now = int(time.time())
    principal = await verifier.verify(issuer.token(iat=now - 900, exp=now - 5))
    assert principal.expires_at == now - 5


async def test_forged_signature_with_real_kid(
    verifier: TokenVerifier, issuer: TestIssuer, other_key: rsa.RSAPrivateKey
) -> None:
    message = await rejection(verifier, issuer.sign(issuer.claims(), kid=KID, key=other_key))
    assert "signature" in message
    assert "invalid" in message


async def test_wrong_issuer(verifier: TokenVerifier, issuer: TestIssuer) -> None:
    message = await rejection(verifier, issuer.token(iss="https://evil.example"))
    assert "issuer" in message
    assert ISSUER.lower() in message


async def test_wrong_audience(verifier: TokenVerifier, issuer: TestIssuer) -> None:
    message = await rejection(verifier, issuer.token(aud="someone-else"))
    assert "audience" in message


async def test_alg_none_is_refused(verifier: TokenVerifier, issuer: TestIssuer) -> None:
    message = await rejection(verifier, unsigned_token({"alg": "none", "typ": "JWT", "kid": KID}, issuer.claims()))
    assert "algorithm" in message
    assert "rs256" in message


async def test_hs256_signed_with_public_key_is_refused(verifier: TokenVerifier, issuer: TestIssuer) -> None:
    public_pem = issuer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token = unsigned_token({"alg": "HS256", "typ": "JWT", "kid": KID}, issuer.claims(), secret=public_pem)
    message = await rejection(verifier, token)
    assert "'hs256'" in message
    assert "not accepted" in message


async def test_hs256_header_switched_to_rs256_fails_signature(verifier: TokenVerifier, issuer: TestIssuer) -> None:
    public_pem = issuer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token = unsigned_token({"alg": "RS256", "typ": "JWT", "kid": KID}, issuer.claims(), secret=public_pem)
    message = await rejection(verifier, token)
    assert "signature" in message


async def test_unknown_kid(verifier: TokenVerifier, issuer: TestIssuer) -> None:
    message = await rejection(verifier, issuer.sign(issuer.claims(), kid="retired-key"))
    assert "unknown key" in message
    assert "log in again" in message


async def test_missing_kid_is_an_unknown_key(verifier: TokenVerifier, issuer: TestIssuer) -> None:
    # TestIssuer always names a kid; a token without one is encoded here.
    message = await rejection(verifier, jwt.encode(issuer.claims(), issuer.key, algorithm=ALGORITHM))
    assert "unknown key" in message


async def test_refresh_token_is_not_an_access_token(verifier: TokenVerifier, issuer: TestIssuer) -> None:
    message = await rejection(verifier, issuer.token(token_use="refresh"))
    assert "not an access token" in message


async def test_token_without_token_use_is_not_an_access_token(verifier: TokenVerifier, issuer: TestIssuer) -> None:
    message = await rejection(verifier, issuer.token(token_use=None))
    assert "not an access token" in message


@pytest.mark.parametrize("token", ["", "not-a-jwt", "a.b.c", "Bearer abc", "e30.e30", "....."])
async def test_malformed_strings(verifier: TokenVerifier, token: str) -> None:
    message = await rejection(verifier, token)
    assert "malformed" in message


async def test_garbage_payload_with_valid_header_is_rejected(verifier: TokenVerifier) -> None:
    header = b64url(json.dumps({"alg": "RS256", "kid": KID}).encode())
    message = await rejection(verifier, f"{header}.%%%.{b64url(b'sig')}")
    assert "malformed" in message


@pytest.mark.parametrize("claim", ["sub", "exp", "iat", "iss", "aud"])
async def test_missing_required_claim(verifier: TokenVerifier, issuer: TestIssuer, claim: str) -> None:
    message = await rejection(verifier, issuer.token(USER, **{claim: None}))
    assert f"'{claim}'" in message
    assert "claim" in message


# ------------------------------------------------------------ bearer_token


@pytest.mark.parametrize(
    "metadata",
    [
        [("authorization", "Bearer tok.en.value")],
        [("Authorization", "Bearer tok.en.value")],
        [("AUTHORIZATION", "bearer tok.en.value")],
        [("authorization", b"Bearer tok.en.value")],
        [("x-request-id", "1"), ("authorization", "BEARER  tok.en.value  ")],
    ],
)
def test_bearer_token_is_found(metadata: list[tuple[str, str | bytes]]) -> None:
    assert bearer_token(metadata) == "tok.en.value"


@pytest.mark.parametrize("metadata", [None, [], [("x-request-id", "1"), ("grpc-timeout", "1S")]])
def test_no_authorization_means_no_token(metadata: list[tuple[str, str | bytes]] | None) -> None:
    assert bearer_token(metadata) is None


@pytest.mark.parametrize("value", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "tok.en.value", b"Token abc"])
def test_non_bearer_authorization_is_rejected(value: str | bytes) -> None:
    with pytest.raises(Unauthenticated) as caught:
        bearer_token([("authorization", value)])
    assert "Bearer <access token>" in caught.value.message


# ---------------------------------------------------------- RefreshingKeys


class CountingFetch:
    def __init__(self, *responses: Mapping[str, Any]) -> None:
        self.responses = list(responses)
        self.calls = 0

    async def __call__(self) -> Mapping[str, Any]:
        response = self.responses[min(self.calls, len(self.responses) - 1)]
        self.calls += 1
        await asyncio.sleep(0)  # let concurrent callers interleave
        return response


async def test_refreshing_keys_fetch_on_first_use_then_cache(issuer: TestIssuer) -> None:
    fetch = CountingFetch(issuer.jwks())
    keys = RefreshingKeys(fetch, min_refresh_s=60)
    assert fetch.calls == 0
    first = await keys.key_for(KID)
    assert first is not None
    assert first.key_id == KID
    assert await keys.key_for(KID) is first
    assert fetch.calls == 1


async def test_unknown_kid_refetches_at_most_once_per_interval(issuer: TestIssuer) -> None:
    fetch = CountingFetch(issuer.jwks())
    keys = RefreshingKeys(fetch, min_refresh_s=60)
    assert await keys.key_for(KID) is not None
    for _ in range(5):
        assert await keys.key_for("forged-kid") is None
    assert fetch.calls == 1


async def test_unknown_kid_picks_up_rotated_key(issuer: TestIssuer, other_key: rsa.RSAPrivateKey) -> None:
    fetch = CountingFetch(issuer.jwks(), {"keys": [public_jwk(other_key, "new"), public_jwk(issuer.key, KID)]})
    keys = RefreshingKeys(fetch, min_refresh_s=0)
    assert await keys.key_for(KID) is not None
    rotated = await keys.key_for("new")
    assert rotated is not None
    assert rotated.key_id == "new"
    assert fetch.calls == 2


async def test_concurrent_lookups_of_a_new_kid_fetch_once(issuer: TestIssuer) -> None:
    fetch = CountingFetch(issuer.jwks())
    keys = RefreshingKeys(fetch, min_refresh_s=0)
    found = await asyncio.gather(*(keys.key_for(KID) for _ in range(10)))
    assert all(k is not None for k in found)
    assert fetch.calls == 1


async def test_verifier_with_refreshing_keys(issuer: TestIssuer) -> None:
    fetch = CountingFetch(issuer.jwks())
    verifier = TokenVerifier(RefreshingKeys(fetch, min_refresh_s=60), ISSUER, [AUDIENCE])
    assert (await verifier.verify(issuer.token(USER))).user_id == "user-123"
    with pytest.raises(Unauthenticated):
        await verifier.verify(issuer.sign(issuer.claims(), kid="nope"))
    assert fetch.calls == 1
