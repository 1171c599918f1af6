"""deployment minutes: every worker's last hour per deployment, for the console

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 19:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployment_minutes",
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("deployment", sa.String(length=256), nullable=False),
        sa.Column("minute", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("throttled", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("peak_in_flight", sa.Integer(), nullable=False),
        sa.Column("circuit_open", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("owner", "deployment", "minute"),
    )


def downgrade() -> None:
    op.drop_table("deployment_minutes")
