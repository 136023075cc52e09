"""The knowledge platform's topology: every component of the stack, in start order.

Adding a component (or, later, a service) means adding it to `COMPONENTS` and, if it needs
something provisioned in a store, a line in `SETTINGS`.
"""

from __future__ import annotations

from simulations.components.base import Component
from simulations.components.dynamodb import DynamoDB
from simulations.components.postgres import PostgreSQL
from simulations.components.redis import Redis
from simulations.components.smtp import SmtpSink
from simulations.topology import Topology

# Services that keep their state in PostgreSQL: one database each.
POSTGRES_DATABASES = ("auth", "knowledge", "chat", "notifications", "ml")

COMPONENTS: tuple[type[Component], ...] = (
    PostgreSQL,
    Redis,
    DynamoDB,
    SmtpSink,
)

SETTINGS: dict[str, dict[str, str]] = {
    "postgres": {"databases": ",".join(POSTGRES_DATABASES)},
}

PLATFORM = Topology(components=COMPONENTS, settings=SETTINGS)
