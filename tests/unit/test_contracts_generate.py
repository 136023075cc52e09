"""contracts.generate: import rewriting, and the committed API matching proto/."""

from __future__ import annotations

import subprocess
import sys

import pytest

from contracts.generate import GENERATED_PACKAGE, ROOT, proto_packages, rewrite_imports

PACKAGES = ["auth", "chat", "events", "knowledge"]


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (
            "from auth.v1 import auth_pb2 as auth_dot_v1_dot_auth__pb2",
            "from services.api.auth.v1 import auth_pb2 as auth_dot_v1_dot_auth__pb2",
        ),
        ("from auth.v1 import auth_pb2 as _auth_pb2", "from services.api.auth.v1 import auth_pb2 as _auth_pb2"),
        (
            "from events.v1.envelope_pb2 import EventEnvelope",
            "from services.api.events.v1.envelope_pb2 import EventEnvelope",
        ),
        ("    from chat.v1 import chat_pb2", "    from services.api.chat.v1 import chat_pb2"),
    ],
)
def test_package_imports_are_rewritten(before: str, after: str) -> None:
    assert rewrite_imports(before, PACKAGES) == after


@pytest.mark.parametrize(
    "line",
    [
        "from google.protobuf import timestamp_pb2 as google_dot_protobuf_dot_timestamp__pb2",
        "from google.api import annotations_pb2",
        "import grpc",
        "from authz.v1 import x_pb2",  # a different package that merely starts with a known name
        "from auth import something",  # no sub-module: not a generated proto package import
        "from vector.v1 import vector_pb2",  # not in the given package list
        '_sym_db.RegisterMessage("from auth.v1 import auth_pb2")',
        "# see: from auth.v1 import auth_pb2",
        '"""Account security: sign-up confirmation (from auth.user.signed_up); sent to the user."""',
    ],
)
def test_other_lines_are_untouched(line: str) -> None:
    assert rewrite_imports(line, PACKAGES) == line


def test_whole_module_rewrites_only_import_lines() -> None:
    source = (
        '"""Generated from auth/v1/auth.proto (from auth.v1 import nothing here)."""\n'
        "import grpc\n"
        "from google.protobuf import empty_pb2 as _empty_pb2\n"
        "from auth.v1 import auth_pb2 as _auth_pb2\n"
        "from chat.v1 import chat_pb2 as _chat_pb2\n"
        "\n"
        "x = 'from auth.v1 import auth_pb2'\n"
    )
    rewritten = rewrite_imports(source, PACKAGES)
    assert rewritten.splitlines() == [
        '"""Generated from auth/v1/auth.proto (from auth.v1 import nothing here)."""',
        "import grpc",
        "from google.protobuf import empty_pb2 as _empty_pb2",
        f"from {GENERATED_PACKAGE}.auth.v1 import auth_pb2 as _auth_pb2",
        f"from {GENERATED_PACKAGE}.chat.v1 import chat_pb2 as _chat_pb2",
        "",
        "x = 'from auth.v1 import auth_pb2'",
    ]
    assert rewrite_imports(rewritten, PACKAGES) == rewritten  # idempotent


def test_proto_packages_are_the_folders_of_proto() -> None:
    packages = proto_packages()
    assert {"auth", "chat", "events", "knowledge"} <= set(packages)
    assert packages == sorted(packages)


def test_committed_api_matches_the_protos() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "contracts.generate", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "services/api matches proto/" in result.stdout
