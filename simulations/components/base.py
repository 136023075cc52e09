"""What a native component is.

A component is one real server process: a pinned version, a command line, a readiness probe
that speaks the server's own protocol, and a folder in the run directory for its data and log.
The launcher (`simulations.launcher`) owns processes; a component only describes itself.
"""

from __future__ import annotations

import os
import pwd
import signal
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar


class ComponentError(Exception):
    """A component could not start: which one, why, and what to do about it."""

    def __init__(self, component: str, cause: str, remedy: str) -> None:
        super().__init__(f"{component}: {cause} (remedy: {remedy})")
        self.component = component
        self.cause = cause
        self.remedy = remedy


class NotReady(Exception):
    """A readiness probe found the component not (yet) serving."""


@dataclass(frozen=True)
class Launch:
    """How to start a component's process."""

    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    # Servers that refuse to run as root (PostgreSQL) run as this user when we are root.
    run_as_when_root: str | None = None
    # The signal that makes this server shut down quickly and cleanly.
    stop_signal: signal.Signals = signal.SIGTERM


@dataclass(frozen=True)
class ComponentContext:
    """What a component may know about the run it belongs to."""

    name: str
    data_dir: Path  # this component's own folder in the run directory
    cache_dir: Path  # shared across runs: downloaded jars, initialised templates
    ports: Mapping[str, int]  # role -> port, already resolved for this run
    endpoints_of: Mapping[str, Mapping[str, str]]  # other components' endpoints, by name
    settings: Mapping[str, str] = field(default_factory=dict)
    # The stack's platform secret, from which services' and the edge's credentials derive.
    platform_secret: str = field(default="", repr=False)

    def port(self, role: str) -> int:
        return self.ports[role]


class Component(ABC):
    """A real server the stack needs. Subclasses set the class attributes and the three steps."""

    name: ClassVar[str]
    version: ClassVar[str]
    default_ports: ClassVar[Mapping[str, int]]  # role -> default port
    depends_on: ClassVar[tuple[str, ...]] = ()
    start_timeout_s: ClassVar[float] = 30.0

    def __init__(self, ctx: ComponentContext) -> None:
        self.ctx = ctx

    def preflight(self) -> None:
        """Check what the component needs before anything starts (binaries, Java, versions)."""

    async def prepare(self) -> None:
        """Create data directories and configuration files. Runs before `launch`."""

    @abstractmethod
    def launch(self) -> Launch:
        """The command line of the server process."""

    @abstractmethod
    async def probe(self) -> None:
        """One readiness check over the server's own protocol; raise NotReady when not serving."""

    async def provision(self) -> None:
        """Create what the stack needs inside the running server (databases, topics, tables)."""

    @abstractmethod
    def endpoints(self) -> dict[str, str]:
        """Addresses clients use, by name (for example {"bootstrap": "127.0.0.1:19092"})."""

    def error(self, cause: str, remedy: str) -> ComponentError:
        return ComponentError(self.name, cause, remedy)


def running_as_root() -> bool:
    return os.geteuid() == 0


def user_ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid
