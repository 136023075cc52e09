"""Conversions between domain values and the well-known protobuf types, the same in every
gRPC adapter."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(moment: datetime) -> Timestamp:
    """A google.protobuf.Timestamp of a datetime (naive means UTC), to the microsecond.
    (Integer timedelta arithmetic: exact, and several times cheaper than Timestamp.FromDatetime
    on the hottest reads.)"""
    since_epoch = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)) - EPOCH
    return Timestamp(seconds=since_epoch.days * 86_400 + since_epoch.seconds, nanos=since_epoch.microseconds * 1_000)
