"""The testcontainers backend: the compose stack as an ephemeral, per-suite stack.

`compose_stack()` starts docker-compose.yml (optionally on moved ports), waits for every
healthcheck, hands back the same `StackEndpoints` the native launcher gives, and removes the
containers afterwards. `docker_unavailable()` is the 2 ms probe tests use to skip cleanly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from simulations.components.base import ComponentContext
from simulations.compose import COMPOSE_FILE, COMPOSE_PLATFORM_SECRET, COMPOSE_SERVICE_OF
from simulations.endpoints import StackEndpoints
from simulations.platform import PLATFORM
from simulations.rundir import ComponentRecord, StackState
from simulations.topology import resolve_ports


def docker_unavailable() -> str | None:
    """Why Docker cannot be used here, or None when an engine answers."""
    try:
        import docker

        docker.from_env(timeout=2).ping()
    except Exception as error:
        return f"no Docker engine answers ({type(error).__name__}); the compose stack is checked statically instead"
    return None


def compose_state(environ: Mapping[str, str] = os.environ) -> StackState:
    """Endpoints of a compose stack, computed exactly as the native components compute theirs."""
    components = {}
    for cls in PLATFORM.components:
        if cls.name not in COMPOSE_SERVICE_OF:
            continue
        ports = resolve_ports(cls, environ)
        ctx = ComponentContext(name=cls.name, data_dir=Path(), cache_dir=Path(), ports=ports, endpoints_of={})
        components[cls.name] = ComponentRecord(
            name=cls.name,
            version=cls.version,
            pid=0,
            ports=ports,
            endpoints=cls(ctx).endpoints(),
            log=f"docker compose logs {COMPOSE_SERVICE_OF[cls.name]}",
            healthy=True,
            ready_after_s=0.0,
        )
    return StackState(supervisor_pid=0, phase="healthy", components=components)


@contextmanager
def compose_stack(port_overrides: Mapping[str, str] | None = None) -> Iterator[StackEndpoints]:
    """Start docker-compose.yml with testcontainers; yield its endpoints; remove it afterwards."""
    from testcontainers.compose import DockerCompose

    environ = {**os.environ, **(port_overrides or {})}
    env_file = COMPOSE_FILE.parent / ".run" / "compose.env"
    env_file.parent.mkdir(parents=True, exist_ok=True)
    env_file.write_text("".join(f"{key}={value}\n" for key, value in (port_overrides or {}).items()))
    compose = DockerCompose(
        context=str(COMPOSE_FILE.parent),
        compose_file_name=COMPOSE_FILE.name,
        env_file=str(env_file),
        wait=True,
        pull=True,
    )
    with compose:
        yield StackEndpoints(compose_state(environ), environ.get("KP_PLATFORM_SECRET", COMPOSE_PLATFORM_SECRET))
