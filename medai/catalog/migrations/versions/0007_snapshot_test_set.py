"""The locked test set a snapshot belongs to, and what it shares with the earlier one.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL for snapshots made before splits were keyed per patient: they belong to no
    # locked test set.
    with op.batch_alter_table("snapshots") as batch:
        batch.add_column(sa.Column("test_set", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("snapshots") as batch:
        batch.drop_column("test_set")
