"""The transactional outbox on DynamoDB: an event is an item of the service's outbox table,
written in the same TransactWriteItems as the change, then relayed to Kafka and deleted.

As with the PostgreSQL outbox (services.kit.outbox), nothing reaches Kafka unless the change
is written, and nothing written is lost while Kafka is down. The outbox table holds only the
events not yet relayed, in one partition ("pending") sorted by the time they were written
and then by their own order key, so the relay reads the oldest first and a read costs what is
pending, not what the service ever wrote. A relay that crashes between publishing and deleting
re-sends: at least once, which consumers absorb by event id.

One relay publishes at a time: the instances of a service share a lease item in the outbox
table (a conditional write with an expiry), so a second instance's relay waits instead of
interleaving; when the holder dies its lease runs out and another takes over.

The relay's own requests compete with the service's writes for the store, so it spends few:
woken by a commit, it lingers a moment and relays everything written meanwhile in one go; the
holder renews its lease only once half of it has passed, and an instance without the lease
asks for it once per idle poll, not on every commit of its own.
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

BATCH_WRITE_MAX = 25  # DynamoDB's limit per BatchWriteItem

PENDING = "pending"
LEASE_KEY = {"pk": "relay", "sk": "lease"}


def outbox_table(table: str) -> str:
    """The outbox table of a service's table."""
    return f"{table}-outbox"


def outbox_put(table: str, envelope: EventEnvelope, topic: str, order: str) -> dict[str, Any]:
    """The TransactWriteItems entry that puts an event in the outbox of `table`. `order` sorts
    events written in the same nanosecond (e.g. a version number, zero-padded), so events of
    one partition key leave in the order they were written."""
    item = {
        "pk": PENDING,
        "sk": f"{time.time_ns():020d}#{order}",
        "topic": topic,
        "envelope": envelope.SerializeToString(),
    }
    return {"Put": {"TableName": outbox_table(table), "Item": to_wire(item)}}


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
        linger_s: float = 0.05,
        lease_s: float = 10.0,
        retry_delay_s: float = 1.0,
    ) -> None:
        self.client = client
        self.table = outbox_table(table)
        self.producer = producer
        self.batch_size = batch_size
        self.idle_poll_s = idle_poll_s
        self.linger_s = linger_s
        self.lease_s = lease_s
        self.retry_delay_s = retry_delay_s
        self.owner = str(uuid.uuid4())
        self._wake = asyncio.Event()
        self._held_until = 0.0  # when the lease this relay holds runs out (0: not held)
        self._next_lease_try = 0.0
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
                    await asyncio.sleep(self.linger_s)  # let the commits of the moment join in
                self._wake.clear()

    async def hold_lease(self) -> bool:
        """Take or renew the relay lease; False while another live relay holds it."""
        now = time.time()
        if now < self._held_until - self.lease_s / 2:
            return True  # held, and more than half of it left
        if not self._held_until and now < self._next_lease_try:
            return False  # another relay held it a moment ago
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
                self._held_until, self._next_lease_try = 0.0, now + self.idle_poll_s
                return False
            raise
        self._held_until = now + self.lease_s
        return True

    async def publish_pending(self) -> int:
        """Publish one batch of pending events, oldest first; returns how many."""
        reply = await self.client.query(
            TableName=self.table,
            KeyConditionExpression="pk = :pending",
            ExpressionAttributeValues=to_wire({":pending": PENDING}),
            ConsistentRead=True,
            Limit=self.batch_size,
        )
        rows = [from_wire(item) for item in reply.get("Items", [])]
        if not rows:
            return 0
        for topic, batch in group_consecutive_by_topic([(row["topic"], row["envelope"]) for row in rows]):
            await self.producer.publish_many(topic, [EventEnvelope.FromString(blob) for blob in batch])
        for start in range(0, len(rows), BATCH_WRITE_MAX):
            deletes = [
                {"DeleteRequest": {"Key": to_wire({"pk": row["pk"], "sk": row["sk"]})}}
                for row in rows[start : start + BATCH_WRITE_MAX]
            ]
            await self._delete_all(deletes)
        self.published_total += len(rows)
        return len(rows)

    async def _delete_all(self, deletes: list[dict[str, Any]]) -> None:
        """BatchWriteItem, again for whatever it left unprocessed."""
        while deletes:
            reply = await self.client.batch_write_item(RequestItems={self.table: deletes})  # type: ignore[dict-item]
            deletes = list(reply.get("UnprocessedItems", {}).get(self.table, []))  # type: ignore[arg-type]
