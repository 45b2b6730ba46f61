"""Energy budgets (issue 13): the ``budget`` table.

A budget limits the facility energy (``limit_uj``) or CO2e (``limit_mg``) of a user's, an
account's or a user-in-account's jobs per UTC day, ISO week, month or fixed range
(``collector/budget_usage.py``). Nothing is backfilled: usage is computed from
``job_energy_hour`` when asked.

Revision ID: 0016_budgets
Revises: 0015_node_energy_hour
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016_budgets"
down_revision: str | None = "0015_node_energy_hour"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT_MAX = 2**63 - 1
# The model's values, written out: a migration must not change when the model later does.
_CHECKS = {
    "scope": "scope IN ('user', 'account', 'account_user')",
    "period": "period IN ('day', 'week', 'month', 'range')",
    "unit": "unit IN ('kwh', 'kg_co2e')",
    "submit_policy": "submit_policy IN ('warn', 'deny')",
    "running_policy": "running_policy IN ('none', 'warn', 'cancel')",
    "limit_of_unit": (
        f"(unit = 'kwh' AND limit_uj > 0 AND limit_uj <= {BIGINT_MAX} AND limit_mg IS NULL)"
        f" OR (unit = 'kg_co2e' AND limit_mg > 0 AND limit_mg <= {BIGINT_MAX}"
        " AND limit_uj IS NULL)"),
    "range_bounds": (
        "(period = 'range' AND start_at IS NOT NULL AND end_at IS NOT NULL"
        " AND start_at < end_at) OR (period <> 'range' AND start_at IS NULL"
        " AND end_at IS NULL)"),
}


def upgrade() -> None:
    """Create ``budget`` and the unique index of recurring budgets."""
    op.create_table(
        "budget",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  sa.Identity(always=False), nullable=False),
        sa.Column("cluster", sa.String(length=255), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("user", sa.String(length=64), nullable=False),
        sa.Column("period", sa.String(length=8), nullable=False),
        sa.Column("start_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("unit", sa.String(length=8), nullable=False),
        sa.Column("limit_uj", sa.BigInteger(), nullable=True),
        sa.Column("limit_mg", sa.BigInteger(), nullable=True),
        sa.Column("submit_policy", sa.String(length=8), nullable=False),
        sa.Column("running_policy", sa.String(length=8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=255), nullable=False),
        *(sa.CheckConstraint(sql, name=op.f(f"ck_budget_{name}")) for name, sql in _CHECKS.items()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budget")),
    )
    op.create_index("ix_budget_recurring", "budget",
                    ["cluster", "scope", "account", "user", "period", "unit"], unique=True,
                    sqlite_where=sa.text("period <> 'range'"),
                    postgresql_where=sa.text("period <> 'range'"))


def downgrade() -> None:
    """Drop the table."""
    op.drop_index("ix_budget_recurring", table_name="budget")
    op.drop_table("budget")
