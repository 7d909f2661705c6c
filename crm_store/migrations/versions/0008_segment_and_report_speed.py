"""segments and reports over a million customers: covering indexes, stages reached, JSONB timeline

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 18:20:00.000000
"""

import json
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

LIVE = sa.text("merged_into_id IS NULL")

# Every stage in a customer's history (both ends of each move), sorted; the current stage is
# added by whoever reads it. Merged history was moved to the surviving customer already.
BACKFILL = {
    "postgresql": """
        UPDATE customers SET stages_reached = history.stages
        FROM (SELECT customer_id, string_agg(DISTINCT stage, ',' ORDER BY stage) AS stages
              FROM (SELECT customer_id, from_stage AS stage FROM stage_changes
                    UNION ALL SELECT customer_id, to_stage FROM stage_changes) AS moves
              GROUP BY customer_id) AS history
        WHERE history.customer_id = customers.id""",
    "sqlite": """
        UPDATE customers SET stages_reached = coalesce((
            SELECT group_concat(stage, ',') FROM (
                SELECT from_stage AS stage FROM stage_changes WHERE customer_id = customers.id
                UNION SELECT to_stage FROM stage_changes WHERE customer_id = customers.id
                ORDER BY stage)), '')""",
}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('stages_reached', sa.Text(), server_default='', nullable=False))
        batch_op.create_index('ix_customers_live_stage_seen', ['stage', 'last_seen_at', 'id'], unique=False,
                              postgresql_where=LIVE, sqlite_where=LIVE)
    op.execute(BACKFILL[dialect])
    with op.batch_alter_table('customer_tags', schema=None) as batch_op:
        batch_op.drop_index('ix_customer_tags_tag_id')
        batch_op.create_index('ix_customer_tags_tag_customer', ['tag_id', 'customer_id'], unique=False)
    if dialect == "postgresql":
        _drop_nul_characters()
        op.alter_column('timeline_events', 'data', type_=postgresql.JSONB(), postgresql_using='data::jsonb')


def _drop_nul_characters() -> None:
    """JSONB cannot hold U+0000, which json kept (a customer can type it): those rows lose it first,
    or the conversion fails. The search also finds a typed backslash-u0000, which decoding leaves alone."""
    connection = op.get_bind()
    rows = connection.execute(sa.text(
        r"SELECT id, data::text FROM timeline_events WHERE strpos(data::text, '\u0000') > 0")).all()
    for event_id, raw in rows:
        connection.execute(sa.text("UPDATE timeline_events SET data = CAST(:data AS json) WHERE id = :id"),
                           {"id": event_id, "data": json.dumps(_without_nul(json.loads(raw)), ensure_ascii=False)})


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column('timeline_events', 'data', type_=sa.JSON(), postgresql_using='data::json')
    with op.batch_alter_table('customer_tags', schema=None) as batch_op:
        batch_op.drop_index('ix_customer_tags_tag_customer')
        batch_op.create_index('ix_customer_tags_tag_id', ['tag_id'], unique=False)
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_index('ix_customers_live_stage_seen', postgresql_where=LIVE, sqlite_where=LIVE)
        batch_op.drop_column('stages_reached')
