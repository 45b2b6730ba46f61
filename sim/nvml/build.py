"""Build the simulated ``libnvidia-ml.so.1`` from ``nvml_sim.c`` with the system C compiler.

The result carries the soname ``libnvidia-ml.so.1``, so pynvml's ``CDLL("libnvidia-ml.so.1")``
finds it the normal way: through ``LD_LIBRARY_PATH`` in a new process, or, inside a process,
because the dynamic loader matches an already loaded library by soname (load it first by
absolute path, see :func:`preload`).
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from jobenergy.core.errors import JobEnergyError

SOURCE = Path(__file__).with_name("nvml_sim.c")
SONAME = "libnvidia-ml.so.1"


class BuildError(JobEnergyError):
    """The simulated NVML library could not be compiled."""


def find_compiler() -> str | None:
    """Return the path of a C compiler (``cc`` or ``gcc``), or None."""
    return shutil.which("cc") or shutil.which("gcc")


def build_libnvml(out_dir: str | Path, omit: Iterable[str] = ()) -> Path:
    """Compile the simulator into ``out_dir/libnvidia-ml.so.1`` and return that path.

    Args:
        out_dir: Folder for the library (created if missing). Use a separate folder per
            ``omit`` set: the file name is always the soname.
        omit: NVML function names to leave out of the library, as an older driver lacks
            them (only those guarded by ``OMIT_<name>`` in the source).

    Raises:
        BuildError: If no compiler is found or compilation fails.
    """
    compiler = find_compiler()
    if compiler is None:
        raise BuildError("no C compiler (cc/gcc) on PATH: cannot build the simulated NVML")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / SONAME
    defines = [f"-DOMIT_{name}" for name in sorted(set(omit))]
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(defines).encode()).hexdigest()
    stamp = out / ".nvml_sim.sha256"
    if target.exists() and stamp.exists() and stamp.read_text() == key:
        return target
    cmd = [
        compiler,
        "-shared",
        "-fPIC",
        "-O2",
        "-Wall",
        "-Wextra",
        *defines,
        f"-Wl,-soname,{SONAME}",
        "-o",
        str(target),
        str(SOURCE),
        "-lpthread",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    stamp.write_text(key)
    return target


def preload(library: str | Path) -> ctypes.CDLL:
    """Load ``library`` by absolute path so a later ``CDLL("libnvidia-ml.so.1")`` resolves to it.

    glibc's loader reuses a loaded object whose soname matches the requested name.
    """
    return ctypes.CDLL(str(Path(library).resolve()), mode=ctypes.RTLD_GLOBAL)
