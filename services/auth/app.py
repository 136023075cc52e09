"""Wiring of the auth service: settings, stores, use cases, server, background loops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path

import redis.asyncio as aioredis
from argon2 import PasswordHasher

from services.api.auth.v1 import auth_pb2_grpc
from services.auth import VERSION
from services.auth.domain import LoginLimits, TokenPolicy
from services.auth.repository import AuthRepository, LoginAttempts
from services.auth.server import PUBLIC_METHODS, SERVICE_NAME, AuthServer
from services.auth.service import AuthService, KeySettings
from services.kit import app
from services.kit.db import SessionFactory, create_engine, session_factory
from services.kit.health import redis_dependency
from services.kit.server import ServiceSpec
from services.kit.settings import ServiceSettings
from services.kit.telemetry import untraced

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
log = logging.getLogger("services.auth")


class AuthSettings(ServiceSettings):
    service_name: str = "auth"
    grpc_port: int = 15051
    access_token_ttl_s: int = 900
    refresh_token_ttl_s: int = 30 * 24 * 3600
    service_token_ttl_s: int = 600
    # Login throttling: failed logins per account and per client address, per rolling window.
    login_failures_per_account: int = 5
    login_failures_per_address: int = 50
    login_window_s: int = 300
    # Signing keys: a key signs for key_rotation_s; its successor is published
    # key_publish_ahead_s before it signs (Envoy and services refetch the JWKS faster than that).
    key_rotation_s: int = 7 * 24 * 3600
    key_publish_ahead_s: int = 6  # twice Envoy's JWKS cache (3 s)
    key_reload_s: float = 2.0
    jwt_leeway_s: int = 30
    # Argon2id cost: the library's RFC 9106 low-memory profile (t=3, m=64 MiB) by default.
    password_time_cost: int = 3
    password_memory_kib: int = 65536


def build_service(
    settings: AuthSettings, sessions: SessionFactory, redis: aioredis.Redis, on_commit: Callable[[], None]
) -> AuthService:
    return AuthService(
        sessions=sessions,
        repository=AuthRepository(),
        attempts=LoginAttempts(redis, settings.login_window_s),
        hasher=PasswordHasher(time_cost=settings.password_time_cost, memory_cost=settings.password_memory_kib),
        policy=TokenPolicy(
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            access_ttl=timedelta(seconds=settings.access_token_ttl_s),
            refresh_ttl=timedelta(seconds=settings.refresh_token_ttl_s),
            service_ttl=timedelta(seconds=settings.service_token_ttl_s),
        ),
        limits=LoginLimits(
            failures_per_account=settings.login_failures_per_account,
            failures_per_address=settings.login_failures_per_address,
            window=timedelta(seconds=settings.login_window_s),
        ),
        keys=KeySettings(
            rotate_after=timedelta(seconds=settings.key_rotation_s),
            publish_ahead=timedelta(seconds=settings.key_publish_ahead_s),
            clock_skew=timedelta(seconds=settings.jwt_leeway_s),
        ),
        on_commit=on_commit,
        platform_secret=settings.platform_secret.get_secret_value(),
    )


async def build(settings: AuthSettings, resources: AsyncExitStack) -> app.Application:
    store = await app.open_store(settings, "auth", MIGRATIONS, resources)
    sessions, relay = store.sessions, store.relay
    redis = aioredis.Redis.from_url(settings.redis_url)
    resources.push_async_callback(redis.aclose)

    service = build_service(settings, sessions, redis, relay.wake)
    await service.refresh_keys()

    async def reload_keys() -> None:
        while True:
            await asyncio.sleep(settings.key_reload_s)
            with untraced():  # a poll, not work: no trace every 2 s
                await service.refresh_keys()

    # Auth verifies tokens with the keys it holds: no call to itself.
    verifiers = app.verifiers_for(service, settings, leeway_s=settings.jwt_leeway_s)
    edge_credential = settings.edge_credential.get_secret_value()
    spec = ServiceSpec(
        name="auth",
        version=VERSION,
        grpc_services=[SERVICE_NAME],
        register=lambda server: auth_pb2_grpc.add_AuthServiceServicer_to_server(
            AuthServer(service, edge_credential), server
        ),
        public_methods=PUBLIC_METHODS,
    )
    return app.Application(
        spec=spec,
        verifiers=verifiers,
        background=[relay.run, reload_keys],
        dependencies=[store.dependency, redis_dependency(redis)],
    )


def main() -> None:
    app.main(build, AuthSettings, VERSION)


def rotate_key_command() -> None:
    """Publish a successor signing key now; it starts signing after key_publish_ahead_s."""

    async def rotate() -> None:
        settings = AuthSettings()
        engine = create_engine(settings.database_dsn("auth"))
        redis = aioredis.Redis.from_url(settings.redis_url)
        try:
            service = build_service(settings, session_factory(engine), redis, lambda: None)
            key = await service.rotate_keys()
            print(f"new signing key {key.kid} is published now and signs from {key.active_from:%H:%M:%S} UTC")
        finally:
            await redis.aclose()
            await engine.dispose()

    asyncio.run(rotate())
