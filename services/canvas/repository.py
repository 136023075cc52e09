"""The canvas store: one DynamoDB table, one partition per space.

    pk SPACE#<space_id>  sk CANVAS             canvas_version, node_count
    pk SPACE#<space_id>  sk NODE#<node_id>     the node (version, position, ...)
    pk SPACE#<space_id>  sk CHANGE#<version>   the change that made that canvas version; kept
                                               an hour (expiry)

Every accepted change is one TransactWriteItems of four writes: the counter (conditioned on
the canvas version it was read at), the node (conditioned on its expected version, or on not
existing yet), the change item (conditioned on not existing) and its event, in the outbox
table (services.kit.dynamo_outbox). So two changes racing in one
space cannot both commit at the same canvas version: the loser is cancelled and retried, and
the canvas version has no gaps. The change items double as the space's recent history: a
session that missed a change reads it back from here (`changes`), and a snapshot taken while
changes commit is made consistent with them (services.canvas.domain.rolled_forward).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from types_aiobotocore_dynamodb import DynamoDBClient

from services.canvas.domain import Change, ChangeKind, Node
from services.kit.dynamo import EXPIRY_ATTRIBUTE, cancellation_codes, from_wire, is_transaction_cancelled, to_wire
from services.kit.dynamo_outbox import outbox_put
from services.kit.events import EventEnvelope, topic_for

COUNTER_SK = "CANVAS"
CHANGE_RETENTION_S = 3600
FAILED = "ConditionalCheckFailed"


class CanvasMoved(Exception):
    """Another change committed in the space since its canvas version was read: read again."""


class NodeChangedMeanwhile(Exception):
    """The node is not at the version the change was computed from: read it again."""


def space_key(space_id: str) -> str:
    return f"SPACE#{space_id}"


def node_key(node_id: str) -> str:
    return f"NODE#{node_id}"


def change_key(canvas_version: int) -> str:
    return f"CHANGE#{canvas_version:012d}"


def micros(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def moment_of(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1_000_000, UTC)


def node_attributes(node: Node) -> dict[str, Any]:
    return {
        "node_id": node.node_id,
        "document_id": node.document_id,
        "label": node.label,
        "x": node.x,
        "y": node.y,
        "width": node.width,
        "height": node.height,
        "version": node.version,
        "updated_by": node.updated_by,
        "updated_at": micros(node.updated_at),
    }


def node_of(space_id: str, item: dict[str, Any]) -> Node:
    return Node(
        node_id=item["node_id"],
        space_id=space_id,
        document_id=item["document_id"],
        label=item["label"],
        x=float(item["x"]),
        y=float(item["y"]),
        width=float(item["width"]),
        height=float(item["height"]),
        version=int(item["version"]),
        updated_by=item["updated_by"],
        updated_at=moment_of(int(item["updated_at"])),
    )


def change_of(space_id: str, item: dict[str, Any]) -> Change:
    return Change(
        node=node_of(space_id, item),
        kind=ChangeKind(int(item["kind"])),
        actor_user_id=item["updated_by"],
        canvas_version=int(item["canvas_version"]),
        client_request_id=item.get("client_request_id", ""),
    )


class CanvasRepository:
    def __init__(self, client: DynamoDBClient, table: str) -> None:
        self.client = client
        self.table = table

    # -- reads (all strongly consistent) --------------------------------------------------

    async def counter(self, space_id: str) -> tuple[int, int]:
        """(canvas_version, node_count); (0, 0) for a canvas that never had a node."""
        reply = await self.client.get_item(
            TableName=self.table, Key=to_wire({"pk": space_key(space_id), "sk": COUNTER_SK}), ConsistentRead=True
        )
        item = from_wire(reply.get("Item", {}))
        return int(item.get("canvas_version", 0)), int(item.get("node_count", 0))

    async def counter_and_node(self, space_id: str, node_id: str) -> tuple[int, int, Node | None]:
        """The counter and one node read together, as of one moment."""
        reply = await self.client.transact_get_items(
            TransactItems=[
                {"Get": {"TableName": self.table, "Key": to_wire({"pk": space_key(space_id), "sk": COUNTER_SK})}},
                {
                    "Get": {
                        "TableName": self.table,
                        "Key": to_wire({"pk": space_key(space_id), "sk": node_key(node_id)}),
                    }
                },
            ]
        )
        counter, node = (from_wire(response.get("Item", {})) for response in reply["Responses"])
        return (
            int(counter.get("canvas_version", 0)),
            int(counter.get("node_count", 0)),
            node_of(space_id, node) if node else None,
        )

    async def nodes(self, space_id: str) -> list[Node]:
        return [node_of(space_id, item) for item in await self._query(space_id, "NODE#", "NODE$")]

    async def changes(self, space_id: str, after: int, through: int) -> list[Change]:
        """The changes that made canvas versions after+1 .. through, in order (those still kept)."""
        if through <= after:
            return []
        items = await self._query(space_id, change_key(after + 1), change_key(through))
        return [change_of(space_id, item) for item in items]

    async def _query(self, space_id: str, low: str, high: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        start: dict[str, Any] | None = None
        while True:
            reply = await self.client.query(
                TableName=self.table,
                KeyConditionExpression="pk = :pk AND sk BETWEEN :low AND :high",
                ExpressionAttributeValues=to_wire({":pk": space_key(space_id), ":low": low, ":high": high}),
                ConsistentRead=True,
                **({"ExclusiveStartKey": start} if start else {}),  # type: ignore[arg-type]
            )
            items += [from_wire(item) for item in reply.get("Items", [])]
            start = reply.get("LastEvaluatedKey")
            if not start:
                return items

    # -- the one write ------------------------------------------------------------------

    async def commit(
        self,
        change: Change,
        read_at: tuple[int, int],
        expected_node_version: int | None,
        envelope: EventEnvelope,
    ) -> None:
        """Write the change: counter, node and change item at once, or nothing.

        `read_at` is the (canvas_version, node_count) the change was computed from, and
        `expected_node_version` the node's version then (None for a placement). Raises
        CanvasMoved when another change committed in the space meanwhile, NodeChangedMeanwhile
        when this node did. A failure after which the change item is found written, by this
        very call, is a success whose answer was lost."""
        space_id, node = change.node.space_id, change.node
        pk = space_key(space_id)
        change_id = str(uuid.uuid4())  # tells this transaction's change item from any other
        version, count = read_at
        count_after = count + {ChangeKind.PLACED: 1, ChangeKind.MOVED: 0, ChangeKind.REMOVED: -1}[change.kind]
        counter_condition = "attribute_not_exists(canvas_version)" if version == 0 else "canvas_version = :read"
        counter_values = {":next": change.canvas_version, ":count": count_after}
        if version:
            counter_values[":read"] = version
        counter = {
            "Update": {
                "TableName": self.table,
                "Key": to_wire({"pk": pk, "sk": COUNTER_SK}),
                "UpdateExpression": "SET canvas_version = :next, node_count = :count",
                "ConditionExpression": counter_condition,
                "ExpressionAttributeValues": to_wire(counter_values),
            }
        }
        node_item_key = {"pk": pk, "sk": node_key(node.node_id)}
        # A placement must find no node there; a move or removal the node at its expected version.
        node_condition: dict[str, Any] = (
            {"ConditionExpression": "attribute_not_exists(pk)"}
            if expected_node_version is None
            else {
                "ConditionExpression": "version = :expected",
                "ExpressionAttributeValues": to_wire({":expected": expected_node_version}),
            }
        )
        if change.kind is ChangeKind.REMOVED:
            node_write = {"Delete": {"TableName": self.table, "Key": to_wire(node_item_key), **node_condition}}
        else:
            item = to_wire({**node_item_key, **node_attributes(node)})
            node_write = {"Put": {"TableName": self.table, "Item": item, **node_condition}}
        change_item = {
            "pk": pk,
            "sk": change_key(change.canvas_version),
            **node_attributes(node),
            "kind": int(change.kind),
            "canvas_version": change.canvas_version,
            "client_request_id": change.client_request_id,
            "change_id": change_id,
            EXPIRY_ATTRIBUTE: int(time.time()) + CHANGE_RETENTION_S,
        }
        record = {
            "Put": {
                "TableName": self.table,
                "Item": to_wire(change_item),
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        }
        event = outbox_put(self.table, envelope, topic_for("canvas"), f"{space_id}#{change.canvas_version:012d}")
        try:
            await self.client.transact_write_items(TransactItems=[counter, node_write, record, event])  # type: ignore[list-item]
        except (ClientError, BotoCoreError) as error:
            # The transaction may have committed and its answer been lost (a timeout, then the
            # client's retry refused by the conditions its own first try made true).
            if await self._is_committed(space_id, change.canvas_version, change_id):
                return
            if not isinstance(error, ClientError) or not is_transaction_cancelled(error):
                raise
            codes = cancellation_codes(error)
            if len(codes) > 1 and codes[1] == FAILED:
                raise NodeChangedMeanwhile(node.node_id) from error
            raise CanvasMoved(space_id) from error

    async def _is_committed(self, space_id: str, canvas_version: int, change_id: str) -> bool:
        reply = await self.client.get_item(
            TableName=self.table,
            Key=to_wire({"pk": space_key(space_id), "sk": change_key(canvas_version)}),
            ConsistentRead=True,
        )
        return bool(from_wire(reply.get("Item", {})).get("change_id") == change_id)
