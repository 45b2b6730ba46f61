"""``jobenergy cluster ...``: per-cluster PUE and carbon intensity, through the admin API.

    jobenergy cluster show [CLUSTER]
    jobenergy cluster set-carbon CLUSTER --constant 55
    jobenergy cluster set-carbon CLUSTER --region FRA [--year 2023]
    jobenergy cluster set-carbon CLUSTER --mix coal=25,petroleum=35,natural_gas=26,nuclear=14
    jobenergy cluster set-carbon CLUSTER --series-only | --default
    jobenergy cluster set-pue CLUSTER 1.3|default
    jobenergy cluster import-series CLUSTER FILE.csv [--factor carbon|pue] [--column NAME]
    jobenergy cluster clear-series CLUSTER [--factor carbon|pue]

Every change recomputes the stored facility energy and CO2e it affects. ``--url`` defaults to
``$JOBENERGY_URL``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer

from jobenergy.cli.api_client import api_client, error_detail
from jobenergy.core.errors import JobEnergyError

cluster_app = typer.Typer(no_args_is_help=True, help="Per-cluster PUE and carbon intensity.")

UrlOpt = Annotated[
    str | None, typer.Option("--url", envvar="JOBENERGY_URL", help="jobenergy API")
]
FactorOpt = Annotated[str, typer.Option("--factor", help="carbon or pue")]


def _call(url: str | None, method: str, path: str, **kwargs: Any) -> Any:
    if not url:
        typer.echo("jobenergy cluster: no API URL: pass --url or set JOBENERGY_URL", err=True)
        raise typer.Exit(2)
    try:
        with api_client(url, timeout_s=300, program="jobenergy cluster") as http:
            resp = http.request(method, path, **kwargs)
    except httpx.HTTPError as err:
        typer.echo(f"jobenergy cluster: cannot reach {url}: {err}", err=True)
        raise typer.Exit(1) from err
    except JobEnergyError as err:  # munged refused to make a credential
        typer.echo(f"jobenergy cluster: {err}", err=True)
        raise typer.Exit(1) from err
    if not resp.is_success:
        detail = error_detail(resp, 1000)
        typer.echo(f"jobenergy cluster: {resp.status_code}: {detail}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(resp.json(), indent=2))
    return resp.json()


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise typer.BadParameter(f"{what} must be a finite number, got {value}")
    return value


def _path(cluster: str, *rest: str) -> str:
    return "/".join(["/api/v1/clusters", quote(cluster, safe=""), *rest])


def parse_mix(spec: str) -> dict[str, float]:
    """Parse ``coal=25,petroleum=35`` into shares.

    Raises:
        typer.BadParameter: An item is not ``source=number``.
    """
    shares: dict[str, float] = {}
    for item in spec.split(","):
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError(item)
            shares[name.strip()] = _finite(float(value), f"share of {name.strip()}")
        except ValueError as err:
            raise typer.BadParameter(f"mix item {item!r}: use source=share") from err
    return shares


@cluster_app.command("show")
def show(cluster: Annotated[str | None, typer.Argument()] = None, url: UrlOpt = None) -> None:
    """Show one cluster's factors, or every cluster's."""
    _call(url, "GET", _path(cluster) if cluster else "/api/v1/clusters")


@cluster_app.command("set-carbon")
def set_carbon(
    cluster: str,
    constant: Annotated[float | None, typer.Option(help="g CO2e/kWh")] = None,
    region: Annotated[str | None, typer.Option(help="ISO alpha-3 country, e.g. FRA")] = None,
    year: Annotated[int | None, typer.Option(help="Year of --region (default latest)")] = None,
    mix: Annotated[str | None, typer.Option(help="coal=25,nuclear=75,... (percent)")] = None,
    series_only: Annotated[bool, typer.Option(help="Only the imported series")] = False,
    default: Annotated[bool, typer.Option(help="Back to the server default")] = False,
    url: UrlOpt = None,
) -> None:
    """Set the carbon-intensity source of CLUSTER (exactly one of the options)."""
    chosen = [name for name, value in (("constant", constant), ("region", region),
              ("mix", mix), ("series", series_only or None), ("default", default or None))
              if value is not None]
    if len(chosen) != 1:
        raise typer.BadParameter(
            "give exactly one of --constant, --region, --mix, --series-only, --default")
    body: dict[str, Any] = {"source": chosen[0]}
    if constant is not None:
        body["g_per_kwh"] = _finite(constant, "--constant")
    if region is not None:
        body["country"] = region
        if year is not None:
            body["year"] = year
    if mix is not None:
        body["shares"] = parse_mix(mix)
    _call(url, "PUT", _path(cluster, "carbon"), json=body)


@cluster_app.command("set-pue")
def set_pue(cluster: str, value: str, url: UrlOpt = None) -> None:
    """Set CLUSTER's constant PUE (a number >= 1, or ``default``)."""
    if value.lower() == "default":
        pue = None
    else:
        try:
            pue = float(value)
            if not math.isfinite(pue):
                raise ValueError(value)
        except ValueError as err:
            raise typer.BadParameter(f"PUE {value!r}: a number >= 1 or 'default'") from err
    _call(url, "PUT", _path(cluster, "pue"), json={"pue": pue})


@cluster_app.command("import-series")
def import_series(
    cluster: str,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    factor: FactorOpt = "carbon",
    column: Annotated[str | None, typer.Option(help="Value column of the CSV")] = None,
    url: UrlOpt = None,
) -> None:
    """Import a series from a CSV (e.g. an Electricity Maps export) or a JSON file."""
    data = file.read_bytes()
    is_json = file.suffix.lower() == ".json"
    headers = {"Content-Type": "application/json" if is_json else "text/csv"}
    params = {"column": column} if column else {}
    _call(url, "POST", _path(cluster, factor, "series"), content=data, headers=headers,
          params=params)


@cluster_app.command("clear-series")
def clear_series(cluster: str, factor: FactorOpt = "carbon", url: UrlOpt = None) -> None:
    """Drop CLUSTER's imported series of a factor."""
    _call(url, "DELETE", _path(cluster, factor, "series"))
