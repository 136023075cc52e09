"""Observability: the OTLP→ClickHouse collector, the trace schema, trace queries and
the pytest API for asserting on traces."""
