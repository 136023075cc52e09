"""Conversions between domain values and the well-known protobuf types, the same in every
gRPC adapter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from services.kit.errors import InvalidArgument

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(moment: datetime) -> Timestamp:
    """A google.protobuf.Timestamp of a datetime (naive means UTC), to the microsecond.
    (Integer timedelta arithmetic: exact, and several times cheaper than Timestamp.FromDatetime
    on the hottest reads.)"""
    since_epoch = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)) - EPOCH
    return Timestamp(seconds=since_epoch.days * 86_400 + since_epoch.seconds, nanos=since_epoch.microseconds * 1_000)


# google.protobuf.Timestamp's documented range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
TIMESTAMP_SECONDS = (-62_135_596_800, 253_402_300_799)


def moment_of(stamp: Timestamp, field: str) -> datetime:
    """The datetime of a Timestamp a caller sent (to the microsecond), or INVALID_ARGUMENT
    naming the field when it is outside the type's range."""
    if not TIMESTAMP_SECONDS[0] <= stamp.seconds <= TIMESTAMP_SECONDS[1] or not 0 <= stamp.nanos <= 999_999_999:
        raise InvalidArgument(field, "must be a time between 0001-01-01 and 9999-12-31 (UTC)")
    return EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)
