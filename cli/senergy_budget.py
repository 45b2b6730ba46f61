"""``senergy budget``: the caller's energy budgets, used, remaining and projected.

    senergy budget [-M CLUSTER] [--json] [--url URL]

Shows the budgets that apply to you (your own, and your accounts'), each over its current
period in UTC. "Projected" is an estimate at the current rate (used so far / elapsed time ×
period length), not a forecast.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from jobenergy.cli.budget import budget_rows, table
from jobenergy.cli.senergy import get_json

UrlOpt = Annotated[
    str | None, typer.Option("--url", envvar="JOBENERGY_URL", help="jobenergy API")
]


def budget(
    cluster: Annotated[str | None, typer.Option("--clusters", "-M", help="Cluster")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="As the API returns them")] = False,
    url: UrlOpt = None,
) -> None:
    """Your budgets: used, limit, remaining, projected at the current rate, reset time."""
    budgets = get_json(url, "/api/v1/budgets", {"cluster": cluster} if cluster else {})
    assert isinstance(budgets, list)
    if as_json:
        typer.echo(json.dumps(budgets, indent=2))
        return
    if not budgets:
        typer.echo("no budget applies to you")
        return
    typer.echo(table(budget_rows(budgets)))
    for b in budgets:
        if b["over"]:
            verb = "refused" if b["submit_policy"] == "deny" else "accepted with a warning"
            typer.echo(f"senergy: budget {b['id']} is used up: new jobs it covers are {verb} "
                       f"until {(b['resets_at'] or b['period_end'])[:16].replace('T', ' ')} "
                       "UTC", err=True)
    typer.echo("Projected: at the current rate (used so far / elapsed time × period length)",
               err=True)
