"""Knowledge use cases: spaces, members, documents and versions, and the access checks other
services ask for.

Input is validated first, then the caller's role in the space (authorisation before existence:
a missing space and a space the caller is not in answer alike), then the change. Each change
is one database transaction that also records its event (outbox); the relay is woken once it
commits. A membership change also bumps the user's access epoch before it returns. Rows whose
read-check-write must be atomic are locked: the document row for a version
check, the space row for membership changes (the last-owner rule) and document creation
(creation order), and the caller's membership while a write it allows is made.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from google.protobuf.message import Message

from services.api.events.v1 import events_pb2
from services.kit.access import AccessEpochs
from services.kit.db import HotReads, SessionFactory, transaction
from services.kit.errors import AlreadyExists, NotFound
from services.kit.events import EventEnvelope, new_envelope
from services.kit.ids import parse_id
from services.kit.outbox import record_event
from services.kit.pagination import Cursor, Page, page_of, page_request
from services.knowledge.domain import (
    Document,
    DocumentVersion,
    Listing,
    Membership,
    Role,
    Space,
    check_current_version,
    check_expected_version,
    check_may_remove,
    check_space_keeps_an_owner,
    check_version_number,
    creation_time,
    document_changes,
    document_draft,
    has_access,
    lowest_role,
    new_document,
    new_space,
    next_version,
    not_a_member,
    require_role,
    role_to_grant,
    snapshot,
)
from services.knowledge.repository import KnowledgeRepository

PRODUCER = "knowledge"


def knowledge_event(
    event_type: str, payload: Message, space_id: str, actor_id: str, at: datetime, **subject_ids: str
) -> EventEnvelope:
    """An event about a space: keyed by space_id, so one space's events stay in order."""
    return new_envelope(
        event_type=event_type,
        payload=payload,
        producer=PRODUCER,
        partition_key=space_id,
        subject_ids={"space_id": space_id, **subject_ids},
        actor_user_id=actor_id,
        occurred_at=at,
    )


def space_role(role: Role) -> events_pb2.SpaceRole.ValueType:
    return events_pb2.SpaceRole.ValueType(int(role))


def no_such_document(document_id: str, space_id: str) -> NotFound:
    return NotFound(f"document {document_id} does not exist in space {space_id}, or it was deleted")


class KnowledgeService:
    def __init__(
        self,
        sessions: SessionFactory,
        repository: KnowledgeRepository,
        reads: HotReads,
        epochs: AccessEpochs,
        on_commit: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.sessions = sessions
        self.reads = reads  # the hottest reads, straight on asyncpg
        self.repository = repository
        # Bumped after every membership change, before it returns: other services' access
        # caches never answer with the old membership afterwards (services.kit.access).
        self.epochs = epochs
        self.on_commit = on_commit  # wakes the outbox relay
        self.clock = clock

    # ------------------------------------------------------------ spaces

    async def create_space(self, caller_id: str, name: str, description: str) -> Space:
        space, owner = new_space(name, description, caller_id, self.clock())
        async with transaction(self.sessions) as session:
            await self.repository.add_space(session, space)
            await self.repository.add_membership(session, owner)
            await record_event(
                session,
                knowledge_event(
                    "knowledge.space.created",
                    events_pb2.SpaceCreated(
                        space_id=space.space_id,
                        name=space.name,
                        description=space.description,
                        created_by=space.created_by,
                    ),
                    space.space_id,
                    caller_id,
                    space.created_at,
                ),
            )
            await record_event(session, self._member_added(owner, caller_id))
        self.on_commit()
        await self.epochs.bump([caller_id])
        return space

    async def get_space(self, caller_id: str, space_id: str) -> tuple[Space, Role]:
        space_id = parse_id(space_id, "space_id")
        async with self.sessions() as session:
            found = await self.repository.space_with_role(session, space_id, caller_id)
        if found is None:
            raise not_a_member(space_id)  # any member may read the space: no role to compare
        return found

    async def list_spaces(self, caller_id: str, page_size: int, page_token: str) -> Page[tuple[Space, Role]]:
        # The token is bound to the caller: another user's token is not valid here.
        scope = [caller_id]
        request = page_request(page_size, page_token, Listing.SPACES, scope)
        async with self.sessions() as session:
            rows = await self.repository.spaces_of(session, caller_id, request.after, request.size + 1)
        return page_of(rows, request, Listing.SPACES, scope, lambda row: Cursor.at(row[0].created_at, row[0].space_id))

    # ----------------------------------------------------------- members

    async def add_member(self, caller_id: str, space_id: str, user_id: str, role: int) -> Membership:
        space_id, user_id = parse_id(space_id, "space_id"), parse_id(user_id, "user_id")
        granted = role_to_grant(role)
        now = self.clock()
        membership = Membership(space_id, user_id, granted, caller_id, now, now)
        async with transaction(self.sessions) as session:
            caller_role = await self.repository.lock_space_as_member(session, space_id, caller_id)
            require_role(caller_role, Role.OWNER, "adding members", space_id)
            if not await self.repository.add_membership(session, membership):
                raise AlreadyExists(
                    f"user {user_id} is already a member of space {space_id}; use UpdateMemberRole to change their role"
                )
            await record_event(session, self._member_added(membership, caller_id))
        self.on_commit()
        await self.epochs.bump([user_id])
        return membership

    async def update_member_role(self, caller_id: str, space_id: str, user_id: str, role: int) -> Membership:
        space_id, user_id = parse_id(space_id, "space_id"), parse_id(user_id, "user_id")
        new_role = role_to_grant(role)
        now = self.clock()
        async with transaction(self.sessions) as session:
            caller_role = await self.repository.lock_space_as_member(session, space_id, caller_id)
            require_role(caller_role, Role.OWNER, "changing member roles", space_id)
            current = await self.repository.membership(session, space_id, user_id)
            if current is None:
                raise NotFound(f"user {user_id} is not a member of space {space_id}; use AddMember to add them")
            if current.role is new_role:
                return current  # setting the current role again changes nothing and emits nothing
            owners = await self.repository.owner_count(session, space_id)
            check_space_keeps_an_owner(owners, current.role, new_role, user_id, space_id)
            changed = await self.repository.set_role(session, space_id, user_id, new_role, now)
            await record_event(
                session,
                knowledge_event(
                    "knowledge.member.role_changed",
                    events_pb2.MemberRoleChanged(
                        space_id=space_id,
                        user_id=user_id,
                        previous_role=space_role(current.role),
                        role=space_role(new_role),
                        changed_by=caller_id,
                    ),
                    space_id,
                    caller_id,
                    now,
                    user_id=user_id,
                ),
            )
        self.on_commit()
        await self.epochs.bump([user_id])
        return changed

    async def remove_member(self, caller_id: str, space_id: str, user_id: str) -> None:
        space_id, user_id = parse_id(space_id, "space_id"), parse_id(user_id, "user_id")
        now = self.clock()
        async with transaction(self.sessions) as session:
            caller_role = await self.repository.lock_space_as_member(session, space_id, caller_id)
            check_may_remove(caller_role, caller_id, user_id, space_id)
            current = await self.repository.membership(session, space_id, user_id)
            if current is None:
                raise NotFound(f"user {user_id} is not a member of space {space_id}")
            owners = await self.repository.owner_count(session, space_id)
            check_space_keeps_an_owner(owners, current.role, None, user_id, space_id)
            await self.repository.remove_membership(session, space_id, user_id)
            await record_event(
                session,
                knowledge_event(
                    "knowledge.member.removed",
                    events_pb2.MemberRemoved(
                        space_id=space_id,
                        user_id=user_id,
                        previous_role=space_role(current.role),
                        removed_by=caller_id,
                    ),
                    space_id,
                    caller_id,
                    now,
                    user_id=user_id,
                ),
            )
        self.on_commit()
        await self.epochs.bump([user_id])

    async def list_members(self, caller_id: str, space_id: str, page_size: int, page_token: str) -> Page[Membership]:
        space_id = parse_id(space_id, "space_id")
        scope = [space_id]
        request = page_request(page_size, page_token, Listing.MEMBERS, scope)
        async with self.sessions() as session:
            role = await self.repository.role_of(session, space_id, caller_id)
            require_role(role, Role.VIEWER, "listing members", space_id)
            rows = await self.repository.members(session, space_id, request.after, request.size + 1)
        return page_of(rows, request, Listing.MEMBERS, scope, lambda member: Cursor.at(member.added_at, member.user_id))

    @staticmethod
    def _member_added(membership: Membership, actor_id: str) -> EventEnvelope:
        return knowledge_event(
            "knowledge.member.added",
            events_pb2.MemberAdded(
                space_id=membership.space_id,
                user_id=membership.user_id,
                role=space_role(membership.role),
                added_by=membership.added_by,
            ),
            membership.space_id,
            actor_id,
            membership.added_at,
            user_id=membership.user_id,
        )

    # --------------------------------------------------------- documents

    async def create_document(
        self, caller_id: str, space_id: str, title: str, content: str, tags: Sequence[str]
    ) -> Document:
        space_id = parse_id(space_id, "space_id")
        draft = document_draft(title, content, tags)
        async with transaction(self.sessions) as session:
            # The space lock orders creations in a space, so creation times only increase and
            # a listing cursor never passes over a document that commits later.
            role = await self.repository.lock_space_as_member(session, space_id, caller_id)
            require_role(role, Role.EDITOR, "creating documents", space_id)
            created_at = creation_time(self.clock(), await self.repository.latest_creation_time(session, space_id))
            document = new_document(draft, space_id, caller_id, created_at)
            await self.repository.add_document(session, document)
            await self.repository.add_version(session, document.document_id, snapshot(document))
            await record_event(
                session,
                knowledge_event(
                    "knowledge.document.created",
                    events_pb2.DocumentCreated(
                        space_id=space_id,
                        document_id=document.document_id,
                        version=document.version,
                        title=document.title,
                        content=document.content,
                        tags=document.tags,
                        author_id=caller_id,
                    ),
                    space_id,
                    caller_id,
                    created_at,
                    document_id=document.document_id,
                ),
            )
        self.on_commit()
        return document

    async def get_document(self, caller_id: str, space_id: str, document_id: str) -> Document:
        space_id, document_id = parse_id(space_id, "space_id"), parse_id(document_id, "document_id")
        role, document = await self.repository.readable_document(self.reads, space_id, document_id, caller_id)
        require_role(role, Role.VIEWER, "reading documents", space_id)
        if document is None:
            raise no_such_document(document_id, space_id)
        return document

    async def update_document(
        self,
        caller_id: str,
        space_id: str,
        document_id: str,
        expected_version: int,
        title: str | None,
        content: str | None,
        tags: Sequence[str] | None,
    ) -> Document:
        space_id, document_id = parse_id(space_id, "space_id"), parse_id(document_id, "document_id")
        expected_version = check_expected_version(expected_version)
        changes = document_changes(title, content, tags)
        now = self.clock()
        async with transaction(self.sessions) as session:
            role = await self.repository.role_of(session, space_id, caller_id, hold=True)
            require_role(role, Role.EDITOR, "updating documents", space_id)
            current = await self.repository.live_document(session, space_id, document_id, for_update=True)
            if current is None:
                raise no_such_document(document_id, space_id)
            check_current_version(current, expected_version)
            updated = next_version(current, changes, caller_id, now)
            await self.repository.save_document(session, updated)
            await self.repository.add_version(session, document_id, snapshot(updated))
            await record_event(
                session,
                knowledge_event(
                    "knowledge.document.updated",
                    events_pb2.DocumentUpdated(
                        space_id=space_id,
                        document_id=document_id,
                        version=updated.version,
                        title=updated.title,
                        content=updated.content,
                        tags=updated.tags,
                        author_id=caller_id,
                    ),
                    space_id,
                    caller_id,
                    now,
                    document_id=document_id,
                ),
            )
        self.on_commit()
        return updated

    async def delete_document(self, caller_id: str, space_id: str, document_id: str, expected_version: int) -> int:
        """Soft-delete; returns the version recorded for the deletion."""
        space_id, document_id = parse_id(space_id, "space_id"), parse_id(document_id, "document_id")
        expected_version = check_expected_version(expected_version)
        now = self.clock()
        async with transaction(self.sessions) as session:
            role = await self.repository.role_of(session, space_id, caller_id, hold=True)
            require_role(role, Role.EDITOR, "deleting documents", space_id)
            current = await self.repository.live_document(session, space_id, document_id, for_update=True)
            if current is None:
                raise no_such_document(document_id, space_id)
            check_current_version(current, expected_version)
            deletion_version = current.version + 1
            await self.repository.mark_deleted(session, document_id, deletion_version, caller_id, now)
            await record_event(
                session,
                knowledge_event(
                    "knowledge.document.deleted",
                    events_pb2.DocumentDeleted(
                        space_id=space_id,
                        document_id=document_id,
                        version=deletion_version,
                        title=current.title,
                        tags=current.tags,
                        author_id=caller_id,
                    ),
                    space_id,
                    caller_id,
                    now,
                    document_id=document_id,
                ),
            )
        self.on_commit()
        return deletion_version

    async def list_documents(self, caller_id: str, space_id: str, page_size: int, page_token: str) -> Page[Document]:
        space_id = parse_id(space_id, "space_id")
        scope = [space_id]
        request = page_request(page_size, page_token, Listing.DOCUMENTS, scope)
        async with self.sessions() as session:
            require_role(
                await self.repository.role_of(session, space_id, caller_id), Role.VIEWER, "listing documents", space_id
            )
            rows = await self.repository.documents_in(session, space_id, request.after, request.size + 1)
        return page_of(rows, request, Listing.DOCUMENTS, scope, lambda doc: Cursor.at(doc.created_at, doc.document_id))

    # ---------------------------------------------------------- versions

    async def list_versions(
        self, caller_id: str, space_id: str, document_id: str, page_size: int, page_token: str
    ) -> Page[DocumentVersion]:
        space_id, document_id = parse_id(space_id, "space_id"), parse_id(document_id, "document_id")
        scope = [space_id, document_id]
        request = page_request(page_size, page_token, Listing.VERSIONS, scope)
        async with self.sessions() as session:
            require_role(
                await self.repository.role_of(session, space_id, caller_id), Role.VIEWER, "reading documents", space_id
            )
            if await self.repository.live_version(session, space_id, document_id) is None:
                raise no_such_document(document_id, space_id)
            before = request.after.rank if request.after else None
            rows = await self.repository.versions_of(session, document_id, before, request.size + 1)
        return page_of(rows, request, Listing.VERSIONS, scope, lambda version: Cursor(version.version))

    async def get_version(self, caller_id: str, space_id: str, document_id: str, version: int) -> DocumentVersion:
        space_id, document_id = parse_id(space_id, "space_id"), parse_id(document_id, "document_id")
        version = check_version_number(version)
        async with self.sessions() as session:
            require_role(
                await self.repository.role_of(session, space_id, caller_id), Role.VIEWER, "reading documents", space_id
            )
            current = await self.repository.live_version(session, space_id, document_id)
            if current is None:
                raise no_such_document(document_id, space_id)
            found = await self.repository.version(session, document_id, version)
        if found is None:
            raise NotFound(f"document {document_id} has no version {version}; its versions are 1–{current}")
        return found

    # ----------------------------------------------------- access checks

    async def check_access(self, user_id: str, space_id: str, required_role: int) -> tuple[bool, Role | None]:
        """Whether the user holds at least the role, and their role (None: no access)."""
        user_id, space_id = parse_id(user_id, "user_id"), parse_id(space_id, "space_id")
        required = lowest_role(required_role, "required_role")
        async with self.sessions() as session:
            role = await self.repository.role_of(session, space_id, user_id)
        return has_access(role, required), role

    async def accessible_spaces(self, user_id: str, minimum_role: int) -> list[tuple[str, Role]]:
        user_id = parse_id(user_id, "user_id")
        lowest = lowest_role(minimum_role, "minimum_role")
        async with self.sessions() as session:
            return await self.repository.accessible_spaces(session, user_id, lowest)
