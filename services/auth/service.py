"""Auth use cases: sign up, log in, refresh, log out, issue service tokens, publish keys,
rotate keys.

Each use case is one database transaction; the UserSignedUp event is written in the same
transaction as the user (outbox). Password hashing is deliberately slow, so it runs in a
worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt import PyJWK
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.events.v1 import events_pb2
from services.auth.domain import (
    LoginLimits,
    RefreshVerdict,
    SigningKey,
    TokenPolicy,
    User,
    access_claims,
    check_login_input,
    check_password,
    check_refresh_token,
    current_signing_key,
    due_for_rotation,
    hash_refresh_token,
    judge_refresh,
    login_blocked,
    new_refresh_token,
    normalize_display_name,
    normalize_email,
    published_keys,
    rotation_plan,
    service_claims,
)
from services.auth.repository import AuthRepository, LoginAttempts
from services.kit.auth import ALGORITHM
from services.kit.db import SessionFactory, transaction
from services.kit.errors import NotFound, RateLimited, Unauthenticated, Unavailable
from services.kit.events import new_envelope
from services.kit.identity import IssuedServiceToken, check_credential, check_service_name, credential_matches
from services.kit.outbox import record_event

BAD_CREDENTIALS = "email or password is wrong"
BAD_REFRESH = "refresh token is not valid (unknown, expired, revoked or already used); log in again"


@dataclass(frozen=True)
class IssuedTokens:
    access_token: str
    refresh_token: str
    access_ttl: timedelta
    refresh_ttl: timedelta


@dataclass(frozen=True)
class LoadedKey:
    private: rsa.RSAPrivateKey
    jwk: dict[str, str]
    verifier: PyJWK


@dataclass(frozen=True)
class KeySettings:
    rotate_after: timedelta  # a key signs at most this long
    publish_ahead: timedelta  # a new key is in the JWKS this long before it signs
    clock_skew: timedelta  # verifiers' leeway: keys stay published that much longer


class AuthService:
    def __init__(
        self,
        sessions: SessionFactory,
        repository: AuthRepository,
        attempts: LoginAttempts,
        hasher: PasswordHasher,
        policy: TokenPolicy,
        limits: LoginLimits,
        keys: KeySettings,
        on_commit: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        platform_secret: str = "",
    ) -> None:
        self.sessions = sessions
        self.repository = repository
        self.attempts = attempts
        self.hasher = hasher
        self.policy = policy
        self.limits = limits
        self.key_settings = keys
        self.on_commit = on_commit  # wakes the outbox relay
        self.clock = clock
        self.platform_secret = platform_secret  # verifies service credentials (see issue_service_token)
        self._keys: list[SigningKey] = []
        # A hash of a random password, for logins to unknown emails (see login).
        self._unknown_user_hash = hasher.hash(uuid.uuid4().hex)
        self._loaded: dict[str, LoadedKey] = {}

    # ------------------------------------------------------------ accounts

    async def sign_up(self, email: str, password: str, display_name: str) -> tuple[User, IssuedTokens]:
        user = User(
            user_id=str(uuid.uuid4()),
            email=normalize_email(email),
            display_name=normalize_display_name(display_name),
            created_at=self.clock(),
        )
        check_password(password)
        password_hash = await asyncio.to_thread(self.hasher.hash, password)
        async with transaction(self.sessions) as session:
            await self.repository.add_user(session, user, password_hash)
            tokens = await self._open_session(session, user)
            await record_event(
                session,
                new_envelope(
                    event_type="auth.user.signed_up",
                    payload=events_pb2.UserSignedUp(
                        user_id=user.user_id, email=user.email, display_name=user.display_name
                    ),
                    producer="auth",
                    partition_key=user.user_id,
                    subject_ids={"user_id": user.user_id},
                    actor_user_id=user.user_id,
                    occurred_at=user.created_at,
                ),
            )
        self.on_commit()
        return user, tokens

    async def login(self, email: str, password: str, address: str) -> tuple[User, IssuedTokens]:
        email = check_login_input(email, password)
        account_key, address_key = LoginAttempts.account_key(email), LoginAttempts.address_key(address)
        refusal = login_blocked(
            await self.attempts.count(account_key), await self.attempts.count(address_key), self.limits
        )
        if refusal:
            raise RateLimited(refusal, retry_after_s=self.limits.window.total_seconds())
        async with self.sessions() as session:
            found = await self.repository.user_with_password(session, email)
        # An unknown email costs the same hash as a wrong password: timing must not tell them apart.
        stored_hash = found[1] if found else self._unknown_user_hash
        if not await self._password_matches(stored_hash, password) or found is None:
            await self.attempts.record(account_key)
            await self.attempts.record(address_key)
            raise Unauthenticated(BAD_CREDENTIALS)
        user = found[0]
        await self.attempts.clear(account_key)
        async with transaction(self.sessions) as session:
            if self.hasher.check_needs_rehash(stored_hash):
                new_hash = await asyncio.to_thread(self.hasher.hash, password)
                await self.repository.set_password_hash(session, user.user_id, new_hash)
            tokens = await self._open_session(session, user)
        return user, tokens

    async def _password_matches(self, stored_hash: str, password: str) -> bool:
        try:
            return await asyncio.to_thread(self.hasher.verify, stored_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    async def who_am_i(self, user_id: str) -> User:
        async with self.sessions() as session:
            user = await self.repository.user_by_id(session, user_id)
        if user is None:
            raise NotFound("the user of this token no longer exists")
        return user

    # ------------------------------------------------------------ sessions

    async def refresh(self, refresh_token: str) -> IssuedTokens:
        token_hash = hash_refresh_token(check_refresh_token(refresh_token))
        now = self.clock()
        async with transaction(self.sessions) as session:
            stored = await self.repository.refresh_token(session, token_hash)  # locked: one rotation wins
            verdict = judge_refresh(stored, now)
            if verdict == RefreshVerdict.VALID and stored is not None:
                user = await self.repository.user_by_id(session, stored.user_id)
                if user is not None:
                    await self.repository.mark_used(session, token_hash, now)
                    return await self._issue(session, user, stored.session_id)
            if verdict == RefreshVerdict.REUSED and stored is not None:
                # A rotated token came back: someone else holds this session. End it.
                await self.repository.revoke_session(session, stored.session_id, now)
        suffix = "; its session has been revoked" if verdict == RefreshVerdict.REUSED else ""
        raise Unauthenticated(BAD_REFRESH + suffix)

    async def logout(self, refresh_token: str, all_sessions: bool) -> int:
        token_hash = hash_refresh_token(check_refresh_token(refresh_token))
        now = self.clock()
        async with transaction(self.sessions) as session:
            stored = await self.repository.refresh_token(session, token_hash)
            if judge_refresh(stored, now) != RefreshVerdict.VALID or stored is None:
                raise Unauthenticated(BAD_REFRESH)
            if all_sessions:
                return await self.repository.revoke_all_sessions(session, stored.user_id, now)
            return await self.repository.revoke_session(session, stored.session_id, now)

    async def _open_session(self, session: AsyncSession, user: User) -> IssuedTokens:
        session_id = str(uuid.uuid4())
        await self.repository.add_session(session, session_id, user.user_id, self.clock())
        return await self._issue(session, user, session_id)

    async def _issue(self, session: AsyncSession, user: User, session_id: str) -> IssuedTokens:
        now = self.clock()
        refresh_token = new_refresh_token()
        await self.repository.add_refresh_token(
            session, hash_refresh_token(refresh_token), session_id, now, now + self.policy.refresh_ttl
        )
        return IssuedTokens(
            access_token=self.sign(access_claims(user, self.policy, now)),
            refresh_token=refresh_token,
            access_ttl=self.policy.access_ttl,
            refresh_ttl=self.policy.refresh_ttl,
        )

    # ------------------------------------------------------------ services

    def issue_service_token(self, service: str, credential: str) -> IssuedServiceToken:
        """A short-lived service token for a platform service that proves its name."""
        service, credential = check_service_name(service), check_credential(credential)
        if not self.platform_secret or not credential_matches(self.platform_secret, service, credential):
            raise Unauthenticated(f"this credential does not belong to service {service!r}")
        token = self.sign(service_claims(service, self.policy, self.clock()))
        return IssuedServiceToken(token, self.policy.service_ttl.total_seconds())

    # ---------------------------------------------------------------- keys

    def sign(self, claims: dict[str, object]) -> str:
        key = current_signing_key(self._keys, self.clock())
        if key is None:
            raise Unavailable("no signing key is active yet; retry in a moment")
        return jwt.encode(claims, self._loaded[key.kid].private, algorithm=ALGORITHM, headers={"kid": key.kid})

    def published(self) -> list[SigningKey]:
        lifetime = self.policy.access_ttl + self.key_settings.clock_skew
        return published_keys(self._keys, self.clock(), lifetime)

    def jwks(self) -> list[dict[str, str]]:
        return [self._loaded[key.kid].jwk for key in self.published()]

    async def key_for(self, kid: str) -> PyJWK | None:
        """The service verifies its own tokens (WhoAmI) with the keys it publishes."""
        if any(key.kid == kid for key in self.published()):
            return self._loaded[kid].verifier
        return None

    def _load(self, keys: list[SigningKey]) -> None:
        """Parse each key once (PEM parsing costs milliseconds; signing happens per request)."""
        for key in keys:
            if key.kid not in self._loaded:
                jwk = key.public_jwk()
                self._loaded[key.kid] = LoadedKey(key.private_key(), jwk, PyJWK(jwk))
        self._keys = keys

    async def refresh_keys(self, rotate_if_due: bool = True) -> None:
        """Reload the keys (another replica or an operator may have rotated them), and rotate
        when the signing key is old or missing. A key with nothing to sign yet is made active
        at once: no verifier can hold a stale key set before the first key exists."""
        now = self.clock()
        async with transaction(self.sessions) as session:
            keys = await self.repository.signing_keys(session)
            if rotate_if_due and due_for_rotation(keys, now, self.key_settings.rotate_after):
                ahead = self.key_settings.publish_ahead if keys else timedelta(0)
                keys = await self._rotate(session, keys, now, ahead)
        self._load(keys)

    async def rotate_keys(self) -> SigningKey:
        """Operator rotation: publish a successor now; it signs after `publish_ahead`."""
        now = self.clock()
        async with transaction(self.sessions) as session:
            keys = await self.repository.signing_keys(session)
            keys = await self._rotate(session, keys, now, self.key_settings.publish_ahead)
        self._load(keys)
        return max(keys, key=lambda key: key.active_from)

    async def _rotate(
        self, session: AsyncSession, keys: list[SigningKey], now: datetime, ahead: timedelta
    ) -> list[SigningKey]:
        successor, retiring = rotation_plan(keys, now, ahead)
        await self.repository.add_signing_key(session, successor)
        await self.repository.retire_keys(session, [key.kid for key in retiring], successor.active_from)
        return await self.repository.signing_keys(session)
