"""schemathesis hooks of `python -m contracts.fuzz` (loaded through SCHEMATHESIS_HOOKS).

- Path parameters name the fuzz user's own world (a space, a document, a conversation, a canvas
  node: made by contracts.fuzz, passed in KP_FUZZ_WORLD), so generated requests reach the
  services' logic instead of stopping at "no such space".
- `no_write_on_error`: a write the platform refused (4xx) changed nothing of that world: the
  world's fingerprint (spaces, members, documents and their versions, the conversation's
  messages, the canvas version) is the same before and after the call.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import requests
import schemathesis

WORLD = json.loads(os.environ.get("KP_FUZZ_WORLD", "{}"))
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Calls that change no platform state even when they succeed: reading, searching, signing in.
NOT_WRITES = frozenset({"/v1/search", "/v1/auth/login", "/v1/auth/refresh", "/v1/auth/logout", "/v1/auth/signup"})
_before: dict[int, str] = {}


@schemathesis.hook
def map_path_parameters(
    context: schemathesis.HookContext, path_parameters: dict[str, Any] | None
) -> dict[str, Any] | None:
    if not path_parameters:
        return path_parameters
    return {name: WORLD["ids"].get(name, value) for name, value in path_parameters.items()}


def fingerprint() -> str:
    """What the fuzz user's world holds, as one hash (read through Envoy, as the user)."""
    base, headers, ids = WORLD["envoy"], {"authorization": f"Bearer {WORLD['token']}"}, WORLD["ids"]
    space = ids["spaceId"]
    reads = [
        "/v1/spaces?pageSize=100",
        f"/v1/spaces/{space}/members?pageSize=100",
        f"/v1/spaces/{space}/documents?pageSize=100",
        f"/v1/conversations/{ids['conversationId']}/messages?pageSize=100",
        f"/v1/spaces/{space}/canvas",
    ]
    digest = hashlib.sha256()
    for path in reads:
        answer = requests.get(base + path, headers=headers, timeout=10)
        digest.update(f"{path} {answer.status_code} ".encode())
        digest.update(_stable(answer).encode())
    return digest.hexdigest()


def _stable(answer: requests.Response) -> str:
    """The answer without what changes on every read (presence's last-seen times)."""
    try:
        document = answer.json()
    except ValueError:
        return answer.text
    if isinstance(document, dict):
        document.pop("presence", None)
    return json.dumps(document, sort_keys=True)


def _is_write(case: Any) -> bool:
    return case.method.upper() in WRITES and case.operation.path not in NOT_WRITES


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: Any, kwargs: dict[str, Any]) -> None:
    if _is_write(case):
        _before[id(case)] = fingerprint()


@schemathesis.check
def no_write_on_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """A refused write changed nothing."""
    before = _before.pop(id(case), None)
    if before is None or not 400 <= response.status_code < 500:
        return None
    if fingerprint() != before:
        raise AssertionError(
            f"{case.method} {case.operation.path} was refused with {response.status_code}, "
            "yet the user's spaces, members, documents, messages or canvas changed"
        )
    return True
