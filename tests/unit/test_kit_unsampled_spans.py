"""services.kit.telemetry: when a hot path may skip building spans."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

from services.kit.telemetry import in_unsampled_trace


def test_outside_any_call_spans_are_built() -> None:
    assert not in_unsampled_trace()  # a new root span gets its own sampling decision


def test_inside_a_recorded_call_spans_are_built() -> None:
    tracer = TracerProvider(sampler=ParentBased(ALWAYS_ON)).get_tracer("test")
    with tracer.start_as_current_span("call"):
        assert not in_unsampled_trace()


def test_inside_an_unrecorded_call_children_are_skipped_and_match_what_the_sampler_decides() -> None:
    tracer = TracerProvider(sampler=ParentBased(ALWAYS_OFF)).get_tracer("test")
    with tracer.start_as_current_span("call"):
        assert in_unsampled_trace()
        with tracer.start_as_current_span("child") as child:
            assert not child.is_recording()
