"""outbox lanes: replies, then transactional, then marketing, each oldest first; a status index of failed rows

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 16:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

PENDING = sa.text("status = 'pending'")
FAILED = sa.text("status = 'failed'")


def upgrade() -> None:
    # A constant default: PostgreSQL adds the column without rewriting the table, SQLite in place.
    op.add_column('outbox', sa.Column('lane', sa.SmallInteger(), server_default=sa.text('1'), nullable=False))
    # Rows written before lanes: sequence steps and pushes (keyed "nurture:<send id>") are marketing,
    # everything else transactional (a reply still pending at the upgrade is sent in its queue's turn).
    op.execute("UPDATE outbox SET lane = 2 WHERE dedup_key LIKE 'nurture:%'")
    op.drop_index('ix_outbox_pending', table_name='outbox', postgresql_where=PENDING, sqlite_where=PENDING)
    op.create_index('ix_outbox_pending_lane', 'outbox', ['lane', 'id'], unique=False,
                    postgresql_where=PENDING, sqlite_where=PENDING)
    # Failed rows only: an index over every status is the plan PostgreSQL picks for the claim when its
    # statistics predate a push (pending rows look rare), and then it sorts the whole backlog each claim.
    op.drop_index('ix_outbox_status', table_name='outbox')
    op.create_index('ix_outbox_status', 'outbox', ['status'], unique=False,
                    postgresql_where=FAILED, sqlite_where=FAILED)


def downgrade() -> None:
    op.drop_index('ix_outbox_status', table_name='outbox', postgresql_where=FAILED, sqlite_where=FAILED)
    op.create_index('ix_outbox_status', 'outbox', ['status'], unique=False)
    op.drop_index('ix_outbox_pending_lane', table_name='outbox', postgresql_where=PENDING, sqlite_where=PENDING)
    op.create_index('ix_outbox_pending', 'outbox', ['id'], unique=False,
                    postgresql_where=PENDING, sqlite_where=PENDING)
    with op.batch_alter_table('outbox') as batch_op:
        batch_op.drop_column('lane')
