"""tariffs, tariff assignments, emission factors; cost and CO2 on the rollups

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-25 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tariffs",
        sa.Column("id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("organization_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("currency_code", sa.String(length=3), nullable=False),
        sa.Column("versions", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        schema="analytics",
    )
    op.create_index(
        "tariffs_by_name",
        "tariffs",
        ["organization_id", "name", "id"],
        unique=False,
        schema="analytics",
    )
    op.create_table(
        "tariff_assignments",
        sa.Column("id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("organization_id", sa.String(length=36), nullable=False),
        sa.Column("site_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("tariff_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("commodity", sa.SmallInteger(), nullable=False),
        sa.Column("direction", sa.SmallInteger(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tariff_id"], ["analytics.tariffs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "site_id", "commodity", "direction", name="tariff_assignments_one_per_meter_kind"
        ),
        schema="analytics",
    )
    op.create_index(
        "tariff_assignments_by_tariff",
        "tariff_assignments",
        ["tariff_id"],
        unique=False,
        schema="analytics",
    )
    op.create_table(
        "emission_factors",
        sa.Column("id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("organization_id", sa.String(length=36), nullable=False),
        sa.Column("commodity", sa.SmallInteger(), nullable=False),
        sa.Column("kg_per_unit", sa.Float(precision=53), nullable=False),
        sa.Column("effective_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("effective_to", sa.DateTime(timezone=True), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        schema="analytics",
    )
    op.create_index(
        "emission_factors_by_commodity",
        "emission_factors",
        ["organization_id", "commodity", "effective_from", "id"],
        unique=False,
        schema="analytics",
    )
    op.add_column(
        "rollups", sa.Column("cost", sa.Float(precision=53), nullable=True), schema="analytics"
    )
    op.add_column(
        "rollups", sa.Column("co2_kg", sa.Float(precision=53), nullable=True), schema="analytics"
    )
    op.add_column(
        "rollups", sa.Column("currency", sa.String(length=3), nullable=True), schema="analytics"
    )


def downgrade() -> None:
    op.drop_column("rollups", "currency", schema="analytics")
    op.drop_column("rollups", "co2_kg", schema="analytics")
    op.drop_column("rollups", "cost", schema="analytics")
    op.drop_index(
        "emission_factors_by_commodity", table_name="emission_factors", schema="analytics"
    )
    op.drop_table("emission_factors", schema="analytics")
    op.drop_index(
        "tariff_assignments_by_tariff", table_name="tariff_assignments", schema="analytics"
    )
    op.drop_table("tariff_assignments", schema="analytics")
    op.drop_index("tariffs_by_name", table_name="tariffs", schema="analytics")
    op.drop_table("tariffs", schema="analytics")
