"""site rollups, anomalies, meter rebuild progress; no organization index on rollups

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 17:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "site_rollups",
        sa.Column("site_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("organization_id", sa.String(length=36), nullable=False),
        sa.Column("commodity", sa.SmallInteger(), nullable=False),
        sa.Column("direction", sa.SmallInteger(), nullable=False),
        sa.Column("unit", sa.String(length=8), nullable=False),
        sa.Column("granularity", sa.String(length=16), nullable=False),
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("bucket_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("value", sa.Float(precision=53), nullable=False),
        sa.Column("covered_ms", sa.BigInteger(), nullable=False),
        sa.Column("span_ms", sa.BigInteger(), nullable=False),
        sa.Column("reading_count", sa.BigInteger(), nullable=False),
        sa.Column("reset_count", sa.Integer(), nullable=False),
        sa.Column("rollover_count", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Float(precision=53), nullable=False),
        sa.Column("priced_rows", sa.Integer(), nullable=False),
        sa.Column("co2_kg", sa.Float(precision=53), nullable=False),
        sa.Column("co2_rows", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("peak_demand", sa.Float(precision=53), nullable=False),
        sa.Column("peak_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "site_id",
            "granularity",
            "bucket_start",
            "commodity",
            "direction",
            "unit",
            name="site_rollups_pkey",
        ),
        schema="analytics",
    )
    # Every query of meter rollups names its meters; the index cost every write.
    op.drop_index("rollups_by_organization", table_name="rollups", schema="analytics")
    op.create_table(
        "anomalies",
        sa.Column("id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("organization_id", sa.String(length=36), nullable=False),
        sa.Column("meter_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("site_id", sa.String(length=36), nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("value", sa.Float(precision=53), nullable=False),
        sa.Column("expected", sa.Float(precision=53), nullable=False),
        sa.Column("score", sa.Float(precision=53), nullable=False),
        sa.Column("unit", sa.String(length=8), nullable=False),
        sa.Column("detect_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("meter_id", "start_time", name="anomalies_one_per_hour"),
        schema="analytics",
    )
    op.create_index(
        "anomalies_by_organization",
        "anomalies",
        ["organization_id", "start_time", "id"],
        schema="analytics",
    )
    op.create_index(
        "anomalies_by_site", "anomalies", ["site_id", "start_time", "id"], schema="analytics"
    )
    op.add_column(
        "meters",
        sa.Column("rebuilt_until", sa.DateTime(timezone=True), nullable=True),
        schema="analytics",
    )


def downgrade() -> None:
    op.create_index(
        "rollups_by_organization",
        "rollups",
        ["organization_id", "granularity", "bucket_start"],
        schema="analytics",
    )
    op.drop_column("meters", "rebuilt_until", schema="analytics")
    op.drop_index("anomalies_by_site", table_name="anomalies", schema="analytics")
    op.drop_index("anomalies_by_organization", table_name="anomalies", schema="analytics")
    op.drop_table("anomalies", schema="analytics")
    op.drop_table("site_rollups", schema="analytics")
