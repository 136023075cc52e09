"""Conversions between domain values and the well-known protobuf types, the same in every
gRPC adapter."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(moment: datetime) -> Timestamp:
    """A google.protobuf.Timestamp of an aware datetime (to the microsecond)."""
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp
