"""A service's Alembic history applied by the kit to a real PostgreSQL database, and every
service's migrations compared with the tables its repository uses."""

from __future__ import annotations

import textwrap
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import Column, Integer, MetaData, Table, Text

from fixtures.postgres import scratch_database
from services.auth import repository as auth_repository
from services.auth.app import MIGRATIONS as AUTH_MIGRATIONS
from services.chat import repository as chat_repository
from services.chat.app import MIGRATIONS as CHAT_MIGRATIONS
from services.kit.migrations import schema_drift, upgrade_to_head
from services.kit.outbox import kit_metadata
from services.knowledge import repository as knowledge_repository
from services.knowledge.app import MIGRATIONS as KNOWLEDGE_MIGRATIONS
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


# Every service whose store is PostgreSQL: its migrations, and the tables its code uses.
SERVICE_SCHEMAS = {
    "auth": (auth_repository.metadata, AUTH_MIGRATIONS),
    "knowledge": (knowledge_repository.metadata, KNOWLEDGE_MIGRATIONS),
    "chat": (chat_repository.metadata, CHAT_MIGRATIONS),
}


def with_kit_tables(metadata: MetaData) -> MetaData:
    """The service's tables and the kit's (outbox, processed events), which its migrations create too."""
    combined = MetaData()
    for table in (*metadata.tables.values(), *kit_metadata.tables.values()):
        table.to_metadata(combined)
    return combined


@pytest.mark.parametrize("service", list(SERVICE_SCHEMAS))
async def test_a_service_s_migrations_build_exactly_the_tables_its_repository_uses(
    stack: StackEndpoints, service: str
) -> None:
    metadata, migrations = SERVICE_SCHEMAS[service]
    async with scratch_database(stack.postgres_dsn(), prefix=f"{service}_schema") as dsn:
        alembic_dsn = dsn.replace("postgresql://", "postgresql+asyncpg://")
        await upgrade_to_head(migrations, alembic_dsn)
        drift = await schema_drift(alembic_dsn, with_kit_tables(metadata))
    assert drift == [], f"{service}: its migrations and its repository's tables differ: {drift}"


async def test_drift_is_found_when_there_is_some(stack: StackEndpoints, tmp_path: Path) -> None:
    """The check above can fail: a history whose last revision the tables do not know of."""
    history = write_history(tmp_path / "migrations")
    notes = MetaData()
    Table("notes", notes, Column("id", Integer, primary_key=True), Column("body", Text))
    async with scratch_database(stack.postgres_dsn(), prefix="kit_drift") as dsn:
        alembic_dsn = dsn.replace("postgresql://", "postgresql+asyncpg://")
        await upgrade_to_head(history, alembic_dsn)
        drift = await schema_drift(alembic_dsn, with_kit_tables(notes))
    assert [change[0] for change in drift] == ["remove_column"], drift
    _, _, table, column = drift[0]
    assert (table, column.name) == ("notes", "author")
