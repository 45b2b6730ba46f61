"""``jobenergy demo`` cleans up on SIGTERM as on Ctrl-C: server, agents, temporary folder."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def _descendants(pid: int) -> set[tuple[int, str]]:
    """Return ``(pid, start time)`` of every process below ``pid`` (the start time tells a
    reused pid apart)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:  # exited meanwhile
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
    found: set[tuple[int, str]] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            start = _start_time(child)
            if start is not None:
                found.add((child, start))
                todo.append(child)
    return found


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _start_demo(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, queue.Queue[str]]:
    """Start ``jobenergy demo`` in ``tmp_path`` (its TMPDIR); return it and its output lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBENERGY_")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "jobenergy.cli.main", "demo", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env={**env, "TMPDIR": str(tmp_path)})
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in demo.stdout],
                     daemon=True).start()
    return demo, lines


def _read_until(demo: subprocess.Popen, lines: queue.Queue[str], prefix: str,
                timeout_s: float) -> str:
    """Return the demo's output up to and with the first line starting with ``prefix``."""
    output: list[str] = []
    deadline = time.monotonic() + timeout_s
    while not any(line.startswith(prefix) for line in output):
        assert demo.poll() is None, "".join(output)
        output.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
    return "".join(output)


def test_sigterm_stops_every_child_and_removes_the_temporary_folder(tmp_path: Path) -> None:
    demo, lines = _start_demo(tmp_path)
    try:
        output = _read_until(demo, lines, "started ", 120)
        work = Path(re.search(r"working in (\S+)", output).group(1))
        assert work.parent == tmp_path and work.is_dir()
        children = _descendants(demo.pid)
        assert len(children) >= 2, children  # the server and the agents
        sent = time.monotonic()
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=60) == 128 + signal.SIGTERM
        assert time.monotonic() - sent < 30
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    left = [(pid, start) for pid, start in children if _start_time(pid) == start]
    assert left == [], left
    assert not work.exists()
    assert list(tmp_path.iterdir()) == []


def test_the_demo_prints_a_job_page_that_shows_its_power_curve(tmp_path: Path) -> None:
    """``--keep-running`` (a terminal's default): the URL printed last opens job 1001's page,
    and the series that page draws is there; the server stays up until SIGTERM."""
    import httpx

    demo, lines = _start_demo(tmp_path, "--keep-running")
    try:
        output = _read_until(demo, lines, "The server stays up", 180)
        page = re.search(r"^Open (\S+/job\?id=1001&cluster=(\S+)) ", output, re.M)
        assert page is not None, output
        url, cluster = page.group(1), page.group(2)
        html = httpx.get(url, timeout=10)
        assert html.status_code == 200 and "<html" in html.text.lower()
        base = url.split("/job?")[0]
        series = httpx.get(f"{base}/api/v1/jobs/1001/series", params={"cluster": cluster},
                           timeout=10).json()
        job = httpx.get(f"{base}/api/v1/jobs/1001", params={"cluster": cluster},
                        timeout=10).json()
        assert series["lines"] and job["energy_uj"] > 0
        assert series["energy_uj"] == job["energy_uj"]  # the curve integrates to the job
        assert demo.poll() is None  # still serving
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
