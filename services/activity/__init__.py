"""The activity service: user behaviour and platform events in ClickHouse, as timelines and
per-document aggregates, exact under redelivery (see activity.proto)."""

VERSION = "1.0.0"
