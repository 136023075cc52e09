"""The one description of the stack: which components exist, in what order, on which ports.

The native launcher, `status`, the pytest plugin and the benchmarks all read this table; the
compose file is checked against it. Adding a component means adding one entry to `COMPONENTS`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from simulations.components.base import Component

PORT_OFFSET_ENV = "KP_PORT_OFFSET"


def port_override_env(component: str, role: str) -> str:
    """Environment variable that pins one port, e.g. KP_KAFKA_BROKER_PORT."""
    return f"KP_{component}_{role}_PORT".upper().replace("-", "_")


def resolve_ports(component: type[Component], environ: Mapping[str, str] = os.environ) -> dict[str, int]:
    """Default ports shifted by KP_PORT_OFFSET, then any per-port override."""
    offset = int(environ.get(PORT_OFFSET_ENV, "0"))
    ports = {}
    for role, default in component.default_ports.items():
        pinned = environ.get(port_override_env(component.name, role))
        ports[role] = int(pinned) if pinned else default + offset
    return ports


@dataclass(frozen=True)
class Topology:
    """Components in start order, with the settings each one is provisioned with."""

    components: Sequence[type[Component]]
    settings: Mapping[str, Mapping[str, str]]

    def names(self) -> list[str]:
        return [component.name for component in self.components]

    def get(self, name: str) -> type[Component]:
        for component in self.components:
            if component.name == name:
                return component
        raise KeyError(f"no component named {name!r}; known: {', '.join(self.names())}")

    def waves(self) -> list[list[type[Component]]]:
        """Groups that can start together: each group depends only on earlier groups."""
        return start_waves(self.components)

    def subset(self, wanted: Iterable[str]) -> Topology:
        """The named components plus everything they depend on, in start order."""
        needed: set[str] = set()
        pending = list(wanted)
        while pending:
            name = pending.pop()
            if name not in needed:
                needed.add(name)
                pending.extend(self.get(name).depends_on)
        return Topology([c for c in self.components if c.name in needed], self.settings)


def start_waves(components: Sequence[type[Component]]) -> list[list[type[Component]]]:
    known = {component.name for component in components}
    for component in components:
        missing = [dep for dep in component.depends_on if dep not in known]
        if missing:
            raise ValueError(f"{component.name} depends on unknown component(s): {', '.join(missing)}")
    started: set[str] = set()
    waves: list[list[type[Component]]] = []
    remaining = list(components)
    while remaining:
        wave = [c for c in remaining if set(c.depends_on) <= started]
        if not wave:
            cycle = ", ".join(c.name for c in remaining)
            raise ValueError(f"dependency cycle among: {cycle}")
        waves.append(wave)
        started.update(c.name for c in wave)
        remaining = [c for c in remaining if c.name not in started]
    return waves
