"""SLO verdicts of load runs: each objective against Locust's statistics of the run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from loadtests.runner import SCENARIOS, parse_duration
from loadtests.slo import Objective, load_objectives, measured_from_csv, render, unexpected_failures, verdict

STATS_HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
    "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)


def stats_csv(tmp_path: Path, *rows: str) -> Path:
    path = tmp_path / "locust_stats.csv"
    path.write_text("\n".join([STATS_HEADER, *rows]) + "\n")
    return path


def test_each_objective_is_checked_against_the_runs_statistics(tmp_path: Path) -> None:
    measured = measured_from_csv(
        stats_csv(
            tmp_path,
            "JSON,search,1000,0,14,20,8,400,900,20.0,0.0,14,16,18,19,25,40,90,210,380,400,400",
            "JSON,ask,100,2,40,50,20,900,2000,2.0,0.04,40,45,50,55,70,100,300,650,900,900,900",
            ",Aggregated,1100,2,15,25,8,900,1000,22.0,0.04,15,17,19,20,30,50,100,300,800,900,900",
        )
    )
    objectives = [
        Objective("JSON search", "p99_ms", 300),
        Objective("JSON search", "min_rps_per_user", 0.5),
        Objective("JSON ask", "p99_ms", 600),
        Objective("JSON ask", "max_error_rate", 0.0),
        Objective("Aggregated", "max_error_rate", 0.01),
    ]
    checks = verdict(objectives, measured, users=20)
    assert [(c.objective.request, c.objective.limit, c.value, c.ok) for c in checks] == [
        ("JSON search", "p99_ms", 210.0, True),
        ("JSON search", "min_rps_per_user", 1.0, True),
        ("JSON ask", "p99_ms", 650.0, False),
        ("JSON ask", "max_error_rate", 0.02, False),
        ("Aggregated", "max_error_rate", 2 / 1100, True),
    ]
    table = render(checks)
    assert re.search(r"^JSON ask +p99_ms +600 ms +650 ms +BREACH$", table, re.MULTILINE)
    assert re.search(r"^JSON search +min_rps_per_user +0.500/s +1.000/s +ok$", table, re.MULTILINE)


def test_a_request_type_with_objectives_and_no_requests_is_a_breach(tmp_path: Path) -> None:
    measured = measured_from_csv(
        stats_csv(tmp_path, ",Aggregated,0,0,0,0,0,0,0,0.0,0.0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A")
    )
    [check] = verdict([Objective("WS move", "p99_ms", 250)], measured, users=5)
    assert check.value is None
    assert not check.ok
    assert "no requests" in render([check])


def test_failures_without_an_error_objective_of_their_own_are_named(tmp_path: Path) -> None:
    measured = measured_from_csv(
        stats_csv(
            tmp_path,
            "WS,join,10,3,40,50,20,90,0,1.0,0.3,40,45,50,55,70,80,90,90,90,90,90",
            ",Aggregated,10,3,40,50,20,90,0,1.0,0.3,40,45,50,55,70,80,90,90,90,90,90",
        )
    )
    objectives = [Objective("Aggregated", "max_error_rate", 0.0)]
    assert [m.request for m in unexpected_failures(objectives, measured)] == ["WS join"]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_scenario_has_a_valid_slo_file_with_a_zero_error_objective(scenario: str) -> None:
    objectives = load_objectives(SCENARIOS[scenario].slo_file)
    assert Objective("Aggregated", "max_error_rate", 0.0) in objectives
    assert SCENARIOS[scenario].locustfile.exists()


def test_an_unknown_objective_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "slo.yaml"
    path.write_text("requests:\n  JSON search:\n    p42_ms: 10\n")
    with pytest.raises(ValueError, match="unknown objective 'p42_ms'"):
        load_objectives(path)


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("5m", 300), ("1h", 3600), ("1.5m", 90)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0s", "5h", "soon", ""])
def test_durations_out_of_bounds_or_unreadable_are_refused(text: str) -> None:
    with pytest.raises(Exception, match=r"duration|lasts"):
        parse_duration(text)
