"""Dialects: xAI open batches (per-request blobs, endpoints), TrueFoundry job names and pinning.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 18:14:48.874127
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cancelled", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("dialect", sa.String(length=16), server_default="openai", nullable=False))
        batch_op.add_column(sa.Column("name", sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column("job_name", sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column("sealed", sa.Boolean(), server_default=sa.true(), nullable=False))
        batch_op.add_column(sa.Column("pinned_deployment", sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column("cancel_message", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("create_api_key_id", sa.String(length=64), nullable=True))
        batch_op.alter_column("input_file_id", existing_type=sa.VARCHAR(length=64), nullable=True)

    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("blob_key", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("endpoint", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("created_at", sa.Float(), nullable=True))
        batch_op.create_index("uq_requests_batch_custom", ["batch_id", "custom_id"], unique=True)

    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("input_tokens", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("output_tokens", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.drop_column("output_tokens")
        batch_op.drop_column("input_tokens")

    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_index("uq_requests_batch_custom")
        batch_op.drop_column("created_at")
        batch_op.drop_column("endpoint")
        batch_op.drop_column("blob_key")

    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.alter_column("input_file_id", existing_type=sa.VARCHAR(length=64), nullable=False)
        batch_op.drop_column("create_api_key_id")
        batch_op.drop_column("cancel_message")
        batch_op.drop_column("pinned_deployment")
        batch_op.drop_column("sealed")
        batch_op.drop_column("job_name")
        batch_op.drop_column("name")
        batch_op.drop_column("dialect")
        batch_op.drop_column("cancelled")
