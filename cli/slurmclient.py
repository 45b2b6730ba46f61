"""Job metadata from Slurm itself, behind a small interface.

:class:`SlurmClient` is what the rest of jobenergy needs from Slurm: finished jobs with their
metadata, and writing a job's AdminComment. :class:`SacctJsonClient` implements it with the
commands every Slurm has (``sacct --json``, ``sacctmgr``); a pyslurm or slurmrestd backend can
implement the same protocol where versions match (pyslurm does not build against 22.05).

The JSON layout changes between Slurm versions, so parsing is defensive and version-tolerant:

* 22.05 (``openapi/dbv0.0.38``): numbers are plain (``"task_id": 2``, ``null`` when unset),
  ``state.current`` is a string, ``exit_code = {"status": "SUCCESS", "return_code": 0}``.
* 23.02+ (``data_parser`` v0.0.39 … v0.0.42): numbers may be ``{"set": true, "infinite":
  false, "number": 2}``, ``state.current`` is a list of flags (``["COMPLETED"]``),
  ``exit_code.status`` a list, ``time.start`` may be such a number object.
* squeue (``openapi/v0.0.38``) uses flat keys (``job_state``, ``start_time``,
  ``array_job_id``) and ignores ``-j`` in 22.05: callers filter client-side.

Known 22.05 defect: ``sacct --json`` reports ``exit_code`` 0/SUCCESS for FAILED jobs (seen:
a job that ran ``exit 3`` shows ``return_code: 0``; text sacct says ``3:0``). The client
therefore also reads ``sacct -P -o JobIDRaw,ExitCode`` and prefers its exit code.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import hostlist

from jobenergy.core.errors import JobEnergyError


class SlurmError(JobEnergyError):
    """A Slurm command failed or answered something that cannot be parsed."""


@dataclass(frozen=True, slots=True)
class SlurmJob:
    """One Slurm job (an array task or a het-job component is a job of its own)."""

    job_id: str
    cluster: str | None = None
    name: str | None = None
    user: str | None = None
    account: str | None = None
    partition: str | None = None
    state: str | None = None
    exit_code: str | None = None  # "3:0" = exit status 3, signal 0 (sacct's form)
    nodelist: str | None = None  # Slurm hostlist, e.g. "n[2-3]"
    nodes: tuple[str, ...] = ()
    start: datetime | None = None
    end: datetime | None = None
    elapsed_s: int | None = None
    array_job_id: str | None = None
    array_task_id: str | None = None
    het_job_id: str | None = None
    het_job_offset: str | None = None
    tres_alloc: Mapping[str, int] = field(default_factory=dict)  # "cpu", "mem", "gres/gpu"
    admin_comment: str | None = None
    comment: str | None = None
    steps: tuple[str, ...] = ()  # "batch", "extern", "0", ... (text sacct's ids and order)
    step_names: Mapping[str, str] = field(default_factory=dict)  # step id -> its name
    alloc_tres_text: str | None = None  # AllocTRES as text sacct prints it
    kill_requid: int | None = None  # who cancelled it (text sacct: "CANCELLED by <uid>")

    @property
    def alloc_tres(self) -> str | None:
        """Return AllocTRES as sacct prints it (from text sacct, else built from the JSON)."""
        if self.alloc_tres_text is not None:
            return self.alloc_tres_text
        return format_tres(self.tres_alloc) if self.tres_alloc else None

    @property
    def ended(self) -> bool:
        """True once Slurm has an end time and the job is in no pending/running state."""
        return self.end is not None and self.state not in (None, "PENDING", "RUNNING",
                                                             "CONFIGURING", "COMPLETING",
                                                             "SUSPENDED", "REQUEUED")

    @property
    def admin_comment_id(self) -> str | None:
        """Return the id that names this job alone to ``sacctmgr modify job jobid=...``.

        ``jobid=40`` would change every task of array 40 (the last task keeps the array's
        raw id) and ``jobid=11`` both components of het job 11; ``40_2`` and ``11+0`` change
        only that one. None for an array record without a task id (a pending remainder
        such as ``40_[3-9]``) or a het component without its offset, which no single id
        names.
        """
        if self.array_job_id is not None:
            return None if self.array_task_id is None else (
                f"{self.array_job_id}_{self.array_task_id}")
        if self.het_job_id is not None:
            # A component without its offset has no id of its own: ``jobid=<leader>`` would
            # change every component.
            return None if self.het_job_offset is None else (
                f"{self.het_job_id}+{self.het_job_offset}")
        return self.job_id

    def slurm_tags(self) -> dict[str, str]:
        """Return the array/het ids as job tags (names as the hooks send them)."""
        tags = {"array_job_id": self.array_job_id, "array_task_id": self.array_task_id,
                "het_job_id": self.het_job_id, "het_job_offset": self.het_job_offset}
        return {k: v for k, v in tags.items() if v is not None}


class SlurmClient(Protocol):
    """What jobenergy needs from Slurm."""

    def jobs(self, *, job_ids: Sequence[str] = (), since: datetime | None = None,
             until: datetime | None = None) -> list[SlurmJob]:
        """Return the jobs with these ids, or that were active between ``since`` and
        ``until`` (None: now)."""

    def set_admin_comment(self, job_id: str, text: str) -> None:
        """Replace a (finished) job's AdminComment; ``job_id`` is
        :attr:`SlurmJob.admin_comment_id` (``40_2``, ``11+0`` or a plain id)."""


# -- defensive JSON helpers ---------------------------------------------------------------
def number(value: Any) -> int | None:
    """Return an int from ``5``, ``"5"``, ``{"set": true, "number": 5}``; None when unset."""
    if isinstance(value, Mapping):
        if value.get("set") is False or value.get("infinite") is True:
            return None
        value = value.get("number")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def flag(value: Any) -> str | None:
    """Return the main state from ``"COMPLETED"`` or ``["COMPLETED", "REQUEUED"]``."""
    if isinstance(value, Mapping):
        value = value.get("current", value.get("state"))
    if isinstance(value, list):
        value = value[0] if value else None
    return str(value).split()[0] if value else None


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, Mapping | list):
        return None
    text = str(value)
    return text if text else None


#: What slurmdbd (accounting_storage_mysql) stores as the name of a job whose record reached
#: it before the job's name did. Seen on 22.05: ``sacct`` prints a cancelled job as
#: ``allocation|CANCELLED`` for a second or two, then its real name.
SLURMDBD_PLACEHOLDER_NAME = "allocation"


def _job_name(value: Any) -> str | None:
    """Return the job's name, or None where sacct gives slurmdbd's placeholder.

    The sync's events are authoritative: a placeholder would overwrite the name the hooks
    reported. A job its user really named "allocation" keeps that name from the hooks.
    """
    name = _text(value)
    return None if name == SLURMDBD_PLACEHOLDER_NAME else name


def _time(value: Any) -> datetime | None:
    seconds = number(value)
    return datetime.fromtimestamp(seconds, UTC) if seconds else None


#: Slurm's NO_VAL (0xfffffffe) and INFINITE (0xffffffff): "unset" in raw 32-bit ids.
_UNSET_IDS = (0xFFFFFFFE, 0xFFFFFFFF)


def _id(value: Any, *, zero_is_none: bool = True) -> str | None:
    n = number(value)
    if n is None or (zero_is_none and n == 0) or n in _UNSET_IDS or n < 0:
        return None
    return str(n)


def exit_code_text(value: Any) -> str | None:
    """Return sacct's ``status:signal`` from any JSON exit-code layout, or None."""
    if isinstance(value, Mapping):
        code = number(value.get("return_code"))
        sig = value.get("signal")
        sig_id = number(sig.get("id", sig.get("signal_id"))) if isinstance(sig, Mapping) else None
        status = value.get("status")
        status = status[0] if isinstance(status, list) and status else status
        if code is None and sig_id is None:
            return None if status in (None, "PENDING") else "0:0"
        return f"{code or 0}:{sig_id or 0}"
    n = number(value)  # squeue: the raw wait status
    if n is None:
        return None
    return f"{(n >> 8) & 0xFF}:{n & 0x7F}"


def expand_hostlist(text: str | None) -> tuple[str, ...]:
    """Expand a Slurm hostlist (``n[1-3,5],gpu[01-02]``) into node names, in Slurm's order.

    python-hostlist does the expansion (the one senergy compresses with); a list it cannot
    parse is kept as one name rather than lost. Slurm's placeholders mean no nodes.
    """
    if not text or text in ("None assigned", "(null)"):
        return ()
    try:
        return tuple(hostlist.expand_hostlist(text))
    except hostlist.BadHostlist:
        return (text,)


def _tres(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    if isinstance(items, str):  # squeue's "cpu=1,mem=500M,node=1,billing=1,gres/gpu=1"
        for part in items.split(","):
            key, _, value = part.partition("=")
            if value.isdigit():
                out[key] = int(value)
        return out
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, Mapping):
            continue
        name = f"{item.get('type')}/{item['name']}" if item.get("name") else str(item.get("type"))
        count = number(item.get("count"))
        if count is not None:
            out[name] = count
    return out


def parse_job(raw: Mapping[str, Any]) -> SlurmJob:
    """Normalise one job object of ``sacct --json`` or ``squeue --json`` (any version)."""
    job_id = _id(raw.get("job_id"), zero_is_none=False)
    if job_id is None:
        raise SlurmError(f"job without job_id: {str(raw)[:200]}")
    t = raw.get("time") if isinstance(raw.get("time"), Mapping) else {}
    array = raw.get("array") if isinstance(raw.get("array"), Mapping) else {}
    het = raw.get("het") if isinstance(raw.get("het"), Mapping) else {}
    comment = raw.get("comment")
    tres = raw.get("tres") if isinstance(raw.get("tres"), Mapping) else {}
    het_id = _id(het.get("job_id", raw.get("het_job_id")))
    assoc = raw.get("association") if isinstance(raw.get("association"), Mapping) else {}
    steps = []
    step_names = {}
    for step in raw.get("steps") or []:
        info = step.get("step") if isinstance(step, Mapping) else None
        sid = info.get("id") if isinstance(info, Mapping) else None
        if isinstance(sid, str | int):
            steps.append(str(sid).rsplit(".", 1)[-1])  # 23.02+: "6.batch"
            name = _text(info.get("name"))
            if name is not None:
                step_names[steps[-1]] = name
    nodelist = _text(raw.get("nodes"))
    return SlurmJob(
        job_id=job_id,
        cluster=_text(raw.get("cluster")),
        name=_job_name(raw.get("name")),
        user=_text(raw.get("user") or raw.get("user_name") or assoc.get("user")),
        account=_text(raw.get("account")),
        partition=_text(raw.get("partition")),
        state=flag(raw.get("state") if "state" in raw else raw.get("job_state")),
        exit_code=exit_code_text(raw.get("exit_code")),
        nodelist=nodelist,
        nodes=expand_hostlist(nodelist),
        start=_time(t.get("start", raw.get("start_time"))),
        end=_time(t.get("end", raw.get("end_time"))),
        elapsed_s=number(t.get("elapsed")),
        array_job_id=_id(array.get("job_id", raw.get("array_job_id"))),
        array_task_id=_id(array.get("task_id", raw.get("array_task_id")), zero_is_none=False),
        het_job_id=het_id,
        het_job_offset=(_id(het.get("job_offset", raw.get("het_job_offset")), zero_is_none=False)
                        if het_id else None),
        tres_alloc=_tres(tres.get("allocated", raw.get("tres_alloc_str"))),
        admin_comment=_text(comment.get("administrator") if isinstance(comment, Mapping)
                            else raw.get("admin_comment")),
        comment=_text(comment.get("job") if isinstance(comment, Mapping) else comment),
        steps=tuple(steps),
        step_names=step_names,
    )


def parse_jobs_json(text: str | bytes) -> list[SlurmJob]:
    """Parse the whole output of ``sacct --json`` / ``squeue --json``.

    Raises:
        SlurmError: Not JSON, no ``jobs`` list, or Slurm reported errors.
    """
    try:
        data = json.loads(text)
    except ValueError as err:
        raise SlurmError(f"Slurm JSON output is not JSON: {err}") from err
    if not isinstance(data, Mapping) or not isinstance(data.get("jobs"), list):
        raise SlurmError("Slurm JSON output has no 'jobs' list")
    errors = [e for e in data.get("errors") or [] if e]
    if errors:
        raise SlurmError(f"Slurm reported errors: {str(errors)[:300]}")
    return [parse_job(raw) for raw in data["jobs"] if isinstance(raw, Mapping)]


def parse_exit_codes(text: str) -> dict[str, str]:
    """Parse ``sacct -n -P -X -o JobIDRaw,ExitCode`` into job id → ``status:signal``."""
    codes = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) >= 2 and parts[0].isdigit() and re.fullmatch(r"\d+:\d+", parts[1]):
            codes[parts[0]] = parts[1]
    return codes


#: Units of memory TRES counts (MB), as sacct converts them: exact multiples only.
_MEM_UNITS = "MGTPE"


def _mem_text(megabytes: int) -> str:
    """Return a memory TRES count as sacct prints it (``convert_num_unit``, exact): 500 →
    ``500M``, 4096 → ``4G``, 1536 → ``1.50G``."""
    value, unit = float(megabytes), 0
    while value >= 1024 and int(value) % 512 == 0 and unit < len(_MEM_UNITS) - 1:
        value /= 1024
        unit += 1
    text = str(int(value)) if value == int(value) else f"{value:.2f}"
    return text + _MEM_UNITS[unit]


def format_tres(tres: Mapping[str, int]) -> str:
    """Return TRES counts as sacct's AllocTRES: by name, memory with units
    (``billing=4,cpu=4,gres/gpu=1,mem=4G,node=1``)."""
    return ",".join(
        f"{name}={_mem_text(count) if name in ('mem', 'bb') else count}"
        for name, count in sorted(tres.items()))


@dataclass(frozen=True, slots=True)
class SacctDetails:
    """What only text sacct prints exactly, for one job (``SACCT_DETAILS_FORMAT``)."""

    alloc_tres: str | None = None
    kill_requid: int | None = None
    steps: tuple[str, ...] = ()
    step_names: Mapping[str, str] = field(default_factory=dict)


#: ``sacct -n -P`` fields read by :func:`parse_sacct_details` (JobName last: it may hold
#: the delimiter).
SACCT_DETAILS_FORMAT = "JobIDRaw,JobID,State,AllocTRES,JobName"
_DETAIL_RAW = re.compile(r"(\d+)(?:\.(\S+))?")
_DETAIL_ID = re.compile(r"\d+(?:_\d+|\+\d+)?(?:\.(\S+))?")
_TRES_TEXT = re.compile(r"(?:[^,=\s]+=[^,=\s]+(?:,[^,=\s]+=[^,=\s]+)*)?")
_CANCELLED_BY = re.compile(r"CANCELLED by (\d+)")


def parse_sacct_details(text: str) -> dict[str, SacctDetails]:
    """Parse ``sacct -n -P -o JobIDRaw,JobID,State,AllocTRES,JobName`` (steps included) into
    raw job id → AllocTRES, the uid in "CANCELLED by <uid>", the steps (their ids as sacct
    prints them after the job's, in its order) and their names.

    Lines that are not of that shape (another format, a job name's line break) are skipped.
    """
    jobs: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        parts = line.split("|", 4)
        if len(parts) != 5:
            continue
        raw, shown, state, tres, name = parts
        m_raw, m_id = _DETAIL_RAW.fullmatch(raw), _DETAIL_ID.fullmatch(shown)
        if m_raw is None or m_id is None or not _TRES_TEXT.fullmatch(tres):
            continue
        job = jobs.setdefault(m_raw.group(1), {"steps": [], "step_names": {}})
        step = m_id.group(1)
        if m_raw.group(2) is None and step is None:
            job["alloc_tres"] = tres or None
            cancelled = _CANCELLED_BY.fullmatch(state.strip())
            job["kill_requid"] = int(cancelled.group(1)) if cancelled else None
        elif step is not None and step not in job["steps"]:
            job["steps"].append(step)
            if name:
                job["step_names"][step] = name
    return {
        raw: SacctDetails(job.get("alloc_tres"), job.get("kill_requid"), tuple(job["steps"]),
                          job["step_names"])
        for raw, job in jobs.items()
    }


Runner = Callable[[Sequence[str]], str]


def run_command(argv: Sequence[str], timeout_s: float = 60.0) -> str:
    """Run a Slurm command and return its stdout.

    Raises:
        SlurmError: The command is missing, timed out or exited non-zero.
    """
    try:
        # Job names and comments are users' bytes: undecodable ones must not stop a sync.
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s,
                              check=False, encoding="utf-8", errors="replace")
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SlurmError(f"{argv[0]} failed: {err}") from err
    if proc.returncode != 0:
        raise SlurmError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[:300]}")
    return proc.stdout


#: ``12``, ``40_2`` or ``11+0``: what ``sacctmgr modify job jobid=`` takes for one job.
_ONE_JOB_ID = re.compile(r"\d+(?:_\d+|\+\d+)?")


def _sacct_time(moment: datetime) -> str:
    """Return ``sacct -S/-E`` time: local wall time, as sacct reads it."""
    return moment.astimezone().strftime("%Y-%m-%dT%H:%M:%S")


class SacctJsonClient:
    """:class:`SlurmClient` over ``sacct --json`` and ``sacctmgr`` (needs slurmdbd).

    Args:
        runner: Runs a command, returns stdout, raises :class:`SlurmError` (tests pass one
            that answers captured output).
        cluster: ``sacct -M`` cluster; None = the local one.
    """

    #: sacctmgr stores AdminComment in lower case (seen on 22.05, quoted or not:
    #: ``set AdminComment=HeLLo`` reads back ``hello``), so rewriting a comment that holds
    #: another tool's mixed-case data (jobstats' base64) would corrupt it.
    lowercases_admin_comment = True

    def __init__(self, runner: Runner = run_command, cluster: str | None = None) -> None:
        self._run = runner
        self.cluster = cluster

    def _sacct(self, *args: str, job_ids: Sequence[str], since: datetime | None,
               until: datetime | None = None) -> list[str]:
        argv = ["sacct", *args, "-a"]
        if self.cluster:
            argv += ["-M", self.cluster]
        if job_ids:
            argv += ["-j", ",".join(job_ids)]
        else:
            start = since or datetime.now(UTC).replace(hour=0, minute=0, second=0)
            end = _sacct_time(until) if until is not None else "now"
            argv += ["-S", _sacct_time(start), "-E", end]
        return argv

    def jobs(self, *, job_ids: Sequence[str] = (), since: datetime | None = None,
             until: datetime | None = None) -> list[SlurmJob]:
        """Return jobs from ``sacct --json``, exit codes corrected from text sacct."""
        window = {"job_ids": job_ids, "since": since, "until": until}
        jobs = parse_jobs_json(self._run(self._sacct("--json", **window)))
        try:
            codes = parse_exit_codes(self._run(self._sacct(
                "-n", "-P", "-X", "-o", "JobIDRaw,ExitCode", **window)))
        except SlurmError:
            codes = {}
        try:
            # Steps included (no -X): their ids as sacct prints them (het components, ...).
            details = parse_sacct_details(self._run(self._sacct(
                "-n", "-P", "-o", SACCT_DETAILS_FORMAT, **window)))
        except SlurmError:
            details = {}
        wanted = set(job_ids)
        out = []
        for job in jobs:
            if wanted and job.job_id not in wanted and job.array_job_id not in wanted:
                continue
            code = codes.get(job.job_id)
            if code is not None and code != job.exit_code:
                job = replace(job, exit_code=code)
            more = details.get(job.job_id)
            if more is not None:
                job = replace(job, alloc_tres_text=more.alloc_tres,
                              kill_requid=more.kill_requid, steps=more.steps or job.steps,
                              step_names={**job.step_names, **more.step_names})
            out.append(job)
        return out

    def set_admin_comment(self, job_id: str, text: str) -> None:
        """Set AdminComment with sacctmgr (``scontrol update`` refuses finished jobs).

        ``job_id`` must name one job: ``40_2`` (array task), ``11+0`` (het component) or a
        plain id (see :attr:`SlurmJob.admin_comment_id`).
        """
        if not _ONE_JOB_ID.fullmatch(job_id):
            raise SlurmError(f"not a single-job id: {job_id!r}")
        self._run(["sacctmgr", "-i", "modify", "job", f"jobid={job_id}", "set",
                   f"AdminComment={text}"])


def filter_jobs(jobs: Iterable[SlurmJob], job_ids: Iterable[str]) -> list[SlurmJob]:
    """Keep the jobs whose id (or array parent id) is wanted: ``squeue -j`` is ignored in 22.05."""
    wanted = set(job_ids)
    return [j for j in jobs if j.job_id in wanted or (j.array_job_id in wanted)]
