"""Where the running stack's components answer, read from its state file.

Scenarios, tests and load runs take their addresses from here, never from constants, so a
stack moved with KP_PORT_OFFSET (or a different run directory) just works.
"""

from __future__ import annotations

from collections.abc import Mapping

from services.kit.identity import credential_for
from simulations.rundir import RunDirectory, StackState


class StackNotRunning(RuntimeError):
    pass


class StackEndpoints:
    def __init__(self, state: StackState, platform_secret: str = "") -> None:
        self.state = state
        self._endpoints = state.endpoints()
        # The operator's secret: tests and scenarios derive service credentials from it.
        self._platform_secret = platform_secret

    @classmethod
    def load(cls, run_dir: RunDirectory | None = None) -> StackEndpoints:
        run_dir = run_dir or RunDirectory()
        state = run_dir.read_state()
        if state is None or state.phase != "healthy":
            raise StackNotRunning("no healthy stack; start one with `python -m simulations up --detach`")
        return cls(state, run_dir.platform_secret())

    def service_credential(self, service: str) -> str:
        """The credential with which `service` gets service tokens from auth (see
        services.kit.identity): what the launcher gives each service, derived the same way."""
        if not self._platform_secret:
            raise StackNotRunning("this stack's platform secret is not known here")
        return credential_for(self._platform_secret, service)

    def of(self, component: str) -> Mapping[str, str]:
        try:
            return self._endpoints[component]
        except KeyError:
            raise StackNotRunning(f"{component} is not part of the running stack") from None

    def has(self, component: str) -> bool:
        return component in self._endpoints

    @property
    def kafka_bootstrap(self) -> str:
        return self.of("kafka")["bootstrap"]

    def postgres_dsn(self, database: str = "postgres") -> str:
        return f"{self.of('postgres')['dsn']}/{database}"

    @property
    def redis_url(self) -> str:
        return self.of("redis")["url"]

    @property
    def clickhouse_url(self) -> str:
        return self.of("clickhouse")["http"]

    @property
    def dynamodb_url(self) -> str:
        return self.of("dynamodb")["url"]

    @property
    def smtp_address(self) -> tuple[str, int]:
        host, port = self.of("smtp")["smtp"].rsplit(":", 1)
        return host, int(port)

    @property
    def mail_api(self) -> str:
        return self.of("smtp")["api"]

    @property
    def envoy_http(self) -> str:
        return self.of("envoy")["http"]

    @property
    def envoy_grpc(self) -> str:
        return self.of("envoy")["grpc"]

    @property
    def envoy_admin(self) -> str:
        return self.of("envoy")["admin"]

    @property
    def otlp_grpc(self) -> str:
        return self.of("otlp")["grpc"]

    @property
    def otlp_http(self) -> str:
        return self.of("otlp")["http"]

    def service_grpc(self, service: str) -> str:
        """Direct address of a service (bypassing Envoy)."""
        return self.of(service)["grpc"]
