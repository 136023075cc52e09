"""Alembic migrations, one history per service database.

Each service keeps `migrations/` (versions + a two-line env.py that calls `run_env`). The
service applies its migrations at start-up with `upgrade_to_head`; tests do the same.

A table is described twice, by necessity: a migration freezes the schema as it was when it was
written (it must not import today's table definitions, or old revisions would change under
it), while the repository's `Table`s describe it as the code uses it now. `schema_drift`
compares the two on a real database, migrated to head, with Alembic's own comparison (the
one autogenerate uses); tests/system/test_kit_migrations.py runs it for every service.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command, context
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
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


async def schema_drift(dsn: str, metadata: MetaData) -> list[Any]:
    """How the database at `dsn` differs from `metadata` (tables, columns, types, nullability,
    indexes, unique and foreign keys), as Alembic's autogenerate would find it; [] when the
    migrations and the repository's tables agree. Tables the metadata does not describe (the
    alembic_version bookkeeping) are not differences."""

    def compare(connection: Connection) -> list[Any]:
        migration = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "include_name": lambda name, kind, parent: kind != "table" or name in metadata.tables,
            },
        )
        return list(compare_metadata(migration, metadata))

    engine = create_async_engine(dsn)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(compare)
    finally:
        await engine.dispose()
