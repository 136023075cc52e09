"""buf, the reference checker of proto breaking changes, run on two proto trees: what
`buf breaking` finds, to hold our own diff against (contracts' tests). buf is pinned in
tools/package.json (npm's @bufbuild/buf ships the official binary) and installed there on
first use with `npm ci`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock
from google.protobuf import descriptor_pb2

from contracts.generate import TOOLS_DIR

BUF = TOOLS_DIR / "node_modules" / ".bin" / "buf"
BUF_YAML = "version: v2\nbreaking:\n  use:\n    - FILE\n"
GOOGLE_API = ("google/api/annotations.proto", "google/api/http.proto")


@dataclass(frozen=True)
class BufFinding:
    path: str
    line: int
    rule: str
    message: str


def buf_binary() -> Path | None:
    """The pinned buf, installed with npm when missing; None when npm is not there either."""
    with FileLock(TOOLS_DIR / ".install.lock"):  # parallel test workers install it once
        if not BUF.exists() and shutil.which("npm") is not None:
            install = ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"]
            subprocess.run(install, cwd=TOOLS_DIR, check=True, timeout=300)
    return BUF if BUF.exists() else None


def as_buf_module(proto_dir: Path) -> None:
    """Make a proto tree a buf module: buf.yaml, and the google/api protos it imports (buf
    would fetch them from the Buf registry, which is not reachable from here)."""
    (proto_dir / "buf.yaml").write_text(BUF_YAML)
    installed = Path(descriptor_pb2.__file__).parents[2]  # site-packages, where google/api/*.proto live
    for name in GOOGLE_API:
        target = proto_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(installed / name, target)


def buf_breaking(buf: Path, base_dir: Path, head_dir: Path) -> list[BufFinding]:
    for tree in (base_dir, head_dir):
        as_buf_module(tree)
    result = subprocess.run(
        [str(buf), "breaking", str(head_dir), "--against", str(base_dir), "--error-format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode not in (0, 100) or (result.returncode == 100 and not result.stdout.strip()):
        raise RuntimeError(f"buf breaking failed ({result.returncode}): {result.stderr.strip()}")
    findings = []
    for line in result.stdout.splitlines():
        if line.strip():
            item = json.loads(line)
            findings.append(
                BufFinding(item.get("path", ""), int(item.get("start_line", 0)), item["type"], item["message"])
            )
    return findings
