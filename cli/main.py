"""``jobenergy``: the operator's command (agent, server, database, demo)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from jobenergy.cli.auth import auth_app
from jobenergy.cli.cluster import cluster_app
from jobenergy.cli.slurm import app as slurm_app
from jobenergy.core.errors import JobEnergyError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Energy accounting for every job on a Slurm GPU cluster.",
)
db_app = typer.Typer(no_args_is_help=True, help="Database schema management.")
app.add_typer(db_app, name="db")
app.add_typer(cluster_app, name="cluster")
app.add_typer(auth_app, name="auth")
app.add_typer(slurm_app, name="slurm")


def _db_error(err: Exception) -> str:
    """One line for a database error (the driver's message, not SQLAlchemy's essay)."""
    orig = getattr(err, "orig", None)
    return str(orig or err).strip().splitlines()[0]


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per plugin otherwise


@app.command()
def agent(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML file with [agent]")
    ] = None,
    node: Annotated[str | None, typer.Option(help="Override [agent] node")] = None,
    collector_url: Annotated[
        str | None, typer.Option(help="Override [agent] collector_url")
    ] = None,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Run the node agent until SIGTERM/SIGINT (then: final sample, flush, exit 0)."""
    _logging(log_level)
    from jobenergy.agent.daemon import Agent
    from jobenergy.agent.settings import AgentSettings

    try:
        settings = AgentSettings.load(config, node=node, collector_url=collector_url)
        daemon = Agent(settings)
    except JobEnergyError as err:
        typer.echo(f"jobenergy agent: {err}", err=True)
        raise typer.Exit(2) from err
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    daemon.run(stop)


DEFAULT_DB = "sqlite:///./jobenergy.db"
DEFAULT_SERVER_CONFIG = "/etc/jobenergy/server.toml"
# The URL may hold a password: give it by environment or file, never in argv (/proc/*/cmdline
# is readable by every user on the host).
DbOpt = Annotated[
    str | None,
    typer.Option("--db", envvar="JOBENERGY_SERVER_DB_URL",
                 help="sqlite:///path or postgresql+psycopg://... (or $JOBENERGY_SERVER_DB_URL)"),
]
DbFileOpt = Annotated[
    Path | None,
    typer.Option("--db-file", help="Read the database URL from this file (first line)"),
]


def _db_url(db: str | None, db_file: Path | None) -> str:
    """Return the database URL from ``--db-file``, else ``--db``/the environment, else the
    embedded SQLite default."""
    if db_file is not None:
        try:
            lines = db_file.read_text().splitlines()
        except OSError as err:
            typer.echo(f"jobenergy: cannot read --db-file {db_file}: {err.strerror}", err=True)
            raise typer.Exit(2) from err
        url = lines[0].strip() if lines else ""
        if not url:
            typer.echo(f"jobenergy: --db-file {db_file} holds no database URL", err=True)
            raise typer.Exit(2)
        return url
    return db or DEFAULT_DB


def _shown(url: str) -> str:
    """Return a database URL fit for messages: its password masked."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparsable database URL)"


def _opt(help_text: str, *names: str) -> typer.models.OptionInfo:
    """A server option without a default of its own: unset, the environment
    (``JOBENERGY_SERVER_<NAME>``), then the config file's ``[server]`` apply."""
    return typer.Option(*names, help=help_text, show_default=False)


@app.command()
def server(
    db: DbOpt = None,
    db_file: DbFileOpt = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", envvar="JOBENERGY_SERVER_CONFIG",
                     help=f"TOML file with [server] (default {DEFAULT_SERVER_CONFIG} if present)"),
    ] = None,
    host: Annotated[str | None, _opt("Address to listen on (127.0.0.1)")] = None,
    port: Annotated[int | None, _opt("TCP port (8080)")] = None,
    pue: Annotated[float | None, _opt("Default PUE (1.0)")] = None,
    carbon_intensity: Annotated[
        float | None,
        _opt("Default g CO2e/kWh (else world average 475, flagged)", "--carbon-intensity"),
    ] = None,
    auth: Annotated[
        str | None,
        _opt("munge,jwt,token (any of them) or none (loopback only); default: munge when "
             "munged answers"),
    ] = None,
    munge_socket: Annotated[str | None, _opt("munged's socket")] = None,
    jwt_key: Annotated[Path | None, _opt("Slurm's jwt_hs256.key, for --auth jwt")] = None,
    admins: Annotated[str | None, _opt("Admin user names, comma-separated")] = None,
    admin_group: Annotated[str | None, _opt("Unix group of admins")] = None,
    private_data: Annotated[
        str | None, _opt("Slurm PrivateData words: jobs,usage,users,accounts (all by default)")
    ] = None,
    tls_cert: Annotated[Path | None, _opt("PEM certificate (chain): serve HTTPS")] = None,
    tls_key: Annotated[Path | None, _opt("PEM private key of --tls-cert")] = None,
    allow_insecure: Annotated[
        bool | None, _opt("Allow plain HTTP off loopback", "--allow-insecure")
    ] = None,
    no_migrate: Annotated[
        bool, typer.Option("--no-migrate", help="Do not upgrade the schema")
    ] = False,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Run the collector and the API in one process."""
    _logging(log_level)
    import uvicorn
    from sqlalchemy.exc import SQLAlchemyError

    from jobenergy.api.app import create_app
    from jobenergy.collector.settings import DEFAULT_CONFIG_FILE, ServerSettings

    if config is None and DEFAULT_CONFIG_FILE.exists():
        config = DEFAULT_CONFIG_FILE
    try:
        settings = ServerSettings.load(
            config,
            db_url=_db_url(db, db_file) if (db or db_file) else None,
            host=host, port=port, pue=pue, carbon_intensity_g_per_kwh=carbon_intensity,
            auth=auth, munge_socket=munge_socket, jwt_key=jwt_key, admins=admins,
            admin_group=admin_group, private_data=private_data, tls_cert=tls_cert,
            tls_key=tls_key, allow_insecure=allow_insecure,
            migrate=False if no_migrate else None,
        )
        check_transport(settings)
        application = create_app(settings)
    except (JobEnergyError, ValueError, SQLAlchemyError) as err:
        message = _db_error(err) if isinstance(err, SQLAlchemyError) else str(err)
        typer.echo(f"jobenergy server: {message}", err=True)
        raise typer.Exit(2) from err
    uvicorn.run(
        application, host=settings.host, port=settings.port, log_level=log_level.lower(),
        # Client addresses are the peers' own: X-Forwarded-For from a local user must not
        # move them (the failed-authentication limit is per address).
        proxy_headers=False,
        ssl_certfile=str(settings.tls_cert) if settings.tls else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls else None,
    )


def check_transport(settings: object) -> None:
    """Refuse plain HTTP off loopback unless ``allow_insecure`` (node tokens and job data would
    cross the network in clear), and a half-configured TLS.

    Raises:
        ConfigError: What is wrong, in one line.
    """
    from jobenergy.collector.settings import ServerSettings
    from jobenergy.core.errors import ConfigError
    from jobenergy.core.request_auth import is_loopback

    assert isinstance(settings, ServerSettings)
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    for path in (settings.tls_cert, settings.tls_key):
        if path is not None and not path.is_file():
            raise ConfigError(f"TLS file {path} does not exist")
    if not settings.tls and not is_loopback(settings.host) and not settings.allow_insecure:
        raise ConfigError(
            f"plain HTTP on {settings.host}: give --tls-cert/--tls-key, listen on a loopback "
            "address behind a TLS proxy, or set --allow-insecure")


@db_app.command("upgrade")
def db_upgrade(db: DbOpt = None, db_file: DbFileOpt = None) -> None:
    """Create or upgrade the schema to the latest revision."""
    _logging("info")
    db = _db_url(db, db_file)
    from sqlalchemy.exc import SQLAlchemyError

    from jobenergy.collector.db import upgrade

    try:
        upgrade(db)
    except SQLAlchemyError as err:
        typer.echo(f"jobenergy db upgrade: cannot migrate {_shown(db)}: {_db_error(err)}",
                   err=True)
        raise typer.Exit(2) from err
    typer.echo(f"database at head: {_shown(db)}")


@db_app.command("maintain")
def db_maintain(
    db: DbOpt = None,
    db_file: DbFileOpt = None,
    months_ahead: Annotated[
        int, typer.Option("--months-ahead", min=0, help="Months after the current one to prepare")
    ] = 2,
    retention_days: Annotated[
        int,
        typer.Option("--retention-days", min=0,
                     help="Drop the energy_interval partitions of months that ended more than "
                          "this many days ago (per-job totals are kept); 0: keep forever"),
    ] = 30,
) -> None:
    """Daily upkeep (PostgreSQL): create the coming months' energy_interval partitions, drop
    those past the retention.

    Rows already stored in the DEFAULT partition for a coming month are moved into it. Months
    whose end is more than --retention-days ago lose their partition, whole (no row deletes):
    the per-interval shares go, every total (jobs, nodes, hours, phases, steps) stays, as it is
    kept at ingest. Old rows in the DEFAULT partition are left there (a warning counts them).
    Nothing to do on SQLite: one plain table, kept whole.
    """
    _logging("info")
    db = _db_url(db, db_file)
    from sqlalchemy.exc import SQLAlchemyError

    from jobenergy.collector.db import make_engine
    from jobenergy.collector.partitions import drop_expired_partitions, ensure_interval_partitions

    try:
        engine = make_engine(db)
        sqlite = engine.dialect.name == "sqlite"
        try:
            with engine.begin() as conn:
                created = ensure_interval_partitions(conn, months_ahead=months_ahead)
            if created:  # committed even if the retention below fails
                typer.echo(f"partitions created: {', '.join(created)}")
            with engine.begin() as conn:
                retention = drop_expired_partitions(conn, retention_days)
        finally:
            engine.dispose()
    except SQLAlchemyError as err:
        typer.echo(f"jobenergy db maintain: cannot maintain {_shown(db)}: {_db_error(err)}",
                   err=True)
        raise typer.Exit(2) from err
    if retention.dropped:
        assert retention.cut is not None
        typer.echo(
            f"partitions dropped (retention {retention_days} days: months ended before "
            f"{retention.cut:%Y-%m-%d %H:%M} UTC): {', '.join(retention.dropped)}"
        )
    if retention.default_rows_before_cut:
        typer.echo(
            f"kept {retention.default_rows_before_cut} rows of the DEFAULT partition older "
            "than the retention (no partition of their month to drop)"
        )
    if sqlite:
        typer.echo(f"nothing to do on SQLite (no partitions, no retention): {_shown(db)}")
    elif not (created or retention.dropped):
        typer.echo(f"nothing to do: {_shown(db)}")


@app.command()
def demo(
    keep_running: Annotated[bool, typer.Option("--keep-running", help="Leave the API up")] = False,
    port: Annotated[int, typer.Option(help="API port (0 = a free one)")] = 0,
    workdir: Annotated[
        Path | None, typer.Option(help="Where to put simulated nodes and the DB")
    ] = None,
) -> None:
    """Simulate a few nodes with DL jobs, run real agents and the server, print a report."""
    _logging("warning")
    from jobenergy.sim.demo import run_demo

    try:
        run_demo(port=port, keep_running=keep_running, workdir=workdir)
    except JobEnergyError as err:
        typer.echo(f"jobenergy demo: {err}", err=True)
        raise typer.Exit(1) from err


def main() -> None:
    """Console-script entry point."""
    app(prog_name="jobenergy")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
