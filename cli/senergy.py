"""``senergy``: sacct-style energy reports for users.

    senergy -j 1234,1235_4,1240+1,1250.batch -o JobID,User,TotalkWh,CO2eKg -P
    senergy -u alice,bob -s CD,F -S 2026-11-01 -E 2026-11-30 -X --json
    senergy -a -M all -N n[1-8] --name train,eval -o JobID,AllocTRES,ConsumedEnergy --units K
    senergy leaderboard --phase inference --metric j_per_sample --order asc
    senergy summary --group-by account -S 2026-11-01
    senergy budget

Talks to the jobenergy API at ``--url`` (default ``$JOBENERGY_URL``).
"""

from __future__ import annotations

import json
import os
import pwd
import sys
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer

from jobenergy.cli.api_client import api_client, error_detail
from jobenergy.cli.client_config import client_config, config_path
from jobenergy.cli.report import DEFAULT_FIELDS, UNITS, footnotes, parse_fields, render
from jobenergy.cli.report import helpformat as format_help
from jobenergy.cli.senergy_rows import job_order, rows, selects
from jobenergy.core.errors import JobEnergyError
from jobenergy.core.slurm_jobids import BadJobId, JobSelector, parse_job_selectors
from jobenergy.core.slurm_states import UnknownState, parse_states
from jobenergy.core.slurm_time import SlurmTimeError, parse_slurm_time
from jobenergy.core.version import VERSION

app = typer.Typer(add_completion=False, help=__doc__, no_args_is_help=False)


def _time_arg(value: str | None) -> str | None:
    """Return a ``-S``/``-E`` argument in sacct's forms (``core/slurm_time.py``) as ISO 8601.

    Raises:
        typer.BadParameter: Not one of Slurm's forms (the message names them).
    """
    if value is None:
        return None
    try:
        return parse_slurm_time(value).isoformat()
    except SlurmTimeError as err:
        raise typer.BadParameter(str(err)) from err


def _me() -> str:
    """Return the caller's user name (from the uid: $USER is unset under cron/systemd)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER", "")


def _fail(message: str) -> typer.Exit:
    """Print one line to stderr; return the exit (2: bad arguments) to raise."""
    typer.echo(f"senergy: {message}", err=True)
    return typer.Exit(2)


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


@app.command()
def report(
    jobs: Annotated[str | None, typer.Option(
        "--jobs", "-j", help="job[.step] list: 1234, 1234_5 (array task), 1234+1 (het "
        "component), 1234.batch; 1234 also every task / component of 1234")] = None,
    cluster: Annotated[str | None, typer.Option(
        "--clusters", "-M", envvar="JOBENERGY_CLUSTER",
        help="Clusters, comma separated, or 'all' (default $JOBENERGY_CLUSTER or the "
        "configured one; none: every cluster)")] = None,
    allclusters: Annotated[
        bool, typer.Option("--allclusters", "-L", help="Jobs of every cluster")] = False,
    user: Annotated[str | None, typer.Option(
        "--user", "--uid", "-u", help="Users (names or uids), comma separated")] = None,
    account: Annotated[str | None, typer.Option(
        "--accounts", "--account", "-A", help="Accounts, comma separated")] = None,
    partition: Annotated[str | None, typer.Option(
        "--partition", "-r", help="Partitions, comma separated")] = None,
    state: Annotated[str | None, typer.Option(
        "--state", "-s", help="States, comma separated: CD, F, CA, TO, R, PD, OOM, NF, ... or "
        "their names, as sacct -s")] = None,
    name: Annotated[str | None, typer.Option(
        "--name", help="Job names, comma separated")] = None,
    nodelist: Annotated[str | None, typer.Option(
        "--nodelist", "-N", help="Jobs that ran on any of these nodes (n[1-4],gpu7)")] = None,
    start: Annotated[str | None, typer.Option("--starttime", "-S")] = None,
    end: Annotated[str | None, typer.Option("--endtime", "-E")] = None,
    allusers: Annotated[bool, typer.Option("--allusers", "-a", help="All users' jobs")] = False,
    allocations: Annotated[bool, typer.Option(
        "--allocations", "-X", help="Only the jobs' rows, no step rows")] = False,
    fields: Annotated[
        str, typer.Option("--format", "-o", envvar="SENERGY_FORMAT",
                          help="Fields, e.g. JobID,JobName%-20,TotalkWh (or $SENERGY_FORMAT)")
    ] = DEFAULT_FIELDS,
    units: Annotated[str | None, typer.Option(
        "--units", help="ConsumedEnergy in this unit: K, M, G, T or P")] = None,
    noconvert: Annotated[bool, typer.Option(
        "--noconvert", help="ConsumedEnergy in joules, no unit")] = False,
    parsable2: Annotated[bool, typer.Option("--parsable2", "-P", help="'|' delimited")] = False,
    parsable: Annotated[
        bool, typer.Option("--parsable", "-p", help="'|' delimited, trailing '|'")
    ] = False,
    delimiter: Annotated[
        str, typer.Option("--delimiter", help="Separator of -p/-P output")
    ] = "|",
    helpformat: Annotated[
        bool, typer.Option("--helpformat", "-e", help="List the fields and exit")
    ] = False,
    show_version: Annotated[
        bool, typer.Option("--version", "-V", help="Print the version and exit")
    ] = False,
    noheader: Annotated[bool, typer.Option("--noheader", "-n")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Job JSON as the API returns it")] = False,
    url: Annotated[
        str | None, typer.Option("--url", envvar="JOBENERGY_URL", help="jobenergy API")
    ] = None,
) -> None:
    """Show the energy of jobs, like ``sacct``: a row per job, then a row per step.

    Energy still arriving (job running, or a node not yet reported past its end) is marked
    ``*`` in the table (``Final`` field: yes/no); a job no energy counter covered reads
    ``unmeasured``. Both are explained on stderr.

    Also: ``senergy leaderboard --help`` (energy per model and phase) and ``senergy summary
    --help`` (totals per user, account, partition, model, phase or cluster).
    ``senergy budget``: your energy budgets.
    """
    if helpformat:
        typer.echo(format_help())
        raise typer.Exit(0)
    if show_version:
        typer.echo(f"jobenergy {VERSION}")
        raise typer.Exit(0)
    url, cluster = _from_config(url, cluster)
    if not delimiter:
        raise _fail("--delimiter must not be empty")
    if units is not None and (len(units) != 1 or units.upper() not in UNITS):
        raise _fail(f"invalid --units {units[:16]!r}: use one of {', '.join(UNITS)}")
    try:
        selected = parse_fields(fields, units=units, convert=not noconvert)
        selectors = parse_job_selectors([jobs]) if jobs else None
        states = parse_states(_split(state)) if state else None
    except (ValueError, BadJobId, UnknownState) as err:
        raise _fail(str(err)) from err
    params = _params(selectors, cluster, allclusters, user, account, partition, states,
                     name, nodelist, start, end, allusers)
    with api_client(url, timeout_s=30, program="senergy") as http:
        page = _get(http, url, "/api/v1/jobs", params)
        found = page["jobs"]
        refused = _refused_jobs(http, selectors, found)
    if page.get("total", len(found)) > len(found):
        typer.echo(f"senergy: showing {len(found)} of {page['total']} jobs (the API's page "
                   "limit): narrow the window with -S/-E or the other filters", err=True)
    if as_json:
        typer.echo(json.dumps({"jobs": sorted(found, key=job_order)}, indent=2))
    else:
        separator = delimiter if (parsable2 or parsable) else None
        typer.echo(render(rows(found, selectors, allocations), selected, delimiter=separator,
                          trailing=parsable, header=not noheader))
        for note in footnotes(found, selected, marked=separator is None):
            typer.echo(note, err=True)
    _explain_missing(selectors, found, refused)
    if refused:
        raise typer.Exit(1)


def _explain_missing(selectors: tuple[JobSelector, ...] | None, found: list[dict[str, Any]],
                     refused: dict[str, str]) -> None:
    """Say on stderr which asked jobs are not shown, and why when the API told."""
    lines = []
    for selector in selectors or ():
        text = selector.api_id + (f".{selector.step}" if selector.step else "")
        if selector.api_id in refused:
            lines.append(f"senergy: job {text}: {refused[selector.api_id]}")
        elif not any(selects(selector, job) for job in found):
            lines.append(f"senergy: no energy recorded for job {text}")
    for line in lines[:MAX_EXPLAINED]:
        typer.echo(line, err=True)
    if len(lines) > MAX_EXPLAINED:
        typer.echo(f"senergy: ... and {len(lines) - MAX_EXPLAINED} more jobs", err=True)


def _params(selectors: tuple[JobSelector, ...] | None, cluster: str | None, allclusters: bool,
            user: str | None, account: str | None, partition: str | None,
            states: tuple[str, ...] | None, name: str | None, nodelist: str | None,
            start: str | None, end: str | None, allusers: bool) -> list[tuple[str, str]]:
    """Return the ``GET /api/v1/jobs`` query of sacct's options (repeated keys for names)."""
    params: list[tuple[str, str]] = [("limit", "10000")]
    if selectors:
        params.append(("job_id", ",".join(dict.fromkeys(s.api_id for s in selectors))))
    if user:
        params.append(("user", ",".join(_split(user))))
    elif not selectors and not allusers and os.geteuid() != 0:
        params.append(("user", _me()))  # sacct shows your own jobs by default
    clusters = _split(cluster)
    if clusters and not allclusters and "all" not in (c.lower() for c in clusters):
        params.append(("cluster", ",".join(clusters)))  # sacct -M all / -L: every cluster
    for key, value in (("account", account), ("partition", partition)):
        if _split(value):
            params.append((key, ",".join(_split(value))))
    if states:
        params.append(("state", ",".join(states)))
    params += [("name", job_name) for job_name in _split(name)]
    if nodelist and nodelist.strip():
        params.append(("nodelist", nodelist.strip()))
    if start is None and not selectors:
        # sacct's default window: since 00:00 today; with -s, the jobs in that state now.
        start = "now" if states else "today"
    for key, value in (("start", _time_arg(start)), ("end", _time_arg(end))):
        if value:
            params.append((key, value))
    return params


#: Most missing job ids senergy asks about one by one, to say why they are missing.
MAX_EXPLAINED = 20


def _refused_jobs(http: httpx.Client, selectors: tuple[JobSelector, ...] | None,
                  found: list[dict[str, Any]]) -> dict[str, str]:
    """Return the asked job ids the API refuses to show this user, with its reason.

    A job list leaves out what the caller may not read (PrivateData); asking for the missing
    raw ids one by one tells "not yours" (403) from "not known" (404).
    """
    missing = [s.api_id for s in selectors or ()
               if s.task is None and s.offset is None
               and not any(selects(s, job) for job in found)]
    refused = {}
    for job_id in list(dict.fromkeys(missing))[:MAX_EXPLAINED]:
        try:
            resp = http.get(f"/api/v1/jobs/{quote(job_id, safe='')}")
        except httpx.HTTPError:
            break
        if resp.status_code == 403:
            refused[job_id] = error_detail(resp)
    return refused


def _get(http: httpx.Client, url: str, path: str,
         params: dict[str, str] | list[tuple[str, str]]) -> Any:
    """GET ``path``; print the problem and exit 1 on failure."""
    try:
        resp = http.get(path, params=params)
    except httpx.HTTPError as err:
        typer.echo(f"senergy: cannot reach {url}: {err}", err=True)
        raise typer.Exit(1) from err
    except JobEnergyError as err:  # e.g. munged stopped answering meanwhile
        typer.echo(f"senergy: {err}", err=True)
        raise typer.Exit(1) from err
    if not resp.is_success:
        typer.echo(f"senergy: API answered {resp.status_code}: {error_detail(resp)}", err=True)
        raise typer.Exit(1)
    return resp.json()


def _from_config(url: str | None, cluster: str | None) -> tuple[str, str | None]:
    """Fill the API URL and cluster from the system file (``cli/client_config.py``) when
    neither an option nor the environment gave them; exit 2 without a URL."""
    try:
        config = client_config()
    except JobEnergyError as err:
        typer.echo(f"senergy: {err}", err=True)
        raise typer.Exit(2) from err
    url = url or config.url
    if not url:
        typer.echo(f"senergy: no API URL: pass --url, set JOBENERGY_URL or put url in "
                   f"{config_path()}", err=True)
        raise typer.Exit(2)
    return url, cluster or config.cluster


def get_json(url: str | None, path: str, params: dict[str, str]) -> object:
    """GET ``path`` from the API; print the problem and exit 1/2 on failure."""
    url, _cluster = _from_config(url, None)
    with api_client(url, timeout_s=30, program="senergy") as http:
        return _get(http, url, path, params)


#: Subcommands; anything else is the sacct-style report (``senergy -j ...`` stays as it was).
SUBCOMMANDS = ("leaderboard", "summary", "budget")


def _subcommand_first(args: list[str]) -> list[str] | None:
    """Return ``args`` with a subcommand moved first when only global options (``--url``)
    come before it (``senergy --url U leaderboard``), else None."""
    i = 0
    while i < len(args):
        token = args[i]
        if token in SUBCOMMANDS:
            return [token, *args[:i], *args[i + 1:]]
        if token == "--url":
            i += 2
        elif token.startswith("--url="):
            i += 1
        else:
            return None
    return None


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: ``senergy [--url U] [leaderboard|summary|budget] ...``."""
    args = sys.argv[1:] if argv is None else argv
    reordered = _subcommand_first(args)
    if reordered is not None:
        from jobenergy.cli.senergy_tables import tables_app

        tables_app(args=reordered, prog_name="senergy")
    else:
        app(args=args, prog_name="senergy")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
