"""The campaign key's fingerprint, so a lost or foreign key is refused instead of used.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: an existing catalog records its present key on the next pseudonymizing command.
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("key_fingerprint", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("key_fingerprint")
