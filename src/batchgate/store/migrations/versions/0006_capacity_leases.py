"""capacity leases: deployment limits shared by every worker

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 15:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "capacity_leases",
        sa.Column("deployment", sa.String(length=256), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("slots", sa.Integer(), nullable=False),
        sa.Column("rate_share", sa.Float(), nullable=False),
        sa.Column("demand", sa.Integer(), nullable=False),
        sa.Column("wants_rate", sa.Boolean(), nullable=False),
        sa.Column("lease_until", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("deployment", "owner"),
    )


def downgrade() -> None:
    op.drop_table("capacity_leases")
