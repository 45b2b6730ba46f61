"""Build and register the SPANK plugin for ``jobenergy setup slurm-hooks``.

The plugin (``slurm_plugins/spank_jobenergy.c``, shipped in the package) is compiled on the
host, against that host's ``slurm/spank.h``: a SPANK plugin must match the Slurm it is loaded
by, so no prebuilt binary is shipped. The build runs in a temporary folder on a relative
source name, so the same compiler gives the same bytes and a second run changes nothing.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from importlib.resources import files
from pathlib import Path

from jobenergy.cli.setup_files import Installer

SPANK_SO = "spank_jobenergy.so"
SHIPPED_PLUGIN = "/usr/local/lib/slurm/spank_jobenergy.so"  # in plugstack.conf.d-jobenergy.conf
# As slurm_plugins/Makefile, without -Werror: a newer compiler's new warning must not stop an
# install (the repository's own build keeps -Werror).
CFLAGS = ("-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-shared", "-fPIC")
HEADERS_HINT = "apt-get install libslurm-dev (Debian/Ubuntu) or dnf install slurm-devel (EL)"


def _compiler() -> list[str] | None:
    if os.environ.get("CC"):
        return shlex.split(os.environ["CC"])
    found = shutil.which("cc") or shutil.which("gcc")
    return [found] if found else None


def compile_plugin(include_dir: Path) -> bytes:
    """Compile the plugin against ``include_dir/slurm/spank.h``; return the .so's bytes.

    Raises:
        RuntimeError: No header, no compiler, or the compiler failed (first error line).
    """
    header = include_dir / "slurm" / "spank.h"
    if not header.is_file():
        raise RuntimeError(f"{header} is missing: {HEADERS_HINT}, then run this again "
                           "(or --no-spank)")
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler (cc/gcc): apt-get install gcc libc6-dev, then run "
                           "this again (or --no-spank)")
    source = (files("jobenergy.slurm_plugins") / "spank_jobenergy.c").read_bytes()
    with tempfile.TemporaryDirectory(prefix="jobenergy-spank-") as tmp:
        Path(tmp, "spank_jobenergy.c").write_bytes(source)
        argv = [*compiler, *CFLAGS, f"-I{include_dir}", "-o", SPANK_SO, "spank_jobenergy.c"]
        try:
            out = subprocess.run(argv, cwd=tmp, capture_output=True, text=True, check=False,
                                 timeout=120)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise RuntimeError(f"cannot run {compiler[0]}: {err}") from err
        if out.returncode != 0:
            errors = [line for line in out.stderr.splitlines() if "error" in line]
            first = (errors or out.stderr.splitlines() or [f"exit {out.returncode}"])[0]
            raise RuntimeError(f"{compiler[0]} failed on spank_jobenergy.c: {first}")
        return Path(tmp, SPANK_SO).read_bytes()


def build_spank(inst: Installer, include_dir: Path, plugin_dir: str,
                slurm_conf_dir: str) -> str | None:
    """Install the plugin and its plugstack.conf.d line; return why not, if it could not be
    built (the rest of the role is still installed)."""
    plugin = f"{plugin_dir.rstrip('/')}/{SPANK_SO}"
    try:
        data = compile_plugin(include_dir)
    except RuntimeError as err:
        inst.note("not built", plugin, "(see below)")
        return f"SPANK plugin not built: {err}"
    inst.directory(plugin_dir, 0o755)
    inst.binary(plugin, data, 0o755)
    conf_dir = slurm_conf_dir.rstrip("/")
    stack_dir = f"{conf_dir}/plugstack.conf.d"
    line = (files("jobenergy.deploy") / "slurm" / "plugstack.conf.d-jobenergy.conf").read_text()
    inst.directory(stack_dir, 0o755)
    inst.file(f"{stack_dir}/jobenergy.conf", line.replace(SHIPPED_PLUGIN, plugin), 0o644)
    _plugstack_includes(inst, conf_dir, stack_dir)
    return None


def _plugstack_includes(inst: Installer, conf_dir: str, stack_dir: str) -> None:
    """Make sure Slurm reads plugstack.conf.d: Debian's plugstack.conf includes it; without a
    plugstack.conf, write one that does; one without the include is the admin's to edit."""
    include = f"include {stack_dir}/*.conf"
    main = f"{conf_dir}/plugstack.conf"
    path = inst.path(main)
    if not path.exists():
        inst.file(main, f"# SPANK plugins: one file per plugin in {stack_dir}/.\n{include}\n",
                  0o644)
        return
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as err:
        inst.note("to do", main, f"cannot read it ({err.strerror}): it must hold: {include}")
        return
    if any(ln.split()[:1] == ["include"] and "plugstack.conf.d" in ln for ln in lines):
        inst.note("unchanged", main, f"(includes {stack_dir})")
    else:
        inst.note("to do", main, f"add the line: {include}  (else Slurm never loads the plugin)")
