"""jobs have a priority: the dispatcher takes the highest first, oldest first within one

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
    op.create_index(
        "ix_jobs_state_queue_priority_seq", "jobs", ["state", "queue", "priority", "seq"]
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_state_queue_priority_seq", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("priority")
