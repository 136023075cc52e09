"""services.kit.settings: where a service finds its databases."""

from __future__ import annotations

from services.kit.settings import ServiceSettings


def test_a_database_is_reached_over_tcp_by_default() -> None:
    settings = ServiceSettings(postgres_dsn="postgresql://postgres@127.0.0.1:15432")
    assert settings.database_dsn("knowledge") == "postgresql+asyncpg://postgres@127.0.0.1:15432/knowledge"


def test_a_local_server_is_reached_through_its_unix_socket() -> None:
    settings = ServiceSettings(
        postgres_dsn="postgresql://app:secret@127.0.0.1:16432", postgres_socket_dir="/tmp/pg data"
    )
    assert settings.database_dsn("chat") == "postgresql+asyncpg://app:secret@/chat?host=%2Ftmp%2Fpg%20data&port=16432"
