"""simulations.profiles: the stacks tests and benchmarks start are declared once, and no two of
them (nor any with the developer's default stack) can take the same port."""

from __future__ import annotations

import pytest

from simulations.platform import PLATFORM
from simulations.profiles import PROFILES, Profile, profile
from simulations.topology import resolve_ports

# Linux hands out client ports from 32768 up (net.ipv4.ip_local_port_range); a listening port in
# that range can be held by any outgoing connection at the moment a stack starts.
EPHEMERAL_PORTS_START = 32768


def ports_of(stack: Profile) -> dict[str, int]:
    environ = {"KP_PORT_OFFSET": str(stack.port_offset)}
    ports = {
        f"{stack.name}: {component.name} {role}": port
        for component in PLATFORM.subset(stack.components).components
        for role, port in resolve_ports(component, environ).items()
    }
    ports |= {f"{stack.name}: helper {n}": stack.extra_port(n) for n in range(len(stack.extra_ports))}
    return ports


@pytest.mark.parametrize("name", list(PROFILES))
def test_a_profile_s_ports_are_distinct_and_below_the_ephemeral_range(name: str) -> None:
    ports = ports_of(PROFILES[name])
    assert len(set(ports.values())) == len(ports), ports
    assert max(ports.values()) < EPHEMERAL_PORTS_START, ports


def test_no_two_profiles_share_a_port() -> None:
    owner: dict[int, str] = {}
    for stack in PROFILES.values():
        for label, port in ports_of(stack).items():
            assert port not in owner, f"{label} and {owner.get(port)} both use port {port}"
            owner[port] = label


def test_profiles_name_components_of_the_topology() -> None:
    for stack in PROFILES.values():
        PLATFORM.subset(stack.components)  # raises on an unknown name
    with pytest.raises(KeyError, match="no stack profile named 'nope'"):
        profile("nope")
