"""plugin versions can be yanked

A yanked version is never pinned by default and a submit that names it is refused.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("plugin_versions") as batch:
        batch.add_column(
            sa.Column("yanked", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(
            sa.Column("yank_reason", sa.String(length=255), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("plugin_versions") as batch:
        batch.drop_column("yank_reason")
        batch.drop_column("yanked")
