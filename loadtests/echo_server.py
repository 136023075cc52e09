"""A bare grpc.aio server (no interceptors, no auth, no tracing) answering every call to
/bench.Echo/Echo with a fixed response of a given size: the baseline GetDocument is compared to.

    python -m loadtests.echo_server --port P --size BYTES
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import grpc

from simulations.launcher import set_parent_death_signal


async def serve(port: int, size: int) -> None:
    response = b"x" * size

    async def echo(request: bytes, context: Any) -> bytes:
        return response

    server = grpc.aio.server()
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(echo)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    args = parser.parse_args()
    set_parent_death_signal(signal.SIGTERM)  # the benchmark that started us may be killed outright
    asyncio.run(serve(args.port, args.size))


if __name__ == "__main__":
    main()
