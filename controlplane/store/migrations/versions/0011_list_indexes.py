"""indexes that keep ListJobs flat in the number of jobs for each filter

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_jobs_state_seq": ["state", "seq"],
    "ix_jobs_queue_seq": ["queue", "seq"],
    "ix_jobs_agent_seq": ["agent_id", "seq"],
    "ix_jobs_entry_point_seq": ["entry_point_id", "seq"],
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "jobs", columns)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, "jobs")
