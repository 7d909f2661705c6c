"""timeline events carry their transaction's id: the webhook feed skips no late commit

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23 19:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing events get 0 (PostgreSQL stores that default without rewriting the table); they
    # come first, in id order, after the feed's cursor, as they did before.
    with op.batch_alter_table('timeline_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('xact', sa.BigInteger(), server_default='0', nullable=False))
    with op.batch_alter_table('webhook_cursors', schema=None) as batch_op:
        batch_op.add_column(sa.Column('last_xact', sa.BigInteger(), server_default='0', nullable=False))
    if op.get_bind().dialect.name == "postgresql":  # new events: the transaction writing them (PostgreSQL 13+)
        op.alter_column('timeline_events', 'xact', server_default=sa.text("(pg_current_xact_id()::text::bigint)"))
    op.create_index('ix_timeline_events_xact_id', 'timeline_events', ['xact', 'id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_timeline_events_xact_id', table_name='timeline_events')
    with op.batch_alter_table('webhook_cursors', schema=None) as batch_op:
        batch_op.drop_column('last_xact')
    with op.batch_alter_table('timeline_events', schema=None) as batch_op:
        batch_op.drop_column('xact')
