"""The knowledge service's store: PostgreSQL tables for spaces, memberships, documents and
their versions, and every query on them.

Roles are stored as their numbers (1 viewer, 2 editor, 3 owner), so "at least this role" is a
comparison in SQL. Document content is stored as UTF-8 bytes: the contract keeps it exactly as
given, and a text column could not hold U+0000.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Row,
    SmallInteger,
    String,
    Table,
    delete,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, UUID, insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.kit.db import HotReads
from services.kit.pagination import Cursor
from services.knowledge.domain import (
    TAG_LENGTH,
    Document,
    DocumentVersion,
    Membership,
    Role,
    Space,
)

metadata = MetaData()

spaces = Table(
    "spaces",
    metadata,
    Column("space_id", UUID(as_uuid=False), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("description", String(2000), nullable=False),
    Column("created_by", UUID(as_uuid=False), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

memberships = Table(
    "memberships",
    metadata,
    Column("space_id", UUID(as_uuid=False), ForeignKey("spaces.space_id", ondelete="CASCADE"), nullable=False),
    Column("user_id", UUID(as_uuid=False), nullable=False),
    Column("role", SmallInteger, nullable=False),
    Column("added_by", UUID(as_uuid=False), nullable=False),
    Column("added_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("space_id", "user_id"),
    CheckConstraint("role BETWEEN 1 AND 3", name="memberships_role_known"),
    # A user's spaces (ListSpaces, ListAccessibleSpaces, ordered by space_id).
    Index("memberships_by_user", "user_id", "space_id"),
    # A space's members in the order they were added (ListMembers).
    Index("memberships_by_space_added", "space_id", "added_at", "user_id"),
)

documents = Table(
    "documents",
    metadata,
    Column("document_id", UUID(as_uuid=False), primary_key=True),
    Column("space_id", UUID(as_uuid=False), ForeignKey("spaces.space_id", ondelete="CASCADE"), nullable=False),
    Column("title", String(200), nullable=False),
    Column("content", LargeBinary, nullable=False),
    Column("tags", ARRAY(String(TAG_LENGTH[1])), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("created_by", UUID(as_uuid=False), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_by", UUID(as_uuid=False), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("deleted_at", DateTime(timezone=True), nullable=True),
    # A space's documents in creation order (ListDocuments' cursor, and the latest creation
    # time, which must count deleted documents too, so the index is not partial).
    Index("documents_by_space_created", "space_id", "created_at", "document_id"),
)

document_versions = Table(
    "document_versions",
    metadata,
    Column("document_id", UUID(as_uuid=False), ForeignKey("documents.document_id", ondelete="CASCADE"), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("title", String(200), nullable=False),
    Column("content", LargeBinary, nullable=False),
    Column("tags", ARRAY(String(TAG_LENGTH[1])), nullable=False),
    Column("author_id", UUID(as_uuid=False), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # The primary key also serves ListDocumentVersions (newest first, a backward index scan).
    PrimaryKeyConstraint("document_id", "version"),
)


def space_of(row: Row[Any]) -> Space:
    return Space(str(row.space_id), row.name, row.description, str(row.created_by), row.created_at)


def membership_of(row: Row[Any]) -> Membership:
    return Membership(
        str(row.space_id), str(row.user_id), Role(row.role), str(row.added_by), row.added_at, row.updated_at
    )


def document_of(values: Mapping[Any, Any], with_content: bool = True) -> Document:
    """A document from a row's values (a SQLAlchemy row's `_mapping`, or an asyncpg record)."""
    return Document(
        document_id=str(values["document_id"]),
        space_id=str(values["space_id"]),
        title=values["title"],
        content=bytes(values["content"]).decode("utf-8") if with_content else "",
        tags=tuple(values["tags"]),
        version=int(values["version"]),
        created_by=str(values["created_by"]),
        created_at=values["created_at"],
        updated_by=str(values["updated_by"]),
        updated_at=values["updated_at"],
    )


def version_of(row: Row[Any], with_content: bool = True) -> DocumentVersion:
    return DocumentVersion(
        version=int(row.version),
        title=row.title,
        content=bytes(row.content).decode("utf-8") if with_content else "",
        tags=tuple(row.tags),
        author_id=str(row.author_id),
        created_at=row.created_at,
    )


# Listings never read content (the contract leaves it empty there): only these columns.
DOCUMENT_LISTING_COLUMNS = [column for column in documents.c if column.name != "content"]
VERSION_LISTING_COLUMNS = [column for column in document_versions.c if column.name != "content"]


# GetDocument's one statement, the hottest read of the platform (see services.kit.db.HotReads):
# the reader's role, and the live document if any, in one round trip.
READABLE_DOCUMENT_SQL = """
SELECT m.role AS reader_role, d.document_id, d.space_id, d.title, d.content, d.tags, d.version,
       d.created_by, d.created_at, d.updated_by, d.updated_at
FROM memberships AS m
LEFT JOIN documents AS d
  ON d.space_id = m.space_id AND d.document_id = $2 AND d.deleted_at IS NULL
WHERE m.space_id = $1 AND m.user_id = $3
"""


class KnowledgeRepository:
    """Every query of the knowledge database, inside the caller's transaction."""

    # -- spaces and access

    async def add_space(self, session: AsyncSession, space: Space) -> None:
        await session.execute(
            spaces.insert().values(
                space_id=space.space_id,
                name=space.name,
                description=space.description,
                created_by=space.created_by,
                created_at=space.created_at,
            )
        )

    async def role_of(self, session: AsyncSession, space_id: str, user_id: str, *, hold: bool = False) -> Role | None:
        """The user's role in the space; None when not a member or the space does not exist.
        `hold` keeps the membership from changing until the transaction ends (FOR SHARE), so a
        write allowed by this role cannot commit after the role was taken away."""
        query = select(memberships.c.role).where(memberships.c.space_id == space_id, memberships.c.user_id == user_id)
        if hold:
            query = query.with_for_update(read=True)
        role = await session.scalar(query)
        return None if role is None else Role(role)

    async def lock_space_as_member(self, session: AsyncSession, space_id: str, user_id: str) -> Role | None:
        """Lock the space row for the rest of the transaction, only when the user is a member
        (a non-member cannot hold up a space), and return the user's role as it is once the
        lock is held. Writers that must see a stable space lock it first: membership changes
        (the last-owner rule counts owners) and document creation (creation times increase)."""
        locked = await session.scalar(
            select(spaces.c.space_id)
            .join(memberships, memberships.c.space_id == spaces.c.space_id)
            .where(spaces.c.space_id == space_id, memberships.c.user_id == user_id)
            # NO KEY UPDATE: the weakest lock that two such writers cannot both hold; foreign-key
            # checks of inserts into the space (KEY SHARE) still pass.
            .with_for_update(of=spaces, key_share=True)
        )
        if locked is None:
            return None
        # A new statement sees what committed while we waited for the lock (READ COMMITTED).
        return await self.role_of(session, space_id, user_id)

    async def space_with_role(self, session: AsyncSession, space_id: str, user_id: str) -> tuple[Space, Role] | None:
        row = (
            await session.execute(
                select(spaces, memberships.c.role)
                .join(memberships, memberships.c.space_id == spaces.c.space_id)
                .where(spaces.c.space_id == space_id, memberships.c.user_id == user_id)
            )
        ).first()
        return (space_of(row), Role(row.role)) if row else None

    async def spaces_of(
        self, session: AsyncSession, user_id: str, after: Cursor | None, limit: int
    ) -> list[tuple[Space, Role]]:
        """The user's spaces with their role, by creation time then space_id."""
        query = (
            select(spaces, memberships.c.role)
            .join(memberships, memberships.c.space_id == spaces.c.space_id)
            .where(memberships.c.user_id == user_id)
        )
        if after is not None:
            query = query.where(tuple_(spaces.c.created_at, spaces.c.space_id) > (after.moment, after.key))
        rows = (await session.execute(query.order_by(spaces.c.created_at, spaces.c.space_id).limit(limit))).all()
        return [(space_of(row), Role(row.role)) for row in rows]

    async def accessible_spaces(self, session: AsyncSession, user_id: str, lowest: Role) -> list[tuple[str, Role]]:
        rows = (
            await session.execute(
                select(memberships.c.space_id, memberships.c.role)
                .where(memberships.c.user_id == user_id, memberships.c.role >= int(lowest))
                .order_by(memberships.c.space_id)
            )
        ).all()
        return [(str(row.space_id), Role(row.role)) for row in rows]

    # -- memberships

    async def add_membership(self, session: AsyncSession, membership: Membership) -> bool:
        """Insert the membership; False when the user already is a member."""
        inserted = await session.scalar(
            insert(memberships)
            .values(
                space_id=membership.space_id,
                user_id=membership.user_id,
                role=int(membership.role),
                added_by=membership.added_by,
                added_at=membership.added_at,
                updated_at=membership.updated_at,
            )
            .on_conflict_do_nothing(index_elements=["space_id", "user_id"])
            .returning(memberships.c.user_id)
        )
        return inserted is not None

    async def membership(self, session: AsyncSession, space_id: str, user_id: str) -> Membership | None:
        row = (
            await session.execute(
                select(memberships).where(memberships.c.space_id == space_id, memberships.c.user_id == user_id)
            )
        ).first()
        return membership_of(row) if row else None

    async def owner_count(self, session: AsyncSession, space_id: str) -> int:
        count = await session.scalar(
            select(func.count())
            .select_from(memberships)
            .where(memberships.c.space_id == space_id, memberships.c.role == int(Role.OWNER))
        )
        return int(count or 0)

    async def set_role(
        self, session: AsyncSession, space_id: str, user_id: str, role: Role, now: datetime
    ) -> Membership:
        row = (
            await session.execute(
                update(memberships)
                .where(memberships.c.space_id == space_id, memberships.c.user_id == user_id)
                .values(role=int(role), updated_at=now)
                .returning(*memberships.c)
            )
        ).one()
        return membership_of(row)

    async def remove_membership(self, session: AsyncSession, space_id: str, user_id: str) -> None:
        await session.execute(
            delete(memberships).where(memberships.c.space_id == space_id, memberships.c.user_id == user_id)
        )

    async def members(self, session: AsyncSession, space_id: str, after: Cursor | None, limit: int) -> list[Membership]:
        """A space's members by when they were added, then user_id."""
        query = select(memberships).where(memberships.c.space_id == space_id)
        if after is not None:
            query = query.where(tuple_(memberships.c.added_at, memberships.c.user_id) > (after.moment, after.key))
        rows = (await session.execute(query.order_by(memberships.c.added_at, memberships.c.user_id).limit(limit))).all()
        return [membership_of(row) for row in rows]

    # -- documents

    async def latest_creation_time(self, session: AsyncSession, space_id: str) -> datetime | None:
        """When the space's newest document (deleted or not) was created."""
        latest: datetime | None = await session.scalar(
            select(func.max(documents.c.created_at)).where(documents.c.space_id == space_id)
        )
        return latest

    async def add_document(self, session: AsyncSession, document: Document) -> None:
        await session.execute(
            documents.insert().values(
                document_id=document.document_id,
                space_id=document.space_id,
                title=document.title,
                content=document.content.encode("utf-8"),
                tags=list(document.tags),
                version=document.version,
                created_by=document.created_by,
                created_at=document.created_at,
                updated_by=document.updated_by,
                updated_at=document.updated_at,
            )
        )

    async def live_document(
        self, session: AsyncSession, space_id: str, document_id: str, *, for_update: bool = False
    ) -> Document | None:
        """The document unless it is deleted or in another space; `for_update` locks its row
        until the transaction ends, so a version check and the write that follows are atomic."""
        query = select(documents).where(
            documents.c.document_id == document_id,
            documents.c.space_id == space_id,
            documents.c.deleted_at.is_(None),
        )
        if for_update:
            query = query.with_for_update()
        row = (await session.execute(query)).first()
        return document_of(row._mapping) if row else None

    async def readable_document(
        self, reads: HotReads, space_id: str, document_id: str, user_id: str
    ) -> tuple[Role | None, Document | None]:
        """The reader's role in the space and the live document: no row means not a member; a
        row without a document means no such document."""
        # Canonical UUID strings (parse_id made them so): asyncpg encodes them as uuid directly.
        row = await reads.fetchrow("SELECT readable_document", READABLE_DOCUMENT_SQL, space_id, document_id, user_id)
        if row is None:
            return None, None
        return Role(row["reader_role"]), document_of(row) if row["document_id"] is not None else None

    async def live_version(self, session: AsyncSession, space_id: str, document_id: str) -> int | None:
        """The document's current version; None when it is deleted or not in this space."""
        version = await session.scalar(
            select(documents.c.version).where(
                documents.c.document_id == document_id,
                documents.c.space_id == space_id,
                documents.c.deleted_at.is_(None),
            )
        )
        return None if version is None else int(version)

    async def save_document(self, session: AsyncSession, document: Document) -> None:
        await session.execute(
            update(documents)
            .where(documents.c.document_id == document.document_id)
            .values(
                title=document.title,
                content=document.content.encode("utf-8"),
                tags=list(document.tags),
                version=document.version,
                updated_by=document.updated_by,
                updated_at=document.updated_at,
            )
        )

    async def mark_deleted(
        self, session: AsyncSession, document_id: str, version: int, deleted_by: str, now: datetime
    ) -> None:
        """Soft delete: the row and its versions stay, reads and lists skip it."""
        await session.execute(
            update(documents)
            .where(documents.c.document_id == document_id)
            .values(version=version, updated_by=deleted_by, updated_at=now, deleted_at=now)
        )

    async def documents_in(
        self, session: AsyncSession, space_id: str, after: Cursor | None, limit: int
    ) -> list[Document]:
        """A space's live documents by creation time then document_id, without content."""
        query = select(*DOCUMENT_LISTING_COLUMNS).where(
            documents.c.space_id == space_id, documents.c.deleted_at.is_(None)
        )
        if after is not None:
            query = query.where(tuple_(documents.c.created_at, documents.c.document_id) > (after.moment, after.key))
        rows = (
            await session.execute(query.order_by(documents.c.created_at, documents.c.document_id).limit(limit))
        ).all()
        return [document_of(row._mapping, with_content=False) for row in rows]

    # -- versions

    async def add_version(self, session: AsyncSession, document_id: str, version: DocumentVersion) -> None:
        await session.execute(
            document_versions.insert().values(
                document_id=document_id,
                version=version.version,
                title=version.title,
                content=version.content.encode("utf-8"),
                tags=list(version.tags),
                author_id=version.author_id,
                created_at=version.created_at,
            )
        )

    async def versions_of(
        self, session: AsyncSession, document_id: str, before: int | None, limit: int
    ) -> list[DocumentVersion]:
        """A document's versions, newest first, without content."""
        query = select(*VERSION_LISTING_COLUMNS).where(document_versions.c.document_id == document_id)
        if before is not None:
            query = query.where(document_versions.c.version < before)
        rows = (await session.execute(query.order_by(document_versions.c.version.desc()).limit(limit))).all()
        return [version_of(row, with_content=False) for row in rows]

    async def version(self, session: AsyncSession, document_id: str, version: int) -> DocumentVersion | None:
        row = (
            await session.execute(
                select(document_versions).where(
                    document_versions.c.document_id == document_id, document_versions.c.version == version
                )
            )
        ).first()
        return version_of(row) if row else None
