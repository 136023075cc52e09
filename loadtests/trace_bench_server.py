"""The server side of `loadtests.bench_traces overhead`: the kit's gRPC server answering a trivial
unary RPC (auth.v1 GetJwks with a fixed key), with tracing off or on (every span exported).

    python -m loadtests.trace_bench_server --port P --tracing on|off --otlp HOST:PORT
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import grpc

from services.api.auth.v1 import auth_pb2, auth_pb2_grpc
from services.kit.server import ServiceSpec, build_server, serve
from services.kit.telemetry import TelemetrySettings, setup_telemetry, shutdown_telemetry

KEY = auth_pb2.JsonWebKey(kty="RSA", kid="bench", use="sig", alg="RS256", n="AQAB", e="AQAB")


class FixedKeys(auth_pb2_grpc.AuthServiceServicer):
    async def GetJwks(self, request: auth_pb2.GetJwksRequest, context: Any) -> auth_pb2.GetJwksResponse:
        return auth_pb2.GetJwksResponse(keys=[KEY])


def register(server: grpc.aio.Server) -> None:
    auth_pb2_grpc.add_AuthServiceServicer_to_server(FixedKeys(), server)  # type: ignore[abstract]


async def run(port: int, tracing: bool, otlp: str) -> None:
    if tracing:
        setup_telemetry(TelemetrySettings("bench-server", "1", "bench", otlp_endpoint=otlp))
    spec = ServiceSpec(
        name="bench-server",
        version="1",
        grpc_services=["auth.v1.AuthService"],
        register=register,
        public_methods=frozenset({"/auth.v1.AuthService/GetJwks"}),
    )
    built = await build_server(spec, verifier=None, port=port)
    print("ready", flush=True)
    await serve(built, grace_s=1)
    shutdown_telemetry()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tracing", choices=["on", "off"], required=True)
    parser.add_argument("--otlp", required=True)
    args = parser.parse_args()
    asyncio.run(run(args.port, args.tracing == "on", args.otlp))


if __name__ == "__main__":
    main()
