"""Generate the Python API code and Envoy's descriptor set from `proto/`.

    python -m contracts.generate          regenerate services/api/ (committed)
    python -m contracts.generate --check  fail when the committed code differs from the protos

protoc writes modules named after the proto packages (`auth.v1`); they live under
`services.api`, so their cross-imports are rewritten to `services.api.<package>.v1`. The
descriptor set (`services/api/platform.pb`) holds every proto with its imports and source
comments, plus the standard health service and google.rpc's status and error details, so
Envoy can transcode health checks and turn error details into JSON.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from google.protobuf import any_pb2, descriptor_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUTPUT_DIR = ROOT / "services" / "api"
DESCRIPTOR_NAME = "platform.pb"
GENERATED_PACKAGE = "services.api"
PACKAGE_DOC = '"""Generated from proto/ by `python -m contracts.generate`. Do not edit."""\n'


def proto_files(proto_dir: Path = PROTO_DIR) -> list[Path]:
    return sorted(proto_dir.rglob("*.proto"))


def proto_packages(proto_dir: Path = PROTO_DIR) -> list[str]:
    """Top-level proto package folders (auth, knowledge, ..., events)."""
    return sorted(path.name for path in proto_dir.iterdir() if path.is_dir())


def rewrite_imports(source: str, packages: list[str]) -> str:
    """`from auth.v1 import x_pb2` → `from services.api.auth.v1 import x_pb2` (also in stubs)."""
    names = "|".join(re.escape(name) for name in packages)
    pattern = re.compile(rf"^(\s*)from ({names})((?:\.\w+)+) import ", re.MULTILINE)
    return pattern.sub(rf"\1from {GENERATED_PACKAGE}.\2\3 import ", source)


def bin_dir() -> Path:
    return Path(sys.executable).parent


def include_args(proto_dir: Path = PROTO_DIR) -> list[str]:
    """protoc's -I arguments: our protos, then the well-known types and google/api/*.proto."""
    include_protobuf = Path(grpc_tools.__file__).parent / "_proto"
    site_packages = Path(descriptor_pb2.__file__).parents[2]  # where google/api/*.proto live
    return [f"-I{proto_dir}", f"-I{include_protobuf}", f"-I{site_packages}"]


def descriptor_set(proto_dir: Path) -> descriptor_pb2.FileDescriptorSet:
    """Every proto under `proto_dir`, with its imports and source info (lines, comments)."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "set.pb"
        args = [
            "grpc_tools.protoc",
            *include_args(proto_dir),
            "--include_imports",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *(str(path.relative_to(proto_dir)) for path in proto_files(proto_dir)),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto_dir}; see the errors above")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def run_protoc(out: Path) -> None:
    args = [
        "grpc_tools.protoc",
        *include_args(),
        f"--plugin=protoc-gen-mypy={bin_dir() / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir() / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out=quiet:{out}",
        f"--mypy_grpc_out=quiet:{out}",
        "--include_imports",
        "--include_source_info",
        f"--descriptor_set_out={out / DESCRIPTOR_NAME}",
        *(str(path.relative_to(PROTO_DIR)) for path in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the errors above")


def extra_descriptors() -> list[descriptor_pb2.FileDescriptorProto]:
    """Files Envoy needs beyond our protos, dependencies first: the health service it
    transcodes, and google.rpc.Status with its details, so error details (BadRequest,
    RetryInfo) can be turned into JSON."""
    modules = (any_pb2, duration_pb2, status_pb2, error_details_pb2, health_pb2)
    return [descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb) for module in modules]


def add_extra_descriptors(descriptor_path: Path) -> None:
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(descriptor_path.read_bytes())
    present = {file.name for file in descriptor_set.file}
    descriptor_set.file.extend(extra for extra in extra_descriptors() if extra.name not in present)
    descriptor_path.write_bytes(descriptor_set.SerializeToString(deterministic=True))


def finish_package(out: Path) -> None:
    packages = proto_packages()
    for path in out.rglob("*.py*"):
        path.write_text(rewrite_imports(path.read_text(), packages))
    for folder in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").write_text(PACKAGE_DOC)
    (out / "py.typed").write_text("")


def generate(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    run_protoc(out)
    add_extra_descriptors(out / DESCRIPTOR_NAME)
    finish_package(out)


def differences(expected: Path, actual: Path) -> list[str]:
    """Files that differ, are missing or are extra in `actual`, relative paths."""
    found: list[str] = []

    def walk(comparison: filecmp.dircmp[str], prefix: str) -> None:
        found.extend(f"{prefix}{name} (missing)" for name in comparison.left_only)
        found.extend(f"{prefix}{name} (extra)" for name in comparison.right_only if name != "__pycache__")
        found.extend(f"{prefix}{name} (differs)" for name in comparison.diff_files)
        for name, sub in comparison.subdirs.items():
            if name != "__pycache__":
                walk(sub, f"{prefix}{name}/")

    walk(filecmp.dircmp(expected, actual, ignore=["__pycache__"]), "")
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on drift")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        fresh = Path(scratch) / "api"
        generate(fresh)
        if args.check:
            drift = differences(fresh, OUTPUT_DIR) if OUTPUT_DIR.exists() else ["services/api (missing)"]
            if drift:
                print("generated code is out of date with proto/; run `nox -s proto` and commit:")
                print("\n".join(f"  {line}" for line in drift))
                return 1
            print(f"services/api matches proto/ ({len(proto_files())} proto files)")
            return 0
        shutil.rmtree(OUTPUT_DIR, ignore_errors=True)
        shutil.copytree(fresh, OUTPUT_DIR)
    print(f"generated services/api from {len(proto_files())} proto files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
