"""Conversations, their messages and the citations of answers, and the kit's outbox tables."""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, UUID

from services.kit.outbox import create_kit_tables

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("conversation_id", UUID(as_uuid=False), primary_key=True),
        sa.Column("owner_id", UUID(as_uuid=False), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("space_ids", ARRAY(UUID(as_uuid=False)), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("conversations_by_owner_activity", "conversations", ["owner_id", "updated_at", "conversation_id"])
    op.create_table(
        "messages",
        sa.Column("message_id", UUID(as_uuid=False), primary_key=True),
        sa.Column(
            "conversation_id",
            UUID(as_uuid=False),
            sa.ForeignKey("conversations.conversation_id", ondelete="CASCADE"),
            nullable=False,
        ),
        # chat.v1.MessageRole numbers: 1 user, 2 assistant.
        sa.Column("role", sa.SmallInteger, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        # chat.v1.AnswerKind numbers; 0 for questions.
        sa.Column("answer_kind", sa.SmallInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("role IN (1, 2)", name="messages_role_known"),
        sa.CheckConstraint("answer_kind BETWEEN 0 AND 3", name="messages_answer_kind_known"),
    )
    op.create_index("messages_by_conversation_time", "messages", ["conversation_id", "created_at", "message_id"])
    op.create_table(
        "citations",
        sa.Column(
            "message_id",
            UUID(as_uuid=False),
            sa.ForeignKey("messages.message_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("number", sa.SmallInteger, nullable=False),
        sa.Column("document_id", UUID(as_uuid=False), nullable=False),
        sa.Column("space_id", UUID(as_uuid=False), nullable=False),
        sa.Column("chunk_index", sa.Integer, nullable=False),
        sa.Column("document_version", sa.BigInteger, nullable=False),
        sa.Column("snippet", sa.String(1000), nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("message_id", "number"),
    )
    create_kit_tables(op.get_bind())
