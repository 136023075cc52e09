"""clients.http_rules and clients.transports: one RPC called three ways.

The HTTP rules are checked on real methods of the generated API. NativeGrpc is checked against
an in-process server (services.kit.server.build_server, port 0). The gRPC-Web and JSON wire
formats are checked as pure functions, and then all three transports are checked live through
a throwaway Envoy (the pinned binary, on ports the OS picks) in front of that same server;
that part is skipped when the binary is missing or does not start within a few seconds.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

from clients.http_rules import (
    Binding,
    HttpRuleError,
    binding_for,
    build_http_request,
    grpc_code_for_http_status,
    grpc_error_from_http,
    http_status_for_grpc_code,
    query_parameters,
)
from clients.transports import (
    ALL_TRANSPORTS,
    GrpcWeb,
    GrpcWebDecoder,
    JsonArrayDecoder,
    JsonHttp,
    MethodRef,
    NativeGrpc,
    Reply,
    Transport,
    aclose_all,
    grpc_timeout,
    grpc_web_frame,
    grpc_web_status,
    grpc_web_trailers_frame,
    methods_of,
    parse_grpc_web,
    parse_json_stream,
    settle_deadline,
    transport_for,
    transports_for,
)
from services.api.activity.v1 import activity_pb2
from services.api.auth.v1 import auth_pb2, auth_pb2_grpc
from services.api.canvas.v1 import canvas_pb2, canvas_pb2_grpc
from services.api.chat.v1 import chat_pb2, chat_pb2_grpc
from services.api.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc
from services.api.vector.v1 import vector_pb2
from services.kit.errors import InvalidArgument, NotFound
from services.kit.server import BuiltServer, ServiceSpec, build_server
from simulations.components.envoy import DESCRIPTOR_SET, envoy_binary
from simulations.envoy_config import EnvoySettings, JwtSettings, Upstream, build_config

GET_DOCUMENT = MethodRef.of("knowledge.v1.KnowledgeService/GetDocument")
UPDATE_DOCUMENT = MethodRef.of("knowledge.v1.KnowledgeService/UpdateDocument")
DELETE_DOCUMENT = MethodRef.of("knowledge.v1.KnowledgeService/DeleteDocument")
LIST_DOCUMENTS = MethodRef.of("knowledge.v1.KnowledgeService/ListDocuments")
GET_JWKS = MethodRef.of("auth.v1.AuthService/GetJwks")
WHO_AM_I = MethodRef.of("auth.v1.AuthService/WhoAmI")
SIGN_UP = MethodRef.of("auth.v1.AuthService/SignUp")
ASK = MethodRef.of("chat.v1.ChatService/Ask")
SPACE, DOC = "7f1c5d3e-0000-4000-8000-000000000001", "7f1c5d3e-0000-4000-8000-000000000002"
# Needs escaping in a path segment and in a query value; round-trips through Envoy.
AWKWARD = "a b/c?d#e%f+g:h@ü"
NOT_FOUND_TEXT = "no user ü here: 100% gone"
CONVERSATION = "7f1c5d3e-0000-4000-8000-000000000003"


# ------------------------------------------------------------------ http rules


def test_get_document_fills_the_path_and_sends_nothing_else() -> None:
    http = build_http_request(
        GET_DOCUMENT.descriptor, knowledge_pb2.GetDocumentRequest(space_id=SPACE, document_id=DOC)
    )
    assert (http.method, http.target, http.body) == ("GET", f"/v1/spaces/{SPACE}/documents/{DOC}", None)
    assert http.body_bytes() is None


def test_update_document_is_a_patch_whose_body_leaves_out_the_path_fields() -> None:
    request = knowledge_pb2.UpdateDocumentRequest(
        space_id=SPACE, document_id=DOC, expected_version=3, title="New", tags=knowledge_pb2.TagList(values=["a", "b"])
    )
    http = build_http_request(UPDATE_DOCUMENT.descriptor, request)
    assert (http.method, http.path, http.query) == ("PATCH", f"/v1/spaces/{SPACE}/documents/{DOC}", ())
    # proto3 JSON: lowerCamelCase names, int64 as a string, unset optional fields absent.
    assert http.body == {"expectedVersion": "3", "title": "New", "tags": {"values": ["a", "b"]}}
    assert json.loads(http.body_bytes() or b"") == http.body


def test_update_document_sends_an_empty_tag_list_when_it_is_set() -> None:
    request = knowledge_pb2.UpdateDocumentRequest(space_id=SPACE, document_id=DOC, expected_version=1)
    request.tags.SetInParent()  # "replace the tags with none", not "leave them alone"
    assert build_http_request(UPDATE_DOCUMENT.descriptor, request).body == {"expectedVersion": "1", "tags": {}}


def test_list_documents_sends_paging_as_query_parameters_only_when_set() -> None:
    first = build_http_request(LIST_DOCUMENTS.descriptor, knowledge_pb2.ListDocumentsRequest(space_id=SPACE))
    assert (first.method, first.target, first.body) == ("GET", f"/v1/spaces/{SPACE}/documents", None)
    request = knowledge_pb2.ListDocumentsRequest(space_id=SPACE, page_size=5, page_token="tok+en/=")
    http = build_http_request(LIST_DOCUMENTS.descriptor, request)
    assert http.query == (("pageSize", "5"), ("pageToken", "tok+en/="))
    assert http.target == f"/v1/spaces/{SPACE}/documents?pageSize=5&pageToken=tok%2Ben%2F%3D"


def test_delete_document_sends_expected_version_as_a_query_parameter() -> None:
    request = knowledge_pb2.DeleteDocumentRequest(space_id=SPACE, document_id=DOC, expected_version=7)
    http = build_http_request(DELETE_DOCUMENT.descriptor, request)
    assert (http.method, http.target, http.body) == (
        "DELETE",
        f"/v1/spaces/{SPACE}/documents/{DOC}?expectedVersion=7",
        None,
    )


def test_get_jwks_is_a_plain_get() -> None:
    http = build_http_request(GET_JWKS.descriptor, auth_pb2.GetJwksRequest())
    assert (http.method, http.target, http.body) == ("GET", "/v1/auth/jwks", None)


def test_post_with_body_star_sends_every_field() -> None:
    http = build_http_request(SIGN_UP.descriptor, auth_pb2.SignUpRequest(email="a@b.c", display_name="Ada"))
    assert (http.method, http.target) == ("POST", "/v1/auth/signup")
    assert http.body == {"email": "a@b.c", "displayName": "Ada"}
    assert build_http_request(GET_JWKS.descriptor, auth_pb2.GetJwksRequest()).body is None
    empty = build_http_request(MethodRef.of("auth.v1.AuthService/Logout").descriptor, auth_pb2.LogoutRequest())
    assert empty.body == {}  # a POST with body "*" always sends a JSON object


def test_path_variables_are_url_escaped_as_whole_segments() -> None:
    request = knowledge_pb2.GetDocumentRequest(space_id=AWKWARD, document_id="x y")
    http = build_http_request(GET_DOCUMENT.descriptor, request)
    assert http.path == "/v1/spaces/a%20b%2Fc%3Fd%23e%25f%2Bg%3Ah%40%C3%BC/documents/x%20y"


def test_a_custom_verb_follows_the_variable() -> None:
    method = MethodRef.of("vector.v1.VectorService/ReindexSpace").descriptor
    http = build_http_request(method, vector_pb2.ReindexSpaceRequest(space_id=SPACE))
    assert (http.method, http.path, http.body) == ("POST", f"/v1/spaces/{SPACE}:reindex", {})


def test_enums_go_by_name_and_timestamps_in_their_json_form() -> None:
    stats = MethodRef.of("activity.v1.ActivityService/GetDocumentStats").descriptor
    request = activity_pb2.GetDocumentStatsRequest(
        space_id=SPACE, document_id=DOC, window=activity_pb2.TIME_WINDOW_LAST_DAY
    )
    assert build_http_request(stats, request).query == (("window", "TIME_WINDOW_LAST_DAY"),)
    timeline = MethodRef.of("activity.v1.ActivityService/GetUserTimeline").descriptor
    start = timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=500_000_000)
    http = build_http_request(timeline, activity_pb2.GetUserTimelineRequest(page_size=2, start_time=start))
    assert http.query == (("pageSize", "2"), ("startTime", "2023-11-14T22:13:20.500Z"))
    assert http.target == "/v1/activity/timeline?pageSize=2&startTime=2023-11-14T22%3A13%3A20.500Z"


def test_nested_fields_are_dotted_and_repeated_fields_repeat() -> None:
    request = knowledge_pb2.UpdateDocumentRequest(
        space_id=SPACE, expected_version=2, title="", tags=knowledge_pb2.TagList(values=["x", "y z"])
    )
    params = list(query_parameters(request, excluded={"space_id"}))
    # title is an optional field set to "": present, so it is sent.
    assert params == [("expectedVersion", "2"), ("title", ""), ("tags.values", "x"), ("tags.values", "y z")]
    assert list(query_parameters(request, excluded={"space_id", "tags.values"})) == params[:2]


def test_body_naming_one_field_sends_the_rest_as_query_parameters() -> None:
    binding = Binding("PUT", "/v1/{space_id=spaces/*}/documents/{document_id}:retag", body="tags")
    request = knowledge_pb2.UpdateDocumentRequest(
        space_id=f"spaces/{SPACE}", document_id=DOC, expected_version=4, tags=knowledge_pb2.TagList(values=["t"])
    )
    http = build_http_request(UPDATE_DOCUMENT.descriptor, request, binding)
    assert (http.method, http.path) == ("PUT", f"/v1/spaces/{SPACE}/documents/{DOC}:retag")
    assert http.body == {"values": ["t"]}
    assert http.query == (("expectedVersion", "4"),)
    with pytest.raises(HttpRuleError, match="does not match"):
        build_http_request(UPDATE_DOCUMENT.descriptor, knowledge_pb2.UpdateDocumentRequest(space_id=SPACE), binding)


def test_a_method_without_an_annotation_gets_the_auto_mapping_route() -> None:
    binding = binding_for(MethodRef.of("knowledge.v1.KnowledgeService/CheckAccess").descriptor)
    assert binding == Binding("POST", "/knowledge.v1.KnowledgeService/CheckAccess", body="*")


def test_a_request_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(HttpRuleError, match="GetDocumentRequest"):
        build_http_request(GET_DOCUMENT.descriptor, auth_pb2.GetJwksRequest())


def test_an_empty_path_variable_is_refused() -> None:
    # Envoy would not refuse it: "/v1/spaces/s/documents/" is routed to ListDocuments.
    with pytest.raises(HttpRuleError, match="document_id is empty"):
        build_http_request(GET_DOCUMENT.descriptor, knowledge_pb2.GetDocumentRequest(space_id=SPACE))


def test_every_rpc_of_every_service_has_an_http_request() -> None:
    for service in ("auth", "knowledge", "chat", "vector", "activity", "notifications", "ml", "canvas"):
        name = f"{service}.v1.{service.capitalize()}Service"
        for method in methods_of(name):
            if method.client_streaming:
                continue
            request = method.request_class()
            for field in request.DESCRIPTOR.fields:  # every string field set, so path variables are filled
                if field.type == field.TYPE_STRING and not field.is_repeated:
                    setattr(request, field.name, "x")
            http = build_http_request(method.descriptor, request)
            assert http.path.startswith("/"), method


# ----------------------------------------------------- HTTP status → gRPC code


@pytest.mark.parametrize(
    ("http_status", "code"),
    [
        (400, grpc.StatusCode.INTERNAL),
        (401, grpc.StatusCode.UNAUTHENTICATED),
        (403, grpc.StatusCode.PERMISSION_DENIED),
        (404, grpc.StatusCode.UNIMPLEMENTED),
        (429, grpc.StatusCode.UNAVAILABLE),
        (502, grpc.StatusCode.UNAVAILABLE),
        (503, grpc.StatusCode.UNAVAILABLE),
        (504, grpc.StatusCode.UNAVAILABLE),
        (500, grpc.StatusCode.UNKNOWN),
        (409, grpc.StatusCode.UNKNOWN),
    ],
)
def test_http_status_without_a_grpc_status_maps_like_grpc_does(http_status: int, code: grpc.StatusCode) -> None:
    assert grpc_code_for_http_status(http_status) == code
    error = grpc_error_from_http(http_status, {"content-type": "text/plain"}, b"Jwt is missing\n")
    assert (error.code, error.message, error.http_status, error.status) == (code, "Jwt is missing", http_status, None)


def test_the_json_status_body_of_convert_grpc_status_wins() -> None:
    body = json.dumps({"code": 5, "message": NOT_FOUND_TEXT, "details": []}).encode()
    error = grpc_error_from_http(404, {"content-type": "application/json"}, body)
    assert (error.code, error.message, error.http_status) == (grpc.StatusCode.NOT_FOUND, NOT_FOUND_TEXT, 404)
    assert error.status is not None
    assert error.status.code == 5


def test_status_details_in_a_json_body_are_decoded() -> None:
    violation = {"field": "email", "description": "must contain @"}
    detail = {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [violation]}
    body = json.dumps({"code": 3, "message": "email: must contain @", "details": [detail]}).encode()
    error = grpc_error_from_http(400, {}, body)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.status is not None
    assert bad_request_fields(error.status) == ["email"]
    unknown = {"@type": "type.googleapis.com/no.such.Type", "x": 1}
    body = json.dumps({"code": 3, "message": "m", "details": [unknown]}).encode()
    assert grpc_error_from_http(400, {}, body).code == grpc.StatusCode.INVALID_ARGUMENT


def test_grpc_headers_are_used_when_envoy_cannot_render_the_details() -> None:
    status = bad_request_status("email", "must contain @")
    headers = {
        "Content-Type": "application/grpc",
        "grpc-status": "3",
        "grpc-message": "email: must contain %40 100%25",
        # Base64 without padding, as gRPC sends it.
        "grpc-status-details-bin": base64.b64encode(status.SerializeToString()).decode().rstrip("="),
    }
    error = grpc_error_from_http(400, headers, b"")
    assert (error.code, error.message) == (grpc.StatusCode.INVALID_ARGUMENT, "email: must contain @ 100%")
    assert error.status is not None
    assert bad_request_fields(error.status) == ["email"]


def test_every_grpc_code_has_the_http_status_envoy_answers() -> None:
    assert http_status_for_grpc_code(grpc.StatusCode.NOT_FOUND) == 404
    assert http_status_for_grpc_code(grpc.StatusCode.ABORTED) == 409
    assert http_status_for_grpc_code(grpc.StatusCode.UNAUTHENTICATED) == 401
    assert all(http_status_for_grpc_code(code) >= 200 for code in grpc.StatusCode)


# ------------------------------------------------------------- wire formats


def test_grpc_web_frames_and_trailers_round_trip() -> None:
    one, two = b"\x0a\x03abc", b""
    assert grpc_web_frame(one) == b"\x00\x00\x00\x00\x05" + one
    trailers = grpc_web_trailers_frame({"grpc-status": "0", "grpc-message": ""})
    assert trailers == b"\x80\x00\x00\x00\x1egrpc-status:0\r\ngrpc-message:\r\n"  # as Envoy writes it
    body = grpc_web_frame(one) + grpc_web_frame(two) + trailers
    assert parse_grpc_web(body) == ([one, two], {"grpc-status": "0", "grpc-message": ""})


def test_grpc_web_decoder_accepts_any_chunking() -> None:
    body = grpc_web_frame(b"first") + grpc_web_frame(b"second") + grpc_web_trailers_frame([("Grpc-Status", " 5 ")])
    decoder = GrpcWebDecoder()
    frames = [frame for offset in range(len(body)) for frame in decoder.feed(body[offset : offset + 1])]
    assert [(frame.is_trailers, frame.payload) for frame in frames[:2]] == [(False, b"first"), (False, b"second")]
    assert frames[2].is_trailers
    assert decoder.pending == 0
    with pytest.raises(ValueError, match="inside a frame"):
        parse_grpc_web(body[:-3])


def test_grpc_web_status_from_trailers_then_trailers_only_headers_then_http() -> None:
    trailers = {"grpc-status": "5", "grpc-message": "late%20error"}
    status = grpc_web_status(200, {"grpc-status": "0"}, trailers)
    assert (status.code, status.details) == (grpc.StatusCode.NOT_FOUND, "late error")
    # Trailers-only: an error before any message comes in the response headers.
    headers = {"Grpc-Status": "3", "Grpc-Message": "email%3A bad", "grpc-status-details-bin": encoded_bad_request()}
    status = grpc_web_status(200, headers, {})
    assert (status.code, status.details) == (grpc.StatusCode.INVALID_ARGUMENT, "email: bad")
    assert status.status is not None
    assert bad_request_fields(status.status) == ["email"]
    assert grpc_web_status(503, {}, {}).code == grpc.StatusCode.UNAVAILABLE
    assert grpc_web_status(200, {}, {}).code == grpc.StatusCode.UNKNOWN


def test_json_array_decoder_yields_each_element_when_complete() -> None:
    body = b'[{"delta":{"text":"\xc3\xbc"}}\n,{"delta":{"text":"b]"}} , {"complete":{}}]'
    decoder = JsonArrayDecoder()
    seen = []
    for offset in range(len(body)):
        seen.extend(decoder.feed(body[offset : offset + 1]))
    assert seen == [{"delta": {"text": "ü"}}, {"delta": {"text": "b]"}}, {"complete": {}}]
    assert decoder.closed
    assert parse_json_stream(b" [ ] ") == []
    with pytest.raises(ValueError, match="not closed"):
        parse_json_stream(b'[{"a":1},')
    with pytest.raises(ValueError, match="JSON array"):
        parse_json_stream(b'{"code":5}')


def test_a_failure_after_the_deadline_is_deadline_exceeded() -> None:
    reset = Reply("grpc", ASK, code=grpc.StatusCode.INTERNAL, details="Stream removed")
    assert settle_deadline(reset, elapsed_s=0.31, timeout=0.3).code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert settle_deadline(reset, elapsed_s=0.299, timeout=0.3).code == grpc.StatusCode.DEADLINE_EXCEEDED, (
        "Envoy's millisecond timer may fire a hair before the client's clock"
    )
    assert settle_deadline(reset, elapsed_s=0.29, timeout=0.3).code == grpc.StatusCode.INTERNAL
    not_found = Reply("json", ASK, code=grpc.StatusCode.NOT_FOUND)
    assert settle_deadline(not_found, elapsed_s=5, timeout=0.3).code == grpc.StatusCode.NOT_FOUND
    envoy = grpc_error_from_http(504, {"content-type": "text/plain"}, b"downstream duration timeout")
    assert envoy.code == grpc.StatusCode.DEADLINE_EXCEEDED
    web = grpc_web_status(200, {"grpc-status": "14", "grpc-message": "downstream duration timeout"}, {})
    assert web.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_grpc_timeout_header() -> None:
    assert grpc_timeout(10) == "10000m"
    assert grpc_timeout(0.0001) == "1m"
    assert grpc_timeout(200_000) == "200000S"


# ------------------------------------------------------------------ methods


def test_method_refs_resolve_to_the_generated_classes() -> None:
    assert GET_JWKS.request_class is auth_pb2.GetJwksRequest
    assert GET_JWKS.response_class is auth_pb2.GetJwksResponse
    assert MethodRef.of("/auth.v1.AuthService/GetJwks") == MethodRef.of("auth.v1.AuthService.GetJwks") == GET_JWKS
    assert (GET_JWKS.path, str(GET_JWKS)) == ("/auth.v1.AuthService/GetJwks", "auth.v1.AuthService/GetJwks")
    assert ASK.server_streaming
    assert MethodRef.of("canvas.v1.CanvasService/Collaborate").client_streaming
    assert [m.method for m in methods_of("auth.v1.AuthService")] == [
        "SignUp",
        "Login",
        "Refresh",
        "Logout",
        "GetJwks",
        "WhoAmI",
        "IssueServiceToken",
    ]
    with pytest.raises(KeyError, match="no RPC"):
        MethodRef.of("auth.v1.AuthService/Nope")


def test_transports_by_name() -> None:
    transports = transports_for("http://127.0.0.1:18080/", "127.0.0.1:18080")
    assert [t.name for t in transports] == list(ALL_TRANSPORTS) == ["grpc", "grpc-web", "json"]
    assert [type(t) for t in transports] == [NativeGrpc, GrpcWeb, JsonHttp]
    assert all(isinstance(t, Transport) for t in transports)
    with pytest.raises(ValueError, match="unknown transport"):
        transport_for("soap", "http://127.0.0.1:1", "127.0.0.1:1")


async def test_the_wrong_call_shape_is_refused() -> None:
    transport = NativeGrpc("127.0.0.1:1")
    with pytest.raises(ValueError, match="server_stream"):
        await transport.unary(ASK, chat_pb2.AskRequest())
    with pytest.raises(ValueError, match="unary"):
        await transport.server_stream(GET_JWKS, auth_pb2.GetJwksRequest())
    with pytest.raises(TypeError, match="GetJwksRequest"):
        await transport.unary(GET_JWKS, auth_pb2.WhoAmIRequest())
    await transport.aclose()


# ----------------------------------------------------- an in-process service


def invocation(context: Any) -> dict[str, str]:
    return {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}


class Auth(auth_pb2_grpc.AuthServiceServicer):
    async def GetJwks(self, request: auth_pb2.GetJwksRequest, context: Any) -> auth_pb2.GetJwksResponse:
        seen = invocation(context)  # echoes what arrived, so transports can be compared
        key = auth_pb2.JsonWebKey(kid="k1", use=seen.get("authorization", ""), alg=seen.get("x-contract-probe", ""))
        return auth_pb2.GetJwksResponse(keys=[key])

    async def WhoAmI(self, request: auth_pb2.WhoAmIRequest, context: Any) -> auth_pb2.WhoAmIResponse:
        raise NotFound(NOT_FOUND_TEXT)

    async def SignUp(self, request: auth_pb2.SignUpRequest, context: Any) -> auth_pb2.SignUpResponse:
        raise InvalidArgument("email", "must contain @")

    async def Login(self, request: auth_pb2.LoginRequest, context: Any) -> auth_pb2.LoginResponse:
        await asyncio.sleep(5)
        return auth_pb2.LoginResponse()


class Chat(chat_pb2_grpc.ChatServiceServicer):
    async def Ask(self, request: chat_pb2.AskRequest, context: Any) -> AsyncIterator[chat_pb2.AskResponse]:
        if request.question == "early":
            raise NotFound("no such conversation")
        for word in ("hello", "world"):
            yield chat_pb2.AskResponse(delta=chat_pb2.AnswerDelta(text=word))
        if request.question == "late":
            raise NotFound("gone mid-answer")
        if request.question == "forever":
            await asyncio.sleep(30)
        yield chat_pb2.AskResponse(complete=chat_pb2.AnswerComplete(text="hello world"))


class Knowledge(knowledge_pb2_grpc.KnowledgeServiceServicer):
    async def ListDocuments(
        self, request: knowledge_pb2.ListDocumentsRequest, context: Any
    ) -> knowledge_pb2.ListDocumentsResponse:
        echo = f"{request.space_id}|{request.page_size}|{request.page_token}"
        return knowledge_pb2.ListDocumentsResponse(next_page_token=echo)

    async def GetDocument(
        self, request: knowledge_pb2.GetDocumentRequest, context: Any
    ) -> knowledge_pb2.GetDocumentResponse:
        document = knowledge_pb2.Document(space_id=request.space_id, document_id=request.document_id, version=1 << 60)
        return knowledge_pb2.GetDocumentResponse(document=document)


class Canvas(canvas_pb2_grpc.CanvasServiceServicer):
    async def Collaborate(
        self, requests: AsyncIterator[canvas_pb2.CollaborateRequest], context: Any
    ) -> AsyncIterator[canvas_pb2.CollaborateResponse]:
        """Answers each join with a snapshot of that space; a bad join ends the call."""
        async for request in requests:
            if request.join.space_id == "bad":
                raise InvalidArgument("join.space_id", "must be a UUID")
            yield canvas_pb2.CollaborateResponse(
                snapshot=canvas_pb2.CollaborateResponse.Snapshot(space_id=request.join.space_id)
            )


SERVICES = ["auth.v1.AuthService", "chat.v1.ChatService", "knowledge.v1.KnowledgeService", "canvas.v1.CanvasService"]


def register(server: grpc.aio.Server) -> None:
    auth_pb2_grpc.add_AuthServiceServicer_to_server(Auth(), server)  # type: ignore[abstract]
    chat_pb2_grpc.add_ChatServiceServicer_to_server(Chat(), server)  # type: ignore[abstract]
    knowledge_pb2_grpc.add_KnowledgeServiceServicer_to_server(Knowledge(), server)  # type: ignore[abstract]
    canvas_pb2_grpc.add_CanvasServiceServicer_to_server(Canvas(), server)  # type: ignore[abstract]


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[BuiltServer]:
    built = await build_server(ServiceSpec("contract-unit", "0", SERVICES, register), None, port=0)
    yield built
    await built.server.stop(None)


@pytest.fixture(scope="module")
async def direct(upstream: BuiltServer) -> AsyncIterator[NativeGrpc]:
    transport = NativeGrpc(f"127.0.0.1:{upstream.port}")
    yield transport
    await transport.aclose()


async def test_native_grpc_decodes_the_message_and_sends_token_and_metadata(direct: NativeGrpc) -> None:
    reply = await direct.unary(GET_JWKS, auth_pb2.GetJwksRequest(), token="t0k", metadata=[("X-Contract-Probe", "p")])
    assert reply.ok
    assert (reply.code, reply.details, reply.http_status) == (grpc.StatusCode.OK, "", None)
    assert reply.unwrap() == auth_pb2.GetJwksResponse(keys=[auth_pb2.JsonWebKey(kid="k1", use="Bearer t0k", alg="p")])


async def test_native_grpc_decodes_errors(direct: NativeGrpc) -> None:
    reply = await direct.unary(WHO_AM_I, auth_pb2.WhoAmIRequest())
    assert (reply.ok, reply.message, reply.code, reply.details) == (
        False,
        None,
        grpc.StatusCode.NOT_FOUND,
        NOT_FOUND_TEXT,
    )
    with pytest.raises(AssertionError, match="NOT_FOUND"):
        reply.unwrap()
    invalid = await direct.unary(SIGN_UP, auth_pb2.SignUpRequest())
    assert invalid.code == grpc.StatusCode.INVALID_ARGUMENT
    assert invalid.status is not None
    assert bad_request_fields(invalid.status) == ["email"]
    not_served = MethodRef.of("vector.v1.VectorService/GetIndexStats")
    unimplemented = await direct.unary(not_served, not_served.request_class())
    assert unimplemented.code == grpc.StatusCode.UNIMPLEMENTED


async def test_native_grpc_streams_messages_then_the_final_status(direct: NativeGrpc) -> None:
    complete = await direct.server_stream(ASK, chat_pb2.AskRequest(conversation_id=CONVERSATION, question="fine"))
    assert (complete.code, complete.status_observed, complete.truncated) == (grpc.StatusCode.OK, True, False)
    assert [m.WhichOneof("event") for m in complete.messages] == ["delta", "delta", "complete"]
    late = await direct.server_stream(ASK, chat_pb2.AskRequest(conversation_id=CONVERSATION, question="late"))
    assert (late.code, late.details, len(late.messages)) == (grpc.StatusCode.NOT_FOUND, "gone mid-answer", 2)
    cut = await direct.server_stream(
        ASK, chat_pb2.AskRequest(conversation_id=CONVERSATION, question="forever"), limit=2
    )
    assert (cut.code, cut.truncated, len(cut.messages)) == (grpc.StatusCode.OK, True, 2)


COLLABORATE = MethodRef.of("canvas.v1.CanvasService/Collaborate")


def join(space_id: str) -> canvas_pb2.CollaborateRequest:
    return canvas_pb2.CollaborateRequest(join=canvas_pb2.CollaborateRequest.Join(space_id=space_id))


async def test_native_grpc_streams_both_ways(direct: NativeGrpc) -> None:
    reply = await direct.bidi_stream(COLLABORATE, [join("a"), join("b")])
    assert reply.ok
    assert [m.snapshot.space_id for m in reply.messages if isinstance(m, canvas_pb2.CollaborateResponse)] == ["a", "b"]
    failed = await direct.bidi_stream(COLLABORATE, [join("a"), join("bad"), join("c")])
    assert failed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(failed.messages) == 1, "what came before the error is kept"
    limited = await direct.bidi_stream(COLLABORATE, [join("a"), join("b")], limit=1)
    assert (limited.truncated, len(limited.messages)) == (True, 1)
    with pytest.raises(ValueError, match="does not stream both ways"):
        await direct.bidi_stream(GET_JWKS, [auth_pb2.GetJwksRequest()])
    with pytest.raises(ValueError, match="bidi_stream"):
        await direct.unary(COLLABORATE, join("a"))


async def test_native_grpc_deadline(direct: NativeGrpc) -> None:
    reply = await direct.unary(MethodRef.of("auth.v1.AuthService/Login"), auth_pb2.LoginRequest(), timeout=0.2)
    assert reply.code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_an_unreachable_gateway_is_unavailable_on_every_transport() -> None:
    transports = transports_for("http://127.0.0.1:1", "127.0.0.1:1")
    try:
        replies = [await t.unary(GET_JWKS, auth_pb2.GetJwksRequest(), timeout=2) for t in transports]
    finally:
        await aclose_all(transports)
    assert [reply.code for reply in replies] == [grpc.StatusCode.UNAVAILABLE] * 3


# ------------------------------------------------- live, through a real Envoy

ENVOY_START_BUDGET_S = 3.0


@pytest.fixture(scope="module")
def envoy(upstream: BuiltServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A throwaway Envoy in front of the in-process server: (http base URL, gRPC target)."""
    binary = envoy_binary()
    if not binary.exists():
        pytest.skip(f"no Envoy binary at {binary}")
    directory = tmp_path_factory.mktemp("envoy")
    settings = EnvoySettings(
        listen_port=0,  # the OS picks; read back from the admin API
        admin_port=0,
        descriptor_path=str(DESCRIPTOR_SET),
        upstreams=[Upstream("unit", "127.0.0.1", upstream.port, SERVICES)],
        jwt=JwtSettings("contract-unit", ["contract-unit"], "/v1/auth/jwks", public_prefixes=("/",)),
        otlp_host="127.0.0.1",
        otlp_port=upstream.port,  # traces are off (sample 0); never exported
        sample_percent=0.0,
    )
    config = directory / "envoy.yaml"
    config.write_text(yaml.safe_dump(build_config(settings), sort_keys=False))
    admin_file = directory / "admin-address"
    with (directory / "envoy.log").open("w") as log:
        process = subprocess.Popen(
            [
                str(binary),
                *("-c", str(config)),
                "--disable-hot-restart",
                *("--concurrency", "1"),
                *("--log-level", "warning"),
                *("--admin-address-path", str(admin_file)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        port = wait_for_listener(process, admin_file, directory / "envoy.log")
        yield f"http://127.0.0.1:{port}", f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def wait_for_listener(process: subprocess.Popen[bytes], admin_file: Path, log: Path) -> int:
    deadline = time.monotonic() + ENVOY_START_BUDGET_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"Envoy exited with {process.returncode}: {log.read_text()[-2000:]}")
        if admin_file.exists() and admin_file.read_text().strip():
            port = listener_port(admin_file.read_text().strip())
            if port:
                return port
        time.sleep(0.02)
    pytest.skip(f"Envoy did not start within {ENVOY_START_BUDGET_S} s")


def listener_port(admin_address: str) -> int | None:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{admin_address}/listeners?format=json", timeout=1) as response:
            listeners = json.load(response)
    except OSError:
        return None
    for listener in listeners.get("listener_statuses", []):
        port = listener.get("local_address", {}).get("socket_address", {}).get("port_value")
        if port:
            return int(port)
    return None


@pytest.fixture(scope="module", params=ALL_TRANSPORTS)
async def transport(request: pytest.FixtureRequest, envoy: tuple[str, str]) -> AsyncIterator[Transport]:
    http_url, grpc_target = envoy
    transport = transport_for(request.param, http_url, grpc_target)
    yield transport
    await transport.aclose()


async def test_live_message_token_and_metadata(transport: Transport) -> None:
    reply = await transport.unary(
        GET_JWKS, auth_pb2.GetJwksRequest(), token="t0k", metadata=[("x-contract-probe", transport.name)]
    )
    expected = auth_pb2.JsonWebKey(kid="k1", use="Bearer t0k", alg=transport.name)
    assert reply.unwrap() == auth_pb2.GetJwksResponse(keys=[expected]), reply
    assert reply.http_status == (200 if transport.name == "json" else None)
    assert reply.header("x-envoy-upstream-service-time") is not None or transport.name == "grpc"


async def test_live_error_code_and_text(transport: Transport) -> None:
    reply = await transport.unary(WHO_AM_I, auth_pb2.WhoAmIRequest())
    assert (reply.message, reply.code, reply.details) == (None, grpc.StatusCode.NOT_FOUND, NOT_FOUND_TEXT), reply
    assert reply.http_status == (404 if transport.name == "json" else None)


async def test_live_rich_error_details(transport: Transport) -> None:
    reply = await transport.unary(SIGN_UP, auth_pb2.SignUpRequest(email="nope"))
    assert (reply.code, reply.details) == (grpc.StatusCode.INVALID_ARGUMENT, "email: must contain @"), reply
    assert reply.status is not None
    assert bad_request_fields(reply.status) == ["email"]
    assert reply.http_status == (400 if transport.name == "json" else None)


async def test_live_path_and_query_values_round_trip(transport: Transport) -> None:
    document = await transport.unary(GET_DOCUMENT, knowledge_pb2.GetDocumentRequest(space_id=AWKWARD, document_id=DOC))
    got = document.unwrap()
    assert isinstance(got, knowledge_pb2.GetDocumentResponse)
    assert (got.document.space_id, got.document.document_id, got.document.version) == (AWKWARD, DOC, 1 << 60)
    listed = await transport.unary(
        LIST_DOCUMENTS, knowledge_pb2.ListDocumentsRequest(space_id=SPACE, page_size=7, page_token=AWKWARD)
    )
    page = listed.unwrap()
    assert isinstance(page, knowledge_pb2.ListDocumentsResponse)
    assert page.next_page_token == f"{SPACE}|7|{AWKWARD}"


async def test_live_stream(transport: Transport) -> None:
    reply = await transport.server_stream(ASK, chat_pb2.AskRequest(conversation_id=CONVERSATION, question="fine"))
    assert (reply.code, reply.truncated) == (grpc.StatusCode.OK, False), reply
    assert [m.WhichOneof("event") for m in reply.messages] == ["delta", "delta", "complete"]
    early = await transport.server_stream(ASK, chat_pb2.AskRequest(conversation_id=CONVERSATION, question="early"))
    assert (early.messages, early.code, early.details) == ([], grpc.StatusCode.NOT_FOUND, "no such conversation")
    assert early.status_observed
    cut = await transport.server_stream(
        ASK, chat_pb2.AskRequest(conversation_id=CONVERSATION, question="forever"), limit=2
    )
    assert (cut.truncated, len(cut.messages)) == (True, 2)


async def test_live_stream_failing_after_its_first_message(transport: Transport) -> None:
    reply = await transport.server_stream(ASK, chat_pb2.AskRequest(conversation_id=CONVERSATION, question="late"))
    assert len(reply.messages) == 2
    if transport.name == "json":
        # Envoy's transcoder closes the JSON array with HTTP 200; the status is not visible.
        assert (reply.code, reply.status_observed, reply.http_status) == (grpc.StatusCode.OK, False, 200)
    else:
        assert (reply.code, reply.details, reply.status_observed) == (
            grpc.StatusCode.NOT_FOUND,
            "gone mid-answer",
            True,
        )


async def test_live_deadline(transport: Transport) -> None:
    began = time.monotonic()
    reply = await transport.unary(MethodRef.of("auth.v1.AuthService/Login"), auth_pb2.LoginRequest(), timeout=0.2)
    assert reply.code == grpc.StatusCode.DEADLINE_EXCEEDED, (reply.details, reply.http_status, reply.metadata)
    assert time.monotonic() - began < 2


async def test_live_stream_deadline_keeps_the_messages_received(transport: Transport) -> None:
    request = chat_pb2.AskRequest(conversation_id=CONVERSATION, question="forever")
    reply = await transport.server_stream(ASK, request, timeout=0.3)
    assert (reply.code, len(reply.messages)) == (grpc.StatusCode.DEADLINE_EXCEEDED, 2), (reply.details, reply.metadata)


async def test_live_empty_path_variable_cannot_go_as_json(transport: Transport) -> None:
    request = knowledge_pb2.GetDocumentRequest(space_id=SPACE)
    if transport.name == "json":
        with pytest.raises(HttpRuleError, match="document_id is empty"):
            await transport.unary(GET_DOCUMENT, request)
    else:
        assert (await transport.unary(GET_DOCUMENT, request)).ok


async def test_live_unknown_route(transport: Transport) -> None:
    reply = await transport.unary(
        MethodRef.of("vector.v1.VectorService/GetIndexStats"), vector_pb2.GetIndexStatsRequest()
    )
    assert reply.code in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND), reply


# ------------------------------------------------------------------ helpers


def bad_request_status(field: str, description: str) -> status_pb2.Status:
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
    status = status_pb2.Status(code=3, message=f"{field}: {description}")
    status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    return status


def encoded_bad_request() -> str:
    return base64.b64encode(bad_request_status("email", "bad").SerializeToString()).decode()


def bad_request_fields(status: status_pb2.Status) -> list[str]:
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    return [violation.field for violation in bad_request.field_violations]
