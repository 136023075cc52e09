"""Values the contract suites send: fresh ids, ids that are not canonical UUIDs, and tokens the
edge must refuse."""

from __future__ import annotations

import functools
import uuid

from google.protobuf.timestamp_pb2 import Timestamp

from fixtures.tokens import TestIssuer

# Not UUIDs in the canonical 36-character form; none is empty, which JSON could not put in a path.
MALFORMED_IDS = ["not-a-uuid", "123e4567e89b12d3a456426614174000", "123e4567-e89b-12d3-a456-4266141740000"]
# No token, and one that is not a JWT at all; `forged_token()` is the well-formed third.
BAD_TOKENS = (None, "not-a-jwt")


def new_id() -> str:
    return str(uuid.uuid4())


@functools.cache
def forged_token() -> str:
    """Well-formed, with the platform's issuer and audience, but signed by a key nobody published."""
    return TestIssuer(kid="not-a-platform-key").token(new_id())


def moment(stamp: Timestamp) -> tuple[int, int]:
    """A timestamp as a sortable pair."""
    return stamp.seconds, stamp.nanos
