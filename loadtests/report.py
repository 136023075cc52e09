"""The report a load run leaves in its folder, beside Locust's own HTML report and CSVs:

- `plots/<request>.png`: latency percentiles (p50, p95, p99, over Locust's last 10 seconds) and
  throughput over the run, one figure per request type, and `plots/all.png` with every type's
  throughput and the user count;
- `traces.md`: where the time went, from the run's own traces in ClickHouse (every request of a
  run carries its id as baggage, and every span records it): per kind of request, per service
  and span, p50/p99 and share of the request's time; the slowest traces with their ids; error
  spans. See observability.breakdown.
"""

from __future__ import annotations

import csv
import re
import time
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt

from observability.breakdown import Breakdown, breakdown, render_markdown
from observability.clickhouse import connect
from observability.traces import TraceStore

SETTLE_S = 20.0  # at most this long for the run's last spans to reach the store


def plot_history(history_csv: Path, folder: Path) -> list[Path]:
    """One PNG per request type (and one of them all) from Locust's `_stats_history.csv`."""
    series: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with history_csv.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    if not rows:
        return []
    began = float(rows[0]["Timestamp"])
    for row in rows:
        request = f"{row['Type']} {row['Name']}".strip()
        points = series[request]
        points["t"].append(float(row["Timestamp"]) - began)
        points["users"].append(float(row["User Count"]))
        points["rps"].append(float(row["Requests/s"]))
        for percentile in ("50%", "95%", "99%"):
            value = row[percentile]
            points[percentile].append(float(value) if value not in ("N/A", "") else float("nan"))
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for request, points in series.items():
        figure, (latency, throughput) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
        for percentile in ("50%", "95%", "99%"):
            latency.plot(points["t"], points[percentile], label=f"p{percentile.rstrip('%')}")
        latency.set_ylabel("ms")
        latency.set_title(f"{request}: latency (last 10 s) and throughput")
        latency.legend(loc="upper left")
        throughput.plot(points["t"], points["rps"], color="tab:green")
        throughput.set_ylabel("requests/s")
        throughput.set_xlabel("seconds into the run")
        path = folder / f"{slug(request)}.png"
        figure.tight_layout()
        figure.savefig(path, dpi=90)
        plt.close(figure)
        written.append(path)
    figure, axis = plt.subplots(figsize=(9, 4))
    for request, points in series.items():
        if request != "Aggregated":
            axis.plot(points["t"], points["rps"], label=request)
    users = axis.twinx()
    aggregated = series.get("Aggregated") or next(iter(series.values()))
    users.plot(aggregated["t"], aggregated["users"], color="grey", linestyle="--", label="users")
    users.set_ylabel("users")
    axis.set_ylabel("requests/s")
    axis.set_xlabel("seconds into the run")
    axis.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    path = folder / "all.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return [*written, path]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "request"


def trace_breakdown(clickhouse_url: str, run: str, since_ns: int) -> tuple[Breakdown, int]:
    """The run's traces, read once they have settled in the store (their span count stops
    growing, or SETTLE_S passes)."""
    client = connect(clickhouse_url)
    try:
        store = TraceStore(client)
        deadline = time.monotonic() + SETTLE_S
        count = store.span_count_with("load.run", run, since_ns)
        while time.monotonic() < deadline:
            time.sleep(2.0)
            previous, count = count, store.span_count_with("load.run", run, since_ns)
            if count and count == previous:
                break
        trees = store.traces_with("load.run", run, since_ns)
    finally:
        client.close()
    return breakdown(trees), len(trees)


def write_trace_report(folder: Path, result: Breakdown, traces: int) -> Path:
    path = folder / "traces.md"
    path.write_text("# Where the time went\n\n" + render_markdown(result, traces))
    return path
