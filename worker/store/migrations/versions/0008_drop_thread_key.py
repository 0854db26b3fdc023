"""drop message.thread_key: a first guess at the thread, written at every insert, read by nothing

Threads have come from thread_link (References, In-Reply-To and subjects) since 0003.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 17:00:00
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision: str = '0008'
down_revision: Union[str, None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # ALTER TABLE ... DROP COLUMN, which SQLite has since 3.35 (no index uses the column since
    # 0005): a batch operation would copy the message table.
    op.drop_column('message', 'thread_key')


def downgrade() -> None:
    op.add_column('message', sa.Column('thread_key', sqlmodel.sql.sqltypes.AutoString(length=1000),
                                       nullable=False, server_default=''))
