"""The stack's DynamoDB stand-in (simulations.components.moto_serial): transactions are atomic
under concurrent requests, and a cancelled one leaves every item as it was, while backing up
only the items it names."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.test import Client

from simulations.components.moto_serial import journaled_transactions, one_at_a_time

TABLE = "moto-serial-test"
HEADERS = {
    "Content-Type": "application/x-amz-json-1.0",
    "Authorization": "AWS4-HMAC-SHA256 Credential=local/20250101/us-east-1/dynamodb/aws4_request, "
    "SignedHeaders=host, Signature=0",
}


def call(client: Client, operation: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = client.post(
        "/", data=json.dumps(body), headers={**HEADERS, "X-Amz-Target": f"DynamoDB_20120810.{operation}"}
    )
    return response.status_code, json.loads(response.get_data() or b"{}")


@pytest.fixture
def client() -> Client:
    journaled_transactions()
    app = Client(one_at_a_time(DomainDispatcherApplication(create_backend_app)))
    call(app, "DeleteTable", {"TableName": TABLE})
    status, _ = call(
        app,
        "CreateTable",
        {
            "TableName": TABLE,
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            "AttributeDefinitions": [
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            "BillingMode": "PAY_PER_REQUEST",
        },
    )
    assert status == 200
    return app


def key(sk: str) -> dict[str, Any]:
    return {"pk": {"S": "p"}, "sk": {"S": sk}}


def value_of(client: Client, sk: str) -> int | None:
    _, reply = call(client, "GetItem", {"TableName": TABLE, "Key": key(sk), "ConsistentRead": True})
    return int(reply["Item"]["n"]["N"]) if "Item" in reply else None


def bump(sk: str, seen: int | None) -> dict[str, Any]:
    """Set n to seen + 1 if it is still `seen`."""
    condition = "attribute_not_exists(n)" if seen is None else "n = :seen"
    values: dict[str, Any] = {":next": {"N": str((seen or 0) + 1)}}
    if seen is not None:
        values[":seen"] = {"N": str(seen)}
    return {
        "Update": {
            "TableName": TABLE,
            "Key": key(sk),
            "UpdateExpression": "SET n = :next",
            "ConditionExpression": condition,
            "ExpressionAttributeValues": values,
        }
    }


def test_a_cancelled_transaction_leaves_every_item_as_it_was(client: Client) -> None:
    assert call(client, "TransactWriteItems", {"TransactItems": [bump("a", None), bump("b", None)]})[0] == 200
    # The first write would apply, the second's condition fails: neither stays.
    status, reply = call(client, "TransactWriteItems", {"TransactItems": [bump("a", 1), bump("b", 7), bump("c", None)]})
    assert status == 400
    assert reply["__type"].endswith("TransactionCanceledException")
    assert (value_of(client, "a"), value_of(client, "b"), value_of(client, "c")) == (1, 1, None)
    assert call(client, "TransactWriteItems", {"TransactItems": [bump("a", 1), bump("b", 1)]})[0] == 200
    assert (value_of(client, "a"), value_of(client, "b")) == (2, 2)


def test_racing_conditional_transactions_commit_one_at_a_time(client: Client) -> None:
    """Eight writers each read the counter and bump it if unchanged: every success is one
    step of the counter (with moto's threaded server alone, two could pass at one value)."""
    successes: list[int] = []

    def writer() -> None:
        for _ in range(25):
            seen = value_of(client, "counter")
            status, _ = call(client, "TransactWriteItems", {"TransactItems": [bump("counter", seen)]})
            if status == 200:
                successes.append((seen or 0) + 1)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(successes) == list(range(1, len(successes) + 1))
    assert value_of(client, "counter") == len(successes)
