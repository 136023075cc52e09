"""The baselines GetDocument is compared to: a grpc.aio server answering every call to
/bench.Echo/Echo with a fixed response of a given size, and nothing else (no interceptors, no
auth, no tracing, no database).

    python -m loadtests.echo_server --port P --size BYTES --runtime bare|service

`bare`: plain asyncio and grpcio's defaults. `service`: the runtime of a service process, as
the kit starts one (services.kit.app): uvloop, the kit's server options, gRPC's helper threads
under SCHED_BATCH. The service-runtime echo is the matched baseline: the difference between it
and GetDocument is what the platform's own code costs, not how the process is tuned.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import grpc
import uvloop

from services.kit.app import keep_helper_threads_from_preempting_the_loop
from services.kit.server import SERVER_OPTIONS
from simulations.launcher import set_parent_death_signal

RUNTIMES = ("bare", "service")


async def serve(port: int, size: int, runtime: str) -> None:
    response = b"x" * size

    async def echo(request: bytes, context: Any) -> bytes:
        return response

    server = grpc.aio.server(options=SERVER_OPTIONS if runtime == "service" else None)
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(echo)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    if runtime == "service":
        keep_helper_threads_from_preempting_the_loop()
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--runtime", choices=RUNTIMES, default="bare")
    args = parser.parse_args()
    set_parent_death_signal(signal.SIGTERM)  # the benchmark that started us may be killed outright
    if args.runtime == "service":
        uvloop.run(serve(args.port, args.size, args.runtime))
    else:
        asyncio.run(serve(args.port, args.size, args.runtime))


if __name__ == "__main__":
    main()
