"""initial devices schema

Revision ID: 0001
Revises:
Create Date: 2026-11-24 02:31:27.956672
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("headers", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "create_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("publish_time", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        schema="devices",
    )
    op.create_index(
        "outbox_unpublished",
        "outbox",
        ["create_time"],
        unique=False,
        schema="devices",
        postgresql_where=sa.text("publish_time IS NULL"),
    )
    op.create_table(
        "sites",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("organization_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("time_zone", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=500), nullable=False),
        sa.Column("latitude", sa.Float(), nullable=True),
        sa.Column("longitude", sa.Float(), nullable=True),
        sa.Column("labels", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delete_time", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        schema="devices",
    )
    op.create_index(
        "sites_by_org",
        "sites",
        ["organization_id", "create_time", "id"],
        unique=False,
        schema="devices",
    )
    op.create_table(
        "ingest_keys",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("organization_id", sa.String(length=36), nullable=False),
        sa.Column("site_id", sa.String(length=36), nullable=True),
        sa.Column("display_name", sa.String(length=100), nullable=False),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoke_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["site_id"],
            ["devices.sites.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("prefix"),
        schema="devices",
    )
    op.create_index(
        op.f("ix_devices_ingest_keys_organization_id"),
        "ingest_keys",
        ["organization_id"],
        unique=False,
        schema="devices",
    )
    op.create_table(
        "meters",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("organization_id", sa.String(length=36), nullable=False),
        sa.Column("site_id", sa.String(length=36), nullable=False),
        sa.Column("serial_number", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("commodity", sa.String(length=16), nullable=False),
        sa.Column("direction", sa.String(length=16), nullable=False),
        sa.Column("unit", sa.String(length=16), nullable=False),
        sa.Column("register_type", sa.String(length=16), nullable=False),
        sa.Column("multiplier", sa.Float(), nullable=False),
        sa.Column("rollover_value", sa.Float(), nullable=True),
        sa.Column("expected_interval_seconds", sa.Integer(), nullable=False),
        sa.Column("labels", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("last_seen_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("announced_connectivity", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["site_id"],
            ["devices.sites.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        schema="devices",
    )
    op.create_index(
        "meters_by_org",
        "meters",
        ["organization_id", "create_time", "id"],
        unique=False,
        schema="devices",
    )
    op.create_index("meters_by_site", "meters", ["site_id"], unique=False, schema="devices")
    op.create_index(
        "meters_serial_in_service",
        "meters",
        ["organization_id", "serial_number"],
        unique=True,
        schema="devices",
        postgresql_where=sa.text("state <> 'decommissioned'"),
    )
    op.create_table(
        "meter_assignees",
        sa.Column("meter_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("organization_id", sa.String(length=36), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["meter_id"], ["devices.meters.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("meter_id", "user_id"),
        schema="devices",
    )
    op.create_index(
        "meter_assignees_by_user",
        "meter_assignees",
        ["organization_id", "user_id"],
        unique=False,
        schema="devices",
    )
    op.create_table(
        "meter_tokens",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("organization_id", sa.String(length=36), nullable=False),
        sa.Column("meter_id", sa.String(length=36), nullable=False),
        sa.Column("display_name", sa.String(length=100), nullable=False),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoke_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["meter_id"], ["devices.meters.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("prefix"),
        schema="devices",
    )
    op.create_index(
        op.f("ix_devices_meter_tokens_meter_id"),
        "meter_tokens",
        ["meter_id"],
        unique=False,
        schema="devices",
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_devices_meter_tokens_meter_id"), table_name="meter_tokens", schema="devices"
    )
    op.drop_table("meter_tokens", schema="devices")
    op.drop_index("meter_assignees_by_user", table_name="meter_assignees", schema="devices")
    op.drop_table("meter_assignees", schema="devices")
    op.drop_index(
        "meters_serial_in_service",
        table_name="meters",
        schema="devices",
        postgresql_where=sa.text("state <> 'decommissioned'"),
    )
    op.drop_index("meters_by_site", table_name="meters", schema="devices")
    op.drop_index("meters_by_org", table_name="meters", schema="devices")
    op.drop_table("meters", schema="devices")
    op.drop_index(
        op.f("ix_devices_ingest_keys_organization_id"), table_name="ingest_keys", schema="devices"
    )
    op.drop_table("ingest_keys", schema="devices")
    op.drop_index("sites_by_org", table_name="sites", schema="devices")
    op.drop_table("sites", schema="devices")
    op.drop_index(
        "outbox_unpublished",
        table_name="outbox",
        schema="devices",
        postgresql_where=sa.text("publish_time IS NULL"),
    )
    op.drop_table("outbox", schema="devices")
