"""ClickHouse access shared by the collector, the trace queries and tests."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from services.kit.clickhouse import sql_statements

SCHEMA_FILE = Path(__file__).resolve().parent / "schema" / "otel_traces.sql"
TRACES_DATABASE = "otel"
TRACES_TABLE = "otel_traces"


def connect(url: str, database: str = "default") -> Client:
    """A clickhouse-connect client for an http://host:port URL."""
    parsed = urlparse(url)
    return clickhouse_connect.get_client(
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or 8123,
        database=database,
        connect_timeout=3,
        send_receive_timeout=30,
    )


def apply_schema(client: Client, schema_file: Path = SCHEMA_FILE) -> None:
    for statement in sql_statements(schema_file.read_text()):
        client.command(statement)
