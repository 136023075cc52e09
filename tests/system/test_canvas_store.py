"""The canvas store against the stack's DynamoDB: a transaction that committed but whose
answer was lost (a timeout, then the client's retry refused by the conditions its first try
made true) is reported as the success it was, not as a conflict."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import pytest
from types_aiobotocore_dynamodb import DynamoDBClient

from services.canvas.domain import Change, ChangeKind, placed, placement
from services.canvas.repository import CanvasMoved, CanvasRepository
from services.canvas.wire import change_event
from services.kit.dynamo import ensure_table, open_client
from services.kit.dynamo_outbox import outbox_table
from services.kit.settings import ServiceSettings
from simulations.endpoints import StackEndpoints


class AnswerLost:
    """A client whose TransactWriteItems commits, loses its answer, and is retried: the
    caller sees what the retry got."""

    def __init__(self, client: DynamoDBClient) -> None:
        self.client = client

    async def transact_write_items(self, **request: Any) -> Any:
        await self.client.transact_write_items(**request)
        return await self.client.transact_write_items(**request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


@pytest.fixture
async def table(stack: StackEndpoints) -> AsyncIterator[tuple[DynamoDBClient, str]]:
    async with AsyncExitStack() as resources:
        client = await open_client(ServiceSettings(dynamodb_url=stack.dynamodb_url), resources)
        name = f"canvas-store-{uuid.uuid4().hex[:8]}"
        for each in (name, outbox_table(name)):
            await ensure_table(client, each)
        yield client, name
        for each in (name, outbox_table(name)):
            await client.delete_table(TableName=each)


def first_placement(space_id: str) -> Change:
    node = placed(placement("", "Idea", 1, 2, 0, 0), space_id, str(uuid.uuid4()), str(uuid.uuid4()), datetime.now(UTC))
    return Change(node, ChangeKind.PLACED, node.updated_by, canvas_version=1)


async def test_a_commit_whose_answer_was_lost_is_a_success(table: tuple[DynamoDBClient, str]) -> None:
    client, name = table
    repository = CanvasRepository(AnswerLost(client), name)  # type: ignore[arg-type]
    change = first_placement(str(uuid.uuid4()))
    await repository.commit(change, (0, 0), None, change_event(change, None))
    assert await repository.counter(change.node.space_id) == (1, 1)
    assert await repository.nodes(change.node.space_id) == [change.node]


async def test_a_change_that_lost_the_race_is_still_a_conflict(table: tuple[DynamoDBClient, str]) -> None:
    """The control: another change at the same canvas version is not mistaken for this one."""
    client, name = table
    repository = CanvasRepository(client, name)
    space_id = str(uuid.uuid4())
    winner, loser = first_placement(space_id), first_placement(space_id)
    await repository.commit(winner, (0, 0), None, change_event(winner, None))
    with pytest.raises(CanvasMoved):
        await repository.commit(loser, (0, 0), None, change_event(loser, None))
