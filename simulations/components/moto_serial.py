"""Moto's server with requests applied one at a time, as DynamoDB applies them atomically.

    python -m simulations.components.moto_serial -H 127.0.0.1 -p PORT

`python -m moto.server` serves each request on its own thread, and moto's DynamoDB backend
checks a TransactWriteItems' conditions and then applies its writes without a lock: two
transactions racing on one item can both pass their conditions and both commit, so a
conditional write that DynamoDB would refuse succeeds (seen as two changes committed at the
same canvas version). Here the same application runs behind one lock: connections are still
served concurrently, requests are applied in turn, and every transaction is atomic again. The
backend is pure Python under one GIL, so serving in turn costs next to nothing in throughput.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def one_at_a_time(app: WsgiApp) -> WsgiApp:
    """The WSGI app, each request handled and its body produced while holding one lock."""
    lock = threading.Lock()

    def serial(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with lock:
            return list(app(environ, start_response))

    return serial


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, one_at_a_time(app), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
