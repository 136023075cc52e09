"""Spaces, memberships, documents and their versions, and the kit's outbox tables."""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, UUID

from services.kit.outbox import create_kit_tables

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "spaces",
        sa.Column("space_id", UUID(as_uuid=False), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("description", sa.String(2000), nullable=False),
        sa.Column("created_by", UUID(as_uuid=False), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "memberships",
        sa.Column(
            "space_id", UUID(as_uuid=False), sa.ForeignKey("spaces.space_id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("user_id", UUID(as_uuid=False), nullable=False),
        # knowledge.v1.Role numbers: 1 viewer, 2 editor, 3 owner.
        sa.Column("role", sa.SmallInteger, nullable=False),
        sa.Column("added_by", UUID(as_uuid=False), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("space_id", "user_id"),
        sa.CheckConstraint("role BETWEEN 1 AND 3", name="memberships_role_known"),
    )
    op.create_index("memberships_by_user", "memberships", ["user_id", "space_id"])
    op.create_index("memberships_by_space_added", "memberships", ["space_id", "added_at", "user_id"])
    op.create_table(
        "documents",
        sa.Column("document_id", UUID(as_uuid=False), primary_key=True),
        sa.Column(
            "space_id", UUID(as_uuid=False), sa.ForeignKey("spaces.space_id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),  # UTF-8, exactly as given
        sa.Column("tags", ARRAY(sa.String(40)), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("created_by", UUID(as_uuid=False), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", UUID(as_uuid=False), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("documents_by_space_created", "documents", ["space_id", "created_at", "document_id"])
    op.create_table(
        "document_versions",
        sa.Column(
            "document_id",
            UUID(as_uuid=False),
            sa.ForeignKey("documents.document_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
        sa.Column("tags", ARRAY(sa.String(40)), nullable=False),
        sa.Column("author_id", UUID(as_uuid=False), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("document_id", "version"),
    )
    create_kit_tables(op.get_bind())
