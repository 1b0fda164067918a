"""initial telemetry schema

Generated with alembic autogenerate, then edited by hand: readings is a natively partitioned
table (PARTITION BY RANGE (time)) whose monthly partitions are created ahead of time by the
service's partition task (services/telemetry/partitions.py) and on demand for backfills; the
parent holds no rows. The primary key (meter_id, time) is what makes each reading unique; it
includes the partition key, as PostgreSQL requires of a unique index on a partitioned table.

Revision ID: 0001
Revises:
Create Date: 2026-11-24 02:44:24.339954
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
        "batches",
        sa.Column("meter_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("batch_id", sa.String(length=128), nullable=False),
        sa.Column("organization_id", sa.String(length=36), nullable=False),
        sa.Column("result", sa.LargeBinary(), nullable=False),
        sa.Column("commit_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("meter_id", "batch_id", name="batches_pkey"),
        schema="telemetry",
    )
    op.create_index(
        "batches_by_commit_time", "batches", ["commit_time"], unique=False, schema="telemetry"
    )
    op.create_table(
        "meters",
        sa.Column("id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("organization_id", sa.String(length=36), nullable=False),
        sa.Column("register_type", sa.SmallInteger(), nullable=False),
        sa.Column("rollover_value", sa.Float(precision=53), nullable=True),
        sa.Column("state", sa.SmallInteger(), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        schema="telemetry",
    )
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
        schema="telemetry",
    )
    op.create_index(
        "outbox_unpublished",
        "outbox",
        ["create_time"],
        unique=False,
        schema="telemetry",
        postgresql_where=sa.text("publish_time IS NULL"),
    )
    op.create_table(
        "readings",
        sa.Column("meter_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("value", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("meter_id", "time", name="readings_pkey"),
        schema="telemetry",
        postgresql_partition_by="RANGE (time)",
    )
    # Monthly partitions are named readings_pYYYY_MM; a default partition is left out on purpose:
    # rows in it would block creating the partition their month belongs in later.
    op.create_table(
        "rejected_readings",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("meter_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("organization_id", sa.String(length=36), nullable=False),
        sa.Column("batch_id", sa.String(length=128), nullable=False),
        sa.Column("time_unix_ms", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.Float(precision=53), nullable=False),
        sa.Column("reason", sa.SmallInteger(), nullable=False),
        sa.Column("stored_value", sa.Float(precision=53), nullable=True),
        sa.Column("receive_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        schema="telemetry",
    )
    op.create_index(
        "rejected_by_meter",
        "rejected_readings",
        ["meter_id", "id"],
        unique=False,
        schema="telemetry",
    )


def downgrade() -> None:
    op.drop_index("rejected_by_meter", table_name="rejected_readings", schema="telemetry")
    op.drop_table("rejected_readings", schema="telemetry")
    op.drop_table("readings", schema="telemetry")
    op.drop_index(
        "outbox_unpublished",
        table_name="outbox",
        schema="telemetry",
        postgresql_where=sa.text("publish_time IS NULL"),
    )
    op.drop_table("outbox", schema="telemetry")
    op.drop_table("meters", schema="telemetry")
    op.drop_index("batches_by_commit_time", table_name="batches", schema="telemetry")
    op.drop_table("batches", schema="telemetry")
