"""customer groups (客户群): groups, members, joins and leaves, group live codes, full syncs, group pushes

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 17:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'group_join_codes',
        sa.Column('id', BIG_ID, nullable=False),
        sa.Column('code', sa.String(length=30), nullable=False),
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('config_id', sa.String(length=64), nullable=False),
        sa.Column('qr_code', sa.String(length=512), nullable=False),
        sa.Column('chat_ids', sa.JSON(), nullable=False),
        sa.Column('auto_create_room', sa.Boolean(), nullable=False),
        sa.Column('room_base_name', sa.String(length=40), nullable=False),
        sa.Column('room_base_id', sa.Integer(), nullable=False),
        sa.Column('welcome', sa.JSON(), nullable=False),
        sa.Column('welcome_template_id', sa.String(length=64), nullable=False),
        sa.Column('tags', sa.JSON(), nullable=False),
        sa.Column('parent_id', BIG_ID, nullable=True),
        sa.Column('inviter_id', BIG_ID, nullable=True),
        sa.Column('fission', sa.Boolean(), nullable=False),
        sa.Column('active', sa.Boolean(), nullable=False),
        sa.Column('created_at', WHEN, nullable=False),
        sa.ForeignKeyConstraint(['parent_id'], ['group_join_codes.id']),
        sa.ForeignKeyConstraint(['inviter_id'], ['customers.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('code'),
    )
    op.create_index('uq_group_join_codes_inviter', 'group_join_codes', ['parent_id', 'inviter_id'], unique=True,
                    postgresql_where=sa.text('inviter_id IS NOT NULL'), sqlite_where=sa.text('inviter_id IS NOT NULL'))
    op.create_table(
        'group_chats',
        sa.Column('id', BIG_ID, nullable=False),
        sa.Column('chat_id', sa.String(length=64), nullable=False),
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('owner_userid', sa.String(length=64), nullable=False),
        sa.Column('notice', sa.Text(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('members', sa.Integer(), nullable=False),
        sa.Column('code_id', BIG_ID, nullable=True),
        sa.Column('member_version', sa.String(length=64), nullable=False),
        sa.Column('platform_created_at', WHEN, nullable=True),
        sa.Column('synced_at', WHEN, nullable=True),
        sa.Column('created_at', WHEN, nullable=False),
        sa.Column('updated_at', WHEN, nullable=False),
        sa.CheckConstraint("status IN ('active', 'dismissed')", name='ck_group_chats_status'),
        sa.ForeignKeyConstraint(['code_id'], ['group_join_codes.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('chat_id'),
    )
    op.create_index('ix_group_chats_owner_userid', 'group_chats', ['owner_userid'], unique=False)
    op.create_table(
        'group_chat_tags',
        sa.Column('group_id', BIG_ID, nullable=False),
        sa.Column('tag', sa.String(length=64), nullable=False),
        sa.Column('created_at', WHEN, nullable=False),
        sa.ForeignKeyConstraint(['group_id'], ['group_chats.id']),
        sa.PrimaryKeyConstraint('group_id', 'tag'),
    )
    op.create_index('ix_group_chat_tags_tag', 'group_chat_tags', ['tag'], unique=False)
    op.create_table(
        'group_chat_members',
        sa.Column('group_id', BIG_ID, nullable=False),
        sa.Column('userid', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=8), nullable=False),
        sa.Column('customer_id', BIG_ID, nullable=True),
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('joined_at', WHEN, nullable=True),
        sa.Column('join_scene', sa.Integer(), nullable=False),
        sa.Column('invitor_userid', sa.String(length=64), nullable=False),
        sa.Column('state', sa.String(length=32), nullable=False),
        sa.Column('code_id', BIG_ID, nullable=True),
        sa.Column('inviter_id', BIG_ID, nullable=True),
        sa.Column('left_at', WHEN, nullable=True),
        sa.Column('quit_scene', sa.Integer(), nullable=True),
        sa.CheckConstraint("kind IN ('customer', 'rep')", name='ck_group_chat_members_kind'),
        sa.ForeignKeyConstraint(['group_id'], ['group_chats.id']),
        sa.ForeignKeyConstraint(['customer_id'], ['customers.id']),
        sa.ForeignKeyConstraint(['code_id'], ['group_join_codes.id']),
        sa.ForeignKeyConstraint(['inviter_id'], ['customers.id']),
        sa.PrimaryKeyConstraint('group_id', 'userid'),
    )
    op.create_index('ix_group_chat_members_customer', 'group_chat_members', ['customer_id'], unique=False)
    op.create_table(
        'group_chat_changes',
        sa.Column('id', BIG_ID, nullable=False),
        sa.Column('group_id', BIG_ID, nullable=False),
        sa.Column('userid', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=8), nullable=False),
        sa.Column('customer_id', BIG_ID, nullable=True),
        sa.Column('change', sa.String(length=8), nullable=False),
        sa.Column('scene', sa.Integer(), nullable=False),
        sa.Column('code_id', BIG_ID, nullable=True),
        sa.Column('inviter_id', BIG_ID, nullable=True),
        sa.Column('at', WHEN, nullable=False),
        sa.CheckConstraint("change IN ('join', 'leave')", name='ck_group_chat_changes_change'),
        sa.ForeignKeyConstraint(['group_id'], ['group_chats.id']),
        sa.ForeignKeyConstraint(['customer_id'], ['customers.id']),
        sa.ForeignKeyConstraint(['code_id'], ['group_join_codes.id']),
        sa.ForeignKeyConstraint(['inviter_id'], ['customers.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('uq_group_chat_changes', 'group_chat_changes', ['group_id', 'userid', 'change', 'at'], unique=True)
    op.create_index('ix_group_chat_changes_at', 'group_chat_changes', ['at'], unique=False)
    op.create_index('ix_group_chat_changes_code', 'group_chat_changes', ['code_id', 'at'], unique=False)
    op.create_table(
        'group_chat_syncs',
        sa.Column('id', BIG_ID, nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('cursor', sa.Text(), nullable=False),
        sa.Column('groups', sa.Integer(), nullable=False),
        sa.Column('calls', sa.Integer(), nullable=False),
        sa.Column('error', sa.Text(), nullable=False),
        sa.Column('started_at', WHEN, nullable=False),
        sa.Column('finished_at', WHEN, nullable=True),
        sa.Column('claimed_by', sa.String(length=128), nullable=True),
        sa.Column('heartbeat_at', WHEN, nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('uq_group_chat_syncs_running', 'group_chat_syncs', ['status'], unique=True,
                    postgresql_where=sa.text("status = 'running'"), sqlite_where=sa.text("status = 'running'"))
    op.create_table(
        'group_pushes',
        sa.Column('id', BIG_ID, nullable=False),
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('segment', sa.JSON(), nullable=False),
        sa.Column('message', sa.JSON(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('scheduled_at', WHEN, nullable=False),
        sa.Column('source_key', sa.String(length=128), nullable=True),
        sa.Column('audience', sa.Integer(), nullable=False),
        sa.Column('created_by', sa.String(length=64), nullable=False),
        sa.Column('created_at', WHEN, nullable=False),
        sa.Column('results_at', WHEN, nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('source_key'),
    )
    op.create_index('ix_group_pushes_due', 'group_pushes', ['scheduled_at'], unique=False,
                    postgresql_where=sa.text("status IN ('scheduled', 'sending')"),
                    sqlite_where=sa.text("status IN ('scheduled', 'sending')"))
    op.create_table(
        'group_push_targets',
        sa.Column('push_id', BIG_ID, nullable=False),
        sa.Column('group_id', BIG_ID, nullable=False),
        sa.Column('owner_userid', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('msgid', sa.String(length=64), nullable=False),
        sa.Column('reason', sa.String(length=200), nullable=False),
        sa.Column('reminders', sa.Integer(), nullable=False),
        sa.Column('reminded_at', WHEN, nullable=True),
        sa.Column('sent_at', WHEN, nullable=True),
        sa.Column('claimed_at', WHEN, nullable=True),
        sa.ForeignKeyConstraint(['push_id'], ['group_pushes.id']),
        sa.ForeignKeyConstraint(['group_id'], ['group_chats.id']),
        sa.PrimaryKeyConstraint('push_id', 'group_id'),
    )
    op.create_index('ix_group_push_targets_task', 'group_push_targets', ['msgid'], unique=False)
    op.create_index('ix_group_push_targets_group', 'group_push_targets', ['group_id', 'claimed_at'], unique=False)


def downgrade() -> None:
    for table in ('group_push_targets', 'group_pushes', 'group_chat_syncs', 'group_chat_changes',
                  'group_chat_members', 'group_chat_tags', 'group_chats', 'group_join_codes'):
        op.drop_table(table)
