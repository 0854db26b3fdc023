"""ack_reason on messages: why a message was or was not taken for an acknowledgement

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 05:00:00
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0007'
down_revision: Union[str, None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # A plain ALTER TABLE, which SQLite has: a batch operation would copy the message table.
    op.add_column('message', sa.Column('ack_reason', sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.drop_column('ack_reason')
