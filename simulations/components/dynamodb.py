"""The DynamoDB API, served by moto (the native stand-in for DynamoDB Local), its requests
applied one at a time (simulations.components.moto_serial)."""

from __future__ import annotations

import sys

import aiohttp
import moto

from simulations.components.base import Component, Launch, NotReady

# Any credentials work against moto; clients still need some to sign requests.
LOCAL_REGION = "us-east-1"
LOCAL_ACCESS_KEY = "local"
LOCAL_SECRET_KEY = "local"


class DynamoDB(Component):
    name = "dynamodb"
    version = "5.2.5"  # moto
    default_ports = {"http": 18000}

    def preflight(self) -> None:
        if moto.__version__ != self.version:
            raise self.error(
                f"expected moto {self.version}, found {moto.__version__}",
                "reinstall the pinned moto: uv sync --frozen",
            )

    def launch(self) -> Launch:
        return Launch(
            # Moto's server, serving requests in turn so that transactions are atomic.
            argv=[sys.executable, "-m", "simulations.components.moto_serial", "-p", str(self.ctx.port("http"))],
            env={"MOTO_ALLOW_NONEXISTENT_REGION": "true"},
        )

    async def probe(self) -> None:
        """ListTables over the DynamoDB JSON protocol: the same request the AWS SDK sends."""
        headers = {
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": "DynamoDB_20120810.ListTables",
            "Authorization": (
                f"AWS4-HMAC-SHA256 Credential={LOCAL_ACCESS_KEY}/20250101/{LOCAL_REGION}/dynamodb/aws4_request, "
                "SignedHeaders=host, Signature=0"
            ),
        }
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session,
                session.post(self.endpoints()["url"], data="{}", headers=headers) as response,
            ):
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            raise NotReady(str(error)) from error
        if response.status != 200 or "TableNames" not in body:
            raise NotReady(f"ListTables answered {response.status}: {body}")

    def endpoints(self) -> dict[str, str]:
        return {"url": f"http://127.0.0.1:{self.ctx.port('http')}", "region": LOCAL_REGION}
