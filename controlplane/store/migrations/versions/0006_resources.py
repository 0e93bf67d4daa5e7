"""jobs ask for CPUs, memory, GPUs and a container image; attempts hold GPUs by UUID

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("resources", sa.JSON(), nullable=False, server_default="{}"))
        batch.add_column(
            sa.Column("image", sa.String(length=512), nullable=False, server_default="")
        )
        batch.add_column(
            sa.Column("image_digest", sa.String(length=600), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("gpu_uuids", sa.JSON(), nullable=False, server_default="[]"))
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("gpu_uuids", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(
            sa.Column("image_digest", sa.String(length=600), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("image_digest")
        batch.drop_column("gpu_uuids")
    with op.batch_alter_table("jobs") as batch:
        for column in ("gpu_uuids", "image_digest", "image", "resources"):
            batch.drop_column(column)
