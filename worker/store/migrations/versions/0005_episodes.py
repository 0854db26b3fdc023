"""answered episodes, active days on message_contact, covering index, unused indexes dropped

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 01:10:00
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision: str = '0005'
down_revision: Union[str, None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('episode',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('scope', sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
    sa.Column('thread_id', sa.BigInteger(), nullable=False),
    sa.Column('first_pk', sa.Integer(), nullable=False),
    sa.Column('client_id', sa.Integer(), nullable=False),
    sa.Column('contact_id', sa.Integer(), nullable=False),
    sa.Column('started_ts', sa.Float(), nullable=False),
    sa.Column('reply_ts', sa.Float(), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('episode', schema=None) as batch_op:
        batch_op.create_index('ix_episode_scope_reply',
                              ['scope', 'reply_ts', 'started_ts', 'client_id', 'contact_id', 'size'], unique=False)
        batch_op.create_index(batch_op.f('ix_episode_thread_id'), ['thread_id'], unique=False)

    with op.batch_alter_table('message_contact', schema=None) as batch_op:
        batch_op.add_column(sa.Column('day', sa.Integer(), nullable=False, server_default='0'))
        batch_op.drop_index('ix_message_contact_contact')
        batch_op.drop_index('ix_message_contact_message_pk')

    # No query reads these any more; each cost every insert an index update.
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.drop_index('ix_message_thread_key')
        batch_op.drop_index('ix_message_from_addr')
        batch_op.drop_index('ix_message_sent_at')
        batch_op.drop_index('ix_message_direction_sent')

    bind = op.get_bind()
    if bind.dialect.name == 'sqlite':
        op.execute("UPDATE message_contact SET day = CAST(strftime('%s', sent_at) AS INTEGER) / 86400")
    else:
        op.execute("UPDATE message_contact SET day = FLOOR(EXTRACT(EPOCH FROM sent_at) / 86400)::int")
    with op.batch_alter_table('message_contact', schema=None) as batch_op:
        batch_op.create_index('ix_message_contact_covering',
                              ['contact_id', 'inbound', 'automated', 'sent_at', 'day'], unique=False)

    from worker.store.threads import episodes_sql

    op.execute(episodes_sql(bind.dialect.name, False))  # existing stores: every answered episode


def downgrade() -> None:
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.create_index('ix_message_direction_sent', ['direction', 'sent_at'], unique=False)
        batch_op.create_index('ix_message_sent_at', ['sent_at'], unique=False)
        batch_op.create_index('ix_message_from_addr', ['from_addr'], unique=False)
        batch_op.create_index('ix_message_thread_key', ['thread_key'], unique=False)

    with op.batch_alter_table('message_contact', schema=None) as batch_op:
        batch_op.drop_index('ix_message_contact_covering')
        batch_op.create_index('ix_message_contact_message_pk', ['message_pk'], unique=False)
        batch_op.create_index('ix_message_contact_contact', ['contact_id', 'inbound', 'sent_at'], unique=False)
        batch_op.drop_column('day')

    with op.batch_alter_table('episode', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_episode_thread_id'))
        batch_op.drop_index('ix_episode_scope_reply')

    op.drop_table('episode')
