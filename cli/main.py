"""``jobenergy``: the operator's command (agent, server, database, demo)."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from jobenergy.cli.auth import auth_app
from jobenergy.cli.budget import budget_app
from jobenergy.cli.cluster import cluster_app
from jobenergy.cli.setup import app as setup_app
from jobenergy.cli.slurm import app as slurm_app
from jobenergy.core import logs
from jobenergy.core.errors import ConfigError, JobEnergyError
from jobenergy.core.version import VERSION

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
app.add_typer(setup_app, name="setup")
app.add_typer(budget_app, name="budget")


def _db_error(err: Exception) -> str:
    """One line for a database error (the driver's message, not SQLAlchemy's essay)."""
    orig = getattr(err, "orig", None)
    return str(orig or err).strip().splitlines()[0]


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"jobenergy {VERSION}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", "-V", callback=_show_version, is_eager=True,
                           help="Print the version and exit")
    ] = False,
) -> None:
    """Energy accounting for every job on a Slurm GPU cluster."""


LogLevelOpt = Annotated[
    str | None,
    typer.Option("--log-level", show_default=False,
                 help="debug, info, warning, error or critical (default info)"),
]
LogFormatOpt = Annotated[
    str | None,
    typer.Option("--log-format", show_default=False,
                 help="auto (journal when stderr is the journal, else text), text, journal "
                      "or json"),
]


def _logging(level: str | None, fmt: str | None, program: str) -> None:
    """Configure log output (core/logs.py), or exit 2 with one line on a bad level/format."""
    try:
        logs.configure(level or "info", fmt or "auto")
    except ConfigError as err:
        typer.echo(f"{program}: {err}", err=True)
        raise typer.Exit(2) from err


@app.command()
def agent(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML file with [agent]")
    ] = None,
    node: Annotated[str | None, typer.Option(help="Override [agent] node")] = None,
    collector_url: Annotated[
        str | None, typer.Option(help="Override [agent] collector_url")
    ] = None,
    log_level: LogLevelOpt = None,
    log_format: LogFormatOpt = None,
) -> None:
    """Run the node agent until SIGTERM/SIGINT (then: final sample, flush, exit 0).

    The same as ``jobenergy-agent`` (``agent/main.py``), which the systemd unit runs: that
    one loads none of the command-line tools.
    """
    from jobenergy.agent.main import run

    code = run(config, node=node, collector_url=collector_url, log_level=log_level,
               log_format=log_format, program="jobenergy agent")
    if code:
        raise typer.Exit(code)


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


ServerConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar="JOBENERGY_SERVER_CONFIG",
                 help=f"TOML file with [server] whose db_url is used when --db/--db-file are "
                      f"not given (default {DEFAULT_SERVER_CONFIG} if present)"),
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


def _server_db_url(db: str | None, db_file: Path | None, config: Path | None,
                   program: str) -> str:
    """Return the database the server would use: ``--db-file``/``--db``/the environment,
    else the server config's ``db_url`` (``--config``, else /etc/jobenergy/server.toml when
    present), else the embedded default. ``db upgrade``/``db maintain`` thus act on the
    server's database, not on a stray ./jobenergy.db."""
    if db or db_file:
        return _db_url(db, db_file)
    from jobenergy.collector.settings import DEFAULT_CONFIG_FILE, ServerSettings

    if config is None and DEFAULT_CONFIG_FILE.exists():
        config = DEFAULT_CONFIG_FILE
    if config is None:
        return DEFAULT_DB
    try:
        return ServerSettings.load(config).db_url
    except JobEnergyError as err:
        typer.echo(f"{program}: {err}", err=True)
        raise typer.Exit(2) from err


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
    pue: Annotated[
        float | None,
        _opt("PUE of clusters without their own (1.0); seeds an empty database only, "
             "later changes: jobenergy cluster set-pue"),
    ] = None,
    carbon_intensity: Annotated[
        float | None,
        _opt("g CO2e/kWh of clusters without their own (else world average 475, flagged); "
             "seeds an empty database only, later changes: jobenergy cluster set-carbon",
             "--carbon-intensity"),
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
    log_level: LogLevelOpt = None,
    log_format: LogFormatOpt = None,
    access_log: Annotated[
        bool | None, _opt("One log line per HTTP request (off)", "--access-log/--no-access-log")
    ] = None,
    show_config: Annotated[
        bool, typer.Option("--show-config",
                           help="Print the settings in force (options > environment > config "
                                "file > defaults; the password masked) as JSON and exit")
    ] = False,
) -> None:
    """Run the collector and the API in one process."""
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
            log_level=log_level, log_format=log_format, access_log=access_log,
        )
        check_transport(settings)
        if show_config:
            shown = settings.model_dump(mode="json")
            shown["db_url"] = _shown(settings.db_url)
            typer.echo(json.dumps(shown, indent=2, sort_keys=True))
            return
        logs.configure(settings.log_level, settings.log_format)
        application = create_app(settings)
    except (JobEnergyError, ValueError, SQLAlchemyError) as err:
        message = _db_error(err) if isinstance(err, SQLAlchemyError) else str(err)
        typer.echo(f"jobenergy server: {message}", err=True)
        raise typer.Exit(2) from err
    uvicorn.run(
        application, host=settings.host, port=settings.port, log_level=settings.log_level,
        # Records go to the root handler of core/logs.py; no per-request line unless asked.
        log_config=None, access_log=settings.access_log,
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
def db_upgrade(
    db: DbOpt = None, db_file: DbFileOpt = None, config: ServerConfigOpt = None,
    log_level: LogLevelOpt = None, log_format: LogFormatOpt = None,
) -> None:
    """Create or upgrade the schema to the latest revision."""
    _logging(log_level, log_format, "jobenergy db upgrade")
    db = _server_db_url(db, db_file, config, "jobenergy db upgrade")
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
    config: ServerConfigOpt = None,
    months_ahead: Annotated[
        int, typer.Option("--months-ahead", min=0, help="Months after the current one to prepare")
    ] = 2,
    retention_days: Annotated[
        int,
        typer.Option("--retention-days", min=0,
                     help="Drop the energy_interval partitions of months that ended more than "
                          "this many days ago (per-job totals, hours and minutes are kept); "
                          "0: keep forever"),
    ] = 30,
    log_level: LogLevelOpt = None,
    log_format: LogFormatOpt = None,
) -> None:
    """Daily upkeep: create the coming months' energy_interval partitions, drop those past the
    retention (PostgreSQL), recompute the materialised all-time leaderboard if jobs changed,
    and materialise the details of jobs that settled (PostgreSQL; the server does that too).

    Rows already stored in the DEFAULT partition for a coming month are moved into it. Months
    whose end is more than --retention-days ago lose their partition, whole (no row deletes):
    the per-interval shares go, every total (jobs, nodes, hours, phases, steps) stays, as it is
    kept at ingest, and each job's curve stays per minute (rolled up into job_energy_minute
    in the same transaction, just before the drop). Old rows in the DEFAULT partition are left
    there (a warning counts them). The keys of batches received over a day before the
    retained intervals start are then deleted, in chunks: a retry that old is refused as
    overlapping or too old instead of acknowledged, and is never counted twice.
    Nothing to do on SQLite: one plain table, kept whole.
    """
    _logging(log_level, log_format, "jobenergy db maintain")
    db = _server_db_url(db, db_file, config, "jobenergy db maintain")
    from datetime import timedelta

    from sqlalchemy.exc import SQLAlchemyError

    from jobenergy.api.leaderboards import all_time_totals, window_totals
    from jobenergy.collector import job_details, rollups
    from jobenergy.collector.batch_keys import prune_batch_keys
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
            keys_pruned, keys_cut = (prune_batch_keys(engine) if retention_days
                                     else (0, None))
            rolled = rollups.refresh(engine, all_time_totals, every=timedelta(0),
                                     window_totals=window_totals)
            materialised = job_details.materialise(engine)
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
        typer.echo(f"job minute series kept for them: {retention.minute_rows} rows upserted "
                   "into job_energy_minute")
    if keys_pruned:
        assert keys_cut is not None
        typer.echo(f"batch keys pruned: {keys_pruned} (batches received before "
                   f"{keys_cut:%Y-%m-%d %H:%M} UTC, a day before the retained intervals)")
    if retention.default_rows_before_cut:
        typer.echo(
            f"kept {retention.default_rows_before_cut} rows of the DEFAULT partition older "
            "than the retention (no partition of their month to drop)"
        )
    if rolled is None:
        typer.echo("all-time leaderboard: another process is computing it")
    elif rolled.computed or rolled.windows:
        which = " and ".join(name for name, done in (
            ("all-time", rolled.computed), ("24h/7d/30d", rolled.windows)) if done)
        typer.echo(f"{which} leaderboards computed in {rolled.seconds:.1f} s")
    if materialised is None:
        typer.echo("job details: another process is materialising them")
    elif materialised:
        typer.echo(f"job details materialised: {materialised} jobs unchanged for "
                   f"{job_details.SETTLE.total_seconds() / 60:.0f} minutes")
    if sqlite:
        typer.echo(f"nothing to do on SQLite (no partitions, no retention): {_shown(db)}")
    elif not (created or retention.dropped or keys_pruned or materialised):
        typer.echo(f"nothing to do: {_shown(db)}")


@app.command()
def demo(
    keep_running: Annotated[
        bool | None,
        typer.Option("--keep-running/--no-keep-running",
                     help="Leave the API and its web pages up until Ctrl-C (default: on a "
                          "terminal, yes; otherwise, as in scripts and CI, stop at the end)"),
    ] = None,
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="API port (0 = a free one)")
    ] = 0,
    workdir: Annotated[
        Path | None,
        typer.Option(help="Where to put simulated nodes and the DB (kept; by default a "
                          "temporary folder, removed at the end)"),
    ] = None,
) -> None:
    """Simulate a few nodes with DL jobs, run real agents and the server, print a report."""
    _logging("warning", None, "jobenergy demo")
    import httpx

    from jobenergy.sim.demo import run_demo

    def terminate(signum: int, _frame: object) -> None:
        # As Ctrl-C does: unwind through run_demo's cleanup (agents, server, temporary
        # folder); a second signal must not cut that cleanup short.
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, terminate)
    try:
        if keep_running is None:  # a person at a terminal came to look at the pages
            keep_running = sys.stdin.isatty() and sys.stdout.isatty()
        run_demo(port=port, keep_running=keep_running, workdir=workdir)
    except (JobEnergyError, httpx.HTTPError, OSError) as err:
        typer.echo(f"jobenergy demo: {err}", err=True)
        raise typer.Exit(1) from err


def main() -> None:
    """Console-script entry point."""
    app(prog_name="jobenergy")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
