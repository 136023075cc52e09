"""The SMTP sink (aiosmtpd) with its Mailpit-compatible HTTP API."""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import aiosmtpd

from simulations.components.base import Component, Launch, NotReady


class SmtpSink(Component):
    name = "smtp"
    version = "1.4.6"  # aiosmtpd
    default_ports = {"smtp": 11025, "api": 18025}

    def preflight(self) -> None:
        if aiosmtpd.__version__ != self.version:
            raise self.error(
                f"expected aiosmtpd {self.version}, found {aiosmtpd.__version__}",
                "reinstall the pinned aiosmtpd: uv sync --frozen",
            )

    def launch(self) -> Launch:
        return Launch(
            argv=[
                sys.executable,
                "-m",
                "simulations.mail.sink",
                "--smtp-port",
                str(self.ctx.port("smtp")),
                "--http-port",
                str(self.ctx.port("api")),
            ]
        )

    async def probe(self) -> None:
        """An SMTP greeting and EHLO, then the HTTP API's liveness route."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.ctx.port("smtp")), timeout=1
            )
            try:
                greeting = await asyncio.wait_for(reader.readline(), timeout=1)
                writer.write(b"QUIT\r\n")
                await writer.drain()
            finally:
                writer.close()
            if not greeting.startswith(b"220"):
                raise NotReady(f"unexpected SMTP greeting {greeting!r}")
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session,
                session.get(f"{self.endpoints()['api']}/livez") as response,
            ):
                if response.status != 200:
                    raise NotReady(f"API /livez answered {response.status}")
        except (OSError, TimeoutError, aiohttp.ClientError) as error:
            raise NotReady(str(error)) from error

    def endpoints(self) -> dict[str, str]:
        return {
            "smtp": f"127.0.0.1:{self.ctx.port('smtp')}",
            "api": f"http://127.0.0.1:{self.ctx.port('api')}",
        }
