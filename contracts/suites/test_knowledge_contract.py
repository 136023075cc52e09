"""Contract of knowledge.v1.KnowledgeService: every public RPC through Envoy over gRPC, gRPC-Web
and JSON, for success and for each documented error, with the knowledge.* events; the internal
RPCs (CheckAccess, ListAccessibleSpaces) called directly, as services call them, and refused at
the edge."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from clients.transports import JSON_HTTP, MethodRef, NativeGrpc, Reply, Transport
from contracts.expect import (
    assert_canonical_id,
    assert_recent,
    expect_error,
    expect_invalid_field,
    expect_needs_a_valid_token,
    expect_ok,
)
from contracts.registry import contract
from contracts.values import MALFORMED_IDS, moment, new_id
from fixtures.accounts import Account, sign_up
from fixtures.events import EventLog
from fixtures.knowledge import (
    EDITOR,
    OWNER,
    VIEWER,
    add_member,
    create_document,
    create_space,
    delete_document,
    new_team,
    update_document,
)
from services.api.events.v1 import events_pb2
from services.api.knowledge.v1 import knowledge_pb2
from services.kit.events import EventEnvelope
from services.kit.identity import SERVICE_TOKEN_HEADER
from simulations.endpoints import StackEndpoints

CREATE_SPACE = MethodRef.of("knowledge.v1.KnowledgeService/CreateSpace")
GET_SPACE = MethodRef.of("knowledge.v1.KnowledgeService/GetSpace")
LIST_SPACES = MethodRef.of("knowledge.v1.KnowledgeService/ListSpaces")
ADD_MEMBER = MethodRef.of("knowledge.v1.KnowledgeService/AddMember")
UPDATE_MEMBER_ROLE = MethodRef.of("knowledge.v1.KnowledgeService/UpdateMemberRole")
REMOVE_MEMBER = MethodRef.of("knowledge.v1.KnowledgeService/RemoveMember")
LIST_MEMBERS = MethodRef.of("knowledge.v1.KnowledgeService/ListMembers")
CREATE_DOCUMENT = MethodRef.of("knowledge.v1.KnowledgeService/CreateDocument")
GET_DOCUMENT = MethodRef.of("knowledge.v1.KnowledgeService/GetDocument")
UPDATE_DOCUMENT = MethodRef.of("knowledge.v1.KnowledgeService/UpdateDocument")
DELETE_DOCUMENT = MethodRef.of("knowledge.v1.KnowledgeService/DeleteDocument")
LIST_DOCUMENTS = MethodRef.of("knowledge.v1.KnowledgeService/ListDocuments")
LIST_DOCUMENT_VERSIONS = MethodRef.of("knowledge.v1.KnowledgeService/ListDocumentVersions")
GET_DOCUMENT_VERSION = MethodRef.of("knowledge.v1.KnowledgeService/GetDocumentVersion")
CHECK_ACCESS = MethodRef.of("knowledge.v1.KnowledgeService/CheckAccess")
LIST_ACCESSIBLE_SPACES = MethodRef.of("knowledge.v1.KnowledgeService/ListAccessibleSpaces")

UNSPECIFIED = knowledge_pb2.ROLE_UNSPECIFIED
CONTENT_MAX_BYTES = 262_144


def without_content(document: knowledge_pb2.Document) -> knowledge_pb2.Document:
    listed = knowledge_pb2.Document()
    listed.CopyFrom(document)
    listed.content = ""
    return listed


async def expect_outsiders_denied_like_missing_spaces(
    transport: Transport, method: MethodRef, request_for: Callable[[str], Message], outsider: Account, space_id: str
) -> None:
    """PERMISSION_DENIED for a space the caller is not in and for a space that does not exist,
    with the same message: space ids cannot be probed."""
    missing = new_id()
    there = await transport.unary(method, request_for(space_id), token=outsider.access_token)
    nowhere = await transport.unary(method, request_for(missing), token=outsider.access_token)
    expect_error(there, grpc.StatusCode.PERMISSION_DENIED, f"not a member of space {space_id}", "or it does not exist")
    expect_error(nowhere, grpc.StatusCode.PERMISSION_DENIED, f"not a member of space {missing}")
    assert there.details.replace(space_id, "<space>") == nowhere.details.replace(missing, "<space>")


def expect_role_too_low(reply: Reply, needed: str, actual: str) -> None:
    expect_error(reply, grpc.StatusCode.PERMISSION_DENIED, f"needs the {needed}", f"your role is {actual}")


async def pages_of(
    transport: Transport,
    method: MethodRef,
    request_for: Callable[[str], Message],
    account: Account,
    items: str,
    page_token: str = "",
) -> list[list[Any]]:
    """Every page of a listing, following next_page_token (from `page_token`) until it is empty."""
    pages: list[list[Any]] = []
    while True:
        reply = await transport.unary(method, request_for(page_token), token=account.access_token)
        page: Any = expect_ok(reply, method.response_class)
        pages.append(list(getattr(page, items)))
        page_token = page.next_page_token
        if not page_token:
            return pages
        assert len(pages) < 50, "the listing does not end"


async def next_page_token(transport: Transport, method: MethodRef, request: Message, account: Account) -> str:
    page: Any = expect_ok(await transport.unary(method, request, token=account.access_token), method.response_class)
    assert page.next_page_token, "a first page with more to come"
    return str(page.next_page_token)


async def knowledge_event(events: EventLog, event_type: str, **subject_ids: str) -> EventEnvelope:
    """The first event of that type about exactly those ids, with the envelope every knowledge
    event has: producer, partition_key = space_id, schema 1, time and trace context."""
    found = await events.wait_for(lambda e: e.event_type == event_type and dict(e.subject_ids) == subject_ids)
    assert found, f"no {event_type} event about {subject_ids}"
    event = found[0]
    assert (event.producer, event.partition_key) == ("knowledge", subject_ids["space_id"])
    assert event.schema_version == 1
    assert_recent(event.occurred_at)
    assert len(event.trace.traceparent) == 55, "the request's trace context travels with the event"
    return event


async def get_document(transport: Transport, account: Account, space_id: str, document_id: str) -> Reply:
    request = knowledge_pb2.GetDocumentRequest(space_id=space_id, document_id=document_id)
    return await transport.unary(GET_DOCUMENT, request, token=account.access_token)


# ------------------------------------------------------------- CreateSpace


@contract("knowledge.v1.KnowledgeService/CreateSpace")
async def test_create_space_makes_the_caller_its_owner_and_emits_both_events(
    transport: Transport, setup_transport: Transport, knowledge_events: EventLog
) -> None:
    owner = await sign_up(setup_transport)
    request = knowledge_pb2.CreateSpaceRequest(name="  Research notes ", description="\tWhat we found so far.  ")
    reply = await transport.unary(CREATE_SPACE, request, token=owner.access_token)
    space = expect_ok(reply, knowledge_pb2.CreateSpaceResponse).space

    assert_canonical_id(space.space_id)
    assert (space.name, space.description) == ("Research notes", "What we found so far."), "both trimmed"
    assert (space.created_by, space.caller_role) == (owner.user_id, OWNER)
    assert_recent(space.created_at)
    fetched = await setup_transport.unary(
        GET_SPACE, knowledge_pb2.GetSpaceRequest(space_id=space.space_id), token=owner.access_token
    )
    assert expect_ok(fetched, knowledge_pb2.GetSpaceResponse).space == space

    created = await knowledge_event(knowledge_events, "knowledge.space.created", space_id=space.space_id)
    added = await knowledge_event(
        knowledge_events, "knowledge.member.added", space_id=space.space_id, user_id=owner.user_id
    )
    assert created.actor_user_id == added.actor_user_id == owner.user_id
    assert knowledge_events.envelopes.index(created) < knowledge_events.envelopes.index(added), "the owner follows"
    payload = events_pb2.SpaceCreated.FromString(created.payload)
    assert (payload.space_id, payload.name, payload.description, payload.created_by) == (
        space.space_id,
        "Research notes",
        "What we found so far.",
        owner.user_id,
    )
    member = events_pb2.MemberAdded.FromString(added.payload)
    assert (member.space_id, member.user_id, member.role, member.added_by) == (
        space.space_id,
        owner.user_id,
        events_pb2.SPACE_ROLE_OWNER,
        owner.user_id,
    )


@contract("knowledge.v1.KnowledgeService/CreateSpace")
async def test_create_space_accepts_its_limits_counted_in_code_points(
    transport: Transport, setup_transport: Transport
) -> None:
    owner = await sign_up(setup_transport)
    name, description = "🚀" * 100, "é" * 2000  # 400 and 4000 bytes: characters are what counts
    request = knowledge_pb2.CreateSpaceRequest(name=f" {name} ", description=description)
    space = expect_ok(
        await transport.unary(CREATE_SPACE, request, token=owner.access_token), knowledge_pb2.CreateSpaceResponse
    ).space
    assert (space.name, space.description) == (name, description)


@contract("knowledge.v1.KnowledgeService/CreateSpace", "INVALID_ARGUMENT")
@pytest.mark.parametrize(
    ("field", "name", "description"),
    [
        ("name", "", ""),
        ("name", " \t\n ", ""),
        ("name", "n" * 101, ""),
        ("name", "🚀" * 101, ""),
        ("description", "Notes", "d" * 2001),
    ],
)
async def test_create_space_rejects_a_name_or_description_beyond_its_limit(
    transport: Transport, setup_transport: Transport, field: str, name: str, description: str
) -> None:
    owner = await sign_up(setup_transport)
    request = knowledge_pb2.CreateSpaceRequest(name=name, description=description)
    expect_invalid_field(await transport.unary(CREATE_SPACE, request, token=owner.access_token), field)


@contract("knowledge.v1.KnowledgeService/CreateSpace", "UNAUTHENTICATED")
async def test_create_space_needs_a_valid_token(transport: Transport) -> None:
    await expect_needs_a_valid_token(transport, CREATE_SPACE, knowledge_pb2.CreateSpaceRequest(name="Notes"))


# ---------------------------------------------------------------- GetSpace


@contract("knowledge.v1.KnowledgeService/GetSpace")
async def test_get_space_tells_each_member_their_own_role(transport: Transport, setup_transport: Transport) -> None:
    team = await new_team(setup_transport, name="Shared space")
    for account, role in ((team.owner, OWNER), (team.editor, EDITOR), (team.viewer, VIEWER)):
        request = knowledge_pb2.GetSpaceRequest(space_id=team.space_id)
        reply = await transport.unary(GET_SPACE, request, token=account.access_token)
        space = expect_ok(reply, knowledge_pb2.GetSpaceResponse).space
        assert (space.space_id, space.name, space.created_by) == (team.space_id, "Shared space", team.owner.user_id)
        assert space.created_at == team.space.created_at
        assert space.caller_role == role


@contract("knowledge.v1.KnowledgeService/GetSpace", "INVALID_ARGUMENT")
@pytest.mark.parametrize("space_id", MALFORMED_IDS)
async def test_get_space_needs_a_uuid(transport: Transport, setup_transport: Transport, space_id: str) -> None:
    account = await sign_up(setup_transport)
    request = knowledge_pb2.GetSpaceRequest(space_id=space_id)
    expect_invalid_field(await transport.unary(GET_SPACE, request, token=account.access_token), "space_id")


@contract("knowledge.v1.KnowledgeService/GetSpace", "UNAUTHENTICATED")
async def test_get_space_needs_a_valid_token(transport: Transport) -> None:
    await expect_needs_a_valid_token(transport, GET_SPACE, knowledge_pb2.GetSpaceRequest(space_id=new_id()))


@contract("knowledge.v1.KnowledgeService/GetSpace", "PERMISSION_DENIED")
async def test_get_space_of_a_non_member_looks_like_a_missing_space(
    transport: Transport, setup_transport: Transport
) -> None:
    owner, outsider = await sign_up(setup_transport), await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    await expect_outsiders_denied_like_missing_spaces(
        transport,
        GET_SPACE,
        lambda space_id: knowledge_pb2.GetSpaceRequest(space_id=space_id),
        outsider,
        space.space_id,
    )


# -------------------------------------------------------------- ListSpaces


@contract("knowledge.v1.KnowledgeService/ListSpaces")
async def test_list_spaces_pages_through_the_caller_s_spaces_in_creation_order(
    transport: Transport, setup_transport: Transport
) -> None:
    user, other = await sign_up(setup_transport), await sign_up(setup_transport)
    shared = await create_space(setup_transport, other, "Created first, joined last")
    own = [await create_space(setup_transport, user, f"Space {number}") for number in range(5)]
    await create_space(setup_transport, other, "Not shared with the user")
    await add_member(setup_transport, other, shared.space_id, user.user_id, VIEWER)

    pages = await pages_of(
        transport,
        LIST_SPACES,
        lambda token: knowledge_pb2.ListSpacesRequest(page_size=2, page_token=token),
        user,
        "spaces",
    )
    assert [len(page) for page in pages] == [2, 2, 2], "full pages, and no empty page at the end"
    listed = [space for page in pages for space in page]
    assert [space.space_id for space in listed] == [shared.space_id, *(space.space_id for space in own)]
    assert listed[0].caller_role == VIEWER
    assert listed[1:] == own, "each with the caller's role (owner)"

    default = await transport.unary(LIST_SPACES, knowledge_pb2.ListSpacesRequest(), token=user.access_token)
    everything = expect_ok(default, knowledge_pb2.ListSpacesResponse)
    assert list(everything.spaces) == listed
    assert everything.next_page_token == ""


@contract("knowledge.v1.KnowledgeService/ListSpaces", "INVALID_ARGUMENT")
@pytest.mark.parametrize("page_size", [101, -1])
async def test_list_spaces_page_size_is_1_to_100(
    transport: Transport, setup_transport: Transport, page_size: int
) -> None:
    user = await sign_up(setup_transport)
    request = knowledge_pb2.ListSpacesRequest(page_size=page_size)
    expect_invalid_field(await transport.unary(LIST_SPACES, request, token=user.access_token), "page_size")


@contract("knowledge.v1.KnowledgeService/ListSpaces", "INVALID_ARGUMENT")
async def test_list_spaces_takes_only_its_own_page_tokens(transport: Transport, setup_transport: Transport) -> None:
    owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    await add_member(setup_transport, owner, space.space_id, new_id(), VIEWER)
    members_token = await next_page_token(
        setup_transport, LIST_MEMBERS, knowledge_pb2.ListMembersRequest(space_id=space.space_id, page_size=1), owner
    )
    for token in ("not-a-page-token", members_token):
        request = knowledge_pb2.ListSpacesRequest(page_token=token)
        expect_invalid_field(await transport.unary(LIST_SPACES, request, token=owner.access_token), "page_token")


@contract("knowledge.v1.KnowledgeService/ListSpaces", "UNAUTHENTICATED")
async def test_list_spaces_needs_a_valid_token(transport: Transport) -> None:
    await expect_needs_a_valid_token(transport, LIST_SPACES, knowledge_pb2.ListSpacesRequest())


# --------------------------------------------------------------- AddMember


@contract("knowledge.v1.KnowledgeService/AddMember")
async def test_add_member_gives_a_role_and_emits_member_added(
    transport: Transport, setup_transport: Transport, knowledge_events: EventLog
) -> None:
    owner, user = await sign_up(setup_transport), await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    request = knowledge_pb2.AddMemberRequest(space_id=space.space_id, user_id=user.user_id, role=EDITOR)
    member = expect_ok(
        await transport.unary(ADD_MEMBER, request, token=owner.access_token), knowledge_pb2.AddMemberResponse
    ).member

    assert (member.space_id, member.user_id, member.role, member.added_by) == (
        space.space_id,
        user.user_id,
        EDITOR,
        owner.user_id,
    )
    assert_recent(member.added_at)
    assert member.updated_at == member.added_at, "the role never changed"
    joined = await setup_transport.unary(
        GET_SPACE, knowledge_pb2.GetSpaceRequest(space_id=space.space_id), token=user.access_token
    )
    assert expect_ok(joined, knowledge_pb2.GetSpaceResponse).space.caller_role == EDITOR

    event = await knowledge_event(
        knowledge_events, "knowledge.member.added", space_id=space.space_id, user_id=user.user_id
    )
    assert event.actor_user_id == owner.user_id
    payload = events_pb2.MemberAdded.FromString(event.payload)
    assert (payload.space_id, payload.user_id, payload.role, payload.added_by) == (
        space.space_id,
        user.user_id,
        events_pb2.SPACE_ROLE_EDITOR,
        owner.user_id,
    )


@contract("knowledge.v1.KnowledgeService/AddMember")
async def test_add_member_accepts_any_well_formed_user_id_and_returns_it_lower_cased(
    transport: Transport, setup_transport: Transport
) -> None:
    owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    stranger = new_id()  # no such user in the auth service: not looked up
    request = knowledge_pb2.AddMemberRequest(space_id=space.space_id, user_id=stranger.upper(), role=VIEWER)
    reply = await transport.unary(ADD_MEMBER, request, token=owner.access_token)
    member = expect_ok(reply, knowledge_pb2.AddMemberResponse).member
    assert (member.user_id, member.role) == (stranger, VIEWER)


@contract("knowledge.v1.KnowledgeService/AddMember", "INVALID_ARGUMENT")
@pytest.mark.parametrize(
    ("field", "space_id", "user_id", "role"),
    [
        ("space_id", "not-a-uuid", None, VIEWER),
        ("user_id", None, "not-a-uuid", VIEWER),
        ("user_id", None, "123e4567e89b12d3a456426614174000", VIEWER),
        ("role", None, None, UNSPECIFIED),
        ("role", None, None, 9),
    ],
)
async def test_add_member_needs_uuids_and_a_role(
    transport: Transport,
    setup_transport: Transport,
    field: str,
    space_id: str | None,
    user_id: str | None,
    role: knowledge_pb2.Role.ValueType,
) -> None:
    owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    request = knowledge_pb2.AddMemberRequest(
        space_id=space_id or space.space_id, user_id=user_id or new_id(), role=role
    )
    expect_invalid_field(await transport.unary(ADD_MEMBER, request, token=owner.access_token), field)


@contract("knowledge.v1.KnowledgeService/AddMember", "UNAUTHENTICATED")
async def test_add_member_needs_a_valid_token(transport: Transport) -> None:
    request = knowledge_pb2.AddMemberRequest(space_id=new_id(), user_id=new_id(), role=VIEWER)
    await expect_needs_a_valid_token(transport, ADD_MEMBER, request)


@contract("knowledge.v1.KnowledgeService/AddMember", "PERMISSION_DENIED")
async def test_only_owners_add_members(transport: Transport, setup_transport: Transport) -> None:
    team = await new_team(setup_transport)
    for account, role in ((team.editor, "editor"), (team.viewer, "viewer")):
        request = knowledge_pb2.AddMemberRequest(space_id=team.space_id, user_id=new_id(), role=VIEWER)
        expect_role_too_low(await transport.unary(ADD_MEMBER, request, token=account.access_token), "owner role", role)
    await expect_outsiders_denied_like_missing_spaces(
        transport,
        ADD_MEMBER,
        lambda space_id: knowledge_pb2.AddMemberRequest(space_id=space_id, user_id=team.outsider.user_id, role=OWNER),
        team.outsider,
        team.space_id,
    )


@contract("knowledge.v1.KnowledgeService/AddMember", "ALREADY_EXISTS")
async def test_a_member_is_added_once(transport: Transport, setup_transport: Transport) -> None:
    team = await new_team(setup_transport)
    for member in (team.editor, team.owner):
        request = knowledge_pb2.AddMemberRequest(space_id=team.space_id, user_id=member.user_id, role=VIEWER)
        reply = await transport.unary(ADD_MEMBER, request, token=team.owner.access_token)
        expect_error(reply, grpc.StatusCode.ALREADY_EXISTS, "already a member", "UpdateMemberRole")
    role = await setup_transport.unary(
        GET_SPACE, knowledge_pb2.GetSpaceRequest(space_id=team.space_id), token=team.editor.access_token
    )
    assert expect_ok(role, knowledge_pb2.GetSpaceResponse).space.caller_role == EDITOR, "the role is unchanged"


# -------------------------------------------------------- UpdateMemberRole


@contract("knowledge.v1.KnowledgeService/UpdateMemberRole")
async def test_update_member_role_changes_the_role_once_and_emits_role_changed(
    transport: Transport, setup_transport: Transport, knowledge_events: EventLog
) -> None:
    team = await new_team(setup_transport)
    viewer_id = team.viewer.user_id

    def change(role: knowledge_pb2.Role.ValueType) -> knowledge_pb2.UpdateMemberRoleRequest:
        return knowledge_pb2.UpdateMemberRoleRequest(space_id=team.space_id, user_id=viewer_id, role=role)

    unchanged = expect_ok(
        await transport.unary(UPDATE_MEMBER_ROLE, change(VIEWER), token=team.owner.access_token),
        knowledge_pb2.UpdateMemberRoleResponse,
    ).member
    assert (unchanged.role, unchanged.updated_at) == (VIEWER, unchanged.added_at), "the same role changes nothing"

    promoted = expect_ok(
        await transport.unary(UPDATE_MEMBER_ROLE, change(EDITOR), token=team.owner.access_token),
        knowledge_pb2.UpdateMemberRoleResponse,
    ).member
    assert (promoted.space_id, promoted.user_id, promoted.role) == (team.space_id, viewer_id, EDITOR)
    assert (promoted.added_by, promoted.added_at) == (team.owner.user_id, unchanged.added_at)
    assert moment(promoted.updated_at) > moment(promoted.added_at)

    # The first role_changed event about the member is this one: setting the same role emitted none.
    event = await knowledge_event(
        knowledge_events, "knowledge.member.role_changed", space_id=team.space_id, user_id=viewer_id
    )
    assert event.actor_user_id == team.owner.user_id
    payload = events_pb2.MemberRoleChanged.FromString(event.payload)
    assert (payload.space_id, payload.user_id, payload.previous_role, payload.role, payload.changed_by) == (
        team.space_id,
        viewer_id,
        events_pb2.SPACE_ROLE_VIEWER,
        events_pb2.SPACE_ROLE_EDITOR,
        team.owner.user_id,
    )


@contract("knowledge.v1.KnowledgeService/UpdateMemberRole")
async def test_an_owner_may_step_down_once_another_owner_exists(
    transport: Transport, setup_transport: Transport
) -> None:
    team = await new_team(setup_transport)
    for user_id, role in ((team.editor.user_id, OWNER), (team.owner.user_id, VIEWER)):
        request = knowledge_pb2.UpdateMemberRoleRequest(space_id=team.space_id, user_id=user_id, role=role)
        reply = await transport.unary(UPDATE_MEMBER_ROLE, request, token=team.owner.access_token)
        assert expect_ok(reply, knowledge_pb2.UpdateMemberRoleResponse).member.role == role
    space = await setup_transport.unary(
        GET_SPACE, knowledge_pb2.GetSpaceRequest(space_id=team.space_id), token=team.owner.access_token
    )
    assert expect_ok(space, knowledge_pb2.GetSpaceResponse).space.caller_role == VIEWER


@contract("knowledge.v1.KnowledgeService/UpdateMemberRole", "INVALID_ARGUMENT")
@pytest.mark.parametrize(
    ("field", "space_id", "user_id", "role"),
    [
        ("space_id", "not-a-uuid", None, EDITOR),
        ("user_id", None, "not-a-uuid", EDITOR),
        ("role", None, None, UNSPECIFIED),
    ],
)
async def test_update_member_role_needs_uuids_and_a_role(
    transport: Transport,
    setup_transport: Transport,
    field: str,
    space_id: str | None,
    user_id: str | None,
    role: knowledge_pb2.Role.ValueType,
) -> None:
    owner, member = await sign_up(setup_transport), new_id()
    space = await create_space(setup_transport, owner)
    await add_member(setup_transport, owner, space.space_id, member, VIEWER)
    request = knowledge_pb2.UpdateMemberRoleRequest(
        space_id=space_id or space.space_id, user_id=user_id or member, role=role
    )
    expect_invalid_field(await transport.unary(UPDATE_MEMBER_ROLE, request, token=owner.access_token), field)


@contract("knowledge.v1.KnowledgeService/UpdateMemberRole", "UNAUTHENTICATED")
async def test_update_member_role_needs_a_valid_token(transport: Transport) -> None:
    request = knowledge_pb2.UpdateMemberRoleRequest(space_id=new_id(), user_id=new_id(), role=EDITOR)
    await expect_needs_a_valid_token(transport, UPDATE_MEMBER_ROLE, request)


@contract("knowledge.v1.KnowledgeService/UpdateMemberRole", "PERMISSION_DENIED")
async def test_only_owners_change_roles(transport: Transport, setup_transport: Transport) -> None:
    team = await new_team(setup_transport)
    for account, role in ((team.editor, "editor"), (team.viewer, "viewer")):
        request = knowledge_pb2.UpdateMemberRoleRequest(space_id=team.space_id, user_id=account.user_id, role=OWNER)
        reply = await transport.unary(UPDATE_MEMBER_ROLE, request, token=account.access_token)
        expect_role_too_low(reply, "owner role", role)
    await expect_outsiders_denied_like_missing_spaces(
        transport,
        UPDATE_MEMBER_ROLE,
        lambda space_id: knowledge_pb2.UpdateMemberRoleRequest(
            space_id=space_id, user_id=team.viewer.user_id, role=OWNER
        ),
        team.outsider,
        team.space_id,
    )


@contract("knowledge.v1.KnowledgeService/UpdateMemberRole", "NOT_FOUND")
async def test_update_member_role_of_a_non_member_is_not_found(
    transport: Transport, setup_transport: Transport
) -> None:
    owner, stranger = await sign_up(setup_transport), await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    request = knowledge_pb2.UpdateMemberRoleRequest(space_id=space.space_id, user_id=stranger.user_id, role=EDITOR)
    reply = await transport.unary(UPDATE_MEMBER_ROLE, request, token=owner.access_token)
    expect_error(reply, grpc.StatusCode.NOT_FOUND, f"user {stranger.user_id} is not a member", "AddMember")


@contract("knowledge.v1.KnowledgeService/UpdateMemberRole", "FAILED_PRECONDITION")
async def test_the_last_owner_cannot_be_demoted(transport: Transport, setup_transport: Transport) -> None:
    team = await new_team(setup_transport)
    for role in (EDITOR, VIEWER):
        request = knowledge_pb2.UpdateMemberRoleRequest(space_id=team.space_id, user_id=team.owner.user_id, role=role)
        reply = await transport.unary(UPDATE_MEMBER_ROLE, request, token=team.owner.access_token)
        expect_error(reply, grpc.StatusCode.FAILED_PRECONDITION, "without an owner", "make another member an owner")
    space = await setup_transport.unary(
        GET_SPACE, knowledge_pb2.GetSpaceRequest(space_id=team.space_id), token=team.owner.access_token
    )
    assert expect_ok(space, knowledge_pb2.GetSpaceResponse).space.caller_role == OWNER


# ------------------------------------------------------------ RemoveMember


@contract("knowledge.v1.KnowledgeService/RemoveMember")
async def test_an_owner_removes_a_member_who_then_loses_access(
    transport: Transport, setup_transport: Transport, knowledge_events: EventLog
) -> None:
    team = await new_team(setup_transport)
    request = knowledge_pb2.RemoveMemberRequest(space_id=team.space_id, user_id=team.editor.user_id)
    reply = await transport.unary(REMOVE_MEMBER, request, token=team.owner.access_token)
    assert expect_ok(reply, knowledge_pb2.RemoveMemberResponse) == knowledge_pb2.RemoveMemberResponse()

    after = await setup_transport.unary(
        GET_SPACE, knowledge_pb2.GetSpaceRequest(space_id=team.space_id), token=team.editor.access_token
    )
    expect_error(after, grpc.StatusCode.PERMISSION_DENIED)
    event = await knowledge_event(
        knowledge_events, "knowledge.member.removed", space_id=team.space_id, user_id=team.editor.user_id
    )
    assert event.actor_user_id == team.owner.user_id
    payload = events_pb2.MemberRemoved.FromString(event.payload)
    assert (payload.space_id, payload.user_id, payload.previous_role, payload.removed_by) == (
        team.space_id,
        team.editor.user_id,
        events_pb2.SPACE_ROLE_EDITOR,
        team.owner.user_id,
    )


@contract("knowledge.v1.KnowledgeService/RemoveMember")
async def test_any_member_may_leave_a_space(
    transport: Transport, setup_transport: Transport, knowledge_events: EventLog
) -> None:
    team = await new_team(setup_transport)
    request = knowledge_pb2.RemoveMemberRequest(space_id=team.space_id, user_id=team.viewer.user_id)
    assert (await transport.unary(REMOVE_MEMBER, request, token=team.viewer.access_token)).ok

    event = await knowledge_event(
        knowledge_events, "knowledge.member.removed", space_id=team.space_id, user_id=team.viewer.user_id
    )
    assert event.actor_user_id == team.viewer.user_id
    payload = events_pb2.MemberRemoved.FromString(event.payload)
    assert (payload.previous_role, payload.removed_by) == (events_pb2.SPACE_ROLE_VIEWER, team.viewer.user_id)
    members = await setup_transport.unary(
        LIST_MEMBERS, knowledge_pb2.ListMembersRequest(space_id=team.space_id), token=team.owner.access_token
    )
    listed = [m.user_id for m in expect_ok(members, knowledge_pb2.ListMembersResponse).members]
    assert listed == [team.owner.user_id, team.editor.user_id]


@contract("knowledge.v1.KnowledgeService/RemoveMember")
async def test_an_owner_may_leave_once_another_owner_exists(transport: Transport, setup_transport: Transport) -> None:
    team = await new_team(setup_transport)
    promote = knowledge_pb2.UpdateMemberRoleRequest(space_id=team.space_id, user_id=team.editor.user_id, role=OWNER)
    assert (await setup_transport.unary(UPDATE_MEMBER_ROLE, promote, token=team.owner.access_token)).ok
    request = knowledge_pb2.RemoveMemberRequest(space_id=team.space_id, user_id=team.owner.user_id)
    expect_ok(
        await transport.unary(REMOVE_MEMBER, request, token=team.owner.access_token), knowledge_pb2.RemoveMemberResponse
    )
    members = await setup_transport.unary(
        LIST_MEMBERS, knowledge_pb2.ListMembersRequest(space_id=team.space_id), token=team.editor.access_token
    )
    remaining = [(m.user_id, m.role) for m in expect_ok(members, knowledge_pb2.ListMembersResponse).members]
    assert remaining == [(team.editor.user_id, OWNER), (team.viewer.user_id, VIEWER)]


@contract("knowledge.v1.KnowledgeService/RemoveMember", "INVALID_ARGUMENT")
@pytest.mark.parametrize(("field", "space_id", "user_id"), [("space_id", "not-a-uuid", None), ("user_id", None, "x-1")])
async def test_remove_member_needs_uuids(
    transport: Transport, setup_transport: Transport, field: str, space_id: str | None, user_id: str | None
) -> None:
    team_owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, team_owner)
    member = (await add_member(setup_transport, team_owner, space.space_id, new_id(), VIEWER)).user_id
    request = knowledge_pb2.RemoveMemberRequest(space_id=space_id or space.space_id, user_id=user_id or member)
    expect_invalid_field(await transport.unary(REMOVE_MEMBER, request, token=team_owner.access_token), field)


@contract("knowledge.v1.KnowledgeService/RemoveMember", "UNAUTHENTICATED")
async def test_remove_member_needs_a_valid_token(transport: Transport) -> None:
    request = knowledge_pb2.RemoveMemberRequest(space_id=new_id(), user_id=new_id())
    await expect_needs_a_valid_token(transport, REMOVE_MEMBER, request)


@contract("knowledge.v1.KnowledgeService/RemoveMember", "PERMISSION_DENIED")
async def test_only_owners_remove_other_members(transport: Transport, setup_transport: Transport) -> None:
    team = await new_team(setup_transport)
    for account, other, role in ((team.editor, team.viewer, "editor"), (team.viewer, team.editor, "viewer")):
        request = knowledge_pb2.RemoveMemberRequest(space_id=team.space_id, user_id=other.user_id)
        reply = await transport.unary(REMOVE_MEMBER, request, token=account.access_token)
        expect_role_too_low(reply, "owner role", role)
    await expect_outsiders_denied_like_missing_spaces(
        transport,
        REMOVE_MEMBER,
        lambda space_id: knowledge_pb2.RemoveMemberRequest(space_id=space_id, user_id=team.outsider.user_id),
        team.outsider,
        team.space_id,
    )


@contract("knowledge.v1.KnowledgeService/RemoveMember", "NOT_FOUND")
async def test_remove_member_of_a_non_member_is_not_found(transport: Transport, setup_transport: Transport) -> None:
    owner, stranger = await sign_up(setup_transport), new_id()
    space = await create_space(setup_transport, owner)
    request = knowledge_pb2.RemoveMemberRequest(space_id=space.space_id, user_id=stranger)
    reply = await transport.unary(REMOVE_MEMBER, request, token=owner.access_token)
    expect_error(reply, grpc.StatusCode.NOT_FOUND, f"user {stranger} is not a member of space {space.space_id}")


@contract("knowledge.v1.KnowledgeService/RemoveMember", "FAILED_PRECONDITION")
async def test_the_last_owner_cannot_leave(transport: Transport, setup_transport: Transport) -> None:
    team = await new_team(setup_transport)
    request = knowledge_pb2.RemoveMemberRequest(space_id=team.space_id, user_id=team.owner.user_id)
    reply = await transport.unary(REMOVE_MEMBER, request, token=team.owner.access_token)
    expect_error(reply, grpc.StatusCode.FAILED_PRECONDITION, "without an owner")
    space = await setup_transport.unary(
        GET_SPACE, knowledge_pb2.GetSpaceRequest(space_id=team.space_id), token=team.owner.access_token
    )
    assert expect_ok(space, knowledge_pb2.GetSpaceResponse).space.caller_role == OWNER


# ------------------------------------------------------------- ListMembers


@contract("knowledge.v1.KnowledgeService/ListMembers")
async def test_list_members_pages_through_members_in_the_order_they_were_added(
    transport: Transport, setup_transport: Transport
) -> None:
    owner, viewer = await sign_up(setup_transport), await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    added = [await add_member(setup_transport, owner, space.space_id, viewer.user_id, VIEWER)]
    roles = [EDITOR, OWNER, VIEWER] * 7
    added += [await add_member(setup_transport, owner, space.space_id, new_id(), role) for role in roles]

    def listing(size: int) -> Callable[[str], Message]:
        return lambda token: knowledge_pb2.ListMembersRequest(space_id=space.space_id, page_size=size, page_token=token)

    pages = await pages_of(transport, LIST_MEMBERS, listing(3), viewer, "members")
    assert [len(page) for page in pages] == [3] * 7 + [2]
    members = [member for page in pages for member in page]
    first = members[0]
    assert (first.user_id, first.role, first.added_by) == (owner.user_id, OWNER, owner.user_id), "the creator"
    assert first.added_at == space.created_at
    assert members[1:] == added, "then every member once, in the order added, with role and added_by"

    default = await pages_of(transport, LIST_MEMBERS, listing(0), viewer, "members")
    assert [len(page) for page in default] == [20, 3], "page_size 0 means 20"


@contract("knowledge.v1.KnowledgeService/ListMembers", "INVALID_ARGUMENT")
@pytest.mark.parametrize(("field", "space_id", "page_size"), [("space_id", "not-a-uuid", 0), ("page_size", None, 101)])
async def test_list_members_rejects_a_bad_space_id_or_page_size(
    transport: Transport, setup_transport: Transport, field: str, space_id: str | None, page_size: int
) -> None:
    owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    request = knowledge_pb2.ListMembersRequest(space_id=space_id or space.space_id, page_size=page_size)
    expect_invalid_field(await transport.unary(LIST_MEMBERS, request, token=owner.access_token), field)


@contract("knowledge.v1.KnowledgeService/ListMembers", "INVALID_ARGUMENT")
async def test_a_member_page_token_is_only_valid_for_its_space(
    transport: Transport, setup_transport: Transport
) -> None:
    owner = await sign_up(setup_transport)
    first, second = await create_space(setup_transport, owner), await create_space(setup_transport, owner)
    for space in (first, second):
        await add_member(setup_transport, owner, space.space_id, new_id(), VIEWER)
        await create_document(setup_transport, owner, space.space_id)
        await create_document(setup_transport, owner, space.space_id)
    members_of_first = await next_page_token(
        setup_transport, LIST_MEMBERS, knowledge_pb2.ListMembersRequest(space_id=first.space_id, page_size=1), owner
    )
    documents_of_second = await next_page_token(
        setup_transport,
        LIST_DOCUMENTS,
        knowledge_pb2.ListDocumentsRequest(space_id=second.space_id, page_size=1),
        owner,
    )
    for token in (members_of_first, documents_of_second, "not-a-page-token"):
        request = knowledge_pb2.ListMembersRequest(space_id=second.space_id, page_size=1, page_token=token)
        expect_invalid_field(await transport.unary(LIST_MEMBERS, request, token=owner.access_token), "page_token")


@contract("knowledge.v1.KnowledgeService/ListMembers", "UNAUTHENTICATED")
async def test_list_members_needs_a_valid_token(transport: Transport) -> None:
    await expect_needs_a_valid_token(transport, LIST_MEMBERS, knowledge_pb2.ListMembersRequest(space_id=new_id()))


@contract("knowledge.v1.KnowledgeService/ListMembers", "PERMISSION_DENIED")
async def test_list_members_is_for_members(transport: Transport, setup_transport: Transport) -> None:
    owner, outsider = await sign_up(setup_transport), await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    await expect_outsiders_denied_like_missing_spaces(
        transport,
        LIST_MEMBERS,
        lambda space_id: knowledge_pb2.ListMembersRequest(space_id=space_id),
        outsider,
        space.space_id,
    )


# ---------------------------------------------------------- CreateDocument


@contract("knowledge.v1.KnowledgeService/CreateDocument")
async def test_create_document_starts_at_version_1_and_emits_its_content(
    transport: Transport, setup_transport: Transport, knowledge_events: EventLog
) -> None:
    team = await new_team(setup_transport)
    content = "  Indented first line\nand a trailing newline\n"
    request = knowledge_pb2.CreateDocumentRequest(
        space_id=team.space_id, title="  Design notes\t", content=content, tags=[" design ", "q3", "RFC"]
    )
    reply = await transport.unary(CREATE_DOCUMENT, request, token=team.editor.access_token)
    document = expect_ok(reply, knowledge_pb2.CreateDocumentResponse).document

    assert_canonical_id(document.document_id)
    assert (document.space_id, document.title, document.content) == (team.space_id, "Design notes", content)
    assert list(document.tags) == ["design", "q3", "RFC"], "trimmed, in the order given"
    assert (document.version, document.created_by, document.updated_by) == (1, team.editor.user_id, team.editor.user_id)
    assert_recent(document.created_at)
    assert document.updated_at == document.created_at
    fetched = await get_document(setup_transport, team.viewer, team.space_id, document.document_id)
    assert expect_ok(fetched, knowledge_pb2.GetDocumentResponse).document == document

    event = await knowledge_event(
        knowledge_events, "knowledge.document.created", space_id=team.space_id, document_id=document.document_id
    )
    assert event.actor_user_id == team.editor.user_id
    payload = events_pb2.DocumentCreated.FromString(event.payload)
    assert (payload.space_id, payload.document_id, payload.version, payload.author_id) == (
        team.space_id,
        document.document_id,
        1,
        team.editor.user_id,
    )
    assert (payload.title, payload.content, list(payload.tags)) == ("Design notes", content, ["design", "q3", "RFC"])


@contract("knowledge.v1.KnowledgeService/CreateDocument")
async def test_create_document_accepts_its_limits_exactly(transport: Transport, setup_transport: Transport) -> None:
    owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    title, content = "🚀" * 200, "é" * (CONTENT_MAX_BYTES // 2)  # 200 code points; 262144 UTF-8 bytes
    tags = [f"{number:02d}" + "t" * 38 for number in range(20)]
    request = knowledge_pb2.CreateDocumentRequest(space_id=space.space_id, title=title, content=content, tags=tags)
    reply = await transport.unary(CREATE_DOCUMENT, request, token=owner.access_token)
    document = expect_ok(reply, knowledge_pb2.CreateDocumentResponse).document
    assert (document.title, document.content, list(document.tags)) == (title, content, tags)


@contract("knowledge.v1.KnowledgeService/CreateDocument", "INVALID_ARGUMENT")
@pytest.mark.parametrize(
    ("field", "title", "content", "tags"),
    [
        ("title", "", "", []),
        ("title", "   ", "", []),
        ("title", "t" * 201, "", []),
        ("content", "Big", "c" * (CONTENT_MAX_BYTES + 1), []),
        ("content", "Big", "é" * (CONTENT_MAX_BYTES // 2 + 1), []),  # fewer characters than bytes
        ("tags", "Tagged", "", [f"tag {number}" for number in range(21)]),
        ("tags[1]", "Tagged", "", ["fine", "  "]),
        ("tags[0]", "Tagged", "", ["t" * 41]),
        ("tags[2]", "Tagged", "", ["alpha", "beta", " alpha "]),
    ],
    ids=["no-title", "blank-title", "long-title", "big-content", "big-utf8", "21-tags", "blank-tag", "long-tag", "dup"],
)
async def test_create_document_rejects_fields_beyond_their_limits(
    transport: Transport, setup_transport: Transport, field: str, title: str, content: str, tags: list[str]
) -> None:
    owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    request = knowledge_pb2.CreateDocumentRequest(space_id=space.space_id, title=title, content=content, tags=tags)
    expect_invalid_field(await transport.unary(CREATE_DOCUMENT, request, token=owner.access_token), field)


@contract("knowledge.v1.KnowledgeService/CreateDocument", "INVALID_ARGUMENT")
@pytest.mark.parametrize("space_id", MALFORMED_IDS)
async def test_create_document_needs_a_space_uuid(
    transport: Transport, setup_transport: Transport, space_id: str
) -> None:
    account = await sign_up(setup_transport)
    request = knowledge_pb2.CreateDocumentRequest(space_id=space_id, title="Notes")
    expect_invalid_field(await transport.unary(CREATE_DOCUMENT, request, token=account.access_token), "space_id")


async def test_create_document_rejects_content_that_is_not_utf8(
    setup_transport: Transport, stack: StackEndpoints
) -> None:
    owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    valid = knowledge_pb2.CreateDocumentRequest(space_id=space.space_id, title="Bytes", content="@@")
    raw = valid.SerializeToString().replace(b"@@", b"\xff\xfe")  # a hand-made message no protobuf library writes
    async with grpc.aio.insecure_channel(stack.envoy_grpc) as channel:
        call = channel.unary_unary(
            CREATE_DOCUMENT.path, request_serializer=lambda body: body, response_deserializer=lambda body: body
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(raw, metadata=(("authorization", f"Bearer {owner.access_token}"),), timeout=10)
    # The request does not even decode, so the field is unknown; the message says what to fix.
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert "strings must be UTF-8" in (refused.value.details() or "")


@contract("knowledge.v1.KnowledgeService/CreateDocument", "UNAUTHENTICATED")
async def test_create_document_needs_a_valid_token(transport: Transport) -> None:
    request = knowledge_pb2.CreateDocumentRequest(space_id=new_id(), title="Notes")
    await expect_needs_a_valid_token(transport, CREATE_DOCUMENT, request)


@contract("knowledge.v1.KnowledgeService/CreateDocument", "PERMISSION_DENIED")
async def test_viewers_and_outsiders_cannot_create_documents(transport: Transport, setup_transport: Transport) -> None:
    team = await new_team(setup_transport)
    request = knowledge_pb2.CreateDocumentRequest(space_id=team.space_id, title="Notes")
    reply = await transport.unary(CREATE_DOCUMENT, request, token=team.viewer.access_token)
    expect_role_too_low(reply, "editor role or higher", "viewer")
    await expect_outsiders_denied_like_missing_spaces(
        transport,
        CREATE_DOCUMENT,
        lambda space_id: knowledge_pb2.CreateDocumentRequest(space_id=space_id, title="Notes"),
        team.outsider,
        team.space_id,
    )
    listed = await setup_transport.unary(
        LIST_DOCUMENTS, knowledge_pb2.ListDocumentsRequest(space_id=team.space_id), token=team.owner.access_token
    )
    assert not expect_ok(listed, knowledge_pb2.ListDocumentsResponse).documents, "nothing was created"


# ------------------------------------------------------------- GetDocument


@contract("knowledge.v1.KnowledgeService/GetDocument")
async def test_get_document_returns_the_current_version_with_content(
    transport: Transport, setup_transport: Transport
) -> None:
    team = await new_team(setup_transport)
    created = await create_document(setup_transport, team.owner, team.space_id, "Plan", "v1 text", ["plan"])
    current = await update_document(setup_transport, team.editor, created, content="v2 text")
    reply = await get_document(transport, team.viewer, team.space_id, created.document_id)
    document = expect_ok(reply, knowledge_pb2.GetDocumentResponse).document
    assert document == current
    assert (document.version, document.title, document.content, list(document.tags)) == (2, "Plan", "v2 text", ["plan"])
    assert (document.created_by, document.updated_by) == (team.owner.user_id, team.editor.user_id)
    assert document.created_at == created.created_at
    assert moment(document.updated_at) > moment(document.created_at)


@contract("knowledge.v1.KnowledgeService/GetDocument", "INVALID_ARGUMENT")
@pytest.mark.parametrize(("field", "bad_id"), [("space_id", "not-a-uuid"), ("document_id", "not-a-uuid")])
async def test_get_document_needs_uuids(
    transport: Transport, setup_transport: Transport, field: str, bad_id: str
) -> None:
    owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    document = await create_document(setup_transport, owner, space.space_id)
    ids = {"space_id": space.space_id, "document_id": document.document_id, field: bad_id}
    expect_invalid_field(await get_document(transport, owner, ids["space_id"], ids["document_id"]), field)


@contract("knowledge.v1.KnowledgeService/GetDocument", "UNAUTHENTICATED")
async def test_get_document_needs_a_valid_token(transport: Transport) -> None:
    request = knowledge_pb2.GetDocumentRequest(space_id=new_id(), document_id=new_id())
    await expect_needs_a_valid_token(transport, GET_DOCUMENT, request)


@contract("knowledge.v1.KnowledgeService/GetDocument", "PERMISSION_DENIED")
async def test_get_document_is_for_members(transport: Transport, setup_transport: Transport) -> None:
    owner, outsider = await sign_up(setup_transport), await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    document = await create_document(setup_transport, owner, space.space_id)
    await expect_outsiders_denied_like_missing_spaces(
        transport,
        GET_DOCUMENT,
        lambda space_id: knowledge_pb2.GetDocumentRequest(space_id=space_id, document_id=document.document_id),
        outsider,
        space.space_id,
    )


@contract("knowledge.v1.KnowledgeService/GetDocument", "NOT_FOUND")
async def test_get_document_finds_only_live_documents_of_that_space(
    transport: Transport, setup_transport: Transport
) -> None:
    owner = await sign_up(setup_transport)
    space, elsewhere = await create_space(setup_transport, owner), await create_space(setup_transport, owner)
    deleted = await create_document(setup_transport, owner, space.space_id)
    await delete_document(setup_transport, owner, deleted)
    other = await create_document(setup_transport, owner, elsewhere.space_id)
    for document_id in (new_id(), deleted.document_id, other.document_id):
        reply = await get_document(transport, owner, space.space_id, document_id)
        expect_error(reply, grpc.StatusCode.NOT_FOUND, f"document {document_id} does not exist in space", "deleted")


# ---------------------------------------------------------- UpdateDocument


@contract("knowledge.v1.KnowledgeService/UpdateDocument")
async def test_update_document_writes_the_next_version_and_emits_the_full_state(
    transport: Transport, setup_transport: Transport, knowledge_events: EventLog
) -> None:
    team = await new_team(setup_transport)
    created = await create_document(setup_transport, team.owner, team.space_id, "Plan", "First draft\n", ["plan", "q3"])
    ids: dict[str, Any] = {"space_id": team.space_id, "document_id": created.document_id}

    async def update(expected_version: int, **changes: Any) -> knowledge_pb2.Document:
        request = knowledge_pb2.UpdateDocumentRequest(**ids, expected_version=expected_version, **changes)
        reply = await transport.unary(UPDATE_DOCUMENT, request, token=team.editor.access_token)
        return expect_ok(reply, knowledge_pb2.UpdateDocumentResponse).document

    retitled = await update(1, title="  Plan, revised ")
    assert (retitled.version, retitled.title, retitled.content) == (2, "Plan, revised", "First draft\n")
    assert list(retitled.tags) == ["plan", "q3"], "unset fields keep their values"
    assert (retitled.created_by, retitled.updated_by) == (team.owner.user_id, team.editor.user_id)
    assert retitled.created_at == created.created_at
    assert moment(retitled.updated_at) > moment(created.updated_at)

    event = await knowledge_event(knowledge_events, "knowledge.document.updated", **ids)
    assert event.actor_user_id == team.editor.user_id
    payload = events_pb2.DocumentUpdated.FromString(event.payload)
    assert (payload.space_id, payload.document_id, payload.version, payload.author_id) == (
        team.space_id,
        created.document_id,
        2,
        team.editor.user_id,
    )
    assert (payload.title, payload.content, list(payload.tags)) == ("Plan, revised", "First draft\n", ["plan", "q3"])

    emptied = await update(2, content="", tags=knowledge_pb2.TagList())
    assert (emptied.version, emptied.title, emptied.content, list(emptied.tags)) == (3, "Plan, revised", "", [])
    same_again = await update(3, title="Plan, revised")
    assert same_again.version == 4, "a new version even when nothing differs"
    fetched = await get_document(setup_transport, team.viewer, team.space_id, created.document_id)
    assert expect_ok(fetched, knowledge_pb2.GetDocumentResponse).document == same_again


@contract("knowledge.v1.KnowledgeService/UpdateDocument", "INVALID_ARGUMENT")
@pytest.mark.parametrize(
    ("field", "changes"),
    [
        ("space_id", {"space_id": "not-a-uuid", "title": "T"}),
        ("document_id", {"document_id": "not-a-uuid", "title": "T"}),
        ("expected_version", {"expected_version": 0, "title": "T"}),
        ("expected_version", {"expected_version": -1, "title": "T"}),
        ("title, content, tags", {}),
        ("title", {"title": "  "}),
        ("title", {"title": "t" * 201}),
        ("content", {"content": "c" * (CONTENT_MAX_BYTES + 1)}),
        ("tags.values", {"tags": knowledge_pb2.TagList(values=[f"t{n}" for n in range(21)])}),
        ("tags.values[1]", {"tags": knowledge_pb2.TagList(values=["a", "a"])}),
        ("tags.values[0]", {"tags": knowledge_pb2.TagList(values=["t" * 41])}),
    ],
    ids=[
        "space-id",
        "document-id",
        "version-0",
        "version-negative",
        "nothing-set",
        "blank-title",
        "long-title",
        "big-content",
        "21-tags",
        "dup-tag",
        "long-tag",
    ],
)
async def test_update_document_rejects_bad_input_naming_the_field(
    transport: Transport, setup_transport: Transport, field: str, changes: dict[str, Any]
) -> None:
    owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    document = await create_document(setup_transport, owner, space.space_id)
    fields = {"space_id": space.space_id, "document_id": document.document_id, "expected_version": 1, **changes}
    request = knowledge_pb2.UpdateDocumentRequest(**fields)
    expect_invalid_field(await transport.unary(UPDATE_DOCUMENT, request, token=owner.access_token), field)
    fetched = await get_document(setup_transport, owner, space.space_id, document.document_id)
    assert expect_ok(fetched, knowledge_pb2.GetDocumentResponse).document.version == 1


@contract("knowledge.v1.KnowledgeService/UpdateDocument", "UNAUTHENTICATED")
async def test_update_document_needs_a_valid_token(transport: Transport) -> None:
    request = knowledge_pb2.UpdateDocumentRequest(
        space_id=new_id(), document_id=new_id(), expected_version=1, title="T"
    )
    await expect_needs_a_valid_token(transport, UPDATE_DOCUMENT, request)


@contract("knowledge.v1.KnowledgeService/UpdateDocument", "PERMISSION_DENIED")
async def test_viewers_and_outsiders_cannot_update_documents(transport: Transport, setup_transport: Transport) -> None:
    team = await new_team(setup_transport)
    document = await create_document(setup_transport, team.owner, team.space_id)

    def request_for(space_id: str) -> knowledge_pb2.UpdateDocumentRequest:
        return knowledge_pb2.UpdateDocumentRequest(
            space_id=space_id, document_id=document.document_id, expected_version=1, title="Taken over"
        )

    reply = await transport.unary(UPDATE_DOCUMENT, request_for(team.space_id), token=team.viewer.access_token)
    expect_role_too_low(reply, "editor role or higher", "viewer")
    await expect_outsiders_denied_like_missing_spaces(
        transport, UPDATE_DOCUMENT, request_for, team.outsider, team.space_id
    )
    fetched = await get_document(setup_transport, team.owner, team.space_id, document.document_id)
    assert expect_ok(fetched, knowledge_pb2.GetDocumentResponse).document == document


@contract("knowledge.v1.KnowledgeService/UpdateDocument", "NOT_FOUND")
async def test_update_document_of_a_missing_or_deleted_document_is_not_found(
    transport: Transport, setup_transport: Transport
) -> None:
    owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    deleted = await create_document(setup_transport, owner, space.space_id)
    await delete_document(setup_transport, owner, deleted)
    for document_id, version in ((new_id(), 1), (deleted.document_id, 1), (deleted.document_id, 2)):
        request = knowledge_pb2.UpdateDocumentRequest(
            space_id=space.space_id, document_id=document_id, expected_version=version, title="Revived"
        )
        reply = await transport.unary(UPDATE_DOCUMENT, request, token=owner.access_token)
        expect_error(reply, grpc.StatusCode.NOT_FOUND, f"document {document_id} does not exist")


@contract("knowledge.v1.KnowledgeService/UpdateDocument", "ABORTED")
async def test_update_document_with_a_stale_version_is_a_conflict(
    transport: Transport, setup_transport: Transport
) -> None:
    team = await new_team(setup_transport)
    created = await create_document(setup_transport, team.owner, team.space_id, "Shared")
    current = await update_document(setup_transport, team.owner, created, title="Changed by someone else")
    for stale in (1, 7):
        request = knowledge_pb2.UpdateDocumentRequest(
            space_id=team.space_id, document_id=created.document_id, expected_version=stale, title="Mine"
        )
        reply = await transport.unary(UPDATE_DOCUMENT, request, token=team.editor.access_token)
        expect_error(reply, grpc.StatusCode.ABORTED, "is at version 2", f"not expected_version {stale}", "re-read")
        if transport.name == JSON_HTTP:
            assert reply.http_status == 409
    fetched = await get_document(setup_transport, team.owner, team.space_id, created.document_id)
    assert expect_ok(fetched, knowledge_pb2.GetDocumentResponse).document == current


# ---------------------------------------------------------- DeleteDocument


@contract("knowledge.v1.KnowledgeService/DeleteDocument")
async def test_delete_document_records_a_version_hides_the_document_and_emits_deleted(
    transport: Transport, setup_transport: Transport, knowledge_events: EventLog
) -> None:
    team = await new_team(setup_transport)
    kept = await create_document(setup_transport, team.owner, team.space_id, "Kept")
    created = await create_document(setup_transport, team.owner, team.space_id, "Doomed", "text", ["old", "x"])
    current = await update_document(setup_transport, team.owner, created, title="Doomed, v2")
    request = knowledge_pb2.DeleteDocumentRequest(
        space_id=team.space_id, document_id=created.document_id, expected_version=2
    )
    reply = await transport.unary(DELETE_DOCUMENT, request, token=team.editor.access_token)
    assert expect_ok(reply, knowledge_pb2.DeleteDocumentResponse).version == 3

    ids: dict[str, Any] = {"space_id": team.space_id, "document_id": created.document_id}
    event = await knowledge_event(knowledge_events, "knowledge.document.deleted", **ids)
    assert event.actor_user_id == team.editor.user_id
    payload = events_pb2.DocumentDeleted.FromString(event.payload)
    assert (payload.space_id, payload.document_id, payload.version, payload.author_id) == (
        team.space_id,
        created.document_id,
        3,
        team.editor.user_id,
    )
    assert (payload.title, list(payload.tags)) == (current.title, ["old", "x"]), "the last version's, no content"

    expect_error(await get_document(setup_transport, team.viewer, **ids), grpc.StatusCode.NOT_FOUND)
    versions = await setup_transport.unary(
        LIST_DOCUMENT_VERSIONS, knowledge_pb2.ListDocumentVersionsRequest(**ids), token=team.viewer.access_token
    )
    expect_error(versions, grpc.StatusCode.NOT_FOUND)
    old = await setup_transport.unary(
        GET_DOCUMENT_VERSION, knowledge_pb2.GetDocumentVersionRequest(**ids, version=1), token=team.viewer.access_token
    )
    expect_error(old, grpc.StatusCode.NOT_FOUND)
    listed = await setup_transport.unary(
        LIST_DOCUMENTS, knowledge_pb2.ListDocumentsRequest(space_id=team.space_id), token=team.viewer.access_token
    )
    assert list(expect_ok(listed, knowledge_pb2.ListDocumentsResponse).documents) == [without_content(kept)]


@contract("knowledge.v1.KnowledgeService/DeleteDocument", "INVALID_ARGUMENT")
@pytest.mark.parametrize(
    ("field", "space_id", "document_id", "expected_version"),
    [
        ("space_id", "not-a-uuid", None, 1),
        ("document_id", None, "not-a-uuid", 1),
        ("expected_version", None, None, 0),
        ("expected_version", None, None, -3),
    ],
)
async def test_delete_document_needs_uuids_and_a_version(
    transport: Transport,
    setup_transport: Transport,
    field: str,
    space_id: str | None,
    document_id: str | None,
    expected_version: int,
) -> None:
    owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    document = await create_document(setup_transport, owner, space.space_id)
    request = knowledge_pb2.DeleteDocumentRequest(
        space_id=space_id or space.space_id,
        document_id=document_id or document.document_id,
        expected_version=expected_version,
    )
    expect_invalid_field(await transport.unary(DELETE_DOCUMENT, request, token=owner.access_token), field)
    assert (await get_document(setup_transport, owner, space.space_id, document.document_id)).ok


@contract("knowledge.v1.KnowledgeService/DeleteDocument", "UNAUTHENTICATED")
async def test_delete_document_needs_a_valid_token(transport: Transport) -> None:
    request = knowledge_pb2.DeleteDocumentRequest(space_id=new_id(), document_id=new_id(), expected_version=1)
    await expect_needs_a_valid_token(transport, DELETE_DOCUMENT, request)


@contract("knowledge.v1.KnowledgeService/DeleteDocument", "PERMISSION_DENIED")
async def test_viewers_and_outsiders_cannot_delete_documents(transport: Transport, setup_transport: Transport) -> None:
    team = await new_team(setup_transport)
    document = await create_document(setup_transport, team.owner, team.space_id)

    def request_for(space_id: str) -> knowledge_pb2.DeleteDocumentRequest:
        return knowledge_pb2.DeleteDocumentRequest(
            space_id=space_id, document_id=document.document_id, expected_version=1
        )

    reply = await transport.unary(DELETE_DOCUMENT, request_for(team.space_id), token=team.viewer.access_token)
    expect_role_too_low(reply, "editor role or higher", "viewer")
    await expect_outsiders_denied_like_missing_spaces(
        transport, DELETE_DOCUMENT, request_for, team.outsider, team.space_id
    )
    assert (await get_document(setup_transport, team.owner, team.space_id, document.document_id)).ok


@contract("knowledge.v1.KnowledgeService/DeleteDocument", "NOT_FOUND")
async def test_delete_document_twice_or_of_a_missing_document_is_not_found(
    transport: Transport, setup_transport: Transport
) -> None:
    owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    document = await create_document(setup_transport, owner, space.space_id)
    first = knowledge_pb2.DeleteDocumentRequest(
        space_id=space.space_id, document_id=document.document_id, expected_version=1
    )
    assert (await transport.unary(DELETE_DOCUMENT, first, token=owner.access_token)).ok
    again = knowledge_pb2.DeleteDocumentRequest(
        space_id=space.space_id, document_id=document.document_id, expected_version=2
    )
    missing = knowledge_pb2.DeleteDocumentRequest(space_id=space.space_id, document_id=new_id(), expected_version=1)
    for request in (first, again, missing):
        reply = await transport.unary(DELETE_DOCUMENT, request, token=owner.access_token)
        expect_error(reply, grpc.StatusCode.NOT_FOUND, f"document {request.document_id} does not exist")


@contract("knowledge.v1.KnowledgeService/DeleteDocument", "ABORTED")
async def test_delete_document_with_a_stale_version_is_a_conflict(
    transport: Transport, setup_transport: Transport
) -> None:
    team = await new_team(setup_transport)
    created = await create_document(setup_transport, team.owner, team.space_id)
    current = await update_document(setup_transport, team.owner, created, content="edited meanwhile")
    request = knowledge_pb2.DeleteDocumentRequest(
        space_id=team.space_id, document_id=created.document_id, expected_version=1
    )
    reply = await transport.unary(DELETE_DOCUMENT, request, token=team.editor.access_token)
    expect_error(reply, grpc.StatusCode.ABORTED, "is at version 2", "not expected_version 1")
    if transport.name == JSON_HTTP:
        assert reply.http_status == 409
    fetched = await get_document(setup_transport, team.viewer, team.space_id, created.document_id)
    assert expect_ok(fetched, knowledge_pb2.GetDocumentResponse).document == current, "not deleted"


# ----------------------------------------------------------- ListDocuments


@contract("knowledge.v1.KnowledgeService/ListDocuments")
async def test_list_documents_pages_in_creation_order_including_documents_created_meanwhile(
    transport: Transport, setup_transport: Transport
) -> None:
    team = await new_team(setup_transport)
    made = [
        await create_document(setup_transport, team.editor, team.space_id, f"Doc {n}", f"body {n}", [f"n{n}"])
        for n in range(5)
    ]
    await delete_document(setup_transport, team.editor, made.pop(2))

    def listing(token: str) -> knowledge_pb2.ListDocumentsRequest:
        return knowledge_pb2.ListDocumentsRequest(space_id=team.space_id, page_size=2, page_token=token)

    first = await transport.unary(LIST_DOCUMENTS, listing(""), token=team.viewer.access_token)
    first_page = expect_ok(first, knowledge_pb2.ListDocumentsResponse)
    late = await create_document(setup_transport, team.owner, team.space_id, "Created while paging")
    rest = await pages_of(
        transport, LIST_DOCUMENTS, listing, team.viewer, "documents", page_token=first_page.next_page_token
    )
    pages = [list(first_page.documents), *rest]
    assert [len(page) for page in pages] == [2, 2, 1]
    listed = [document for page in pages for document in page]
    assert listed == [without_content(document) for document in [*made, late]], "live ones, once, without content"

    default = await transport.unary(
        LIST_DOCUMENTS, knowledge_pb2.ListDocumentsRequest(space_id=team.space_id), token=team.viewer.access_token
    )
    everything = expect_ok(default, knowledge_pb2.ListDocumentsResponse)
    assert (list(everything.documents), everything.next_page_token) == (listed, "")


@contract("knowledge.v1.KnowledgeService/ListDocuments", "INVALID_ARGUMENT")
@pytest.mark.parametrize(
    ("field", "space_id", "page_size"),
    [("space_id", "not-a-uuid", 0), ("page_size", None, 101), ("page_size", None, -1)],
)
async def test_list_documents_rejects_a_bad_space_id_or_page_size(
    transport: Transport, setup_transport: Transport, field: str, space_id: str | None, page_size: int
) -> None:
    owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    request = knowledge_pb2.ListDocumentsRequest(space_id=space_id or space.space_id, page_size=page_size)
    expect_invalid_field(await transport.unary(LIST_DOCUMENTS, request, token=owner.access_token), field)


@contract("knowledge.v1.KnowledgeService/ListDocuments", "INVALID_ARGUMENT")
async def test_a_document_page_token_is_only_valid_for_its_space(
    transport: Transport, setup_transport: Transport
) -> None:
    owner = await sign_up(setup_transport)
    first, second = await create_space(setup_transport, owner), await create_space(setup_transport, owner)
    for space in (first, second):
        await add_member(setup_transport, owner, space.space_id, new_id(), VIEWER)
        await create_document(setup_transport, owner, space.space_id)
        await create_document(setup_transport, owner, space.space_id)
    documents_of_first = await next_page_token(
        setup_transport, LIST_DOCUMENTS, knowledge_pb2.ListDocumentsRequest(space_id=first.space_id, page_size=1), owner
    )
    members_of_second = await next_page_token(
        setup_transport, LIST_MEMBERS, knowledge_pb2.ListMembersRequest(space_id=second.space_id, page_size=1), owner
    )
    for token in (documents_of_first, members_of_second, "bm90IGEgdG9rZW4"):
        request = knowledge_pb2.ListDocumentsRequest(space_id=second.space_id, page_size=1, page_token=token)
        expect_invalid_field(await transport.unary(LIST_DOCUMENTS, request, token=owner.access_token), "page_token")


@contract("knowledge.v1.KnowledgeService/ListDocuments", "UNAUTHENTICATED")
async def test_list_documents_needs_a_valid_token(transport: Transport) -> None:
    await expect_needs_a_valid_token(transport, LIST_DOCUMENTS, knowledge_pb2.ListDocumentsRequest(space_id=new_id()))


@contract("knowledge.v1.KnowledgeService/ListDocuments", "PERMISSION_DENIED")
async def test_list_documents_is_for_members(transport: Transport, setup_transport: Transport) -> None:
    owner, outsider = await sign_up(setup_transport), await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    await create_document(setup_transport, owner, space.space_id)
    await expect_outsiders_denied_like_missing_spaces(
        transport,
        LIST_DOCUMENTS,
        lambda space_id: knowledge_pb2.ListDocumentsRequest(space_id=space_id),
        outsider,
        space.space_id,
    )


# ---------------------------------------------------- ListDocumentVersions


@contract("knowledge.v1.KnowledgeService/ListDocumentVersions")
async def test_list_document_versions_pages_newest_first_without_content(
    transport: Transport, setup_transport: Transport
) -> None:
    team = await new_team(setup_transport)
    document = await create_document(setup_transport, team.owner, team.space_id, "Title 1", "text 1", ["history"])
    authors = [team.owner.user_id]
    for number, author in zip(range(2, 6), (team.editor, team.owner, team.editor, team.editor), strict=True):
        document = await update_document(setup_transport, author, document, title=f"Title {number}")
        authors.append(author.user_id)

    pages = await pages_of(
        transport,
        LIST_DOCUMENT_VERSIONS,
        lambda token: knowledge_pb2.ListDocumentVersionsRequest(
            space_id=team.space_id, document_id=document.document_id, page_size=2, page_token=token
        ),
        team.viewer,
        "versions",
    )
    assert [len(page) for page in pages] == [2, 2, 1]
    versions = [version for page in pages for version in page]
    assert [v.version for v in versions] == [5, 4, 3, 2, 1], "newest first, each once"
    assert [v.title for v in versions] == [f"Title {n}" for n in (5, 4, 3, 2, 1)]
    assert [v.author_id for v in versions] == authors[::-1]
    assert {v.content for v in versions} == {""}, "content is left out of listings"
    assert all(list(v.tags) == ["history"] for v in versions)
    assert versions[0].created_at == document.updated_at
    assert [moment(v.created_at) for v in versions] == sorted((moment(v.created_at) for v in versions), reverse=True)


@contract("knowledge.v1.KnowledgeService/ListDocumentVersions", "INVALID_ARGUMENT")
@pytest.mark.parametrize(
    ("field", "changes"),
    [
        ("space_id", {"space_id": "not-a-uuid"}),
        ("document_id", {"document_id": "not-a-uuid"}),
        ("page_size", {"page_size": 101}),
        ("page_size", {"page_size": -1}),
        ("page_token", {"page_token": "not-a-page-token"}),
    ],
)
async def test_list_document_versions_rejects_bad_ids_and_paging(
    transport: Transport, setup_transport: Transport, field: str, changes: dict[str, Any]
) -> None:
    owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    document = await create_document(setup_transport, owner, space.space_id)
    fields = {"space_id": space.space_id, "document_id": document.document_id, **changes}
    request = knowledge_pb2.ListDocumentVersionsRequest(**fields)
    expect_invalid_field(await transport.unary(LIST_DOCUMENT_VERSIONS, request, token=owner.access_token), field)


@contract("knowledge.v1.KnowledgeService/ListDocumentVersions", "INVALID_ARGUMENT")
async def test_a_version_page_token_is_only_valid_for_its_document(
    transport: Transport, setup_transport: Transport
) -> None:
    owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    first = await create_document(setup_transport, owner, space.space_id, "First")
    second = await create_document(setup_transport, owner, space.space_id, "Second")
    await update_document(setup_transport, owner, first, title="First, v2")
    await update_document(setup_transport, owner, second, title="Second, v2")
    versions_of_first = await next_page_token(
        setup_transport,
        LIST_DOCUMENT_VERSIONS,
        knowledge_pb2.ListDocumentVersionsRequest(space_id=space.space_id, document_id=first.document_id, page_size=1),
        owner,
    )
    documents_of_space = await next_page_token(
        setup_transport, LIST_DOCUMENTS, knowledge_pb2.ListDocumentsRequest(space_id=space.space_id, page_size=1), owner
    )
    for token in (versions_of_first, documents_of_space):
        request = knowledge_pb2.ListDocumentVersionsRequest(
            space_id=space.space_id, document_id=second.document_id, page_size=1, page_token=token
        )
        reply = await transport.unary(LIST_DOCUMENT_VERSIONS, request, token=owner.access_token)
        expect_invalid_field(reply, "page_token")


@contract("knowledge.v1.KnowledgeService/ListDocumentVersions", "UNAUTHENTICATED")
async def test_list_document_versions_needs_a_valid_token(transport: Transport) -> None:
    request = knowledge_pb2.ListDocumentVersionsRequest(space_id=new_id(), document_id=new_id())
    await expect_needs_a_valid_token(transport, LIST_DOCUMENT_VERSIONS, request)


@contract("knowledge.v1.KnowledgeService/ListDocumentVersions", "PERMISSION_DENIED")
async def test_list_document_versions_is_for_members(transport: Transport, setup_transport: Transport) -> None:
    owner, outsider = await sign_up(setup_transport), await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    document = await create_document(setup_transport, owner, space.space_id)
    await expect_outsiders_denied_like_missing_spaces(
        transport,
        LIST_DOCUMENT_VERSIONS,
        lambda space_id: knowledge_pb2.ListDocumentVersionsRequest(space_id=space_id, document_id=document.document_id),
        outsider,
        space.space_id,
    )


@contract("knowledge.v1.KnowledgeService/ListDocumentVersions", "NOT_FOUND")
async def test_list_document_versions_of_a_missing_or_deleted_document_is_not_found(
    transport: Transport, setup_transport: Transport
) -> None:
    owner = await sign_up(setup_transport)
    space, elsewhere = await create_space(setup_transport, owner), await create_space(setup_transport, owner)
    deleted = await create_document(setup_transport, owner, space.space_id)
    await delete_document(setup_transport, owner, deleted)
    other = await create_document(setup_transport, owner, elsewhere.space_id)
    for document_id in (new_id(), deleted.document_id, other.document_id):
        request = knowledge_pb2.ListDocumentVersionsRequest(space_id=space.space_id, document_id=document_id)
        reply = await transport.unary(LIST_DOCUMENT_VERSIONS, request, token=owner.access_token)
        expect_error(reply, grpc.StatusCode.NOT_FOUND, f"document {document_id} does not exist")


# ------------------------------------------------------ GetDocumentVersion


@contract("knowledge.v1.KnowledgeService/GetDocumentVersion")
async def test_get_document_version_returns_past_and_current_versions_with_content(
    transport: Transport, setup_transport: Transport
) -> None:
    team = await new_team(setup_transport)
    draft = await create_document(setup_transport, team.editor, team.space_id, "Draft", "first words", ["draft"])
    final = await update_document(setup_transport, team.owner, draft, title="Final", content="final words")

    async def version(number: int) -> knowledge_pb2.DocumentVersion:
        request = knowledge_pb2.GetDocumentVersionRequest(
            space_id=team.space_id, document_id=draft.document_id, version=number
        )
        reply = await transport.unary(GET_DOCUMENT_VERSION, request, token=team.viewer.access_token)
        return expect_ok(reply, knowledge_pb2.GetDocumentVersionResponse).version

    first, second = await version(1), await version(2)
    assert (first.version, first.title, first.content, list(first.tags)) == (1, "Draft", "first words", ["draft"])
    assert (first.author_id, first.created_at) == (team.editor.user_id, draft.created_at)
    assert (second.version, second.title, second.content, list(second.tags)) == (2, "Final", "final words", ["draft"])
    assert (second.author_id, second.created_at) == (team.owner.user_id, final.updated_at)


@contract("knowledge.v1.KnowledgeService/GetDocumentVersion", "INVALID_ARGUMENT")
@pytest.mark.parametrize(
    ("field", "changes"),
    [
        ("space_id", {"space_id": "not-a-uuid"}),
        ("document_id", {"document_id": "not-a-uuid"}),
        ("version", {"version": 0}),
        ("version", {"version": -1}),
    ],
)
async def test_get_document_version_needs_uuids_and_a_positive_version(
    transport: Transport, setup_transport: Transport, field: str, changes: dict[str, Any]
) -> None:
    owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    document = await create_document(setup_transport, owner, space.space_id)
    fields = {"space_id": space.space_id, "document_id": document.document_id, "version": 1, **changes}
    request = knowledge_pb2.GetDocumentVersionRequest(**fields)
    expect_invalid_field(await transport.unary(GET_DOCUMENT_VERSION, request, token=owner.access_token), field)


@contract("knowledge.v1.KnowledgeService/GetDocumentVersion", "UNAUTHENTICATED")
async def test_get_document_version_needs_a_valid_token(transport: Transport) -> None:
    request = knowledge_pb2.GetDocumentVersionRequest(space_id=new_id(), document_id=new_id(), version=1)
    await expect_needs_a_valid_token(transport, GET_DOCUMENT_VERSION, request)


@contract("knowledge.v1.KnowledgeService/GetDocumentVersion", "PERMISSION_DENIED")
async def test_get_document_version_is_for_members(transport: Transport, setup_transport: Transport) -> None:
    owner, outsider = await sign_up(setup_transport), await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    document = await create_document(setup_transport, owner, space.space_id)
    await expect_outsiders_denied_like_missing_spaces(
        transport,
        GET_DOCUMENT_VERSION,
        lambda space_id: knowledge_pb2.GetDocumentVersionRequest(
            space_id=space_id, document_id=document.document_id, version=1
        ),
        outsider,
        space.space_id,
    )


@contract("knowledge.v1.KnowledgeService/GetDocumentVersion", "NOT_FOUND")
async def test_get_document_version_that_does_not_exist_is_not_found(
    transport: Transport, setup_transport: Transport
) -> None:
    owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    created = await create_document(setup_transport, owner, space.space_id)
    live = await update_document(setup_transport, owner, created, title="Second version")
    deleted = await create_document(setup_transport, owner, space.space_id)
    await delete_document(setup_transport, owner, deleted)

    async def get(document_id: str, version: int) -> Reply:
        request = knowledge_pb2.GetDocumentVersionRequest(
            space_id=space.space_id, document_id=document_id, version=version
        )
        return await transport.unary(GET_DOCUMENT_VERSION, request, token=owner.access_token)

    expect_error(await get(live.document_id, 3), grpc.StatusCode.NOT_FOUND, "has no version 3", "versions are 1–2")
    expect_error(await get(deleted.document_id, 1), grpc.StatusCode.NOT_FOUND, "or it was deleted")
    expect_error(await get(new_id(), 1), grpc.StatusCode.NOT_FOUND, "does not exist")


# --------------------------------------------------------------- internal


@pytest.fixture(scope="session", params=["direct"])
async def direct(request: pytest.FixtureRequest, stack: StackEndpoints, service_token: str) -> AsyncIterator[Transport]:
    """Internal RPCs are called as services call them: native gRPC straight to the knowledge
    service, bypassing Envoy (which refuses them), with a service token and no user token."""
    chosen = NativeGrpc(stack.service_grpc("knowledge"), metadata=[(SERVICE_TOKEN_HEADER, service_token)])
    yield chosen
    await chosen.aclose()


@pytest.fixture(scope="session")
async def anonymous_direct(stack: StackEndpoints) -> AsyncIterator[Transport]:
    """Straight to the knowledge service without a service token, as anyone who reaches its port."""
    chosen = NativeGrpc(stack.service_grpc("knowledge"))
    yield chosen
    await chosen.aclose()


async def check_access(
    direct: Transport, user_id: str, space_id: str, required: knowledge_pb2.Role.ValueType, token: str | None = None
) -> knowledge_pb2.CheckAccessResponse:
    request = knowledge_pb2.CheckAccessRequest(user_id=user_id, space_id=space_id, required_role=required)
    return expect_ok(await direct.unary(CHECK_ACCESS, request, token=token), knowledge_pb2.CheckAccessResponse)


@contract("knowledge.v1.KnowledgeService/CheckAccess")
async def test_check_access_compares_the_user_s_role_with_the_required_one(
    direct: Transport, setup_transport: Transport
) -> None:
    team = await new_team(setup_transport)
    for account, role in ((team.owner, OWNER), (team.editor, EDITOR), (team.viewer, VIEWER)):
        for required in (UNSPECIFIED, VIEWER, EDITOR, OWNER):
            answer = await check_access(direct, account.user_id, team.space_id, required)
            assert (answer.allowed, answer.role) == (role >= max(required, VIEWER), role), (account, required)
    for user_id, space_id in ((team.outsider.user_id, team.space_id), (team.owner.user_id, new_id())):
        answer = await check_access(direct, user_id, space_id, UNSPECIFIED)
        assert (answer.allowed, answer.role) == (False, UNSPECIFIED), "no access, not an error"
    forwarded = await check_access(direct, team.editor.user_id, team.space_id, EDITOR, token=team.outsider.access_token)
    assert (forwarded.allowed, forwarded.role) == (True, EDITOR), "about user_id, whoever's token is forwarded"


@contract("knowledge.v1.KnowledgeService/CheckAccess", "INVALID_ARGUMENT")
@pytest.mark.parametrize(("field", "user_id", "space_id"), [("user_id", "x", None), ("space_id", None, "x")])
async def test_check_access_needs_uuids(
    direct: Transport, field: str, user_id: str | None, space_id: str | None
) -> None:
    request = knowledge_pb2.CheckAccessRequest(user_id=user_id or new_id(), space_id=space_id or new_id())
    expect_invalid_field(await direct.unary(CHECK_ACCESS, request), field)


@contract("knowledge.v1.KnowledgeService/ListAccessibleSpaces")
async def test_list_accessible_spaces_lists_memberships_at_or_above_a_role(
    direct: Transport, setup_transport: Transport
) -> None:
    user, other = await sign_up(setup_transport), await sign_up(setup_transport)
    owned = await create_space(setup_transport, user)
    edited, viewed = await create_space(setup_transport, other), await create_space(setup_transport, other)
    await create_space(setup_transport, other)  # not shared with the user
    await add_member(setup_transport, other, edited.space_id, user.user_id, EDITOR)
    await add_member(setup_transport, other, viewed.space_id, user.user_id, VIEWER)
    memberships = sorted([(owned.space_id, OWNER), (edited.space_id, EDITOR), (viewed.space_id, VIEWER)])

    async def accessible(user_id: str, minimum: knowledge_pb2.Role.ValueType) -> list[tuple[str, int]]:
        request = knowledge_pb2.ListAccessibleSpacesRequest(user_id=user_id, minimum_role=minimum)
        reply = expect_ok(
            await direct.unary(LIST_ACCESSIBLE_SPACES, request), knowledge_pb2.ListAccessibleSpacesResponse
        )
        return [(space.space_id, space.role) for space in reply.spaces]

    for minimum in (UNSPECIFIED, VIEWER, EDITOR, OWNER):
        expected = [(space_id, role) for space_id, role in memberships if role >= max(minimum, VIEWER)]
        assert await accessible(user.user_id, minimum) == expected, f"minimum role {minimum}, ordered by space_id"
    assert await accessible(new_id(), UNSPECIFIED) == []


@contract("knowledge.v1.KnowledgeService/ListAccessibleSpaces", "INVALID_ARGUMENT")
@pytest.mark.parametrize("user_id", ["", *MALFORMED_IDS])
async def test_list_accessible_spaces_needs_a_user_uuid(direct: Transport, user_id: str) -> None:
    request = knowledge_pb2.ListAccessibleSpacesRequest(user_id=user_id)
    expect_invalid_field(await direct.unary(LIST_ACCESSIBLE_SPACES, request), "user_id")


INTERNAL_CALLS = pytest.mark.parametrize(
    ("method", "request_message"),
    [
        (CHECK_ACCESS, knowledge_pb2.CheckAccessRequest(user_id=new_id(), space_id=new_id())),
        (LIST_ACCESSIBLE_SPACES, knowledge_pb2.ListAccessibleSpacesRequest(user_id=new_id())),
    ],
    ids=["CheckAccess", "ListAccessibleSpaces"],
)


@contract("knowledge.v1.KnowledgeService/CheckAccess", "UNAUTHENTICATED")
@contract("knowledge.v1.KnowledgeService/ListAccessibleSpaces", "UNAUTHENTICATED")
@INTERNAL_CALLS
async def test_internal_rpcs_answer_only_platform_services(
    anonymous_direct: Transport, setup_transport: Transport, method: MethodRef, request_message: Message
) -> None:
    """Whoever reaches the port without a service token is refused, a signed-in user too,
    and so is a user's access token passed off as a service token."""
    account = await sign_up(setup_transport)
    for token in (None, account.access_token):
        reply = await anonymous_direct.unary(method, request_message, token=token)
        expect_error(reply, grpc.StatusCode.UNAUTHENTICATED, "internal to the platform", "service token")
    posing = await anonymous_direct.unary(
        method, request_message, metadata=[(SERVICE_TOKEN_HEADER, account.access_token)]
    )
    expect_error(posing, grpc.StatusCode.UNAUTHENTICATED, "audience")


@INTERNAL_CALLS
async def test_internal_rpcs_are_refused_at_the_edge(
    transport: Transport, setup_transport: Transport, method: MethodRef, request_message: Message
) -> None:
    """Envoy answers them 404 itself, even with a valid token, and with a service token too:
    native gRPC and gRPC-Web see it as UNIMPLEMENTED, JSON as HTTP 404 (no route to a public
    method)."""
    account = await sign_up(setup_transport)
    reply = await transport.unary(method, request_message, token=account.access_token)
    assert reply.code == grpc.StatusCode.UNIMPLEMENTED, (reply.code, reply.details)
    assert "internal to the platform" in reply.details
    if transport.name == JSON_HTTP:
        assert reply.http_status == 404
