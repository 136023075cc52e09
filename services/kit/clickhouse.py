"""ClickHouse for a service: an async client, the service's own database migrated to head, and
the health probe.

Migrations are numbered `.sql` files in the service's `migrations/` folder (`0001_events.sql`,
…), applied in order at start and recorded in the database's `schema_migrations` table. A
`{database}` placeholder in a file names the service's database. ClickHouse has no
transactions for DDL, so every statement is written to be re-run safely (`IF NOT EXISTS`): a
start that died half-way through a file, or two instances starting at once, apply it again
harmlessly.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import clickhouse_connect
from clickhouse_connect.driver.asyncclient import AsyncClient

from services.kit.health import Dependency
from services.kit.telemetry import untraced

log = logging.getLogger("services.kit.clickhouse")

MIGRATION_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
DATABASE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


async def open_clickhouse(url: str, database: str = "default") -> AsyncClient:
    """An async clickhouse-connect client for an http://host:port URL."""
    parsed = urlparse(url)
    return await clickhouse_connect.get_async_client(
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or 8123,
        database=database,
        connect_timeout=3,
        send_receive_timeout=60,
    )


def sql_statements(sql: str) -> list[str]:
    """The statements of a .sql file: `--` comments removed, split on ';'."""
    without_comments = re.sub(r"--[^\n]*", "", sql)
    return [statement.strip() for statement in without_comments.split(";") if statement.strip()]


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def read_migrations(folder: Path, database: str) -> list[Migration]:
    """The migrations in `folder`, in version order, with `{database}` filled in."""
    if not DATABASE_NAME.match(database):
        raise ValueError(f"{database!r} is not a plain ClickHouse database name")
    migrations = []
    for path in sorted(folder.glob("*.sql")):
        matched = MIGRATION_FILE.match(path.name)
        if matched is None:
            raise ValueError(f"{path.name}: migration files are named NNNN_words.sql")
        statements = tuple(sql_statements(path.read_text().replace("{database}", database)))
        migrations.append(Migration(int(matched.group(1)), path.stem, statements))
    versions = [migration.version for migration in migrations]
    if len(set(versions)) != len(versions):
        raise ValueError(f"{folder}: two migrations share a version number")
    return migrations


async def migrate(client: AsyncClient, database: str, folder: Path) -> list[str]:
    """Create the database if needed and apply the migrations it has not recorded; the names
    of those applied."""
    migrations = read_migrations(folder, database)
    with untraced():
        await client.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
        await client.command(
            f"CREATE TABLE IF NOT EXISTS `{database}`.schema_migrations "
            "(version UInt32, name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
            "ENGINE = MergeTree ORDER BY version"
        )
        result = await client.query(f"SELECT DISTINCT version FROM `{database}`.schema_migrations")
        applied_before = {int(row[0]) for row in result.result_rows}
        applied = []
        for migration in migrations:
            if migration.version in applied_before:
                continue
            for statement in migration.statements:
                await client.command(statement)
            await client.insert(
                f"`{database}`.schema_migrations", [[migration.version, migration.name]], ["version", "name"]
            )
            applied.append(migration.name)
            log.info("applied ClickHouse migration %s to %s", migration.name, database)
    return applied


def clickhouse_dependency(client: AsyncClient, name: str = "clickhouse") -> Dependency:
    async def probe() -> None:
        with untraced():
            await client.command("SELECT 1")

    return Dependency(name, probe)
