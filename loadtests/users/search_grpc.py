"""Locust scenario `search-grpc`: the `search` scenario over native gRPC through Envoy, as a
service or a native app calls it. Beside `search` (JSON), the difference is the cost of the
JSON edge (transcoding, HTTP/1.1)."""

from __future__ import annotations

import grpc.experimental.gevent

grpc.experimental.gevent.init_gevent()  # before any channel: gRPC's I/O must yield to gevent

from loadtests.users.kit import GrpcEdge, ScenarioUser, think_time, weighted  # noqa: E402
from loadtests.users.search import SEARCH_ACTIONS  # noqa: E402


class GrpcSearchUser(ScenarioUser):
    edge_class = GrpcEdge
    wait_time = think_time(1.0, 3.0)
    tasks = weighted(SEARCH_ACTIONS)
