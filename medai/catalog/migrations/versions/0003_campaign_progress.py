"""The 90-day campaign: label sheets, progress and label counters, what each study counts as.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

Backfills ``studies.modality/body_part`` (from each study's first series) and the
``progress_counts`` table from the rows already catalogued, so a catalog upgraded
mid-campaign reports the same progress as one that ran 0003 from the start.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from medai.catalog.models import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "label_imports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("sheet_sha256", sa.String(length=64), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["site_id"], ["sites.id"], name=op.f("fk_label_imports_site_id_sites")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_label_imports")),
    )
    op.create_index(op.f("ix_label_imports_site_id"), "label_imports", ["site_id"])
    op.create_table(
        "progress_counts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("body_part", sa.String(length=64), nullable=False),
        sa.Column("studies", sa.BigInteger(), nullable=False),
        sa.Column("instances", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["site_id"], ["sites.id"], name=op.f("fk_progress_counts_site_id_sites")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_progress_counts")),
        sa.UniqueConstraint(
            "site_id", "day", "modality", "body_part", name=op.f("uq_progress_counts_site_id")
        ),
    )
    op.create_table(
        "label_counts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("body_part", sa.String(length=64), nullable=False),
        sa.Column("finding", sa.String(length=64), nullable=False),
        sa.Column("labelled", sa.BigInteger(), nullable=False),
        sa.Column("positives", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["site_id"], ["sites.id"], name=op.f("fk_label_counts_site_id_sites")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_label_counts")),
        sa.UniqueConstraint(
            "site_id",
            "day",
            "modality",
            "body_part",
            "finding",
            name=op.f("uq_label_counts_site_id"),
        ),
    )
    op.create_table(
        "label_rows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("import_id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("row_number", sa.Integer(), nullable=False),
        sa.Column("ref_kind", sa.String(length=16), nullable=False),
        sa.Column("ref", sa.String(length=64), nullable=False),
        sa.Column("findings", sa.JSON(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["import_id"], ["label_imports.id"], name=op.f("fk_label_rows_import_id_label_imports")
        ),
        sa.ForeignKeyConstraint(
            ["site_id"], ["sites.id"], name=op.f("fk_label_rows_site_id_sites")
        ),
        sa.ForeignKeyConstraint(
            ["study_id"], ["studies.id"], name=op.f("fk_label_rows_study_id_studies")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_label_rows")),
    )
    op.create_index(op.f("ix_label_rows_import_id"), "label_rows", ["import_id"])
    op.create_index("ix_label_rows_ref", "label_rows", ["site_id", "ref_kind", "ref"])
    op.create_index(op.f("ix_label_rows_status"), "label_rows", ["status"])
    op.create_index(op.f("ix_label_rows_study_id"), "label_rows", ["study_id"])
    op.create_table(
        "study_labels",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("finding", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.Column("label_row_id", sa.Integer(), nullable=False),
        sa.Column("conflict", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["label_row_id"],
            ["label_rows.id"],
            name=op.f("fk_study_labels_label_row_id_label_rows"),
        ),
        sa.ForeignKeyConstraint(
            ["site_id"], ["sites.id"], name=op.f("fk_study_labels_site_id_sites")
        ),
        sa.ForeignKeyConstraint(
            ["study_id"], ["studies.id"], name=op.f("fk_study_labels_study_id_studies")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_study_labels")),
        sa.UniqueConstraint("study_id", "finding", name=op.f("uq_study_labels_study_id")),
    )
    op.create_index("ix_study_labels_site_finding", "study_labels", ["site_id", "finding", "value"])
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("modality", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("body_part", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("accession_key", sa.String(length=64), nullable=True))
        batch.create_index(op.f("ix_studies_accession_key"), ["accession_key"])
    _backfill()


def _backfill() -> None:
    """Derive the new study columns and the progress counters from existing rows."""
    bind = op.get_bind()
    stamp = UTCDateTime()
    studies = sa.table(
        "studies",
        sa.column("id", sa.Integer),
        sa.column("site_id", sa.String),
        sa.column("first_received_at", stamp),
        sa.column("modality", sa.String),
        sa.column("body_part", sa.String),
    )
    series = sa.table(
        "series",
        sa.column("id", sa.Integer),
        sa.column("study_id", sa.Integer),
        sa.column("modality", sa.String),
        sa.column("body_part", sa.String),
    )
    instances = sa.table(
        "instances",
        sa.column("site_id", sa.String),
        sa.column("received_at", stamp),
        sa.column("modality", sa.String),
        sa.column("body_part", sa.String),
        sa.column("byte_size", sa.BigInteger),
    )
    first_series = (
        sa.select(series.c.study_id, sa.func.min(series.c.id).label("series_id"))
        .group_by(series.c.study_id)
        .subquery()
    )
    kinds = bind.execute(
        sa.select(first_series.c.study_id, series.c.modality, series.c.body_part).join(
            series, series.c.id == first_series.c.series_id
        )
    ).all()
    for study_id, modality, body_part in kinds:
        bind.execute(
            sa.update(studies)
            .where(studies.c.id == study_id)
            .values(modality=modality, body_part=body_part)
        )
    counts: Counter[tuple[str, dt.date, str, str, str]] = Counter()
    for site, at, modality, body_part in bind.execute(
        sa.select(
            studies.c.site_id, studies.c.first_received_at, studies.c.modality, studies.c.body_part
        )
    ):
        counts[(site, at.date(), modality or "", body_part or "", "studies")] += 1
    for site, at, modality, body_part, size in bind.execute(
        sa.select(
            instances.c.site_id,
            instances.c.received_at,
            instances.c.modality,
            instances.c.body_part,
            instances.c.byte_size,
        )
    ):
        key = (site, at.date(), modality or "", body_part or "")
        counts[(*key, "instances")] += 1
        counts[(*key, "bytes")] += int(size)
    rows: dict[tuple[str, dt.date, str, str], dict[str, object]] = {}
    for (site, day, modality, body_part, field), value in counts.items():
        row = rows.setdefault(
            (site, day, modality, body_part),
            {
                "site_id": site,
                "day": day,
                "modality": modality,
                "body_part": body_part,
                "studies": 0,
                "instances": 0,
                "bytes": 0,
            },
        )
        row[field] = value
    if rows:
        progress = sa.table(
            "progress_counts",
            *(
                sa.column(name)
                for name in (
                    "site_id",
                    "day",
                    "modality",
                    "body_part",
                    "studies",
                    "instances",
                    "bytes",
                )
            ),
        )
        op.bulk_insert(progress, list(rows.values()))


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35): a batch copy of the table would
    # fail on SQLite's foreign-key check once other tables reference its rows.
    op.drop_index(op.f("ix_studies_accession_key"), table_name="studies")
    for column in ("accession_key", "body_part", "modality"):
        op.drop_column("studies", column)
    op.drop_table("study_labels")
    op.drop_table("label_rows")
    op.drop_table("label_counts")
    op.drop_table("progress_counts")
    op.drop_index(op.f("ix_label_imports_site_id"), table_name="label_imports")
    op.drop_table("label_imports")
