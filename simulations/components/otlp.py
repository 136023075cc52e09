"""The OTLP receiver (observability.collector): spans in over OTLP, rows out to ClickHouse."""

from __future__ import annotations

import sys

import aiohttp

from simulations.components.base import Component, Launch, NotReady


class OtlpReceiver(Component):
    name = "otlp"
    version = "1"  # our own receiver; the schema it writes is pinned in observability/schema
    default_ports = {"grpc": 14317, "http": 14318}
    depends_on = ("clickhouse",)

    def launch(self) -> Launch:
        return Launch(
            argv=[
                sys.executable,
                "-m",
                "observability.collector",
                "--grpc-port",
                str(self.ctx.port("grpc")),
                "--http-port",
                str(self.ctx.port("http")),
                "--clickhouse-url",
                self.ctx.endpoints_of["clickhouse"]["http"],
            ]
        )

    async def probe(self) -> None:
        """The stats route answers only after the schema is applied and both servers listen."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session,
                session.get(f"http://127.0.0.1:{self.ctx.port('http')}/stats") as response,
            ):
                if response.status != 200:
                    raise NotReady(f"/stats answered {response.status}")
        except (aiohttp.ClientError, TimeoutError) as error:
            raise NotReady(str(error)) from error

    def endpoints(self) -> dict[str, str]:
        return {
            "grpc": f"127.0.0.1:{self.ctx.port('grpc')}",
            "http": f"http://127.0.0.1:{self.ctx.port('http')}",
        }
