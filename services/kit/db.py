"""PostgreSQL access for services, traced: SQLAlchemy 2 async engines and sessions for
everything, and a plain asyncpg pool for the few hot single-statement reads.

Why two: on these machines a SQLAlchemy round trip costs ~280 µs of CPU where asyncpg alone
costs ~70 µs (pool checkout, execution context, result wrapping). For a read served thousands
of times a second that difference is most of the request, so those reads (and only those) go
through `HotReads`; writes and transactions stay on SQLAlchemy sessions."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import asyncpg
from opentelemetry import trace
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.trace import SpanKind
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from services.kit.telemetry import in_unsampled_trace

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


class HotReads:
    """Single-statement reads straight on asyncpg connections, each a CLIENT span like
    SQLAlchemy's.

    The connections wait in a plain queue rather than an asyncpg Pool: for one statement per
    checkout, the Pool's bookkeeping (a shielded task per release, idle timers, reset) cost as much
    CPU as the query itself (~13 µs each, measured here). What the Pool's release would repair,
    this drops: a connection whose statement did not complete (an error, a cancelled call) is
    closed, and its slot reconnects on next use."""

    def __init__(self, connect: Callable[[], Awaitable[asyncpg.Connection]], size: int, database: str) -> None:
        self._connect = connect
        self.database = database
        # A slot holds an open connection, or None until its first use. Last in, first out: a
        # quiet service keeps reusing one warm connection; only concurrency opens more.
        self._slots: asyncio.LifoQueue[asyncpg.Connection | None] = asyncio.LifoQueue()
        for _ in range(size):
            self._slots.put_nowait(None)
        self._in_use: set[asyncpg.Connection] = set()

    @classmethod
    async def open(cls, dsn: str, size: int = 10) -> HotReads:
        """`dsn` as for SQLAlchemy (postgresql+asyncpg://...) or plain postgresql://; connects
        once now, so a wrong address fails at start-up."""
        plain = dsn.replace("postgresql+asyncpg://", "postgresql://", 1)
        reads = cls(functools.partial(asyncpg.connect, plain), size, urlsplit(plain).path.lstrip("/"))
        await reads._fetchrow("SELECT 1", ())
        return reads

    async def fetchrow(self, name: str, sql: str, *arguments: object) -> asyncpg.Record | None:
        if in_unsampled_trace():  # the span would be dropped: don't build it
            return await self._fetchrow(sql, arguments)
        with _tracer.start_as_current_span(name, kind=SpanKind.CLIENT) as span:
            if span.is_recording():
                span.set_attributes({"db.system": "postgresql", "db.name": self.database, "db.statement": sql})
            return await self._fetchrow(sql, arguments)

    async def _fetchrow(self, sql: str, arguments: tuple[object, ...]) -> asyncpg.Record | None:
        connection = await self._slots.get()
        try:
            if connection is None or connection.is_closed():
                connection = None  # a slot without a usable connection until the connect succeeds
                connection = await self._connect()
            self._in_use.add(connection)
            row: asyncpg.Record | None = await connection.fetchrow(sql, *arguments)
        except BaseException:
            if connection is not None:
                self._in_use.discard(connection)
                connection.terminate()
            self._slots.put_nowait(None)
            raise
        self._in_use.discard(connection)
        self._slots.put_nowait(connection)
        return row

    async def close(self) -> None:
        """Close every connection, idle or in use (calls still running fail)."""
        for connection in self._in_use:
            connection.terminate()
        while not self._slots.empty():
            connection = self._slots.get_nowait()
            if connection is not None:
                await connection.close()
