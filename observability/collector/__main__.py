"""The OTLP receiver process.

    python -m observability.collector --grpc-port 14317 --http-port 14318 \
        --clickhouse-url http://127.0.0.1:18123

OTLP/gRPC (`TraceService/Export`) and OTLP/HTTP (`POST /v1/traces`, protobuf or JSON) feed one
`SpanPipeline` into ClickHouse. `GET /stats` reports the pipeline's counters; `POST /flush`
returns once everything accepted so far is queryable (tests and benchmarks use it). It also
serves standard gRPC health, so it can be probed like any other upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from collections.abc import Sequence

import grpc
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from observability.clickhouse import TRACES_DATABASE, TRACES_TABLE, apply_schema, connect
from observability.collector.pipeline import SpanPipeline
from observability.collector.spans import (
    COLUMNS,
    MalformedPayload,
    Row,
    convert,
    decode_json,
    decode_protobuf,
)
from services.kit.server import ServiceSpec, build_server

log = logging.getLogger("observability.collector")

TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
RETRY_AFTER_S = 1


class Receiver:
    """Turns OTLP requests into pipeline offers and OTLP answers."""

    def __init__(self, pipeline: SpanPipeline) -> None:
        self.pipeline = pipeline

    def accept(self, request: ExportTraceServiceRequest) -> ExportTraceServiceResponse | None:
        """The OTLP response, or None when the buffer is full (the exporter should retry)."""
        conversion = convert(request)
        self.pipeline.stats.rejected += conversion.rejected
        if not self.pipeline.offer(conversion.rows):
            return None
        response = ExportTraceServiceResponse()
        if conversion.rejected:
            response.partial_success.CopyFrom(
                ExportTracePartialSuccess(
                    rejected_spans=conversion.rejected, error_message="; ".join(conversion.problems)
                )
            )
        return response

    # ---- OTLP/gRPC

    async def export_grpc(self, body: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        try:
            request = decode_protobuf(body)
        except MalformedPayload as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        response = self.accept(request)
        if response is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "span buffer is full; retry later")
        return response.SerializeToString()

    def register(self, server: grpc.aio.Server) -> None:
        handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(
            self.export_grpc  # raw bytes in and out: we decode, so a bad payload gets a clear error
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(TRACE_SERVICE, {"Export": handler}),))

    # ---- OTLP/HTTP

    async def export_http(self, request: web.Request) -> web.Response:
        content_type = request.content_type
        body = await request.read()
        try:
            if content_type == "application/json":
                decoded = decode_json(body)
            elif content_type in ("application/x-protobuf", "application/protobuf"):
                decoded = decode_protobuf(body)
            else:
                return web.json_response(
                    {
                        "code": 3,
                        "message": f"unsupported content type {content_type!r}; "
                        "send application/x-protobuf or application/json",
                    },
                    status=415,
                )
        except MalformedPayload as error:
            return web.json_response({"code": 3, "message": str(error)}, status=400)
        response = self.accept(decoded)
        if response is None:
            return web.json_response(
                {"code": 14, "message": "span buffer is full; retry later"},
                status=503,
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        if content_type == "application/json":
            partial = response.partial_success
            answer = (
                {
                    "partialSuccess": {
                        "rejectedSpans": str(partial.rejected_spans),
                        "errorMessage": partial.error_message,
                    }
                }
                if partial.rejected_spans
                else {}
            )
            return web.json_response(answer)
        return web.Response(body=response.SerializeToString(), content_type="application/x-protobuf")

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.pipeline.stats.as_dict())

    async def flush(self, request: web.Request) -> web.Response:
        done = await self.pipeline.flushed(timeout_s=float(request.query.get("timeout", "10")))
        return web.json_response({"flushed": done, **self.pipeline.stats.as_dict()}, status=200 if done else 504)

    def http_app(self) -> web.Application:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.add_routes(
            [
                web.post("/v1/traces", self.export_http),
                web.get("/stats", self.stats),
                web.post("/flush", self.flush),
            ]
        )
        return app


class ClickHouseWriter:
    """Inserts rows with a dedicated client, in a worker thread (clickhouse-connect is sync)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client = connect(url, database=TRACES_DATABASE)

    def apply_schema(self) -> None:
        apply_schema(connect(self.url))

    async def insert(self, rows: Sequence[Row]) -> None:
        await asyncio.to_thread(self._client.insert, TRACES_TABLE, list(rows), column_names=list(COLUMNS))


async def run(grpc_port: int, http_port: int, clickhouse_url: str) -> None:
    writer = ClickHouseWriter(clickhouse_url)
    await asyncio.to_thread(writer.apply_schema)
    pipeline = SpanPipeline(writer.insert)
    pipeline.start()
    receiver = Receiver(pipeline)

    spec = ServiceSpec(name="otlp", version="1", grpc_services=[TRACE_SERVICE], register=receiver.register)
    grpc_server = await build_server(spec, verifier=None, port=grpc_port)
    await grpc_server.set_serving(True)
    runner = web.AppRunner(receiver.http_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", http_port).start()
    log.info("OTLP receiver: gRPC 127.0.0.1:%d, HTTP 127.0.0.1:%d → %s", grpc_port, http_port, clickhouse_url)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # Stop intake first, then write what is buffered: a clean stop loses no span.
    await grpc_server.set_serving(False)
    await grpc_server.server.stop(2)
    await runner.cleanup()
    stats = await pipeline.close(deadline_s=15)
    log.info("OTLP receiver stopped: %s", json.dumps(stats.as_dict()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grpc-port", type=int, default=14317)
    parser.add_argument("--http-port", type=int, default=14318)
    parser.add_argument("--clickhouse-url", default="http://127.0.0.1:18123")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(args.grpc_port, args.http_port, args.clickhouse_url))


if __name__ == "__main__":
    main()
