"""A component that cannot start says which one, why, and what to do about it.

(A component process that dies at once during start-up is covered by
tests/unit/test_sim_launcher.py::test_process_exiting_during_start_up.)
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulations.components.base import ComponentContext, ComponentError, running_as_root
from simulations.components.kafka import Kafka
from simulations.components.postgres import PostgreSQL


def context(name: str, tmp_path: Path, ports: dict[str, int]) -> ComponentContext:
    data_dir = tmp_path / "run" / name
    data_dir.mkdir(parents=True)
    return ComponentContext(name=name, data_dir=data_dir, cache_dir=tmp_path / "cache", ports=ports, endpoints_of={})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def assert_explains(error: ComponentError, component: str) -> None:
    """The message shown to the user carries all three parts."""
    assert error.component == component
    assert error.cause
    assert error.remedy
    assert str(error) == f"{component}: {error.cause} (remedy: {error.remedy})"


# ----------------------------------------------------------------- kafka


@pytest.fixture
def kafka(tmp_path: Path) -> Kafka:
    return Kafka(context("kafka", tmp_path, {"broker": free_port(), "controller": free_port()}))


@pytest.fixture
def empty_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH with nothing on it but what the test puts there, and no JAVA_HOME."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    return folder


def test_kafka_without_java(kafka: Kafka, empty_path: Path) -> None:
    with pytest.raises(ComponentError) as caught:
        kafka.preflight()
    error = caught.value
    assert_explains(error, "kafka")
    assert "Java not found" in error.cause
    assert "JAVA_HOME" in error.cause
    assert "apt-get install openjdk-17-jre-headless" in error.remedy
    assert "JAVA_HOME" in error.remedy


def test_kafka_with_java_home_that_holds_no_java(
    kafka: Kafka, empty_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_a_jdk = tmp_path / "jdk"
    not_a_jdk.mkdir()
    monkeypatch.setenv("JAVA_HOME", str(not_a_jdk))
    with pytest.raises(ComponentError) as caught:
        kafka.preflight()
    error = caught.value
    assert_explains(error, "kafka")
    assert str(not_a_jdk / "bin" / "java") in error.cause
    assert f"JAVA_HOME={not_a_jdk}" in error.cause
    assert "JAVA_HOME" in error.remedy


def test_kafka_with_too_old_java(kafka: Kafka, empty_path: Path) -> None:
    java = empty_path / "java"
    java.write_text("#!/bin/sh\necho 'openjdk version \"11.0.22\" 2024-01-16' >&2\n")
    java.chmod(0o755)
    with pytest.raises(ComponentError) as caught:
        kafka.preflight()
    error = caught.value
    assert_explains(error, "kafka")
    assert f"needs Java 17+, {java} is Java 11" in error.cause
    assert "openjdk-17" in error.remedy
    assert "JAVA_HOME" in error.remedy


# ----------------------------------------------------------------- postgres


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[PostgreSQL]:
    """A PostgreSQL component on a free port no stack uses. As root its cluster lives in the
    machine's shared home, keyed by port: whatever this test puts there is removed after."""
    for _ in range(20):
        component = PostgreSQL(context("postgres", tmp_path, {"sql": free_port()}))
        if not component.data_dir.exists():
            break
    else:
        pytest.fail("no free port whose data folder is unused")
    yield component
    if running_as_root():
        shutil.rmtree(component.data_dir, ignore_errors=True)


async def test_postgres_data_folder_that_is_not_a_cluster(postgres: PostgreSQL) -> None:
    folder = postgres.data_dir
    if running_as_root():
        # A kept run: its run folder links to the cluster folder in the shared home.
        (postgres.ctx.data_dir / "pgdata").symlink_to(folder)
    folder.mkdir()
    (folder / "notes.txt").write_text("not a cluster")

    with pytest.raises(ComponentError) as caught:
        await postgres.prepare()
    error = caught.value
    assert_explains(error, "postgres")
    assert f"data folder {folder} exists but is not a PostgreSQL cluster" in error.cause
    assert f"rm -rf {folder}" in error.remedy
    assert (folder / "notes.txt").read_text() == "not a cluster", "what is there is left for the user to judge"
