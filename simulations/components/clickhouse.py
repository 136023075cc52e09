"""ClickHouse: the real ClickHouse 26.9 engine from PyPI chdb-core, over the real HTTP interface.

There is no ClickHouse server binary to install here (Debian's is 18.16, without Map or
DateTime64), so `simulations.components.chdb_server` runs the engine embedded in chdb-core and
opens ClickHouse's own HTTP listener from it. Clients (clickhouse-connect, the OTel exporter)
cannot tell the difference. That route is not documented by chdb, hence the pinned package
version and the check of `SELECT version()` on every probe.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path
from typing import ClassVar

import aiohttp

from simulations.components.base import Component, Launch, NotReady

CHDB_DISTRIBUTION = "chdb-core"
CHDB_VERSION = "26.9.0"  # the wheel; its engine reports 26.9.x.y
HOST = "127.0.0.1"
PROBE_TIMEOUT = aiohttp.ClientTimeout(total=2.0)
# DDL can wait on the engine's metadata lock for a moment; still bounded so a hang is reported.
PROVISION_TIMEOUT = aiohttp.ClientTimeout(total=30.0)
DATABASE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ClickHouse(Component):
    """One chdb_server process: the ClickHouse engine with its HTTP interface on 127.0.0.1."""

    name: ClassVar[str] = "clickhouse"
    version: ClassVar[str] = "26.9"
    default_ports: ClassVar[dict[str, int]] = {"http": 18123}

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.ctx.port('http')}"

    def preflight(self) -> None:
        # find_spec on the top-level package does not execute it: importing chdb would start an
        # in-memory engine (and its signal handlers) inside the launcher's own process.
        spec = importlib.util.find_spec("chdb")
        if spec is None or spec.origin is None:
            raise self.error(
                "the chdb package is not importable",
                f"uv sync --frozen (the project pins {CHDB_DISTRIBUTION}=={CHDB_VERSION})",
            )
        native = Path(spec.origin).parent / "_chdb.abi3.so"
        if not native.exists():
            raise self.error(
                f"chdb's native engine is missing: {native}",
                f"reinstall it: uv pip install --reinstall {CHDB_DISTRIBUTION}=={CHDB_VERSION}",
            )
        try:
            installed = importlib.metadata.version(CHDB_DISTRIBUTION)
        except importlib.metadata.PackageNotFoundError:
            installed = "none"
        if installed != CHDB_VERSION:
            raise self.error(
                f"{CHDB_DISTRIBUTION} {installed} is installed, {CHDB_VERSION} is pinned "
                "(its HTTP listener is an undocumented route, verified only on the pinned version)",
                "install the project's environment: uv sync --frozen",
            )

    async def prepare(self) -> None:
        # chdb_server writes its own config.xml: the port is its command-line argument.
        self.ctx.data_dir.mkdir(parents=True, exist_ok=True)

    def launch(self) -> Launch:
        return Launch(
            argv=[
                sys.executable,
                "-m",
                "simulations.components.chdb_server",
                "--data",
                str(self.ctx.data_dir),
                "--http-port",
                str(self.ctx.port("http")),
            ]
        )

    async def probe(self) -> None:
        try:
            async with aiohttp.ClientSession(timeout=PROBE_TIMEOUT) as session:
                async with session.get(f"{self.url}/ping") as response:
                    body = await response.text()
                    if response.status != 200 or body.strip() != "Ok.":
                        raise NotReady(f"/ping answered HTTP {response.status}: {body.strip()[:200]}")
                async with session.post(f"{self.url}/", data=b"SELECT version()") as response:
                    body = await response.text()
                    if response.status != 200:
                        raise NotReady(f"SELECT version() answered HTTP {response.status}: {body[:200]}")
        except (TimeoutError, OSError, aiohttp.ClientError) as failure:
            raise NotReady(f"{self.url}: {type(failure).__name__}: {failure}") from failure
        engine_version = body.strip()
        if engine_version != self.version and not engine_version.startswith(f"{self.version}."):
            raise self.error(
                f"the server on {self.url} is ClickHouse {engine_version}, {self.version} is pinned",
                f"install the project's environment (uv sync --frozen: {CHDB_DISTRIBUTION}=={CHDB_VERSION}) "
                "and make sure no other ClickHouse holds the port",
            )

    async def provision(self) -> None:
        names = [name.strip() for name in self.ctx.settings.get("databases", "").split(",") if name.strip()]
        if not names:
            return
        for name in names:
            if not DATABASE_NAME.fullmatch(name):
                raise self.error(
                    f"invalid database name {name!r} in the 'databases' setting",
                    "use letters, digits and underscores, not starting with a digit",
                )
        async with aiohttp.ClientSession(timeout=PROVISION_TIMEOUT) as session:
            for name in names:
                statement = f"CREATE DATABASE IF NOT EXISTS `{name}`"
                try:
                    async with session.post(f"{self.url}/", data=statement.encode()) as response:
                        body = await response.text()
                except (TimeoutError, OSError, aiohttp.ClientError) as failure:
                    raise self.error(
                        f"{statement} failed: {type(failure).__name__}: {failure}",
                        "read the clickhouse log in the run directory",
                    ) from failure
                if response.status != 200:
                    raise self.error(
                        f"{statement} answered HTTP {response.status}: {body.strip()[:300]}",
                        "read the clickhouse log in the run directory",
                    )

    def endpoints(self) -> dict[str, str]:
        return {"http": self.url}
