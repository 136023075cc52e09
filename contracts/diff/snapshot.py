"""The contract at a git ref, or in the working tree: proto/ compiled with source info."""

from __future__ import annotations

import subprocess
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

from contracts.diff.model import Contract, from_descriptor_set
from contracts.generate import PROTO_DIR, ROOT, descriptor_set, proto_files

WORKING_TREE = "WORKTREE"


def git(*args: str, cwd: Path = ROOT) -> bytes:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {result.stderr.decode().strip()}")
    return result.stdout


def default_base(cwd: Path = ROOT) -> str:
    """The merge-base of HEAD with main (on main itself: HEAD)."""
    return git("merge-base", "HEAD", "main", cwd=cwd).decode().strip()


def contract_of_dir(proto_dir: Path) -> Contract:
    files = [str(path.relative_to(proto_dir)) for path in proto_files(proto_dir)]
    return from_descriptor_set(descriptor_set(proto_dir), files)


def contract_at(ref: str, cwd: Path = ROOT) -> Contract:
    """The contract of `ref` (a commit, branch or tag), or of the working tree (WORKTREE)."""
    if ref == WORKING_TREE:
        return contract_of_dir(cwd / PROTO_DIR.relative_to(ROOT))
    archive = git("archive", "--format=tar", ref, "proto", cwd=cwd)
    with tempfile.TemporaryDirectory() as scratch, tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(scratch, filter="data")
        return contract_of_dir(Path(scratch) / "proto")
