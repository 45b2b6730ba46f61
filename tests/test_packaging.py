"""The wheel ships every subpackage, and the node agent stays lean."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_PACKAGES = {"tests", "bench", "deploy", "slurm_plugins", "build", "dist"}


def _declared() -> tuple[set[str], dict[str, str]]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(cfg["packages"]), cfg["package-dir"]


def test_every_python_folder_is_a_declared_package():
    packages, package_dir = _declared()
    folder_of = {folder: name for name, folder in package_dir.items()}
    found = set()
    for top in ROOT.iterdir():
        if not top.is_dir() or top.name.startswith(".") or top.name in NOT_PACKAGES:
            continue
        for init in top.rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT)
            base = folder_of.get(rel.parts[0])
            assert base is not None, f"{rel.parts[0]}/ has Python code but no package-dir entry"
            found.add(".".join([base, *rel.parts[1:]]))
    assert found == packages, (
        f"missing from pyproject: {found - packages}; stale: {packages - found}"
    )


def test_agent_does_not_import_server_libraries():
    code = (
        "import sys, jobenergy.agent.daemon, jobenergy.cli.main\n"
        "bad = [m for m in ('sqlalchemy', 'fastapi', 'alembic', 'starlette', 'uvicorn', 'psycopg')"
        " if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ}
    )
    assert out.stdout.strip() == "", f"agent imports server libraries: {out.stdout}"


def test_console_scripts_are_declared():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(cfg) >= {"jobenergy", "senergy"}
