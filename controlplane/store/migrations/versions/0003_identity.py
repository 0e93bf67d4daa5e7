"""identity: users, tokens, the audit log, and who created each resource

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from brinell.controlplane.store.models import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

CREATED = ["experiments", "entry_points", "entry_point_revisions", "jobs", "plugin_versions"]


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=63), nullable=False),
        sa.Column("role", sa.Integer(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("creator", sa.String(length=80), nullable=False),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
    )
    op.create_table(
        "tokens",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("user_id", sa.String(length=63), nullable=False),
        sa.Column("agent_id", sa.String(length=63), nullable=False),
        sa.Column("queues", sa.JSON(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=False),
        sa.Column("creator", sa.String(length=80), nullable=False),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.Column("expire_time", UTCDateTime(), nullable=True),
        sa.Column("revoke_time", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("hash"),
        sa.UniqueConstraint("id"),
    )
    op.create_index(op.f("ix_tokens_user_id"), "tokens", ["user_id"], unique=False)
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("time", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(length=80), nullable=False),
        sa.Column("action", sa.String(length=63), nullable=False),
        sa.Column("resource", sa.String(length=255), nullable=False),
        sa.Column("detail", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    for table in CREATED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("creator", sa.String(length=80), nullable=False, server_default="")
            )


def downgrade() -> None:
    for table in CREATED:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("creator")
    op.drop_table("audit_events")
    op.drop_index(op.f("ix_tokens_user_id"), table_name="tokens")
    op.drop_table("tokens")
    op.drop_table("users")
