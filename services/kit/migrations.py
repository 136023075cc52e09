"""Alembic migrations, one history per service database.

Each service keeps `migrations/` (versions + a two-line env.py that calls `run_env`). The
service applies its migrations at start-up with `upgrade_to_head`; `nox -s migrations`
and tests do the same.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import Connection, MetaData
from sqlalchemy.ext.asyncio import create_async_engine


def alembic_config(script_location: Path, dsn: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.set_main_option("sqlalchemy.url", dsn.replace("%", "%%"))  # configparser interpolation
    return config


async def upgrade_to_head(script_location: Path, dsn: str) -> None:
    """Apply every pending migration. Alembic is synchronous, so it runs in a worker thread
    (where env.py may start its own event loop)."""
    await asyncio.to_thread(command.upgrade, alembic_config(script_location, dsn), "head")


def run_env(target_metadata: MetaData | None = None) -> None:
    """The body of every service's migrations/env.py (online mode, asyncpg)."""
    dsn = context.config.get_main_option("sqlalchemy.url")
    if dsn is None:
        raise RuntimeError("sqlalchemy.url is not configured for this migration run")

    def migrate(connection: Connection) -> None:
        context.configure(connection=connection, target_metadata=target_metadata, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()

    async def run() -> None:
        engine = create_async_engine(dsn)
        try:
            async with engine.connect() as connection:
                await connection.run_sync(migrate)
                await connection.commit()
        finally:
            await engine.dispose()

    asyncio.run(run())
