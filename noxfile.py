"""Sessions for CI and for people. Every session runs in the project environment that
`uv run --frozen` keeps in sync with uv.lock, so nothing is installed twice.

    uv run --frozen nox -s tests        everything CI runs: drift check, lint, all tests
    uv run --frozen nox -s unit         fast tests, no stack needed
    uv run --frozen nox -s system       tests against the running stack (started if needed)
    uv run --frozen nox -s lint         ruff, ruff format, mypy, the import layers (import-linter)
    uv run --frozen nox -s proto        regenerate services/api from proto/ (-- --check: only compare)
    uv run --frozen nox -s up / down / status / smoke
    uv run --frozen nox -s bench        every benchmark, printed (stops a running stack first)
    uv run --frozen nox -s contracts-diff [-- BASE [HEAD]]
                                        what changed in proto/ and whom it breaks (python -m contracts diff)
    uv run --frozen nox -s fuzz [-- --max-examples N]
                                        schemathesis against Envoy from the OpenAPI (python -m contracts.fuzz)
    uv run --frozen nox -s load -- SCENARIO [options]
                                        a Locust load run to its SLO verdict (python -m loadtests run)
"""

from __future__ import annotations

import subprocess

import nox

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "none"

PYTEST_PARALLEL = ["-n", "2", "--dist", "loadgroup"]


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", ".")
    session.run("lint-imports")


@nox.session(python=False)
def proto(session: nox.Session) -> None:
    """Regenerate the API code and descriptor set; `-- --check` fails on drift instead."""
    session.run("python", "-m", "contracts.generate", *session.posargs)


@nox.session(python=False)
def unit(session: nox.Session) -> None:
    session.run("pytest", "tests/unit", *session.posargs)


@nox.session(python=False)
def system(session: nox.Session) -> None:
    session.run("pytest", "tests/system", "contracts", *PYTEST_PARALLEL, *session.posargs)


@nox.session(python=False, name="contracts-diff")
def contracts_diff(session: nox.Session) -> None:
    """The contract review of the working tree against the merge-base with main (or `-- BASE
    [HEAD]`); fails on a breaking change not acknowledged in contracts/acknowledged-changes.yaml."""
    session.run("python", "-m", "contracts", "diff", *session.posargs)


@nox.session(python=False)
def fuzz(session: nox.Session) -> None:
    """schemathesis against the running stack's Envoy (started if needed)."""
    session.run("python", "-m", "contracts.fuzz", *session.posargs)


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """Everything: generated code matches the protos, the last commit breaks no contract
    unacknowledged, lint, then every test."""
    session.run("python", "-m", "contracts.generate", "--check")
    has_parent = ["git", "rev-parse", "--verify", "--quiet", "HEAD~1"]
    if subprocess.run(has_parent, check=False, capture_output=True).returncode == 0:
        session.run("python", "-m", "contracts", "diff", "HEAD~1", "HEAD")
    else:
        session.log("contracts diff skipped: HEAD has no parent commit here (a shallow clone?)")
    lint(session)
    session.run("pytest", *PYTEST_PARALLEL, *session.posargs)


@nox.session(python=False)
def up(session: nox.Session) -> None:
    session.run("python", "-m", "simulations", "up", "--detach", *session.posargs)


@nox.session(python=False)
def down(session: nox.Session) -> None:
    session.run("python", "-m", "simulations", "down")


@nox.session(python=False)
def status(session: nox.Session) -> None:
    session.run("python", "-m", "simulations", "status", *session.posargs)


@nox.session(python=False)
def smoke(session: nox.Session) -> None:
    session.run("python", "-m", "simulations", "run", "smoke")


@nox.session(python=False)
def load(session: nox.Session) -> None:
    """A load scenario against the running stack (started if needed), e.g.
    `nox -s load -- search --users 50 --duration 2m --workers 2`; `nox -s load` lists them."""
    if not session.posargs:
        session.run("python", "-m", "loadtests", "scenarios")
        return
    session.run("python", "-m", "loadtests", "run", *session.posargs)


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    """Every benchmark, printing its figures beside its targets. Each runs on its own moved
    ports, except the startup benchmark, which needs the default ones (so a running stack is
    stopped first). A benchmark that misses a target exits 1: the others still run, and the
    session fails at the end, naming those that missed."""
    session.run("python", "-m", "simulations", "down")
    benchmarks = [
        ("python", "-m", "simulations", "bench", "startup"),
        ("python", "-m", "loadtests.bench_traces", "ingest"),
        ("python", "-m", "loadtests.bench_traces", "overhead"),
        ("python", "-m", "loadtests.bench_getdocument"),
        ("python", "-m", "loadtests.bench_search"),
        ("python", "-m", "loadtests.bench_canvas"),
        ("python", "-m", "loadtests.bench_activity"),
    ]
    missed = []
    for command in benchmarks:
        session.log(" ".join(command))
        if subprocess.call(command) != 0:
            missed.append(" ".join(command[2:]))
    if missed:
        session.error(f"targets missed by: {', '.join(missed)}")
