"""Serve the real ClickHouse HTTP interface from the chdb engine, as a standalone process.

    python -m simulations.components.chdb_server --data DIR --http-port PORT

chdb-core embeds ClickHouse's LocalServer (upstream clickhouse-local). It has no server binary,
but a module-level `chdb._chdb.query(..., path=DB)` can open the real HTTP listener with
`SYSTEM START LISTEN HTTP`, configured from `./config.xml` in the working directory. The
listener lives only while a query of that same call is running, so the call goes on with a query
that sleeps forever; cancelling that query is how the engine is asked to shut down.

Layout inside DIR:
    chdb_server.lock   one process per data dir (flock, holds the owner's pid)
    engine/config.xml  http_port and listen_host; the working directory of the engine
    db/                the ClickHouse data path (metadata, parts, the engine's own `status` lock)

Stopping (SIGTERM or SIGINT): queries clients already sent get DRAIN_S to finish; then the
keep-alive query is cancelled over HTTP (the engine closes its listener), the connections clients
still hold are shut down (otherwise the engine waits for them and kills the process after ~5 s),
and the engine shuts down cleanly, releasing its `status` lock. About 0.2 s when nothing is
running. A second signal exits at once.
"""

from __future__ import annotations

import argparse
import fcntl
import http.client
import importlib
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import psutil

HOST = "127.0.0.1"
# Each row sleeps this long and the engine checks for cancellation between rows
# (max_block_size=1), so it bounds how long a stop waits; 10 wake-ups a second cost nothing.
KEEPALIVE_TICK_S = 0.1
# Tags this process's keep-alive query, so the start-up check can tell our listener from another
# server that already holds the port (it would answer /ping just the same).
KEEPALIVE_TAG = f"chdb_server keep-alive pid {os.getpid()}"
# 1e9 rows of 0.1 s: the listener stays up for years.
KEEPALIVE_SQL = (
    "SYSTEM START LISTEN HTTP; "
    f"SELECT count() FROM numbers(1e9) WHERE sleepEachRow({KEEPALIVE_TICK_S}) = 0 "
    f"SETTINGS max_block_size = 1, max_threads = 1, max_execution_time = 0, log_comment = '{KEEPALIVE_TAG}'"
)
# The keep-alive query is the only one that arrives through the in-process (Local) interface;
# everything clients send comes over HTTP, so this never touches their queries' text.
CANCEL_SQL = "KILL QUERY WHERE interface = 'Local' SYNC"
# Queries clients have in flight, other than this one.
RUNNING_CLIENT_QUERIES_SQL = "SELECT count() FROM system.processes WHERE interface = 'HTTP' AND query_id != queryID()"
OURS_SQL = (
    f"SELECT version() FROM system.processes WHERE interface = 'Local' AND Settings['log_comment'] = '{KEEPALIVE_TAG}'"
)
# On a stop, queries already running get this long to finish before their connections are cut.
DRAIN_S = 2.0
STOP_DEADLINE_S = 5.0
POLL_S = 0.05


def log(message: str, stream: TextIO = sys.stdout) -> None:
    print(f"{time.strftime('%H:%M:%S')} chdb_server: {message}", file=stream, flush=True)


def config_xml(http_port: int) -> str:
    return (
        f"<clickhouse>\n    <http_port>{http_port}</http_port>\n    <listen_host>{HOST}</listen_host>\n</clickhouse>\n"
    )


def lock_data_dir(data: Path) -> int:
    """Take the data dir for this process, or exit with who holds it.

    The engine has its own lock (`db/status`), but it only reports it after a second engine has
    loaded (0.3 s) and then the process would linger without a listener; this fails first, clearly.
    """
    lock_path = data / "chdb_server.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        log(
            f"data dir {data} is in use by another chdb_server (pid {holder}); "
            "stop that process or pass another --data",
            sys.stderr,
        )
        raise SystemExit(2) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd  # kept open (and so locked) for the life of the process


def http_query(port: int, sql: str | None, timeout_s: float) -> str:
    """One request to our own listener. http.client, not urllib: urllib would honour *_proxy."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    try:
        if sql is None:
            connection.request("GET", "/ping")
        else:
            connection.request("POST", "/", body=sql.encode())
        response = connection.getresponse()
        body = response.read().decode(errors="replace")
        if response.status != 200:
            raise OSError(f"HTTP {response.status}: {body.strip()}")
        return body
    finally:
        connection.close()


def our_listener_version(port: int) -> str:
    """The engine version if the port is served by this process's engine, else ""."""
    try:
        http_query(port, None, timeout_s=0.5)
        # Empty when another server answers, or while our keep-alive query is not running yet.
        return http_query(port, OURS_SQL, timeout_s=2.0).strip()
    except (OSError, http.client.HTTPException):
        return ""


class Engine:
    """The chdb engine running the listener and keep-alive query in a background thread.

    The call blocks in C++ for the life of the server; off the main thread, Python's signal
    handlers still run promptly.
    """

    def __init__(self, db_dir: Path) -> None:
        self.db_dir = db_dir
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, name="chdb-engine", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        # Imported here, after the chdir: the engine reads ./config.xml when it starts.
        # The package's typing does not cover the native module; treat it as Any.
        chdb_native: Any = importlib.import_module("chdb._chdb")
        try:
            result = chdb_native.query(KEEPALIVE_SQL, "TabSeparated", path=str(self.db_dir))
        except RuntimeError as failure:
            self.error = str(failure)
            return
        # Engine errors here (port in use, data path locked) are printed by the engine to stderr
        # and the call simply returns; has_error() is checked in case a version reports them.
        if result.has_error():
            self.error = str(result.error_message())

    def alive(self) -> bool:
        return self.thread.is_alive()


def wait_for_client_queries(port: int, deadline: float) -> None:
    """Let queries that clients already sent finish, until none are running or the deadline."""
    while time.monotonic() < deadline:
        try:
            running = http_query(port, RUNNING_CLIENT_QUERIES_SQL, timeout_s=1.0).strip()
        except (OSError, http.client.HTTPException):
            return  # not listening (yet, or any more): nothing to wait for
        if running in ("", "0"):
            return
        time.sleep(POLL_S)


def close_client_connections(port: int) -> int:
    """Shut down the engine's accepted HTTP connections; returns how many.

    After the keep-alive query is cancelled the engine closes its listener but then waits for
    every open connection, idle keep-alive ones included (clickhouse-connect's pool keeps them),
    and ~5 s later it ends the whole process with exit status 1 instead of shutting down. The
    sockets are this process's own, so they are shut down from here: the engine's handler threads
    read end-of-stream, finish, and the shutdown completes normally.
    """
    closed = 0
    for conn in psutil.Process().net_connections(kind="tcp"):
        if conn.fd < 0 or not conn.raddr or conn.laddr.port != port:
            continue
        try:
            # A duplicate, so the engine's own descriptor stays valid; shutdown() acts on the
            # connection itself. Checked again because the engine may have reused the number.
            with socket.socket(fileno=os.dup(conn.fd)) as sock:
                if sock.getsockname()[1] != port or sock.getpeername()[:2] != tuple(conn.raddr):
                    continue
                sock.shutdown(socket.SHUT_RDWR)
                closed += 1
        except OSError:
            continue  # closed meanwhile: nothing left to do for it
    return closed


def stop_engine(engine: Engine, port: int) -> bool:
    """Shut the engine down cleanly: True if it finished before the deadline.

    Retries the cancel because a stop can arrive while the engine is still starting: the
    listener or the keep-alive query may not exist yet.
    """
    deadline = time.monotonic() + STOP_DEADLINE_S
    wait_for_client_queries(port, time.monotonic() + DRAIN_S)
    while engine.alive() and time.monotonic() < deadline:
        try:
            killed = http_query(port, CANCEL_SQL, timeout_s=max(0.1, deadline - time.monotonic()))
        except (OSError, http.client.HTTPException):
            killed = ""
        if killed.strip():
            break
        engine.thread.join(POLL_S)
    closed = 0
    while engine.alive() and time.monotonic() < deadline:
        # Repeated: a client connected between the cancel and the listener closing still counts.
        closed += close_client_connections(port)
        engine.thread.join(POLL_S)
    if closed:
        log(f"closed {closed} client connection(s) left open (idle keep-alive or unfinished)")
    return not engine.alive()


def serve(data: Path, http_port: int) -> int:
    data.mkdir(parents=True, exist_ok=True)
    data = data.resolve()
    lock_fd = lock_data_dir(data)
    workdir = data / "engine"
    db_dir = data / "db"
    workdir.mkdir(exist_ok=True)
    db_dir.mkdir(exist_ok=True)
    (workdir / "config.xml").write_text(config_xml(http_port))
    os.chdir(workdir)

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            os._exit(128 + signum)  # asked twice: no more waiting
        stop.set()

    # Installed before the engine loads, so a stop during start-up is still an orderly one.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    started = time.monotonic()
    engine = Engine(db_dir)
    engine.start()
    listening = False
    while not stop.is_set():
        if not engine.alive():
            cause = engine.error or "see the engine's message above"
            log(f"the ClickHouse engine stopped without being asked to: {cause}", sys.stderr)
            return 1
        if not listening:
            version = our_listener_version(http_port)
            if version:
                listening = True
                log(
                    f"ClickHouse {version} listening on http://{HOST}:{http_port} "
                    f"(data {db_dir}, ready in {time.monotonic() - started:.2f} s)"
                )
        stop.wait(POLL_S)

    stopping = time.monotonic()
    log("stopping: cancelling the keep-alive query (the engine reports it as QUERY_WAS_CANCELLED)")
    if not stop_engine(engine, http_port):
        log(f"the engine did not stop within {STOP_DEADLINE_S:.0f} s; exiting without a clean shutdown")
        os._exit(1)
    log(f"stopped in {time.monotonic() - stopping:.2f} s")
    os.close(lock_fd)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, required=True, help="this server's own folder")
    parser.add_argument("--http-port", type=int, required=True, help=f"HTTP port on {HOST}")
    args = parser.parse_args(argv)
    return serve(args.data, args.http_port)


if __name__ == "__main__":
    sys.exit(main())
