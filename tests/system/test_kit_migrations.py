"""A service's Alembic history applied by the kit to a real PostgreSQL database."""

from __future__ import annotations

import textwrap
from pathlib import Path

import asyncpg

from fixtures.postgres import scratch_database
from services.kit.migrations import upgrade_to_head
from simulations.endpoints import StackEndpoints

ENV_PY = """
from services.kit.migrations import run_env

run_env()
"""

FIRST_REVISION = '''
"""notes and the kit tables"""
import sqlalchemy as sa
from alembic import op

from services.kit.outbox import create_kit_tables

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table("notes", sa.Column("id", sa.Integer, primary_key=True), sa.Column("body", sa.Text))
    create_kit_tables(op.get_bind())
'''

SECOND_REVISION = '''
"""a column added later"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.add_column("notes", sa.Column("author", sa.Text, nullable=True))
'''


def write_history(folder: Path) -> Path:
    (folder / "versions").mkdir(parents=True)
    (folder / "env.py").write_text(textwrap.dedent(ENV_PY))
    (folder / "versions" / "0001_notes.py").write_text(FIRST_REVISION)
    (folder / "versions" / "0002_author.py").write_text(SECOND_REVISION)
    return folder


async def test_migrations_reach_head_and_a_second_run_changes_nothing(stack: StackEndpoints, tmp_path: Path) -> None:
    history = write_history(tmp_path / "migrations")
    async with scratch_database(stack.postgres_dsn(), prefix="kit_migrations") as dsn:
        alembic_dsn = dsn.replace("postgresql://", "postgresql+asyncpg://")
        await upgrade_to_head(history, alembic_dsn)
        await upgrade_to_head(history, alembic_dsn)
        connection = await asyncpg.connect(dsn)
        try:
            tables = {row["tablename"] for row in await connection.fetch("SELECT tablename FROM pg_tables")}
            version = await connection.fetchval("SELECT version_num FROM alembic_version")
            columns = {
                row["column_name"]
                for row in await connection.fetch(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = 'notes'"
                )
            }
        finally:
            await connection.close()
    assert {"notes", "outbox", "processed_events", "alembic_version"} <= tables
    assert version == "0002"
    assert columns == {"id", "body", "author"}
