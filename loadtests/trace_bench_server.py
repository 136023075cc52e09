"""The server side of `loadtests.bench_traces overhead`: the kit's gRPC server answering a trivial
unary RPC (auth.v1 GetJwks with a fixed key) in a service's runtime (uvloop, the kit's helper
thread policy), with tracing off or on at a sample ratio (every sampled span exported).

    python -m loadtests.trace_bench_server --port P --otlp HOST:PORT --tracing off|on [--sample-ratio R]
"""

from __future__ import annotations

import argparse
import signal
from typing import Any

import grpc
import uvloop

from services.api.auth.v1 import auth_pb2, auth_pb2_grpc
from services.kit.app import keep_helper_threads_from_preempting_the_loop
from services.kit.server import ServiceSpec, build_server, serve
from services.kit.telemetry import TelemetrySettings, setup_telemetry, shutdown_telemetry
from simulations.launcher import set_parent_death_signal

KEY = auth_pb2.JsonWebKey(kty="RSA", kid="bench", use="sig", alg="RS256", n="AQAB", e="AQAB")


class FixedKeys(auth_pb2_grpc.AuthServiceServicer):
    async def GetJwks(self, request: auth_pb2.GetJwksRequest, context: Any) -> auth_pb2.GetJwksResponse:
        return auth_pb2.GetJwksResponse(keys=[KEY])


def register(server: grpc.aio.Server) -> None:
    auth_pb2_grpc.add_AuthServiceServicer_to_server(FixedKeys(), server)  # type: ignore[abstract]


async def run(port: int, otlp: str, tracing: bool, sample_ratio: float) -> None:
    if tracing:
        setup_telemetry(TelemetrySettings("bench-server", "1", "bench", otlp_endpoint=otlp, sample_ratio=sample_ratio))
    spec = ServiceSpec(
        name="bench-server",
        version="1",
        grpc_services=["auth.v1.AuthService"],
        register=register,
        public_methods=frozenset({"/auth.v1.AuthService/GetJwks"}),
    )
    built = await build_server(spec, verifier=None, port=port)
    keep_helper_threads_from_preempting_the_loop()
    print("ready", flush=True)
    await serve(built, grace_s=1)
    shutdown_telemetry()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--otlp", required=True)
    parser.add_argument("--tracing", choices=["on", "off"], required=True)
    parser.add_argument("--sample-ratio", type=float, default=1.0)
    args = parser.parse_args()
    set_parent_death_signal(signal.SIGTERM)  # the benchmark that started us may be killed outright
    uvloop.run(run(args.port, args.otlp, args.tracing == "on", args.sample_ratio))


if __name__ == "__main__":
    main()
