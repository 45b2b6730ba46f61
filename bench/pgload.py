"""Load tests/pgserver.py (the throwaway PostgreSQL helper) for the benchmarks.

tests/ is not a package on sys.path (putting it there would let tests/api shadow
jobenergy.api), so the module is imported by path, once.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def load_pgserver() -> ModuleType:
    """Return tests/pgserver.py as a module."""
    name = "jobenergy_pgserver"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "pgserver.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
