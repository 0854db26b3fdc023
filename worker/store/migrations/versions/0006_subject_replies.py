"""subject_reply on messages: replies known by their subject alone, and a partial index of them

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 11:40:00
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0006'
down_revision: Union[str, None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # Plain ALTER TABLE and CREATE INDEX, which SQLite has: a batch operation would copy the
    # message table, and dropping the old copy fails on the foreign keys that point to it.
    op.add_column('message', sa.Column('subject_reply', sa.Boolean(), nullable=False, server_default=sa.false()))

    from worker.store.threads import mark_subject_replies

    # Existing stores: flag them, and join those stored before the message they answer.
    mark_subject_replies(op.get_bind())
    op.create_index('ix_message_subject_reply', 'message', ['norm_subject', 'client_id', 'sent_at'], unique=False,
                    sqlite_where=sa.text('subject_reply'), postgresql_where=sa.text('subject_reply'))


def downgrade() -> None:
    op.drop_index('ix_message_subject_reply', table_name='message')
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.drop_column('subject_reply')
