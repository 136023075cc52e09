"""Service-level objectives of a load scenario, and the verdict of a run against them.

Each scenario has a file `loadtests/slo/<scenario>.yaml`:

    requests:
      JSON search:             # Locust's request type and name
        p50_ms: 50             # latency percentiles, over the whole run
        p95_ms: 150
        p99_ms: 300
        max_error_rate: 0.0    # failures / requests
        min_rps_per_user: 0.2  # throughput per simulated user, so one file fits any size
      Aggregated:
        max_error_rate: 0.0

Every objective named is checked; a request type with an objective and no requests at all is a
breach (the scenario did not do what it promises). The measured side is Locust's own statistics
of the run (its `_stats.csv`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import yaml

LIMITS = ("p50_ms", "p95_ms", "p99_ms", "max_error_rate", "min_rps_per_user")


@dataclass(frozen=True)
class Objective:
    request: str
    limit: str  # one of LIMITS
    target: float


@dataclass(frozen=True)
class Measured:
    request: str
    count: int
    failures: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    rps: float

    @property
    def error_rate(self) -> float:
        return self.failures / self.count if self.count else 0.0


@dataclass(frozen=True)
class Check:
    objective: Objective
    value: float | None  # None: no requests of that type

    @property
    def ok(self) -> bool:
        if self.value is None:
            return False
        if self.objective.limit == "min_rps_per_user":
            return self.value >= self.objective.target
        return self.value <= self.objective.target


def load_objectives(path: Path) -> list[Objective]:
    document = yaml.safe_load(path.read_text()) or {}
    objectives = []
    for request, limits in (document.get("requests") or {}).items():
        for limit, target in limits.items():
            if limit not in LIMITS:
                raise ValueError(f"{path}: {request}: unknown objective {limit!r}; known: {', '.join(LIMITS)}")
            objectives.append(Objective(request, limit, float(target)))
    return objectives


def measured_from_csv(stats_csv: Path) -> dict[str, Measured]:
    """Locust's `<prefix>_stats.csv`: one row per request type, and "Aggregated"."""
    measured = {}
    with stats_csv.open(newline="") as stream:
        for row in csv.DictReader(stream):
            request = f"{row['Type']} {row['Name']}".strip()
            measured[request] = Measured(
                request=request,
                count=int(row["Request Count"]),
                failures=int(row["Failure Count"]),
                p50_ms=_number(row["50%"]),
                p95_ms=_number(row["95%"]),
                p99_ms=_number(row["99%"]),
                rps=float(row["Requests/s"]),
            )
    return measured


def _number(text: str) -> float:
    return float(text) if text not in ("", "N/A") else 0.0


def verdict(objectives: list[Objective], measured: dict[str, Measured], users: int) -> list[Check]:
    checks = []
    for objective in objectives:
        seen = measured.get(objective.request)
        if seen is None or seen.count == 0:
            checks.append(Check(objective, None))
            continue
        value = {
            "p50_ms": seen.p50_ms,
            "p95_ms": seen.p95_ms,
            "p99_ms": seen.p99_ms,
            "max_error_rate": seen.error_rate,
            "min_rps_per_user": seen.rps / max(1, users),
        }[objective.limit]
        checks.append(Check(objective, value))
    return checks


def unexpected_failures(objectives: list[Objective], measured: dict[str, Measured]) -> list[Measured]:
    """Request types that failed and have no error objective of their own (the aggregate's
    objective still counts them; this names them)."""
    covered = {objective.request for objective in objectives if objective.limit == "max_error_rate"}
    return [m for m in measured.values() if m.failures and m.request not in covered and m.request != "Aggregated"]


def render(checks: list[Check]) -> str:
    """The SLO table: request, objective, target, measured, verdict."""
    header = ("request", "objective", "target", "measured", "")
    rows = [header] + [
        (
            check.objective.request,
            check.objective.limit,
            _shown(check.objective.limit, check.objective.target),
            "no requests" if check.value is None else _shown(check.objective.limit, check.value),
            "ok" if check.ok else "BREACH",
        )
        for check in checks
    ]
    widths = [max(len(row[n]) for row in rows) for n in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _shown(limit: str, value: float) -> str:
    if limit == "max_error_rate":
        return f"{value:.2%}"
    if limit == "min_rps_per_user":
        return f"{value:.3f}/s"
    return f"{value:.0f} ms"
