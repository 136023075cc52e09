"""services.kit.outbox.group_consecutive_by_topic and services.kit.consumer.RetryPolicy."""

from __future__ import annotations

import pytest

from services.kit.consumer import RetryPolicy
from services.kit.outbox import group_consecutive_by_topic


def test_no_rows_no_groups() -> None:
    assert group_consecutive_by_topic([]) == []


def test_runs_of_one_topic_become_one_group() -> None:
    rows = [("a", b"1"), ("a", b"2"), ("a", b"3")]
    assert group_consecutive_by_topic(rows) == [("a", [b"1", b"2", b"3"])]


def test_interleaved_topics_keep_commit_order() -> None:
    rows = [("a", b"1"), ("a", b"2"), ("b", b"3"), ("a", b"4"), ("b", b"5"), ("b", b"6")]
    groups = group_consecutive_by_topic(rows)
    assert groups == [("a", [b"1", b"2"]), ("b", [b"3"]), ("a", [b"4"]), ("b", [b"5", b"6"])]
    # Flattened, the groups are exactly the input: nothing lost, nothing reordered.
    assert [(topic, blob) for topic, blobs in groups for blob in blobs] == rows


def test_input_is_not_modified() -> None:
    rows = [("a", b"1"), ("b", b"2")]
    group_consecutive_by_topic(rows)
    assert rows == [("a", b"1"), ("b", b"2")]


def test_default_retry_delays() -> None:
    assert RetryPolicy().delays() == pytest.approx([0.2, 0.8])


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (RetryPolicy(attempts=1), []),
        (RetryPolicy(attempts=2, first_delay_s=1.0), [1.0]),
        (RetryPolicy(attempts=4, first_delay_s=0.5, multiplier=2.0), [0.5, 1.0, 2.0]),
        (RetryPolicy(attempts=3, first_delay_s=0.1, multiplier=1.0), [0.1, 0.1]),
    ],
)
def test_retry_delays(policy: RetryPolicy, expected: list[float]) -> None:
    # One delay between consecutive attempts.
    assert policy.delays() == pytest.approx(expected)
    assert len(policy.delays()) == max(policy.attempts - 1, 0)
