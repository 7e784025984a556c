"""${message}"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}
# Revision ids are numbered names (0003_what_it_adds), given with --rev-id: they sort, and say what they are.
revision: str = ${repr(up_revision)}
down_revision: str | None = ${repr(down_revision)}
branch_labels: str | None = ${repr(branch_labels)}
depends_on: str | None = ${repr(depends_on)}


def upgrade() -> None:
    """Bring the store from the previous revision to this one."""
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    """Take the store back to the previous revision."""
    ${downgrades if downgrades else "pass"}
