"""One version everywhere: the installed distribution's (pyproject.toml), never hard-coded."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

from typer.testing import CliRunner

INSTALLED = version("jobenergy")


def test_the_version_is_the_installed_distributions() -> None:
    from jobenergy.agent.daemon import AGENT_VERSION
    from jobenergy.core.version import VERSION

    assert VERSION == INSTALLED
    assert AGENT_VERSION == INSTALLED  # sent in every batch


def test_commands_print_it() -> None:
    from jobenergy.cli.main import app
    from jobenergy.cli.senergy import app as senergy_app

    runner = CliRunner()
    for cli, args in ((app, ["--version"]), (app, ["-V"]), (senergy_app, ["--version"])):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert result.output == f"jobenergy {INSTALLED}\n"
    # The console script as installed, once: nothing else runs before the version.
    proc = subprocess.run([sys.executable, "-m", "jobenergy.cli.main", "--version"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"jobenergy {INSTALLED}\n", "")


def test_the_api_reports_it(client) -> None:
    assert client.get("/openapi.json").json()["info"]["version"] == INSTALLED
