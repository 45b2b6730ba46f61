"""The wheel ships every subpackage and every file a role installs, and the node agent stays
lean."""

import email
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_PACKAGES = {"tests", "bench", "build", "dist"}


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


# What `jobenergy setup` installs from the package (deploy/INSTALL.md), by path in the wheel.
ROLE_FILES = [
    "jobenergy/slurm_plugins/spank_jobenergy.c",
    "jobenergy/slurm_plugins/Makefile",
    "jobenergy/slurm_plugins/jobenergy-hook.sh",
    "jobenergy/slurm_plugins/prolog.sh",
    "jobenergy/slurm_plugins/epilog.sh",
    "jobenergy/slurm_plugins/prolog_slurmctld.sh",
    "jobenergy/slurm_plugins/epilog_slurmctld.sh",
    "jobenergy/slurm_plugins/job_submit.lua",
    "jobenergy/deploy/INSTALL.md",
    "jobenergy/deploy/agent.toml.example",
    "jobenergy/deploy/server.toml.example",
    "jobenergy/deploy/slurm/slurm.conf.snippet",
    "jobenergy/deploy/slurm/cgroup.conf.snippet",
    "jobenergy/deploy/slurm/plugstack.conf.d-jobenergy.conf",
    "jobenergy/deploy/slurm/slurm-hooks.env.example",
    "jobenergy/deploy/haproxy/jobenergy.cfg.example",
    "jobenergy/deploy/prometheus/scrape.yml",
    *(f"jobenergy/deploy/systemd/{p.name}" for p in sorted((ROOT / "deploy/systemd").iterdir())),
]
# Build outputs and caches never travel, whatever the work tree holds.
_NOT_COPIED = shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__", "*.so",
                                     "*.db")


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """Build the sdist, then the wheel from it (as `make dist` does), from a copy of the tree,
    offline: the build backend from this environment (the test extra holds it)."""
    try:
        import build  # noqa: F401
    except ImportError:
        pytest.fail("the build package is missing: pip install -e '.[test]'")
    src = tmp_path_factory.mktemp("src") / "jobenergy"
    shutil.copytree(ROOT, src, ignore=_NOT_COPIED)
    out = tmp_path_factory.mktemp("dist")
    run = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
                          str(src)], capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out


def test_wheel_carries_every_role_file_and_no_built_plugin(dist):
    (wheel,) = dist.glob("jobenergy-*-py3-none-any.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not [f for f in ROLE_FILES if f not in names]
    assert not [n for n in names if n.endswith(".so")]
    assert "jobenergy/cli/setup.py" in names


def test_wheel_metadata_has_the_spdx_licence(dist):
    (wheel,) = dist.glob("jobenergy-*.whl")
    with zipfile.ZipFile(wheel) as whl:
        info = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(whl.read(info))
        licence = whl.read(info.replace("METADATA", "licenses/LICENSE")).decode()
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert meta["License"] is None  # the deprecated free-text field
    assert not [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert licence == (ROOT / "LICENSE").read_text()


def test_sdist_rebuilds_everything(dist):
    (sdist,) = dist.glob("jobenergy-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"LICENSE", "pyproject.toml", "README.md", "deploy/INSTALL.md",
            "slurm_plugins/spank_jobenergy.c", "slurm_plugins/Makefile",
            "deploy/systemd/jobenergy-agent.service"} <= names


def test_installed_wheel_finds_its_data_with_importlib_resources(dist, tmp_path):
    (wheel,) = dist.glob("jobenergy-*.whl")
    zipfile.ZipFile(wheel).extractall(tmp_path)
    code = ("from importlib.resources import files\n"
            "print((files('jobenergy.deploy') / 'systemd' / 'jobenergy-agent.service').is_file(),"
            " (files('jobenergy.slurm_plugins') / 'spank_jobenergy.c').is_file())\n")
    # -S: no site-packages (nor this checkout's editable install), only the unpacked wheel.
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path)}, check=True)
    assert out.stdout == "True True\n"


def test_build_requirements_are_bounded():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (setuptools,) = project["build-system"]["requires"]
    assert setuptools.startswith("setuptools>=77") and ",<" in setuptools
    assert project["project"]["license"] == "Apache-2.0"
    assert project["project"]["license-files"] == ["LICENSE"]
