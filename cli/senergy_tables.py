"""``senergy leaderboard`` and ``senergy summary``: per-model and per-group energy tables.

    senergy leaderboard [--phase training|inference|other] [-M CLUSTER] [-S START] [-E END]
                        [--metric total_energy_kwh|median_energy_kwh|kwh_per_gpu_hour|
                         j_per_sample|co2e_kg|jobs|...] [--order desc|asc] [--limit N]
                        [-P] [--json] [--url URL]
    senergy summary [--group-by user|account|partition|model|phase|cluster] [-M CLUSTER]
                    [--phase P] [-S START] [-E END] [-P] [--json] [--url URL]
    senergy budget [-M CLUSTER] [--json] [--url URL]
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from jobenergy.cli.report import LEADERBOARD_FIELDS, SUMMARY_FIELDS, render
from jobenergy.cli.senergy import _time_arg, get_json
from jobenergy.cli.senergy_budget import budget

tables_app = typer.Typer(add_completion=False, help=__doc__, no_args_is_help=False)
tables_app.command("budget")(budget)

UrlOpt = Annotated[
    str | None, typer.Option("--url", envvar="JOBENERGY_URL", help="jobenergy API")
]
ClusterOpt = Annotated[str | None, typer.Option("--clusters", "-M", help="Cluster")]
PhaseOpt = Annotated[str | None, typer.Option("--phase", help="training, inference or other")]
StartOpt = Annotated[str | None, typer.Option("--starttime", "-S", help="Jobs started from")]
EndOpt = Annotated[str | None, typer.Option("--endtime", "-E", help="Jobs started before")]
ParsableOpt = Annotated[bool, typer.Option("--parsable2", "-P", help="'|' delimited")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Rows as the API returns them")]


def _params(**values: str | None) -> dict[str, str]:
    return {key: value for key, value in values.items() if value}


def _print(rows: list[dict[str, Any]], fields: Any, parsable: bool, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        typer.echo(render(rows, fields, delimiter="|" if parsable else None))


@tables_app.command()
def leaderboard(
    phase: PhaseOpt = None,
    cluster: ClusterOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    metric: Annotated[str, typer.Option(help="Sort key")] = "total_energy_kwh",
    order: Annotated[str, typer.Option(help="desc or asc")] = "desc",
    limit: Annotated[int, typer.Option(help="Rows")] = 100,
    parsable2: ParsableOpt = False,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
) -> None:
    """Energy per model and phase: jobs, total and median kWh, kWh/GPU-h, J/sample, CO2e."""
    rows = get_json(url, "/api/v1/leaderboards/models", _params(
        phase=phase, cluster=cluster, start=_time_arg(start), end=_time_arg(end),
        metric=metric, order=order, limit=str(limit),
    ))
    _print(rows, LEADERBOARD_FIELDS, parsable2, as_json)  # type: ignore[arg-type]


@tables_app.command()
def summary(
    group_by: Annotated[str, typer.Option("--group-by", "-g", help="user, account, "
                                          "partition, model, phase or cluster")] = "user",
    cluster: ClusterOpt = None,
    phase: PhaseOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    parsable2: ParsableOpt = False,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
) -> None:
    """Energy, facility energy, GPU-hours and CO2e per group of jobs."""
    rows = get_json(url, "/api/v1/summary", _params(
        group_by=group_by, cluster=cluster, phase=phase, start=_time_arg(start),
        end=_time_arg(end),
    ))
    _print(rows, SUMMARY_FIELDS, parsable2, as_json)  # type: ignore[arg-type]
