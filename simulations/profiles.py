"""The stacks that tests and benchmarks start beside the developer's, declared once.

A profile names a stack: its port offset (every port of the topology moved by it, so no two
stacks collide, nor any of them with the developer's at offset 0), the components it starts
(with everything they depend on) and the settings its processes see. Its run directory is a
scratch folder of its own (`simulations.launcher.isolated_launcher`, or the test's tmp path
for stacks driven through the command line). tests/unit/test_sim_profiles.py checks that no
two profiles share a port and that every port stays below Linux's ephemeral range.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

LEXICAL = {"KP_EMBEDDING_MODEL": "lexical-hash-384"}


@dataclass(frozen=True)
class Profile:
    name: str
    port_offset: int
    components: tuple[str, ...]
    environ: Mapping[str, str] = field(default_factory=dict)
    # Ports the profile's own helpers listen on (e.g. a benchmark's echo servers), before the offset.
    extra_ports: tuple[int, ...] = ()

    def extra_port(self, index: int) -> int:
        return self.extra_ports[index] + self.port_offset


DEFAULT = Profile("default", 0, ("envoy",))

PROFILES: dict[str, Profile] = {
    profile.name: profile
    for profile in (
        DEFAULT,
        Profile("bench-traces", 700, ("envoy",)),
        Profile("bench-trace-overhead", 750, ("otlp",), extra_ports=(15900,)),
        Profile("bench-getdocument", 800, ("envoy",), extra_ports=(15950, 15951)),
        Profile("lifecycle-down", 1000, ("envoy",)),
        Profile("lifecycle-ctrl-c", 1100, ("postgres", "redis", "smtp")),
        Profile("lifecycle-killed", 1200, ("postgres", "redis", "dynamodb")),
        Profile("lifecycle-busy-port", 1300, ("postgres", "redis")),
        Profile("receiver", 1400, ("otlp",)),
        Profile("vector-restart", 1500, ("auth", "knowledge", "vector"), LEXICAL),
        Profile("bench-search", 1600, ("envoy",), {**LEXICAL, "KP_TRACE_SAMPLE_RATIO": "0.1"}),
        # The default configuration (all-MiniLM-L6-v2, every span traced): the mixed case measures it.
        Profile("bench-search-mixed", 1900, ("envoy",)),
        Profile("quiet-traces", 1800, ("otlp", "auth", "knowledge")),
        # Canvas instances killed and Redis restarted under live sessions; a short send queue
        # so a client that stops reading falls behind in seconds.
        Profile("canvas-faults", 2000, ("envoy",), {**LEXICAL, "KP_SESSION_QUEUE": "50"}),
        Profile("bench-canvas", 2100, ("envoy",), {**LEXICAL, "KP_TRACE_SAMPLE_RATIO": "0.1"}),
        Profile("bench-activity", 2200, ("envoy",), {**LEXICAL, "KP_TRACE_SAMPLE_RATIO": "0.1"}),
        # The activity service killed mid-batch and its consumer group replayed from the start.
        Profile("activity-faults", 2300, ("auth", "knowledge", "activity")),
    )
}


def profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"no stack profile named {name!r}; known: {', '.join(PROFILES)}") from None
