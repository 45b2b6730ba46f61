"""/proc/stat CPU times and boot_id, read from procfs trees built per test."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from jobenergy.agent import procstat
from jobenergy.agent.procstat import parse_cpu_times, read_boot_id, read_cpu_times
from jobenergy.agent.readings import CpuTimes
from jobenergy.core.errors import SensorError

# Shape of a 4-CPU host's /proc/stat (proc(5)); fields: user nice system idle iowait irq
# softirq steal guest guest_nice.
PROC_STAT = """\
cpu  10132153 290696 3084719 46828483 16683 0 25195 7 175628 31
cpu0 1393280 32966 572056 13343292 6130 0 17875 2 20000 1
cpu1 1335897 32567 555945 13357525 2964 0 2401 2 50000 10
cpu2 5128466 111623 1116925 10086637 3823 0 2477 2 60000 10
cpu3 2274510 113540 839793 10041029 3766 0 2442 1 45628 10
intr 1462898 0 0 0
ctxt 226427896
btime 1700000000
processes 2918442
procs_running 2
procs_blocked 0
softirq 1166024 0 1 2 3 4 5 6 7 8 9
"""
BUSY_TICKS = 10132153 + 290696 + 3084719 + 0 + 25195 + 7  # guest, guest_nice left out
TOTAL_TICKS = BUSY_TICKS + 46828483 + 16683


@pytest.fixture
def make_proc(tmp_path: Path):
    """Factory: make_proc(stat=..., boot_id=...) writes a procfs tree and returns its root."""

    def make(stat: str | None = PROC_STAT, boot_id: str | None = None) -> Path:
        if stat is not None:
            (tmp_path / "stat").write_text(stat)
        if boot_id is not None:
            random = tmp_path / "sys" / "kernel" / "random"
            random.mkdir(parents=True)
            (random / "boot_id").write_text(boot_id)
        return tmp_path

    return make


def test_cpu_times_in_ns(make_proc) -> None:
    times = read_cpu_times(make_proc(), ticks_per_s=100)

    assert times == CpuTimes(
        busy_ns=BUSY_TICKS * 10_000_000, total_ns=TOTAL_TICKS * 10_000_000, ncpus=4
    )


def test_conversion_is_exact_integer_arithmetic(make_proc) -> None:
    times = read_cpu_times(make_proc("cpu  1 0 0 2\ncpu0 1 0 0 2\n"), ticks_per_s=3)

    # 1 tick of 1/3 s: floor(1e9 / 3); a float path would give 333333333.33...
    assert times == CpuTimes(busy_ns=333_333_333, total_ns=1_000_000_000, ncpus=1)


def test_default_ticks_per_s_is_the_hosts_user_hz(make_proc) -> None:
    root = make_proc()
    assert read_cpu_times(root) == read_cpu_times(root, ticks_per_s=os.sysconf("SC_CLK_TCK"))


def test_old_kernel_with_four_fields(make_proc) -> None:
    times = read_cpu_times(make_proc("cpu  5 1 2 10\ncpu0 5 1 2 10\n"), ticks_per_s=100)

    assert times == CpuTimes(busy_ns=80_000_000, total_ns=180_000_000, ncpus=1)


def test_cpu_lines_after_the_aggregate_are_only_counted(make_proc) -> None:
    stat = "cpu  1 0 0 1 0 0 0 0 0 0\n" + "".join(f"cpu{i} 9 9 9 9\n" for i in range(64))
    times = read_cpu_times(make_proc(stat), ticks_per_s=100)
    assert (times.busy_ns, times.ncpus) == (10_000_000, 64)


@pytest.mark.parametrize(
    "stat",
    ["", "intr 1 2 3\n", "cpu  1 2 x 4\n", "cpu  1 2 3\n", "cpu  1 2 -3 4\n"],
    ids=["empty", "no-cpu-line", "non-integer", "too-few-fields", "negative"],
)
def test_garbage_stat_raises(make_proc, stat: str) -> None:
    with pytest.raises(SensorError, match=r"cannot parse .*/stat"):
        read_cpu_times(make_proc(stat), ticks_per_s=100)


def test_missing_stat_raises(make_proc) -> None:
    with pytest.raises(SensorError, match=r"cannot read .*/stat"):
        read_cpu_times(make_proc(stat=None), ticks_per_s=100)


def test_parse_rejects_bad_ticks() -> None:
    with pytest.raises(ValueError, match="ticks_per_s"):
        parse_cpu_times(PROC_STAT, 0)


def test_boot_id(make_proc) -> None:
    root = make_proc(boot_id="6f0b6bd4-7c39-4a8f-9d0e-1b1b3b4c5d6e\n")
    assert read_boot_id(root) == "6f0b6bd4-7c39-4a8f-9d0e-1b1b3b4c5d6e"


@pytest.mark.parametrize("content", ["", "\n", "two words\n", "x" * 65])
def test_bad_boot_id_raises(make_proc, content: str) -> None:
    with pytest.raises(SensorError, match="boot_id"):
        read_boot_id(make_proc(boot_id=content))


def test_missing_boot_id_raises(make_proc) -> None:
    with pytest.raises(SensorError, match=r"cannot read .*sys/kernel/random/boot_id"):
        read_boot_id(make_proc())


def _outcome(text: str) -> CpuTimes | str:
    try:
        return parse_cpu_times(text, 100)
    except ValueError as err:
        return str(err)


def test_scan_finds_what_the_line_loop_finds(monkeypatch) -> None:
    """Kernel-shaped text is scanned, other text goes through the line loop: same results."""
    pieces = ["cpu", "cpu ", "cpu0", "cpu12 ", " ", "\n", "\t", "1", "-1", "x", "7 ", "cpu  ",
              "\r", "١", "_", "\ufffd", "\ncpu ", "cpu1\n"]
    rng = random.Random(10)
    texts = [PROC_STAT, PROC_STAT.replace("\n", "\r\n"), "cpu\n", "cpu  1 2 3 4\ncpu7"]
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 14))) for _ in range(3000)]
    scanned = [_outcome(text) for text in texts]
    monkeypatch.setattr(procstat, "_ODD_BREAKS", "".join(set("".join(pieces))))  # loop only
    assert [_outcome(text) for text in texts] == scanned
