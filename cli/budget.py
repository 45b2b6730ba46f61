"""``jobenergy budget ...``: energy budgets, through the admin API, and the submit state file.

    jobenergy budget set --cluster C --user alice --period month --limit 500kWh [--policy warn]
    jobenergy budget set --cluster C --account physics --period week --limit 40kgCO2e
    jobenergy budget set --cluster C --account physics --user bob --period range \\
        --start 2027-01-01 --end 2027-04-01 --limit 2MWh --running cancel
    jobenergy budget list [--cluster C] [--json]
    jobenergy budget delete ID
    jobenergy budget write-state --out /var/lib/jobenergy/budget.state [--cluster C]

The scope follows from the names given: ``--user`` alone, ``--account`` alone, or both (that
user's jobs in that account). Limits are facility energy (Wh, kWh, MWh, GWh) or CO2e (g, kg,
t); periods are UTC (``core/budgets.py``). ``--policy`` is what the submit script does over
budget (``deny``, the default, or ``warn``); ``--running`` what the agents do to its running
jobs (``none``; ``warn``: the warning signal at 90 % and 100 %; ``cancel``: the signal at
90 %, cancelled at 100 %; ``collector/budget_running.py``). ``--url`` defaults to
``$JOBENERGY_URL``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from pydantic import ValidationError

from jobenergy.cli.api_client import api_client, error_detail
from jobenergy.core.budget_state import StateEntry, is_token, write_state
from jobenergy.core.budget_wire import StateOut
from jobenergy.core.budgets import BudgetError, check_range, parse_limit
from jobenergy.core.errors import JobEnergyError

budget_app = typer.Typer(no_args_is_help=True, help="Energy budgets and the submit state file.")

PROGRAM = "jobenergy budget"
UrlOpt = Annotated[
    str | None, typer.Option("--url", envvar="JOBENERGY_URL", help="jobenergy API")
]
PERIODS = ("day", "week", "month", "range")


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"{PROGRAM}: {message}", err=True)
    return typer.Exit(code)


def _call(url: str | None, method: str, path: str, **kwargs: Any) -> Any:
    """Call the API; print the problem in one line and exit 1 on failure."""
    if not url:
        raise _fail("no API URL: pass --url or set JOBENERGY_URL")
    try:
        with api_client(url, timeout_s=60, program=PROGRAM) as http:
            resp = http.request(method, path, **kwargs)
    except httpx.HTTPError as err:
        raise _fail(f"cannot reach {url}: {err}", 1) from err
    except JobEnergyError as err:  # munged refused to make a credential
        raise _fail(str(err), 1) from err
    if not resp.is_success:
        raise _fail(f"{resp.status_code}: {error_detail(resp, 1000)}", 1)
    try:
        return resp.json()
    except ValueError as err:
        raise _fail(f"{url} answered something other than JSON", 1) from err


def _time(value: str | None, option: str) -> datetime | None:
    """Parse ``2027-01-01`` or ``2027-01-01T06:00[+hh:mm]``; no zone means UTC."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as err:
        raise _fail(f"{option} {value[:40]!r}: use YYYY-MM-DD or YYYY-MM-DDTHH:00 (UTC)") \
            from err
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


@budget_app.command("set")
def set_budget(
    cluster: Annotated[str, typer.Option(help="Slurm cluster")],
    period: Annotated[str, typer.Option(help="day, week, month (UTC) or range")],
    limit: Annotated[str, typer.Option(help="e.g. 500kWh, 2.5MWh, 40kgCO2e, 1t")],
    user: Annotated[str | None, typer.Option(help="The user's jobs")] = None,
    account: Annotated[str | None, typer.Option(help="The account's jobs")] = None,
    start: Annotated[str | None, typer.Option(help="Range start, a whole UTC hour")] = None,
    end: Annotated[str | None, typer.Option(help="Range end (excluded)")] = None,
    policy: Annotated[str, typer.Option(help="At submission over budget: deny or warn")] = (
        "deny"),
    running: Annotated[str, typer.Option(help="Running jobs over budget: none, warn or "
                                         "cancel (enforced by the agent)")] = "none",
    budget_id: Annotated[int | None, typer.Option("--id", help="Update this budget")] = None,
    url: UrlOpt = None,
) -> None:
    """Create a budget, or update the one with the same key (or ``--id``)."""
    if user is None and account is None:
        raise _fail("give --user, --account, or both")
    for option, name in (("--user", user), ("--account", account)):
        if name is not None and not is_token(name):
            raise _fail(f"{option} {name[:40]!r}: not a Slurm name (printable, no spaces)")
    if period not in PERIODS:
        raise _fail(f"--period {period[:16]!r}: use {', '.join(PERIODS)}")
    if policy not in ("deny", "warn"):
        raise _fail(f"--policy {policy[:16]!r}: use deny or warn")
    if running not in ("none", "warn", "cancel"):
        raise _fail(f"--running {running[:16]!r}: use none, warn or cancel")
    start_at, end_at = _time(start, "--start"), _time(end, "--end")
    try:
        parse_limit(limit)
        if period == "range":
            if start_at is None or end_at is None:
                raise BudgetError("--period range needs --start and --end")
            check_range(start_at, end_at)
        elif start_at is not None or end_at is not None:
            raise BudgetError("--start and --end go with --period range only")
    except BudgetError as err:
        raise _fail(str(err)) from err
    scope = "account_user" if user and account else ("user" if user else "account")
    body: dict[str, Any] = {
        "cluster": cluster, "scope": scope, "user": user, "account": account,
        "period": period, "limit": limit, "submit_policy": policy, "running_policy": running,
        "start": start_at.isoformat() if start_at else None,
        "end": end_at.isoformat() if end_at else None,
    }
    if budget_id is not None:
        body["id"] = budget_id
    answer = _call(url, "PUT", "/api/v1/budgets", json=body)
    budget = answer["budget"]
    typer.echo(f"budget {budget['id']} {'created' if answer['created'] else 'updated'}: "
               f"{_who(budget)} {budget['limit']:g} {budget['unit']} per {budget['period']}, "
               f"{budget['submit_policy']} at submission")


def _who(budget: dict[str, Any]) -> str:
    parts = [f"account {budget['account']}" if budget.get("account") else "",
             f"user {budget['user']}" if budget.get("user") else ""]
    return f"{budget['cluster']}: " + " ".join(p for p in parts if p)


def budget_rows(budgets: list[dict[str, Any]]) -> list[list[str]]:
    """Return the table of budgets ``list`` and ``senergy budget`` print (with a header)."""
    rows = [["ID", "Cluster", "Account", "User", "Period", "Used", "Limit", "Remaining",
             "Unit", "Used%", "Projected", "ResetsAt(UTC)", "Policy"]]
    for b in budgets:
        projected = "-" if b.get("projection") is None else f"{b['projection']:.3f}"
        resets = (b.get("resets_at") or b.get("period_end") or "-").replace("T", " ")[:16]
        rows.append([str(b["id"]), b["cluster"], b.get("account") or "-", b.get("user") or "-",
                     b["period"], f"{b['used']:.3f}", f"{b['limit']:.3f}",
                     f"{b['remaining']:.3f}", b["unit"], f"{b['percent']:.1f}", projected,
                     resets, b["submit_policy"]])
    return rows


def table(rows: list[list[str]]) -> str:
    """Return rows as left-aligned columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)
                               ).rstrip() for row in rows)


@budget_app.command("list")
def list_budgets(
    cluster: Annotated[str | None, typer.Option(help="Only this cluster's")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="As the API returns them")] = False,
    url: UrlOpt = None,
) -> None:
    """List the budgets with their use in the current period ("Projected": at the current
    rate, used so far / elapsed × period length)."""
    budgets = _call(url, "GET", "/api/v1/budgets", params={"cluster": cluster} if cluster
                    else {})
    if as_json:
        typer.echo(json.dumps(budgets, indent=2))
    elif not budgets:
        typer.echo("no budgets")
    else:
        typer.echo(table(budget_rows(budgets)))


@budget_app.command("delete")
def delete(budget_id: Annotated[int, typer.Argument(help="The budget's ID (list shows it)")],
           url: UrlOpt = None) -> None:
    """Delete a budget."""
    budget = _call(url, "DELETE", f"/api/v1/budgets/{budget_id}")
    typer.echo(f"budget {budget['id']} deleted: {_who(budget)}")


@budget_app.command("write-state")
def write_state_file(
    out: Annotated[Path, typer.Option("--out", help="The state file job_submit.lua reads")],
    cluster: Annotated[str | None, typer.Option(
        envvar="JOBENERGY_CLUSTER", help="Only this cluster's budgets (the controller's)")] = None,
    url: UrlOpt = None,
) -> None:
    """Write the budget state file for slurmctld's job_submit.lua (atomically, 0644).

    Run on the controller by jobenergy-budget-state.timer. Each name is checked again here:
    a budget naming something that is not one printable token is left out (and said).
    """
    answer = _call(url, "GET", "/api/v1/budgets/state",
                   params={"cluster": cluster} if cluster else {})
    try:
        state = StateOut.model_validate(answer)
        entries = [StateEntry(**b.model_dump()) for b in state.budgets]
    except (ValidationError, TypeError) as err:
        raise _fail(f"unexpected budget state from {url}: {str(err).splitlines()[0]}", 1) \
            from err
    try:
        problems = write_state(out, entries, state.generated)
    except JobEnergyError as err:
        raise _fail(str(err), 1) from err
    for problem in problems:
        typer.echo(f"{PROGRAM}: {problem}", err=True)
    typer.echo(f"wrote {out}: {len(entries)} budgets under way")
