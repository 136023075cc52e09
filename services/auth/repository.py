"""The auth service's stores: PostgreSQL (users, sessions, refresh tokens, signing keys) and
Redis (login attempt counters)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    Row,
    String,
    Table,
    Text,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.auth.domain import SigningKey, StoredRefreshToken, User
from services.kit.errors import AlreadyExists

metadata = MetaData()

users = Table(
    "users",
    metadata,
    Column("user_id", UUID(as_uuid=False), primary_key=True),
    Column("email", String(254), nullable=False, unique=True),
    Column("display_name", String(100), nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

sessions = Table(
    "sessions",
    metadata,
    Column("session_id", UUID(as_uuid=False), primary_key=True),
    Column("user_id", UUID(as_uuid=False), ForeignKey("users.user_id", ondelete="CASCADE"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Index("sessions_by_user", "user_id"),
)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("session_id", UUID(as_uuid=False), ForeignKey("sessions.session_id", ondelete="CASCADE"), nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True), nullable=True),
)

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("private_pem", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("active_from", DateTime(timezone=True), nullable=False),
    Column("retired_at", DateTime(timezone=True), nullable=True),
)


def user_of(row: Row[Any]) -> User:
    return User(user_id=str(row.user_id), email=row.email, display_name=row.display_name, created_at=row.created_at)


class AuthRepository:
    """Every query of the auth database, inside the caller's transaction."""

    async def add_user(self, session: AsyncSession, user: User, password_hash: str) -> None:
        try:
            async with session.begin_nested():
                await session.execute(
                    users.insert().values(
                        user_id=user.user_id,
                        email=user.email,
                        display_name=user.display_name,
                        password_hash=password_hash,
                        created_at=user.created_at,
                    )
                )
        except IntegrityError as error:
            raise AlreadyExists(f"a user with email {user.email} already exists; log in instead") from error

    async def user_with_password(self, session: AsyncSession, email: str) -> tuple[User, str] | None:
        row = (await session.execute(select(users).where(users.c.email == email))).first()
        return (user_of(row), row.password_hash) if row else None

    async def user_by_id(self, session: AsyncSession, user_id: str) -> User | None:
        row = (await session.execute(select(users).where(users.c.user_id == user_id))).first()
        return user_of(row) if row else None

    async def set_password_hash(self, session: AsyncSession, user_id: str, password_hash: str) -> None:
        await session.execute(update(users).where(users.c.user_id == user_id).values(password_hash=password_hash))

    async def add_session(self, session: AsyncSession, session_id: str, user_id: str, now: datetime) -> None:
        await session.execute(sessions.insert().values(session_id=session_id, user_id=user_id, created_at=now))

    async def add_refresh_token(
        self, session: AsyncSession, token_hash: str, session_id: str, now: datetime, expires_at: datetime
    ) -> None:
        await session.execute(
            refresh_tokens.insert().values(
                token_hash=token_hash, session_id=session_id, issued_at=now, expires_at=expires_at
            )
        )

    async def refresh_token(self, session: AsyncSession, token_hash: str) -> StoredRefreshToken | None:
        """The token and its session, locked for the rest of the transaction (one rotation wins)."""
        row = (
            await session.execute(
                select(
                    refresh_tokens.c.session_id,
                    sessions.c.user_id,
                    refresh_tokens.c.expires_at,
                    refresh_tokens.c.used_at,
                    sessions.c.revoked_at,
                )
                .join(sessions, sessions.c.session_id == refresh_tokens.c.session_id)
                .where(refresh_tokens.c.token_hash == token_hash)
                .with_for_update(of=refresh_tokens)
            )
        ).first()
        if row is None:
            return None
        return StoredRefreshToken(str(row.session_id), str(row.user_id), row.expires_at, row.used_at, row.revoked_at)

    async def mark_used(self, session: AsyncSession, token_hash: str, now: datetime) -> None:
        await session.execute(
            update(refresh_tokens).where(refresh_tokens.c.token_hash == token_hash).values(used_at=now)
        )

    async def revoke_session(self, session: AsyncSession, session_id: str, now: datetime) -> int:
        result = await session.execute(
            update(sessions)
            .where(sessions.c.session_id == session_id, sessions.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def revoke_all_sessions(self, session: AsyncSession, user_id: str, now: datetime) -> int:
        result = await session.execute(
            update(sessions)
            .where(sessions.c.user_id == user_id, sessions.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    # -- signing keys

    async def signing_keys(self, session: AsyncSession) -> list[SigningKey]:
        rows = (await session.execute(select(signing_keys))).all()
        return [SigningKey(r.kid, r.private_pem, r.created_at, r.active_from, r.retired_at) for r in rows]

    async def add_signing_key(self, session: AsyncSession, key: SigningKey) -> None:
        await session.execute(
            signing_keys.insert().values(
                kid=key.kid,
                private_pem=key.private_pem,
                created_at=key.created_at,
                active_from=key.active_from,
                retired_at=key.retired_at,
            )
        )

    async def retire_keys(self, session: AsyncSession, kids: list[str], at: datetime) -> None:
        if kids:
            await session.execute(update(signing_keys).where(signing_keys.c.kid.in_(kids)).values(retired_at=at))


class LoginAttempts:
    """Rolling-window counters in Redis: failed logins per account, attempts per address.

    Each counter is a sorted set of attempt times; counting drops entries older than the
    window, so a burst ages out smoothly instead of resetting at a boundary."""

    def __init__(self, redis: aioredis.Redis, window_s: float) -> None:
        self.redis = redis
        self.window_s = window_s

    @staticmethod
    def account_key(email: str) -> str:
        return f"auth:login-failures:{email}"

    @staticmethod
    def address_key(address: str) -> str:
        return f"auth:login-attempts:{address}"

    async def count(self, key: str) -> int:
        now = time.time()
        pipe = self.redis.pipeline()
        pipe.zremrangebyscore(key, 0, now - self.window_s)
        pipe.zcard(key)
        _, count = await pipe.execute()
        return int(count)

    async def record(self, key: str) -> None:
        now = time.time()
        pipe = self.redis.pipeline()
        pipe.zadd(key, {f"{now:.6f}:{id(pipe)}": now})
        pipe.expire(key, int(self.window_s) + 1)
        await pipe.execute()

    async def clear(self, key: str) -> None:
        await self.redis.delete(key)
