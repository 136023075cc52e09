"""Moto's DynamoDB API, served for a stack under load: three faults of `python -m moto.server`
mended.

    python -m simulations.components.moto_serial -H 127.0.0.1 -p PORT

1. Atomicity. `python -m moto.server` serves each request on its own thread, and moto checks
   a TransactWriteItems' conditions and applies its writes without a lock: two transactions
   racing on one item can both pass their conditions and both commit, so a conditional write
   that DynamoDB would refuse succeeds (seen as two changes committed at one canvas version).
   Here the application runs behind one lock: connections are still served concurrently,
   requests are applied in turn, and every transaction is atomic again. The backend is pure
   Python under one GIL, so serving in turn costs next to nothing in throughput.
2. Cost. To undo a cancelled transaction, moto deep-copies every table the transaction names,
   for each of its items, before every transaction: its cost grows with the table, and at
   ~15k items one transaction held the server for seconds. Here the copy is of the items the
   transaction names (`journaled_transactions`), and those are put back when it is cancelled.
3. Connections. Werkzeug's development server closes every connection after one response, so
   each request paid a TCP connection and a new server thread (~130 connections a second
   under the canvas benchmark). Waitress serves the same application with keep-alive.
"""

from __future__ import annotations

import argparse
import copy
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

import moto.dynamodb.models as dynamodb_models
import waitress
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.table import Table
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def one_at_a_time(app: WsgiApp) -> WsgiApp:
    """The WSGI app, each request handled and its body produced while holding one lock."""
    lock = threading.Lock()

    def serial(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with lock:
            return list(app(environ, start_response))

    return serial


class _TablesNotCopied:
    """Moto's backend module's `copy`, except that a table is not copied: its backup becomes
    the table itself (so moto's own undo is a no-op) and the journal undoes instead."""

    @staticmethod
    def deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
        return value if isinstance(value, Table) else copy.deepcopy(value, memo)


Key = tuple[Table, DynamoType, DynamoType | None]


def _key_of(table: Table, operation: dict[str, Any]) -> Key:
    attributes = operation.get("Key") or operation.get("Item") or {}
    range_value = DynamoType(attributes[table.range_key_attr]) if table.range_key_attr else None
    return table, DynamoType(attributes[table.hash_key_attr]), range_value


def _stored(key: Key) -> Item | None:
    table, hash_value, range_value = key
    if range_value is None:
        return table.items.get(hash_value)  # type: ignore[return-value]
    return table.items.get(hash_value, {}).get(range_value)


def _restore(key: Key, item: Item | None) -> None:
    table, hash_value, range_value = key
    if range_value is None:
        table.items.pop(hash_value, None)
        if item is not None:
            table.items[hash_value] = item  # type: ignore[assignment]
        return
    partition = table.items[hash_value]
    partition.pop(range_value, None)
    if item is not None:
        partition[range_value] = item


def journaled_transactions() -> None:
    """Make TransactWriteItems back up only the items it names (see the module's docstring)."""
    original = DynamoDBBackend.transact_write_items
    if getattr(original, "journaled", False):
        return

    def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
        journal: list[tuple[Key, Item | None]] = []
        for entry in transact_items:
            operation = next(iter(entry.values()))
            table = self.tables.get(operation.get("TableName", ""))
            if table is not None:
                key = _key_of(table, operation)
                journal.append((key, copy.deepcopy(_stored(key))))
        try:
            original(self, transact_items)
        except Exception:
            for key, item in reversed(journal):
                _restore(key, item)
            raise

    transact_write_items.journaled = True  # type: ignore[attr-defined]
    dynamodb_models.copy = _TablesNotCopied  # type: ignore[attr-defined,assignment]
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    journaled_transactions()
    app = DomainDispatcherApplication(create_backend_app)
    # Threads only wait on sockets here: the lock applies one request at a time.
    waitress.serve(one_at_a_time(app), host=args.host, port=args.port, threads=8, ident="moto", _quiet=True)


if __name__ == "__main__":
    main()
