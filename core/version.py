"""The one version string of jobenergy: the installed distribution's (pyproject.toml)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("jobenergy")
except PackageNotFoundError:  # a checkout on sys.path without an install
    VERSION = "0+unknown"
