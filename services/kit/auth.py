"""Verifying the caller's access token, in every service.

Envoy checks the token at the edge; each service checks it again, because a service can be
reached directly. Access tokens are RS256 JWTs issued by the auth service, with a `kid` that
names the key in its JWKS. Verification is pure given the keys; where the keys come from
(a fixed JWKS, or the auth service's GetJwks) is a `KeySource`.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from jwt import PyJWK

from services.kit.errors import Unauthenticated, Unavailable

ALGORITHM = "RS256"
ACCESS_TOKEN_USE = "access"
MISSING_TOKEN = "this call needs a bearer token: send 'authorization: Bearer <access token>'"


@dataclass(frozen=True)
class Principal:
    """Who is calling, as the access token says."""

    user_id: str
    email: str
    token_id: str
    expires_at: int
    raw_token: str  # forwarded to services called on the caller's behalf
    name: str = ""  # the display name the token carries (its `name` claim)


_current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("current_principal", default=None)


def current_principal() -> Principal:
    """The authenticated caller of the RPC being handled; raises if the call had none."""
    principal = _current_principal.get()
    if principal is None:
        raise Unauthenticated(MISSING_TOKEN)
    return principal


def optional_principal() -> Principal | None:
    return _current_principal.get()


def set_principal(principal: Principal | None) -> contextvars.Token[Principal | None]:
    return _current_principal.set(principal)


def reset_principal(token: contextvars.Token[Principal | None]) -> None:
    _current_principal.reset(token)


class KeySource(Protocol):
    async def key_for(self, kid: str) -> PyJWK | None:
        """The public key with this id, or None when there is none."""
        ...


class StaticKeys:
    """A fixed JWKS (tests, or keys known in advance)."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self._keys = {key["kid"]: PyJWK(dict(key)) for key in jwks.get("keys", [])}

    async def key_for(self, kid: str) -> PyJWK | None:
        return self._keys.get(kid)


class RefreshingKeys:
    """Keys fetched from the issuer, refreshed when an unknown `kid` shows up (at most every
    `min_refresh_s`, so forged kids cannot make us hammer the issuer)."""

    def __init__(self, fetch_jwks: Callable[[], Awaitable[Mapping[str, Any]]], min_refresh_s: float = 1.0) -> None:
        self._fetch = fetch_jwks
        self._min_refresh_s = min_refresh_s
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def key_for(self, kid: str) -> PyJWK | None:
        if kid in self._keys:
            return self._keys[kid]
        async with self._lock:
            if kid not in self._keys and time.monotonic() - self._fetched_at >= self._min_refresh_s:
                # A failed fetch counts too: an unreachable issuer is asked again only later.
                self._fetched_at = time.monotonic()
                try:
                    jwks = await self._fetch()
                except Exception as error:
                    raise Unavailable("cannot fetch the token signing keys from the auth service; retry") from error
                self._keys = {key["kid"]: PyJWK(dict(key)) for key in jwks.get("keys", [])}
        return self._keys.get(kid)


class TokenVerifier:
    """Checks access tokens (or, with `token_use="service"`, service tokens). A token
    verified once is remembered until it expires: a token never changes, and an RSA signature
    check costs more than the rest of a cheap request."""

    def __init__(
        self,
        keys: KeySource,
        issuer: str,
        audiences: Sequence[str],
        leeway_s: int = 30,
        cache_size: int = 10_000,
        token_use: str = ACCESS_TOKEN_USE,
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audiences = list(audiences)
        self.leeway_s = leeway_s
        self.cache_size = cache_size
        self.token_use = token_use
        self._verified: OrderedDict[str, Principal] = OrderedDict()

    async def verify(self, token: str) -> Principal:
        known = self._verified.get(token)
        if known is not None:
            if time.time() < known.expires_at + self.leeway_s:
                self._verified.move_to_end(token)
                return known
            del self._verified[token]
        principal = await self._verify_uncached(token)
        self._verified[token] = principal
        if len(self._verified) > self.cache_size:
            self._verified.popitem(last=False)
        return principal

    async def _verify_uncached(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as error:
            raise Unauthenticated("malformed bearer token: expected a JWT access token") from error
        if header.get("alg") != ALGORITHM:
            raise Unauthenticated(f"token algorithm {header.get('alg')!r} is not accepted; tokens are {ALGORITHM}")
        kid = header.get("kid")
        key = await self.keys.key_for(kid) if isinstance(kid, str) else None
        if key is None:
            raise Unauthenticated("token was signed with an unknown key; log in again for a fresh token")
        claims = decode_claims(token, key, self.issuer, self.audiences, self.leeway_s)
        if claims.get("token_use") != self.token_use:
            if self.token_use == ACCESS_TOKEN_USE:
                raise Unauthenticated("this is not an access token; send the access token from login or refresh")
            raise Unauthenticated(f"this is not a {self.token_use} token")
        return Principal(
            user_id=str(claims["sub"]),
            email=str(claims.get("email", "")),
            token_id=str(claims.get("jti", "")),
            expires_at=int(claims["exp"]),
            raw_token=token,
            name=str(claims.get("name", "")),
        )


def decode_claims(token: str, key: PyJWK, issuer: str, audiences: Sequence[str], leeway_s: int) -> dict[str, Any]:
    """Signature, expiry, issuer and audience, with a message that says which one failed."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=[ALGORITHM],
            audience=list(audiences),
            issuer=issuer,
            leeway=leeway_s,
            options={"require": ["exp", "iat", "sub", "iss", "aud"]},
        )
    except jwt.ExpiredSignatureError as error:
        raise Unauthenticated("access token expired; refresh it or log in again") from error
    except jwt.InvalidIssuerError as error:
        raise Unauthenticated(f"token issuer is not accepted; expected {issuer}") from error
    except jwt.InvalidAudienceError as error:
        raise Unauthenticated("token audience is not accepted by this platform") from error
    except jwt.InvalidSignatureError as error:
        raise Unauthenticated("token signature is invalid") from error
    except jwt.MissingRequiredClaimError as error:
        raise Unauthenticated(f"token lacks the required claim {error.claim!r}") from error
    except jwt.PyJWTError as error:
        raise Unauthenticated(f"token rejected: {error}") from error
    return claims


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token from an `authorization: Bearer ...` metadata entry, if any."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            raise Unauthenticated("authorization metadata must be 'Bearer <access token>'")
    return None
