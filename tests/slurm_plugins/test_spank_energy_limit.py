"""``--energy-limit`` parsing of the SPANK plugin (slurm_plugins/spank_jobenergy.c), in C.

The plugin's source is compiled into a small program with the real ``slurm/spank.h``; the
Slurm functions it calls are stubs there (``slurm_error`` prints), so the callback the
option runs in sbatch is the one tested. The live test (tests/slurm/test_live_budgets.py)
submits through a real sbatch.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "slurm_plugins" / "spank_jobenergy.c"
HARNESS = r"""
#include <stdarg.h>
#include "SOURCE"
void slurm_error(const char *fmt, ...) { va_list ap; va_start(ap, fmt);
    vfprintf(stderr, fmt, ap); va_end(ap); fputc('\n', stderr); }
void slurm_debug(const char *fmt, ...) { (void)fmt; }
spank_err_t spank_option_register(spank_t sp, struct spank_option *opt) { return 0; }
const char *spank_strerror(spank_err_t err) { return ""; }
spank_context_t spank_context(void) { return S_CTX_LOCAL; }
spank_err_t spank_job_control_setenv(spank_t sp, const char *n, const char *v, int o)
    { return 0; }
spank_err_t spank_setenv(spank_t sp, const char *n, const char *v, int o) { return 0; }
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        limit_uj[0] = '\0';
        int rc = limit_cb(0, argv[i], 0);
        printf("%s\n", rc == 0 ? limit_uj : "refused");
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def parse(tmp_path_factory: pytest.TempPathFactory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not Path("/usr/include/slurm/spank.h").exists():
        pytest.skip("needs gcc and slurm/spank.h (libslurm-dev: scripts/system-deps.sh)")
    work = tmp_path_factory.mktemp("spank")
    (work / "harness.c").write_text(HARNESS.replace("SOURCE", str(SOURCE)))
    exe = work / "harness"
    subprocess.run([cc, "-O1", "-Wall", "-Wno-unused-parameter", "-o", str(exe),
                    str(work / "harness.c")],
                   check=True, capture_output=True, text=True)

    def run(*values: str) -> list[str]:
        out = subprocess.run([str(exe), *values], check=True, capture_output=True, text=True)
        return out.stdout.split()

    return run


def test_units_are_read_exactly_as_integer_microjoules(parse):
    assert parse("2.5kWh", "800Wh", "1MWh", "500kJ", "1J", "3MJ", "2.5 KWH", "0.1646Wh",
                 "1000MWh") == [
        "9000000000000", "2880000000000", "3600000000000000", "500000000000", "1000000",
        "3000000000000", "9000000000000", "592560000", "3600000000000000000"]


def test_garbage_negative_and_absurd_values_are_refused(parse):
    bad = ["", "2.5", "kWh", "-1kWh", "+1kWh", "0J", "0.5J", "1e3Wh", "1.kWh", ".5kWh",
           "1,5kWh", "2.5 kW", "2.5  kWh", "1000.1MWh", "2.5kWh; rm", "1.0000000001kWh",
           "9999999999999J"]
    assert parse(*bad) == ["refused"] * len(bad)


def test_hostile_values_are_refused_without_overflow(tmp_path):
    """Hex, exponents, NaN, whole-number and fraction overflows, very long strings and
    non-ASCII digits: all refused, under AddressSanitizer/UBSan and in a non-C locale."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None or not Path("/usr/include/slurm/spank.h").exists():
        pytest.skip("needs gcc and slurm/spank.h (libslurm-dev: scripts/system-deps.sh)")
    (tmp_path / "harness.c").write_text(HARNESS.replace("SOURCE", str(SOURCE)))
    exe = tmp_path / "harness"
    built = subprocess.run(
        [cc, "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
         "-Wall", "-Wno-unused-parameter", "-o", str(exe), str(tmp_path / "harness.c")],
        capture_output=True, text=True, check=False)
    if built.returncode != 0:
        pytest.skip(f"no sanitizers here: {built.stderr[-300:]}")
    bad = ["1e999", "1e999kWh", "0x10kWh", "0X10J", "nan", "NaNkWh", "infkWh", "inf",
           "9" * 13 + "J", "1." + "9" * 10 + "kWh", "9" * 5000 + "kWh", "1" + "0" * 4096,
           "1kWh\n", "1kWh ", " 1kWh", "1\tkWh", "\u0661kWh", "1kWh\u00a0", "1kwhh",
           "999999999999.999999999MWh", "1000000000000kJ", "1GWh", "1mWhx", "1" * 20000]
    out = subprocess.run([str(exe), *bad], capture_output=True, text=True, check=False,
                         env={"LC_ALL": "tr_TR.UTF-8", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["refused"] * len(bad)
    # The largest that fits (12 whole digits, 9 decimals) is exact, not wrapped.
    top = subprocess.run([str(exe), "999.999999999MWh", "999999999999.999999999J"],
                         capture_output=True, text=True, check=True)
    assert top.stdout.split() == ["3599999999996400000", "1000000000000000000"]
