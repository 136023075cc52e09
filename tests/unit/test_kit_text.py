"""services.kit.text: the string rules every request obeys."""

from __future__ import annotations

import pytest
from google.protobuf.message import Message

from services.api.activity.v1 import activity_pb2
from services.api.auth.v1 import auth_pb2
from services.api.events.v1 import envelope_pb2
from services.kit.errors import InvalidArgument
from services.kit.text import check_strings, nul_field, trimmed_text


def test_a_clean_message_passes() -> None:
    envelope = envelope_pb2.EventEnvelope(
        event_id="e", subject_ids={"user_id": "u"}, trace=envelope_pb2.TraceContext(traceparent="00-x")
    )
    assert nul_field(envelope) is None
    check_strings(envelope)


@pytest.mark.parametrize(
    ("message", "path"),
    [
        (auth_pb2.LoginRequest(email="a\x00b"), "email"),
        (envelope_pb2.EventEnvelope(trace=envelope_pb2.TraceContext(tracestate="\x00")), "trace.tracestate"),
        (envelope_pb2.EventEnvelope(subject_ids={"user_id": "\x00"}), "subject_ids['user_id']"),
        (envelope_pb2.EventEnvelope(subject_ids={"us\x00er": "x"}), "subject_ids['us\\x00er']"),
        (
            activity_pb2.TrackEventsRequest(
                events=[activity_pb2.ActivityEvent(), activity_pb2.ActivityEvent(attributes={"q": "a\x00"})]
            ),
            "events[1].attributes['q']",
        ),
    ],
)
def test_nul_is_found_at_any_depth_and_named_by_its_path(message: Message, path: str) -> None:
    assert nul_field(message) == path
    with pytest.raises(InvalidArgument) as caught:
        check_strings(message)
    assert caught.value.field == path


def test_trimmed_text_bounds_code_points_after_trimming() -> None:
    assert trimmed_text("  héllo  ", "name", 1, 5) == "héllo"
    with pytest.raises(InvalidArgument, match="name: is required: 1–5 characters"):
        trimmed_text("   ", "name", 1, 5)
    with pytest.raises(InvalidArgument, match="got 6"):
        trimmed_text("abcdef", "name", 1, 5)
    assert trimmed_text("", "description", 0, 5) == ""
    with pytest.raises(InvalidArgument, match="NUL"):
        trimmed_text("a\x00", "name", 1, 5)
