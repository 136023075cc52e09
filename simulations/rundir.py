"""The run directory: where a stack keeps its state file, logs and data.

`state.json` is the contract between the process that runs the stack (the supervisor) and
everything that asks about it (`status`, `down`, the pytest plugin, scenarios). It is written
atomically, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

RUN_DIR_ENV = "KP_RUN_DIR"
CACHE_DIR_ENV = "KP_CACHE_DIR"

Phase = Literal["starting", "healthy", "failed", "stopping", "stopped"]


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def default_run_dir() -> Path:
    return Path(os.environ.get(RUN_DIR_ENV, project_root() / ".run"))


def default_cache_dir() -> Path:
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "knowledge-platform-harness"


@dataclass(frozen=True)
class ComponentRecord:
    name: str
    version: str
    pid: int
    ports: Mapping[str, int]
    endpoints: Mapping[str, str]
    log: str
    healthy: bool
    ready_after_s: float


@dataclass
class StackState:
    supervisor_pid: int
    phase: Phase
    components: dict[str, ComponentRecord] = field(default_factory=dict)
    error: str = ""

    def endpoints(self) -> dict[str, Mapping[str, str]]:
        return {name: record.endpoints for name, record in self.components.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "supervisor_pid": self.supervisor_pid,
            "phase": self.phase,
            "error": self.error,
            "components": {name: asdict(record) for name, record in self.components.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StackState:
        return cls(
            supervisor_pid=int(data["supervisor_pid"]),
            phase=data["phase"],
            error=data.get("error", ""),
            components={name: ComponentRecord(**record) for name, record in data["components"].items()},
        )


class RunDirectory:
    def __init__(self, root: Path | None = None, cache_dir: Path | None = None) -> None:
        self.root = (root or default_run_dir()).resolve()
        self.cache_dir = (cache_dir or default_cache_dir()).resolve()
        self.state_path = self.root / "state.json"
        self._state: StackState | None = None

    def log_path(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def data_dir(self, name: str) -> Path:
        path = self.root / "data" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def platform_secret(self) -> str:
        """The stack's platform secret (see services.kit.identity): made on first use, kept
        across runs, readable by its owner only. Services get credentials derived from it."""
        path = self.root / "secrets" / "platform-secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
        return path.read_text().strip()

    def prepare_fresh(self, supervisor_pid: int, *, keep_data: bool) -> None:
        """Start a new run: old logs are kept under logs/previous, old data removed unless kept."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        logs = self.root / "logs"
        if logs.exists():
            previous = self.root / "logs.previous"
            shutil.rmtree(previous, ignore_errors=True)
            logs.rename(previous)
        if not keep_data:
            shutil.rmtree(self.root / "data", ignore_errors=True)
        self._state = StackState(supervisor_pid=supervisor_pid, phase="starting")
        self._write()

    # -- state, as written by the supervisor

    def set_phase(self, phase: Phase, error: str = "") -> None:
        state = self._require_state()
        state.phase = phase
        state.error = error
        self._write()

    def record_component(self, record: ComponentRecord) -> None:
        self._require_state().components[record.name] = record
        self._write()

    def forget_component(self, name: str) -> None:
        self._require_state().components.pop(name, None)
        self._write()

    def _require_state(self) -> StackState:
        if self._state is None:
            raise RuntimeError("prepare_fresh() must run before the state is written")
        return self._state

    def _write(self) -> None:
        state = self._require_state()
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".state.", suffix=".json")
        with os.fdopen(fd, "w") as handle:
            json.dump(state.to_json(), handle, indent=2)
        os.replace(tmp, self.state_path)

    # -- state, as read by everyone else

    def read_state(self) -> StackState | None:
        try:
            return StackState.from_json(json.loads(self.state_path.read_text()))
        except FileNotFoundError:
            return None
