"""Rotating the auth service's signing key loses no one: the successor is published before it
signs, so Envoy and every service know it in time, and the old key stays published while
tokens it signed can still be alive."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import jwt
import pytest

from clients.transports import NativeGrpc, Transport, transport_for
from fixtures.accounts import sign_up
from services.api.auth.v1 import auth_pb2
from services.api.knowledge.v1 import knowledge_pb2
from simulations.endpoints import StackEndpoints

pytestmark = pytest.mark.xdist_group("key-rotation")


async def published_kids(transport: Transport) -> set[str]:
    reply = (await transport.unary("auth.v1.AuthService/GetJwks", auth_pb2.GetJwksRequest())).unwrap()
    assert isinstance(reply, auth_pb2.GetJwksResponse)
    return {key.kid for key in reply.keys}


def rotate(stack: StackEndpoints) -> str:
    environment = {**os.environ, "KP_POSTGRES_DSN": stack.of("postgres")["dsn"], "KP_REDIS_URL": stack.redis_url}
    result = subprocess.run(
        [sys.executable, "-m", "services.auth", "rotate-key"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.split("new signing key ")[1].split()[0]


async def test_a_rotated_key_is_published_first_then_signs_and_old_tokens_keep_working(
    stack: StackEndpoints,
) -> None:
    envoy = transport_for("json", stack.envoy_http, stack.envoy_grpc)
    knowledge = NativeGrpc(stack.service_grpc("knowledge"))
    try:
        before = await sign_up(envoy)
        old_kid = jwt.get_unverified_header(before.access_token)["kid"]

        new_kid = await asyncio.to_thread(rotate, stack)
        assert new_kid != old_kid
        deadline = time.monotonic() + 10
        while new_kid not in await published_kids(envoy):
            assert time.monotonic() < deadline, "the successor was not published within the reload interval"
            await asyncio.sleep(0.2)
        assert old_kid in await published_kids(envoy), "the signing key stays published"

        deadline = time.monotonic() + 20
        while True:
            after = await sign_up(envoy)
            if jwt.get_unverified_header(after.access_token)["kid"] == new_kid:
                break
            assert time.monotonic() < deadline, "the successor never started signing"
            await asyncio.sleep(0.5)

        for account in (before, after):  # old and new tokens, at the edge and at a service
            who = await envoy.unary("auth.v1.AuthService/WhoAmI", auth_pb2.WhoAmIRequest(), token=account.access_token)
            assert who.ok, f"Envoy: {who.details}"
            spaces = await knowledge.unary(
                "knowledge.v1.KnowledgeService/ListSpaces",
                knowledge_pb2.ListSpacesRequest(),
                token=account.access_token,
            )
            assert spaces.ok, f"knowledge: {spaces.details}"
        assert {old_kid, new_kid} <= await published_kids(envoy), "both keys published while old tokens live"
    finally:
        await envoy.aclose()
        await knowledge.aclose()
