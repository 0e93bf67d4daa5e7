"""groups: who sees which experiments

Every experiment belongs to a group; `default` exists from the start and holds every
experiment and user that predates groups, so an upgraded deployment sees what it saw before.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from brinell.controlplane.store.models import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    groups = op.create_table(
        "groups",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=63), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=False),
        sa.Column("creator", sa.String(length=80), nullable=False),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
    )
    op.create_table(
        "group_members",
        sa.Column("group_id", sa.String(length=63), nullable=False),
        sa.Column("user_id", sa.String(length=63), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"]),
        sa.PrimaryKeyConstraint("group_id", "user_id"),
    )
    op.create_index(op.f("ix_group_members_user_id"), "group_members", ["user_id"], unique=False)
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(
            sa.Column("group_id", sa.String(length=63), nullable=False, server_default="default")
        )
        batch.create_index(batch.f("ix_experiments_group_id"), ["group_id"], unique=False)
    op.bulk_insert(
        groups,
        [
            {
                "id": "default",
                "description": "everyone, unless an admin says otherwise",
                "creator": "",
                "create_time": datetime.now(UTC),
            }
        ],
    )
    op.execute("INSERT INTO group_members (group_id, user_id) SELECT 'default', id FROM users")


def downgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.drop_index(batch.f("ix_experiments_group_id"))
        batch.drop_column("group_id")
    op.drop_index(op.f("ix_group_members_user_id"), table_name="group_members")
    op.drop_table("group_members")
    op.drop_table("groups")
