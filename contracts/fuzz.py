"""`python -m contracts.fuzz`: schemathesis against the running stack's Envoy, from the OpenAPI
document of the JSON API (services/api/openapi.yaml).

A user is made first, with a world of their own (a space they own with a document, a second
member, a conversation, a node on the space's canvas); requests carry their token and name that
world in their paths (contracts.fuzz_hooks). Every route of the services that run is exercised,
with valid and invalid data, and each answer is checked: no server error (5xx), the answer
conforms to the schema, invalid data is refused with a 4xx, and a refused write changed nothing.

Server-streaming routes (Ask) answer with a JSON array of messages, which OpenAPI cannot say of
a gRPC stream: they are checked for everything but the shape of the answer.

    python -m contracts.fuzz [--max-examples N] [--seed S] [-- extra schemathesis options]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys

import simulations  # noqa: F401  (before gRPC loads: the stack may be started from here, by a fork)
from clients.transports import JSON_HTTP, transport_for
from contracts.generate import OUTPUT_DIR
from fixtures.accounts import sign_up
from fixtures.canvas import place_node
from fixtures.knowledge import EDITOR, add_member, create_document, create_space
from services.api.chat.v1 import chat_pb2
from simulations.endpoints import StackEndpoints
from simulations.rundir import RunDirectory
from simulations.supervisor import healthy_stack

OPENAPI = OUTPUT_DIR / "openapi.yaml"
# The services of the stack, by their OpenAPI tags.
TAGS = {
    "auth": "AuthService",
    "knowledge": "KnowledgeService",
    "vector": "VectorService",
    "chat": "ChatService",
    "canvas": "CanvasService",
    "activity": "ActivityService",
    "notifications": "NotificationsService",
    "ml": "MlService",
}
STREAMING_OPERATIONS = ("ChatService_Ask", "NotificationsService_Subscribe")
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,negative_data_rejection,no_write_on_error"


async def make_world(stack: StackEndpoints) -> dict[str, object]:
    """A user, and a world of theirs for generated requests to act on."""
    envoy = transport_for(JSON_HTTP, stack.envoy_http, stack.envoy_grpc)
    try:
        owner, colleague = await sign_up(envoy, "fuzz"), await sign_up(envoy, "fuzz-colleague")
        space = await create_space(envoy, owner, "Fuzzed space")
        await add_member(envoy, owner, space.space_id, colleague.user_id, EDITOR)
        document = await create_document(envoy, owner, space.space_id, "Fuzzed document", "Some content.")
        request = chat_pb2.CreateConversationRequest(title="Fuzzed conversation")
        reply = await envoy.unary("chat.v1.ChatService/CreateConversation", request, token=owner.access_token)
        conversation = reply.unwrap()
        assert isinstance(conversation, chat_pb2.CreateConversationResponse)
        node = await place_node(envoy, owner, space.space_id, "Fuzzed node")
    finally:
        await envoy.aclose()
    return {
        "envoy": stack.envoy_http,
        "token": owner.access_token,
        "ids": {
            "spaceId": space.space_id,
            "documentId": document.document_id,
            "conversationId": conversation.conversation.conversation_id,
            "nodeId": node.node.node_id,
            "userId": colleague.user_id,
            "version": "1",
        },
    }


def schemathesis_command(stack: StackEndpoints, token: str, args: argparse.Namespace, operations: str) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        str(OPENAPI),
        "--url",
        stack.envoy_http,
        "--header",
        f"Authorization: Bearer {token}",
        "--max-examples",
        str(args.max_examples),
        "--seed",
        str(args.seed),
        "--workers",
        "1",  # a refused write is judged by the world before and after it: one call at a time
        "--phases",
        "examples,coverage,fuzzing",
        "--request-timeout",
        "30",
        "--no-color",
        "--generation-database",
        "none",
        *args.extra,
    ]
    return [*command, *operations.split()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contracts.fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--max-examples", type=int, default=25, help="generated cases per operation (default 25)")
    parser.add_argument("--seed", type=int, default=20261207)
    parser.add_argument("extra", nargs="*", help="more schemathesis options (after --)")
    args = parser.parse_args(argv)

    run_dir = RunDirectory()
    stack = StackEndpoints(healthy_stack(run_dir), run_dir.platform_secret())
    world = asyncio.run(make_world(stack))
    running = "|".join(tag for service, tag in TAGS.items() if stack.has(service))
    print(f"fuzzing the JSON API of {running.replace('|', ', ')} through {stack.envoy_http}", flush=True)
    environment = {**os.environ, "SCHEMATHESIS_HOOKS": "contracts.fuzz_hooks", "KP_FUZZ_WORLD": json.dumps(world)}
    whole = f"--include-tag-regex ^({running})$ --exclude-operation-id-regex ^({'|'.join(STREAMING_OPERATIONS)})$"
    streams = f"--include-operation-id-regex ^({'|'.join(STREAMING_OPERATIONS)})$ --include-tag-regex ^({running})$"
    codes = []
    for label, operations, checks in (
        ("every route", whole, f"{CHECKS},response_schema_conformance"),
        ("streaming routes (answer shape not checked)", streams, CHECKS),
    ):
        print(f"-- {label}", flush=True)
        command = schemathesis_command(stack, str(world["token"]), args, operations)
        codes.append(subprocess.run([*command, "--checks", checks], env=environment, check=False).returncode)
    print("fuzz: no failures" if not any(codes) else "fuzz: FAILURES (see above)")
    return 0 if not any(codes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
