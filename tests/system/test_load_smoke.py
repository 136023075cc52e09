"""The load runner end to end, briefly and at low load: `python -m loadtests run` seeds, runs
Locust through Envoy (in one process, in distributed mode, and open loop), prints the SLO table
and leaves its report folder. Latency objectives are not asserted here (other tests share the
cores); errors are: at this load there must be none."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from simulations.endpoints import StackEndpoints

RUNS = {
    "search, one process, closed loop": ("search", "--users", "3", "--spawn-rate", "3", "--documents", "12"),
    "collaboration, two workers": ("collaboration", "--users", "4", "--spawn-rate", "4", "--workers", "2"),
    "mixed, open loop": ("mixed", "--users", "3", "--spawn-rate", "3", "--documents", "12", "--arrival-rate", "3"),
}
REQUEST_KINDS = {
    "search": ["vector.v1.VectorService/Search", "auth.v1.AuthService/Login"],
    "collaboration": ["canvas move_node", "canvas join"],
    "mixed": ["knowledge.v1.KnowledgeService/ListSpaces", "auth.v1.AuthService/Login"],
}


@pytest.mark.parametrize("run", sorted(RUNS))
def test_a_short_load_run_reports_its_slos_traces_and_plots_without_errors(
    stack: StackEndpoints, tmp_path: Path, run: str
) -> None:
    scenario, *options = RUNS[run]
    command = [sys.executable, "-m", "loadtests", "run", scenario, *options, "--duration", "8s"]
    command += ["--report-dir", str(tmp_path)]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=240, env=os.environ.copy())
    output = result.stdout + result.stderr
    assert result.returncode in (0, 1), output  # 1: an objective was breached; anything else: the run failed

    assert f"SLOs of {scenario}" in output
    slo_table = (tmp_path / "slo.txt").read_text()
    assert slo_table.splitlines()[0].split() == ["request", "objective", "target", "measured"]
    error_rows = [line for line in slo_table.splitlines() if " max_error_rate " in line]
    assert error_rows, slo_table
    assert all(line.endswith(" ok") for line in error_rows), f"errors at low load:\n{slo_table}\n{output}"
    assert "failures: 0," in output, output

    for name in ("seed.json", "locust-report.html", "locust_stats.csv", "locust_stats_history.csv", "traces.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    plots = sorted(path.name for path in (tmp_path / "plots").glob("*.png"))
    assert "all.png" in plots
    assert len(plots) >= 3, plots
    traces = (tmp_path / "traces.md").read_text()
    for kind in REQUEST_KINDS[scenario]:
        assert f"| {kind} |" in traces, f"the run's traces lack {kind}:\n{traces}"
