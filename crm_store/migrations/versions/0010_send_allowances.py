"""the quota ledger: each customer's allowance per channel, and messages held for the next one

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 14:10:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'send_allowances',
        sa.Column('customer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('channel', sa.String(length=8), nullable=False),
        sa.Column('ledger', sa.JSON(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['customer_id'], ['customers.id']),
        sa.PrimaryKeyConstraint('customer_id', 'channel'),
    )
    op.create_table(
        'held_messages',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('customer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('dedup_key', sa.String(length=200), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('about', sa.String(length=64), nullable=False),
        sa.Column('held_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['customer_id'], ['customers.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('dedup_key'),
    )
    op.create_index('ix_held_messages_customer', 'held_messages', ['customer_id', 'id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_held_messages_customer', table_name='held_messages')
    op.drop_table('held_messages')
    op.drop_table('send_allowances')
