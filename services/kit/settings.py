"""Service settings, read from the environment (prefix KP_), with local-stack defaults.

Every service reads the same base settings; a service adds its own fields by subclassing.
The launcher passes the real addresses of the running stack through the same variables.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode, urlsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.kit.identity import credential_for

# The platform's token identity, shared by the auth service (issuer), every verifier and Envoy.
JWT_ISSUER = "https://auth.platform.local"
JWT_AUDIENCE = "knowledge-platform"


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KP_", extra="ignore")

    service_name: str = "unnamed"
    # Which instance of the service this is, when several run (e.g. "canvas-2"); for traces.
    instance: str = ""
    environment: str = "local"
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 0
    # gRPC server reflection lists every method to any caller: for development only.
    grpc_reflection: bool = False
    # Seconds in-flight RPCs get to finish on shutdown.
    shutdown_grace_s: float = 5.0

    postgres_dsn: str = "postgresql://postgres@127.0.0.1:15432"
    # The server's Unix socket folder when it runs on this machine: connections go through it
    # (same server as postgres_dsn, less kernel work per query than loopback TCP).
    postgres_socket_dir: str = ""
    redis_url: str = "redis://127.0.0.1:16379/0"
    kafka_bootstrap: str = "127.0.0.1:19092"
    # The DynamoDB endpoint (empty: AWS itself, with the region and credentials below).
    dynamodb_url: str = "http://127.0.0.1:18000"
    dynamodb_region: str = "us-east-1"
    aws_access_key_id: SecretStr = SecretStr("local")
    aws_secret_access_key: SecretStr = SecretStr("local")
    clickhouse_url: str = "http://127.0.0.1:18123"
    smtp_address: str = "127.0.0.1:11025"

    otlp_endpoint: str = "127.0.0.1:14317"
    # Fraction of new traces recorded; 1.0 locally, lower for load runs (KP_TRACE_SAMPLE_RATIO).
    trace_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    tracing_enabled: bool = True

    jwt_issuer: str = JWT_ISSUER
    jwt_audience: str = JWT_AUDIENCE
    # Identity among the services (services.kit.identity). The auth service holds the platform
    # secret; every other service its own credential — or, where all services share one trust
    # domain (a local Docker Compose), the platform secret to derive it from. The edge
    # credential is the secret Envoy shows: next to it, x-forwarded-for is the client's address.
    platform_secret: SecretStr = SecretStr("")
    service_credential: SecretStr = SecretStr("")
    edge_credential: SecretStr = SecretStr("")

    auth_grpc_target: str = "127.0.0.1:15051"
    knowledge_grpc_target: str = "127.0.0.1:15052"

    def own_credential(self) -> str:
        """This service's credential, given or derived from the platform secret ("" if neither)."""
        if self.service_credential.get_secret_value():
            return self.service_credential.get_secret_value()
        if self.platform_secret.get_secret_value():
            return credential_for(self.platform_secret.get_secret_value(), self.service_name)
        return ""

    def database_dsn(self, database: str) -> str:
        """SQLAlchemy async DSN for one of the service's databases."""
        server = urlsplit(self.postgres_dsn)
        if self.postgres_socket_dir:
            query = urlencode({"host": self.postgres_socket_dir, "port": server.port or 5432}, quote_via=quote)
            credentials = server.netloc.rpartition("@")[0]
            return f"postgresql+asyncpg://{credentials}@/{database}?{query}"
        return f"postgresql+asyncpg://{server.netloc}/{database}"
