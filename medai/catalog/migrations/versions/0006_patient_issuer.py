"""Patient identity with its issuer, and pixel hashes for recognising re-sent images.

Pseudonyms now key on (issuer, PatientID) (``Pseudonymizer`` scheme ``v2``). The patients
already catalogued keep their ID-only pseudonyms: they are marked ``v1``, and the ingest
keeps sending a site's new data for such a patient to that row (``collection.identity``),
so nothing stored before the upgrade is split from what arrives after it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Only ADD COLUMN here: SQLite then alters in place instead of copying tables, which a
    # catalog full of rows (with foreign keys enforced) would refuse.
    # NULL: the site id is the issuer (the campaign may declare another at the next init).
    with op.batch_alter_table("sites") as batch:
        batch.add_column(sa.Column("issuer", sa.String(length=64), nullable=True))

    # Every patient already there was pseudonymized from the PatientID alone.
    with op.batch_alter_table("patients") as batch:
        batch.add_column(
            sa.Column("scheme", sa.String(length=8), server_default="v2", nullable=False)
        )
    op.execute("UPDATE patients SET scheme = 'v1'")

    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("patient_key", sa.String(length=64), nullable=True))

    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("pixel_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("pixel_hash_status", sa.String(length=16), nullable=True))
        batch.add_column(
            sa.Column(
                "resend_of_instance_id",
                sa.Integer(),
                sa.ForeignKey(
                    "instances.id", name=op.f("fk_instances_resend_of_instance_id_instances")
                ),
                nullable=True,
            )
        )
    op.create_index(op.f("ix_instances_pixel_hash"), "instances", ["pixel_hash"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_instances_pixel_hash"), table_name="instances")
    # Nothing references instances, so SQLite may copy it (as batch mode does to drop a
    # column with a foreign key); the other tables are referenced by rows, so their plain
    # columns are dropped in place instead.
    with op.batch_alter_table("instances") as batch:
        if op.get_bind().dialect.name != "sqlite":  # SQLite's copy leaves it behind anyway
            batch.drop_constraint(
                op.f("fk_instances_resend_of_instance_id_instances"), type_="foreignkey"
            )
        batch.drop_column("resend_of_instance_id")
        batch.drop_column("pixel_hash_status")
        batch.drop_column("pixel_hash")
    _drop_in_place("studies", "patient_key")
    _drop_in_place("patients", "scheme")
    _drop_in_place("sites", "issuer")


def _drop_in_place(table: str, column: str) -> None:
    if op.get_bind().dialect.name == "sqlite":
        # ALTER TABLE ... DROP COLUMN (SQLite 3.35+) for a column with no index or key.
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    else:
        op.drop_column(table, column)
