"""retry policies for retryable failures, and job chains (depends_on, PENDING)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("retry", sa.JSON(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("retries", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("depends_on", sa.JSON(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("queued_time", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "job_dependencies",
        sa.Column("job_id", sa.String(16), primary_key=True),
        sa.Column("alias", sa.String(32), primary_key=True),
        sa.Column("dependency_id", sa.String(16), nullable=False),
    )
    op.create_index("ix_job_dependencies_dependency", "job_dependencies", ["dependency_id"])


def downgrade() -> None:
    op.drop_index("ix_job_dependencies_dependency", "job_dependencies")
    op.drop_table("job_dependencies")
    with op.batch_alter_table("jobs") as batch:
        for name in ("queued_time", "not_before", "depends_on", "retries", "retry"):
            batch.drop_column(name)
