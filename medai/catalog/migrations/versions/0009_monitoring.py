"""Monitoring: served predictions (what feedback needs, pseudonymous) and clinician feedback.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "served_predictions",
        sa.Column("prediction_id", sa.String(length=36), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("study", sa.String(length=64), nullable=False),
        sa.Column("site", sa.String(length=128), nullable=False),
        sa.Column("research_study_uid", sa.String(length=64), nullable=True),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("findings", sa.JSON(), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("prediction_id", name=op.f("pk_served_predictions")),
    )
    op.create_index("ix_served_predictions_study", "served_predictions", ["study"])
    op.create_index(
        "ix_served_predictions_version_site",
        "served_predictions",
        ["model", "version", "site", "created_at"],
    )
    op.create_table(
        "prediction_feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prediction_id", sa.String(length=36), nullable=False),
        sa.Column("finding", sa.String(length=64), nullable=False),
        sa.Column("agree", sa.Boolean(), nullable=False),
        sa.Column("diagnosis_code", sa.String(length=32), nullable=True),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["served_predictions.prediction_id"],
            name=op.f("fk_prediction_feedback_prediction_id_served_predictions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prediction_feedback")),
        sa.UniqueConstraint(
            "prediction_id",
            "finding",
            "actor",
            name=op.f("uq_prediction_feedback_prediction_id"),
        ),
    )
    op.create_index(
        "ix_prediction_feedback_prediction_id", "prediction_feedback", ["prediction_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_prediction_feedback_prediction_id", table_name="prediction_feedback")
    op.drop_table("prediction_feedback")
    op.drop_index("ix_served_predictions_version_site", table_name="served_predictions")
    op.drop_index("ix_served_predictions_study", table_name="served_predictions")
    op.drop_table("served_predictions")
