"""index results by batch and seq

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 19:41:41.035180
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.create_index("ix_results_batch_seq", ["batch_id", "seq"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.drop_index("ix_results_batch_seq")
