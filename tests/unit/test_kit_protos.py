"""services.kit.protos: domain values as well-known protobuf types."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp

from services.kit.protos import timestamp


def test_a_timestamp_keeps_the_instant_to_the_microsecond() -> None:
    moment = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    stamp = timestamp(moment)
    assert (stamp.seconds, stamp.nanos) == (int(moment.timestamp()), 123456000)
    assert stamp.ToDatetime(tzinfo=UTC) == moment


def test_a_timestamp_is_the_same_instant_whatever_the_time_zone() -> None:
    moment = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert timestamp(moment.astimezone(timezone(timedelta(hours=-5)))) == timestamp(moment)


def test_each_call_gives_a_new_message() -> None:
    moment = datetime(2026, 3, 1, tzinfo=UTC)
    first = timestamp(moment)
    first.seconds += 1
    assert timestamp(moment).seconds == first.seconds - 1


def test_a_timestamp_before_1970_is_normalised_like_protobufs_own_conversion() -> None:
    for moment in (
        datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),
        datetime(1901, 7, 4, 1, 2, 3, 7, tzinfo=UTC),
    ):
        reference = Timestamp()
        reference.FromDatetime(moment)
        assert timestamp(moment) == reference
        assert timestamp(moment).nanos >= 0


def test_a_naive_datetime_is_taken_as_utc() -> None:
    assert timestamp(datetime(2026, 3, 1, 12, 0)) == timestamp(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
