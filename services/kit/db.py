"""PostgreSQL access for services, traced: SQLAlchemy 2 async engines and sessions for
everything, and a plain asyncpg pool for the few hot single-statement reads.

Why two: on these machines a SQLAlchemy round trip costs ~280 µs of CPU where asyncpg alone
costs ~70 µs (pool checkout, execution context, result wrapping). For a read served thousands
of times a second that difference is most of the request, so those reads (and only those) go
through `HotReads`; writes and transactions stay on SQLAlchemy sessions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from opentelemetry import trace
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.trace import SpanKind
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

SessionFactory = async_sessionmaker[AsyncSession]
_tracer = trace.get_tracer("services.kit.db")


def create_engine(dsn: str, *, pool_size: int = 10) -> AsyncEngine:
    """An asyncpg-backed engine whose statements are spans of the current trace."""
    engine = create_async_engine(dsn, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800)
    SQLAlchemyInstrumentor().instrument(engine=engine.sync_engine, enable_commenter=False)
    return engine


def session_factory(engine: AsyncEngine) -> SessionFactory:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def transaction(sessions: SessionFactory) -> AsyncIterator[AsyncSession]:
    """A session whose work commits on success and rolls back on any error."""
    async with sessions() as session, session.begin():
        yield session


async def skip_reset(connection: asyncpg.Connection) -> None:
    """A pool `reset` that does nothing (see HotReads.open)."""


class HotReads:
    """Single-statement reads straight on asyncpg, each a CLIENT span like SQLAlchemy's."""

    def __init__(self, pool: asyncpg.Pool, database: str) -> None:
        self.pool = pool
        self.database = database

    @classmethod
    async def open(cls, dsn: str, size: int = 10) -> HotReads:
        """`dsn` as for SQLAlchemy (postgresql+asyncpg://...) or plain postgresql://."""
        plain = dsn.replace("postgresql+asyncpg://", "postgresql://", 1)
        # These connections only ever run single SELECTs: no session state to reset between
        # uses, so skip asyncpg's reset round trip (RESET ALL, UNLISTEN, ...) on every release.
        pool = await asyncpg.create_pool(plain, min_size=1, max_size=size, reset=skip_reset)
        return cls(pool, plain.rsplit("/", 1)[-1])

    async def fetchrow(self, name: str, sql: str, *arguments: object) -> asyncpg.Record | None:
        with _tracer.start_as_current_span(name, kind=SpanKind.CLIENT) as span:
            if span.is_recording():
                span.set_attributes({"db.system": "postgresql", "db.name": self.database, "db.statement": sql})
            async with self.pool.acquire() as connection:
                row: asyncpg.Record | None = await connection.fetchrow(sql, *arguments)
                return row

    async def close(self) -> None:
        await self.pool.close()
