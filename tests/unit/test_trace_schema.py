"""The trace schema is the OpenTelemetry Collector's ClickHouse exporter's own DDL, at the
pinned version: its SQL templates, read from the Go module, rendered as the exporter renders
them for our configuration (database "otel", table "otel_traces", MergeTree(), no cluster, no
TTL), and compared with observability/schema/otel_traces.sql statement by statement."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from observability.clickhouse import SCHEMA_FILE
from services.kit.clickhouse import sql_statements

EXPORTER = "github.com/open-telemetry/opentelemetry-collector-contrib/exporter/clickhouseexporter"
VERSION = "v0.165.1"  # as pinned in docker-compose.yml (otel/opentelemetry-collector-contrib:0.165.1)
DATABASE, TABLE, ENGINE, CLUSTER, TTL = "otel", "otel_traces", "MergeTree()", "", ""


def exporter_templates() -> Path:
    if shutil.which("go") is None:
        pytest.skip("no Go toolchain here to fetch the exporter's module; the schema file says its source")
    fetched = subprocess.run(
        ["go", "mod", "download", "-json", f"{EXPORTER}@{VERSION}"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if fetched.returncode != 0:
        pytest.skip(f"the Go module proxy did not give {EXPORTER}@{VERSION}: {fetched.stderr.strip()[:200]}")
    return Path(json.loads(fetched.stdout)["Dir"]) / "internal" / "sqltemplates"


def render(template: str, *arguments: str) -> str:
    """fmt.Sprintf with the %s and %q verbs the templates use."""
    values = iter(arguments)
    return re.sub(r"%[sq]", lambda verb: json.dumps(next(values)) if verb.group() == "%q" else next(values), template)


def normalised(sql: str) -> str:
    return " ".join(sql.replace("\n", " ").split()).rstrip(";").strip()


def test_the_trace_schema_is_the_exporters_ddl() -> None:
    templates = exporter_templates()
    expected = [
        render((templates / "traces_table.sql").read_text(), DATABASE, TABLE, CLUSTER, ENGINE, TTL),
        render((templates / "traces_id_ts_lookup_table.sql").read_text(), DATABASE, TABLE, CLUSTER, ENGINE, TTL),
        render(
            (templates / "traces_id_ts_lookup_mv.sql").read_text(),
            DATABASE,
            TABLE,
            CLUSTER,
            DATABASE,
            TABLE,
            DATABASE,
            TABLE,
        ),
    ]
    ours = [s for s in sql_statements(SCHEMA_FILE.read_text()) if not s.upper().startswith("CREATE DATABASE")]
    assert [normalised(s) for s in ours] == [normalised(s) for s in expected]
