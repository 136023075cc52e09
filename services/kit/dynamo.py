"""A service's DynamoDB table: the client, the table's creation, items in and out, health.

The same code runs against the local stack's DynamoDB API (moto's server), DynamoDB Local
and AWS: only `dynamodb_url` (empty for AWS) and the credentials differ. Every call is a
CLIENT span of the current trace (services.kit.telemetry.trace_aws_client).

Tables use the single-table layout: a string partition key `pk` and sort key `sk`, so one
table holds a service's items of every kind (the kit's outbox, services.kit.dynamo_outbox, is
a second table, which holds only what is still to be relayed). `ensure_table` creates the table when it is
missing, waits until it is active, and turns on expiry by the `expires_at` attribute; two
instances starting at once both succeed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from contextlib import AsyncExitStack
from decimal import Decimal
from typing import Any

import aioboto3
from aiobotocore.config import AioConfig
from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError
from types_aiobotocore_dynamodb import DynamoDBClient

from services.kit.health import Dependency
from services.kit.settings import ServiceSettings
from services.kit.telemetry import trace_aws_client

Item = dict[str, Any]  # an item as Python values
WireItem = dict[str, Any]  # an item in DynamoDB's typed JSON ({"S": ...}, {"N": ...})

EXPIRY_ATTRIBUTE = "expires_at"  # epoch seconds; DynamoDB deletes the item some time after
_serializer, _deserializer = TypeSerializer(), TypeDeserializer()


async def open_client(settings: ServiceSettings, resources: AsyncExitStack) -> DynamoDBClient:
    """A traced DynamoDB client for the stack's endpoint, closed with `resources`."""
    session = aioboto3.Session()
    client: DynamoDBClient = await resources.enter_async_context(
        session.client(
            "dynamodb",
            endpoint_url=settings.dynamodb_url or None,
            region_name=settings.dynamodb_region,
            aws_access_key_id=settings.aws_access_key_id.get_secret_value(),
            aws_secret_access_key=settings.aws_secret_access_key.get_secret_value(),
            # A store that does not answer fails the call within seconds, not minutes.
            config=AioConfig(connect_timeout=2, read_timeout=5, retries={"max_attempts": 2, "mode": "standard"}),
        )
    )
    trace_aws_client(client)
    return client


async def ensure_table(client: DynamoDBClient, table: str) -> None:
    """Create the table (string keys pk and sk; on-demand capacity) unless it exists; wait
    until it is active."""
    try:
        await client.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
    except ClientError as error:
        if error.response["Error"]["Code"] != "ResourceInUseException":  # another instance made it
            raise
    for _ in range(100):
        described = await client.describe_table(TableName=table)
        if described["Table"]["TableStatus"] == "ACTIVE":
            break
        await asyncio.sleep(0.1)
    ttl = await client.describe_time_to_live(TableName=table)
    if ttl["TimeToLiveDescription"].get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
        await client.update_time_to_live(
            TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": EXPIRY_ATTRIBUTE}
        )


def to_wire(item: Mapping[str, Any]) -> WireItem:
    """Python values → DynamoDB's typed form (floats go as exact decimals)."""
    return {key: _serializer.serialize(_decimal(value)) for key, value in item.items()}


def from_wire(item: Mapping[str, Any]) -> Item:
    return {key: _plain(_deserializer.deserialize(value)) for key, value in item.items()}


def _decimal(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    return value


def _plain(value: Any) -> Any:
    """Numbers come back as int when whole, else float (read a float field with float());
    binary as bytes."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Binary):
        return bytes(value.value)
    return value


def cancellation_codes(error: ClientError) -> list[str]:
    """Per item of a cancelled TransactWriteItems: "None", "ConditionalCheckFailed", ..."""
    reasons: list[dict[str, Any]] = error.response.get("CancellationReasons", [])  # type: ignore[assignment]
    return [reason.get("Code", "None") for reason in reasons]


def is_transaction_cancelled(error: ClientError) -> bool:
    return error.response["Error"]["Code"] == "TransactionCanceledException"


def dynamodb_dependency(client: DynamoDBClient, table: str, name: str = "dynamodb") -> Dependency:
    async def probe() -> None:
        await client.describe_table(TableName=table)

    return Dependency(name, probe)
