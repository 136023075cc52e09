"""`python -m services.kit.healthcheck HOST:PORT`: exit 0 when the gRPC server there is SERVING
(the container healthcheck of every service image)."""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def serving(target: str, timeout_s: float = 2.0) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


if __name__ == "__main__":
    raise SystemExit(0 if serving(sys.argv[1]) else 1)
