"""Edge gateways: the site an ``edge`` key speaks for, heartbeats, receipt days.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("site_id", sa.String(length=64), nullable=True))
        batch.create_foreign_key(op.f("fk_api_keys_site_id_sites"), "sites", ["site_id"], ["id"])
    op.create_table(
        "site_heartbeats",
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("edge_version", sa.String(length=64), nullable=False),
        sa.Column("clock_skew_seconds", sa.Float(), nullable=False),
        sa.Column("outbox_depth", sa.BigInteger(), nullable=False),
        sa.Column("oldest_unsent_seconds", sa.Float(), nullable=True),
        sa.Column("received_today", sa.BigInteger(), nullable=False),
        sa.Column("forwarded_today", sa.BigInteger(), nullable=False),
        sa.Column("quarantined_today", sa.BigInteger(), nullable=False),
        sa.Column("receipts", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["site_id"], ["sites.id"], name=op.f("fk_site_heartbeats_site_id_sites")
        ),
        sa.PrimaryKeyConstraint("site_id", name=op.f("pk_site_heartbeats")),
    )
    op.create_table(
        "edge_receipts",
        sa.Column("instance_id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("receipt_day", sa.Date(), nullable=False),
        sa.ForeignKeyConstraint(
            ["instance_id"], ["instances.id"], name=op.f("fk_edge_receipts_instance_id_instances")
        ),
        sa.ForeignKeyConstraint(
            ["site_id"], ["sites.id"], name=op.f("fk_edge_receipts_site_id_sites")
        ),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_edge_receipts")),
    )
    op.create_index("ix_edge_receipts_site_day", "edge_receipts", ["site_id", "receipt_day"])


def downgrade() -> None:
    op.drop_index("ix_edge_receipts_site_day", table_name="edge_receipts")
    op.drop_table("edge_receipts")
    op.drop_table("site_heartbeats")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint(op.f("fk_api_keys_site_id_sites"), type_="foreignkey")
        batch.drop_column("site_id")
