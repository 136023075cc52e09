"""The auth domain: accounts, sessions, refresh-token rotation, signing keys and login limits.

Pure rules, no I/O: what a valid sign-up is, what goes into an access or service token, which keys sign
and which are published, when a refresh token may be used, when a login is throttled.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from services.kit.auth import ACCESS_TOKEN_USE, ALGORITHM
from services.kit.errors import InvalidArgument
from services.kit.identity import SERVICE_AUDIENCE, SERVICE_TOKEN_USE

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
EMAIL_LENGTH = (3, 254)
PASSWORD_LENGTH = (12, 128)
DISPLAY_NAME_LENGTH = (1, 100)
REFRESH_TOKEN_MAX = 512


# ------------------------------------------------------------------ input


def normalize_email(raw: str, field: str = "email") -> str:
    email = raw.strip().lower()
    low, high = EMAIL_LENGTH
    if not low <= len(email) <= high:
        raise InvalidArgument(field, f"must be {low}–{high} characters, got {len(email)}")
    if not EMAIL.match(email):
        raise InvalidArgument(field, "must be an email address like name@example.com")
    return email


def check_password(password: str, field: str = "password") -> str:
    low, high = PASSWORD_LENGTH
    if not low <= len(password) <= high:
        raise InvalidArgument(field, f"must be {low}–{high} characters, got {len(password)}")
    return password


def normalize_display_name(raw: str) -> str:
    name = raw.strip()
    low, high = DISPLAY_NAME_LENGTH
    if not low <= len(name) <= high:
        raise InvalidArgument("display_name", f"must be {low}–{high} characters after trimming, got {len(name)}")
    return name


def check_login_input(email: str, password: str) -> str:
    """Login only bounds its inputs: whether they match is for the credentials check to say."""
    normalized = email.strip().lower()
    if not normalized:
        raise InvalidArgument("email", "is required")
    if len(normalized) > EMAIL_LENGTH[1]:
        raise InvalidArgument("email", f"must be at most {EMAIL_LENGTH[1]} characters")
    if not password:
        raise InvalidArgument("password", "is required")
    if len(password) > PASSWORD_LENGTH[1]:
        raise InvalidArgument("password", f"must be at most {PASSWORD_LENGTH[1]} characters")
    return normalized


def check_refresh_token(token: str) -> str:
    if not token.strip():
        raise InvalidArgument("refresh_token", "is required")
    if len(token) > REFRESH_TOKEN_MAX:
        raise InvalidArgument("refresh_token", f"must be at most {REFRESH_TOKEN_MAX} characters")
    return token.strip()


# ------------------------------------------------------------- accounts


@dataclass(frozen=True)
class User:
    user_id: str
    email: str
    display_name: str
    created_at: datetime


@dataclass(frozen=True)
class TokenPolicy:
    issuer: str
    audience: str
    access_ttl: timedelta
    refresh_ttl: timedelta
    service_ttl: timedelta = timedelta(minutes=10)


def access_claims(user: User, policy: TokenPolicy, now: datetime, token_id: str | None = None) -> dict[str, Any]:
    """The claims of an access token (see auth.proto)."""
    issued = int(now.timestamp())
    return {
        "sub": user.user_id,
        "email": user.email,
        "name": user.display_name,
        "iat": issued,
        "exp": issued + int(policy.access_ttl.total_seconds()),
        "iss": policy.issuer,
        "aud": policy.audience,
        "jti": token_id or str(uuid.uuid4()),
        "token_use": ACCESS_TOKEN_USE,
    }


def service_claims(service: str, policy: TokenPolicy, now: datetime) -> dict[str, Any]:
    """The claims of a service token (see auth.proto): the internal audience, so the edge,
    which accepts only the platform's audience, never takes one for a user's token."""
    issued = int(now.timestamp())
    return {
        "sub": service,
        "iat": issued,
        "exp": issued + int(policy.service_ttl.total_seconds()),
        "iss": policy.issuer,
        "aud": SERVICE_AUDIENCE,
        "jti": str(uuid.uuid4()),
        "token_use": SERVICE_TOKEN_USE,
    }


# ------------------------------------------------------- refresh tokens


def new_refresh_token() -> str:
    return secrets.token_urlsafe(48)


def hash_refresh_token(token: str) -> str:
    """Refresh tokens are stored hashed: a database leak does not leak usable tokens.
    They are long random strings, so a fast hash is enough (no dictionary to attack)."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class StoredRefreshToken:
    session_id: str
    user_id: str
    expires_at: datetime
    used_at: datetime | None
    session_revoked_at: datetime | None


class RefreshVerdict:
    """What presenting a refresh token means."""

    VALID = "valid"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    REVOKED = "revoked"
    REUSED = "reused"  # already rotated: treat as theft, revoke the whole session


def judge_refresh(stored: StoredRefreshToken | None, now: datetime) -> str:
    if stored is None:
        return RefreshVerdict.UNKNOWN
    if stored.session_revoked_at is not None:
        return RefreshVerdict.REVOKED
    if stored.used_at is not None:
        return RefreshVerdict.REUSED
    if stored.expires_at <= now:
        return RefreshVerdict.EXPIRED
    return RefreshVerdict.VALID


# ---------------------------------------------------------- signing keys


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_pem: str
    created_at: datetime
    active_from: datetime  # signs tokens from here...
    retired_at: datetime | None  # ...until here (then only verifies, while its tokens live)

    def signs_at(self, now: datetime) -> bool:
        return self.active_from <= now and (self.retired_at is None or now < self.retired_at)

    def private_key(self) -> rsa.RSAPrivateKey:
        key = serialization.load_pem_private_key(self.private_pem.encode(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise TypeError(f"signing key {self.kid} is not an RSA key")
        return key

    def public_jwk(self) -> dict[str, str]:
        jwk: dict[str, str] = RSAAlgorithm.to_jwk(self.private_key().public_key(), as_dict=True)
        return {"kty": jwk["kty"], "kid": self.kid, "use": "sig", "alg": ALGORITHM, "n": jwk["n"], "e": jwk["e"]}


def generate_signing_key(now: datetime, active_from: datetime) -> SigningKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return SigningKey(
        kid=f"{now:%Y%m%d%H%M%S}-{secrets.token_hex(4)}",
        private_pem=pem,
        created_at=now,
        active_from=active_from,
        retired_at=None,
    )


def current_signing_key(keys: Sequence[SigningKey], now: datetime) -> SigningKey | None:
    """The newest key that signs now."""
    signing = [key for key in keys if key.signs_at(now)]
    return max(signing, key=lambda key: key.active_from) if signing else None


def published_keys(keys: Sequence[SigningKey], now: datetime, token_lifetime: timedelta) -> list[SigningKey]:
    """Keys in the JWKS: the one signing, the next one (published before it signs, so every
    verifier has it in time), and retired ones while tokens they signed may still be alive."""
    return sorted(
        (key for key in keys if key.retired_at is None or now < key.retired_at + token_lifetime),
        key=lambda key: key.active_from,
        reverse=True,
    )


def rotation_plan(
    keys: Sequence[SigningKey], now: datetime, publish_ahead: timedelta
) -> tuple[SigningKey, list[SigningKey]]:
    """A new key that starts signing after `publish_ahead` (time for verifiers to fetch it),
    and the keys that retire when it starts."""
    successor = generate_signing_key(now, active_from=now + publish_ahead)
    retiring = [key for key in keys if key.retired_at is None]
    return successor, retiring


def due_for_rotation(keys: Sequence[SigningKey], now: datetime, max_age: timedelta) -> bool:
    """No key signs now (nor is one pending), or the one signing is older than max_age."""
    pending = [key for key in keys if key.active_from > now and key.retired_at is None]
    if pending:
        return False
    current = current_signing_key(keys, now)
    return current is None or now - current.active_from >= max_age


# ----------------------------------------------------------- login limits


@dataclass(frozen=True)
class LoginLimits:
    """Failed logins allowed per account (guessing one password) and per client address
    (trying many accounts), in a rolling window. Successful logins never count."""

    failures_per_account: int
    failures_per_address: int
    window: timedelta


def login_blocked(account_failures: int, address_failures: int, limits: LoginLimits) -> str | None:
    """Why a login attempt is refused now, or None."""
    retry = f"retry in {int(limits.window.total_seconds())} s"
    if account_failures >= limits.failures_per_account:
        return f"too many failed logins for this account; {retry}"
    if address_failures >= limits.failures_per_address:
        return f"too many failed logins from this address; {retry}"
    return None
