"""``jobenergy auth token``: issue or revoke static tokens, straight in the database.

    jobenergy auth token --cluster C --node n1            # an agent token for node n1
    jobenergy auth token --cluster C --role hooks         # for the Slurm hooks and sync
    jobenergy auth token --cluster C --node n1 --revoke   # revoke every token of n1

The token is printed once and stored as its SHA-256 only (``collector/tokens.py``); give it
to the agent in a 0600 file (``[agent] token_file``). Whoever runs this needs the database
URL (``--db``/``--db-file``/``$JOBENERGY_SERVER_DB_URL``): it is an administrator's command,
and it is audited under the local user's name.
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import Annotated

import typer

auth_app = typer.Typer(no_args_is_help=True, help="Static tokens for agents and hooks.")


@auth_app.command("token")
def token(
    cluster: Annotated[str, typer.Option(help="Cluster the token is for")],
    node: Annotated[str | None, typer.Option(help="Node (agent tokens)")] = None,
    role: Annotated[
        str | None, typer.Option(help="agent (with --node; the default), hooks or admin")
    ] = None,
    revoke: Annotated[bool, typer.Option("--revoke", help="Revoke instead of issuing")] = False,
    db: Annotated[
        str | None,
        typer.Option("--db", envvar="JOBENERGY_SERVER_DB_URL",
                     help="Database URL (or $JOBENERGY_SERVER_DB_URL)"),
    ] = None,
    db_file: Annotated[
        Path | None, typer.Option("--db-file", help="Read the database URL from this file")
    ] = None,
) -> None:
    """Print a new token (stored hashed), or revoke the existing ones with --revoke."""
    from sqlalchemy.exc import SQLAlchemyError

    from jobenergy.cli.main import _db_error, _db_url, _shown
    from jobenergy.collector import tokens
    from jobenergy.collector.db import make_engine
    from jobenergy.core.schema import Name

    role = role or ("agent" if node is not None else None)
    if role is None:
        typer.echo("jobenergy auth token: give --node N (an agent token) or --role hooks|admin",
                   err=True)
        raise typer.Exit(2)
    for label, value in (("cluster", cluster), ("node", node)):
        if value is not None and not _valid_name(Name, value):
            typer.echo(f"jobenergy auth token: invalid --{label} {value[:80]!r}", err=True)
            raise typer.Exit(2)
    url = _db_url(db, db_file)
    actor = f"local:{getpass.getuser()}(uid={os.getuid()})"
    try:
        engine = make_engine(url)
        try:
            with engine.begin() as conn:
                if revoke:
                    count = tokens.revoke(conn, role, cluster, node, actor)
                else:
                    issued = tokens.issue(conn, role, cluster, node, actor)
        finally:
            engine.dispose()
    except ValueError as err:
        typer.echo(f"jobenergy auth token: {err}", err=True)
        raise typer.Exit(2) from err
    except SQLAlchemyError as err:
        typer.echo(f"jobenergy auth token: {_shown(url)}: {_db_error(err)}", err=True)
        raise typer.Exit(2) from err
    if revoke:
        typer.echo(f"revoked {count} {role} token(s) of {cluster}/{node or '-'}", err=True)
    else:
        typer.echo(issued)


def _valid_name(kind: object, value: str) -> bool:
    from pydantic import TypeAdapter, ValidationError

    try:
        TypeAdapter(kind).validate_python(value)
    except ValidationError:
        return False
    return True
