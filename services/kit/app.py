"""Running a service process: the `main` every service's `__main__` calls.

A service supplies one `build` coroutine that opens what it needs (database, cache, Kafka,
clients) on an `AsyncExitStack` and returns an `Application`: its gRPC spec, the token
verifier, and the background loops it runs (outbox relay, consumers). The kit does the rest:
telemetry, the server, health, signals, draining, closing everything in reverse order, and
flushing spans last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import uvloop

from services.api.auth.v1 import auth_pb2, auth_pb2_grpc
from services.kit.auth import KeySource, RefreshingKeys, TokenVerifier
from services.kit.clients import service_channel
from services.kit.db import SessionFactory, create_engine, session_factory
from services.kit.health import Dependency, DependencyMonitor, postgres_dependency
from services.kit.identity import SERVICE_AUDIENCE, SERVICE_TOKEN_USE, IssuedServiceToken, ServiceTokens
from services.kit.kafka import EventProducer, new_producer
from services.kit.migrations import upgrade_to_head
from services.kit.outbox import OutboxRelay
from services.kit.server import ServiceSpec, build_server, serve
from services.kit.settings import ServiceSettings
from services.kit.telemetry import TelemetrySettings, setup_telemetry, shutdown_telemetry

log = logging.getLogger("services.kit.app")

Loop = Callable[[], Awaitable[None]]
SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


@dataclass(frozen=True)
class Verifiers:
    """A service's token checks: its users' access tokens and other services' service tokens,
    both against the auth service's keys (one JWKS cache serves both)."""

    users: TokenVerifier
    services: TokenVerifier


@dataclass
class Application:
    spec: ServiceSpec
    verifiers: Verifiers | None
    background: Sequence[Loop] = field(default_factory=list)
    # The stores the service cannot answer without: health is NOT_SERVING while one is down.
    dependencies: Sequence[Dependency] = field(default_factory=list)


Build = Callable[[SettingsT, AsyncExitStack], Awaitable[Application]]


def main(build: Build[SettingsT], settings_type: type[SettingsT], version: str) -> None:
    """Entry point of a service process."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    # uvloop: the same asyncio, with a faster event loop under gRPC, asyncpg and Kafka I/O.
    uvloop.run(run(build, settings_type(), version))


async def run(build: Build[SettingsT], settings: SettingsT, version: str) -> None:
    setup_telemetry(
        TelemetrySettings(
            service_name=settings.service_name,
            service_version=version,
            environment=settings.environment,
            otlp_endpoint=settings.otlp_endpoint,
            sample_ratio=settings.trace_sample_ratio,
            enabled=settings.tracing_enabled,
            instance=settings.instance,
        )
    )
    try:
        async with AsyncExitStack() as resources:
            app = await build(settings, resources)
            built = await build_server(
                app.spec,
                app.verifiers.users if app.verifiers else None,
                settings.grpc_host,
                settings.grpc_port,
                reflection_enabled=settings.grpc_reflection,
                service_verifier=app.verifiers.services if app.verifiers else None,
            )
            keep_helper_threads_from_preempting_the_loop()
            monitor = DependencyMonitor(app.dependencies, built.set_dependencies_up)
            loops = [asyncio.create_task(supervised(loop)) for loop in [*app.background, monitor.run]]
            try:
                await serve(built, settings.shutdown_grace_s)
            finally:
                for task in loops:
                    task.cancel()
                await asyncio.gather(*loops, return_exceptions=True)
    finally:
        shutdown_telemetry()


def keep_helper_threads_from_preempting_the_loop() -> None:
    """Make every thread but the event loop's SCHED_BATCH (Linux).

    gRPC's helper threads (its completion-queue poller, EventEngine workers) wake several times
    per RPC. As ordinary threads each wakeup may preempt the event loop's thread, which then has
    to win the GIL back: on 2 cores that churn was ~9% of a GetDocument's CPU. SCHED_BATCH only
    turns off wakeup preemption for them; threads they start later inherit it."""
    if not hasattr(os, "SCHED_BATCH"):
        return
    loop_thread = threading.get_native_id()
    for thread_id in (int(name) for name in os.listdir("/proc/self/task")):
        if thread_id != loop_thread:
            with contextlib.suppress(OSError):  # a thread that just ended; a sandbox refusing
                os.sched_setscheduler(thread_id, os.SCHED_BATCH, os.sched_param(0))


async def supervised(loop: Loop) -> None:
    """A background loop that dies is logged and restarted: a relay or consumer must not
    silently stop while the service still answers health checks."""
    while True:
        try:
            await loop()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background loop %s failed; restarting in 1 s", getattr(loop, "__qualname__", loop))
            await asyncio.sleep(1.0)


@dataclass
class Store:
    """A service's PostgreSQL database, migrated, with its outbox relay to Kafka."""

    dsn: str
    sessions: SessionFactory
    producer: EventProducer
    relay: OutboxRelay
    dependency: Dependency  # the database, for the service's health


async def open_store(settings: ServiceSettings, database: str, migrations: Path, resources: AsyncExitStack) -> Store:
    """Migrate the database to head, open it, and start a Kafka producer for its outbox relay
    (run `store.relay.run` as a background loop); everything closes with `resources`."""
    dsn = settings.database_dsn(database)
    await upgrade_to_head(migrations, dsn)
    engine = create_engine(dsn)
    resources.push_async_callback(engine.dispose)
    kafka = new_producer(settings.kafka_bootstrap, client_id=settings.service_name)
    await kafka.start()
    resources.push_async_callback(kafka.stop)
    sessions = session_factory(engine)
    producer = EventProducer(kafka)
    return Store(dsn, sessions, producer, OutboxRelay(sessions, producer), postgres_dependency(engine))


def verifiers_for(keys: KeySource, settings: ServiceSettings, leeway_s: int = 30) -> Verifiers:
    return Verifiers(
        users=TokenVerifier(keys, settings.jwt_issuer, [settings.jwt_audience], leeway_s=leeway_s),
        services=TokenVerifier(
            keys, settings.jwt_issuer, [SERVICE_AUDIENCE], leeway_s=leeway_s, token_use=SERVICE_TOKEN_USE
        ),
    )


def platform_verifiers(settings: ServiceSettings) -> Verifiers:
    """Verifies tokens with the auth service's JWKS (fetched on first use, refreshed when a
    token names a key we have not seen)."""
    channel = service_channel(settings.auth_grpc_target)
    stub = auth_pb2_grpc.AuthServiceStub(channel)

    async def fetch_jwks() -> Mapping[str, Any]:
        reply = await stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=3)
        return {
            "keys": [{"kty": k.kty, "kid": k.kid, "use": k.use, "alg": k.alg, "n": k.n, "e": k.e} for k in reply.keys]
        }

    return verifiers_for(RefreshingKeys(fetch_jwks), settings)


def service_tokens(settings: ServiceSettings, resources: AsyncExitStack) -> ServiceTokens | None:
    """This service's identity towards its peers (None when it was given no credential: its
    calls to internal methods will then be refused)."""
    credential = settings.own_credential()
    if not credential:
        log.warning("%s has no service credential: other services' internal methods refuse it", settings.service_name)
        return None
    # A channel of its own: a token fetch must not carry the end user's token or deadline.
    channel = grpc.aio.insecure_channel(settings.auth_grpc_target)
    resources.push_async_callback(channel.close)
    stub = auth_pb2_grpc.AuthServiceStub(channel)

    async def issue(service: str, credential: str) -> IssuedServiceToken:
        request = auth_pb2.IssueServiceTokenRequest(service=service, credential=credential)
        reply = await stub.IssueServiceToken(request, timeout=3)
        return IssuedServiceToken(reply.service_token, reply.expires_in_seconds)

    return ServiceTokens(settings.service_name, credential, issue)
