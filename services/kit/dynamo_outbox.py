"""The transactional outbox on DynamoDB: an event is an attribute set on an item written in
the same TransactWriteItems as the change, then relayed to Kafka.

As with the PostgreSQL outbox (services.kit.outbox), nothing reaches Kafka unless the change
is written, and nothing written is lost while Kafka is down. An item carries its pending event
in `outbox_envelope`, and two attributes that make it appear in the table's sparse index
`outbox` (partition `outbox` = "pending", sorted by `outbox_order`: the time it was written,
then its own order key). The relay reads that index oldest first, publishes, and removes the
attributes, which drops the item out of the index (the item itself stays, for whatever else
its service keeps it). A relay that crashes between publishing and removing re-sends: at least
once, which consumers absorb by event id.

One relay publishes at a time: the instances of a service share a lease item (a conditional
write with an expiry), so a second instance's relay waits instead of interleaving; when the
holder dies its lease runs out and another takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

from botocore.exceptions import ClientError
from types_aiobotocore_dynamodb import DynamoDBClient

from services.kit.dynamo import from_wire, to_wire
from services.kit.events import EventEnvelope
from services.kit.kafka import EventProducer
from services.kit.outbox import group_consecutive_by_topic
from services.kit.telemetry import untraced

log = logging.getLogger("services.kit.dynamo_outbox")

OUTBOX_INDEX_NAME = "outbox"
PENDING = "pending"
# The index to create with the table (services.kit.dynamo.ensure_table).
OUTBOX_INDEX: dict[str, Any] = {
    "IndexName": OUTBOX_INDEX_NAME,
    "KeySchema": [
        {"AttributeName": "outbox", "KeyType": "HASH"},
        {"AttributeName": "outbox_order", "KeyType": "RANGE"},
    ],
    "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["outbox_topic", "outbox_envelope"]},
}
OUTBOX_INDEX_ATTRIBUTES = ("outbox", "outbox_order")
LEASE_KEY = {"pk": "OUTBOX#relay", "sk": "lease"}


def outbox_attributes(envelope: EventEnvelope, topic: str, order: str) -> dict[str, Any]:
    """The attributes that put an event in the outbox, to merge into the item written with
    the change. `order` sorts events written in the same nanosecond (e.g. a version number
    zero-padded), so events of one partition key leave in the order they were written."""
    return {
        "outbox": PENDING,
        "outbox_order": f"{time.time_ns():020d}#{order}",
        "outbox_topic": topic,
        "outbox_envelope": envelope.SerializeToString(),
    }


class DynamoOutboxRelay:
    """Moves pending events to Kafka, oldest first, while this instance holds the lease."""

    def __init__(
        self,
        client: DynamoDBClient,
        table: str,
        producer: EventProducer,
        *,
        batch_size: int = 100,
        idle_poll_s: float = 1.0,
        lease_s: float = 10.0,
        retry_delay_s: float = 1.0,
    ) -> None:
        self.client = client
        self.table = table
        self.producer = producer
        self.batch_size = batch_size
        self.idle_poll_s = idle_poll_s
        self.lease_s = lease_s
        self.retry_delay_s = retry_delay_s
        self.owner = str(uuid.uuid4())
        self._wake = asyncio.Event()
        self.published_total = 0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Relay until cancelled; errors are logged and retried after a pause."""
        while True:
            try:
                with untraced():  # polls make no spans; each publish joins its event's trace
                    published = await self.publish_pending() if await self.hold_lease() else 0
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("DynamoDB outbox relay failed; retrying in %.1f s", self.retry_delay_s)
                await asyncio.sleep(self.retry_delay_s)
                continue
            if published < self.batch_size:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.idle_poll_s)
                self._wake.clear()

    async def hold_lease(self) -> bool:
        """Take or renew the relay lease; False while another live relay holds it."""
        now = time.time()
        try:
            await self.client.put_item(
                TableName=self.table,
                Item=to_wire({**LEASE_KEY, "owner": self.owner, "lease_until": now + self.lease_s}),
                ConditionExpression="attribute_not_exists(pk) OR #owner = :me OR lease_until < :now",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues=to_wire({":me": self.owner, ":now": now}),
            )
        except ClientError as error:
            if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    async def publish_pending(self) -> int:
        """Publish one batch of pending events, oldest first; returns how many."""
        reply = await self.client.query(
            TableName=self.table,
            IndexName=OUTBOX_INDEX_NAME,
            KeyConditionExpression="outbox = :pending",
            ExpressionAttributeValues=to_wire({":pending": PENDING}),
            Limit=self.batch_size,
        )
        rows = [from_wire(item) for item in reply.get("Items", [])]
        if not rows:
            return 0
        rows.sort(key=lambda row: str(row["outbox_order"]))
        for topic, batch in group_consecutive_by_topic([(row["outbox_topic"], row["outbox_envelope"]) for row in rows]):
            await self.producer.publish_many(topic, [EventEnvelope.FromString(blob) for blob in batch])
        await asyncio.gather(*(self._mark_published(row) for row in rows))
        self.published_total += len(rows)
        return len(rows)

    async def _mark_published(self, row: dict[str, Any]) -> None:
        await self.client.update_item(
            TableName=self.table,
            Key=to_wire({"pk": row["pk"], "sk": row["sk"]}),
            UpdateExpression="REMOVE outbox, outbox_order, outbox_topic, outbox_envelope",
        )
