"""``jobenergy slurm``: enrich jobs from Slurm's accounting and write energy into AdminComment.

    jobenergy slurm sync --url http://collector:8080 [--since 2h | --jobs 12,13] [--wait 120]
                         [--state /var/lib/jobenergy/slurm-sync-state.json]
    jobenergy slurm flush-outbox --url http://collector:8080 --outbox /var/spool/jobenergy/outbox

``sync`` reads finished jobs from ``sacct --json`` (:mod:`.slurmclient`), posts their start
and end events with what only Slurm knows for sure (name, nodelist, state, exit code, start
and end, array and het-job ids as tags), and, once a job's energy is final — every node of
the job has reported energy up to ``--settle`` seconds past the job's end (``GET
/api/v1/nodes``) — writes a one-line summary into its AdminComment with ``sacctmgr``
(``scontrol update`` refuses finished jobs), keeping every byte of other content
(:mod:`.admin_comment`)::

    energy_kwh=0.412 gpu_kwh=0.39 facility_kwh=0.494 co2e_kg=0.027

or ``energy=unmeasured`` for a job that no energy source covered, so ``sacct -o
JobID,AdminComment`` shows it.

* Each job is addressed alone: an array task as ``40_2`` and a het component as ``11+0``
  (``jobid=40`` would change every task of the array, ``jobid=11`` every component).
* Every pass compares the AdminComment it would write with the one Slurm holds and calls
  ``sacctmgr`` only when they differ: wrong values written earlier (late energy, an old
  bug) are repaired by the next pass that sees the job, and an idempotent pass writes
  nothing.
* Factor changes: a PUE or carbon change rewrites the stored facility energy and CO2e of
  past jobs, and the collector records each such rewrite as a factor revision with its span
  of hours (``GET /api/v1/clusters/{c}/factor-changes?after=N``). In periodic mode (no
  ``--jobs``) the sync keeps, in a small state file (``--state``; by default
  ``/var/lib/jobenergy/slurm-sync-state.json`` when that folder is writable, otherwise this
  step is skipped with a warning), the last revision it handled per cluster; when the
  cluster's revision is newer it re-syncs the jobs of the rewritten spans (``sacct -S/-E``)
  and then stores the new revision. A pass with errors keeps the old one and tries again.

Run it from EpilogSlurmctld (``JOBENERGY_SYNC_CMD`` in the hook settings, as SlurmUser,
which may modify jobs) and/or from a systemd timer. slurmctld starts its hooks with
SIGTERM, SIGINT and SIGHUP blocked; both commands unblock them first, so ``kill`` works.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from jobenergy.cli.api_client import api_client, error_detail
from jobenergy.core import logs
from jobenergy.core.errors import ConfigError, JobEnergyError
from jobenergy.core.schema import MAX_SLURM_STEPS
from jobenergy.core.slurm_time import SlurmTimeError, parse_slurm_time

from .admin_comment import admin_comment_text, format_summary, has_summary
from .slurmclient import SacctJsonClient, SlurmClient, SlurmError, SlurmJob
from .sync_state import load_state, resolve_state_path, save_state

logger = logging.getLogger(__name__)

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Slurm integration: sacct enrichment, AdminComment, hook outbox.")

TERMINATION_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: Factor changes asked for per request (the collector allows up to 10 000).
FACTOR_CHANGES_PAGE = 1000
#: What the collector takes (core/schema.JobEvent): longer is left out, not refused.
MAX_TRES_CHARS = 1024
MAX_STEP_ID_CHARS = 32


def unblock_termination_signals() -> None:
    """Let ``kill`` stop this process.

    slurmctld runs EpilogSlurmctld with SIGTERM, SIGINT and SIGHUP blocked, and a blocked
    mask survives fork and exec: a sync started from the hook would otherwise ignore a
    plain ``kill`` until its ``--wait`` ran out. An ignored SIGTERM is reset for the same
    reason (an ignored SIGHUP is left alone: that is what ``nohup`` asks for).
    """
    signal.pthread_sigmask(signal.SIG_UNBLOCK, TERMINATION_SIGNALS)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def parse_api_time(value: Any) -> datetime:
    """Parse an API timestamp (ISO 8601, ``Z`` or offset; naive is UTC)."""
    moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def merge_spans(spans: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """Return the union of ``[start, end)`` spans as sorted, disjoint spans."""
    out: list[tuple[datetime, datetime]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def energy_final(job: SlurmJob, nodes: list[dict[str, Any]], settle_s: float) -> bool:
    """True when every node of ``job`` has reported energy past ``job.end + settle_s``.

    Args:
        job: A finished job.
        nodes: ``GET /api/v1/nodes`` rows (cluster, node, component, last_at).
        settle_s: Extra seconds after the end (covers the agent interval that closes the job
            and the prolog's GPU map that lingers after the epilog).
    """
    if job.end is None or not job.nodes:
        return False
    due = job.end + timedelta(seconds=settle_s)
    last: dict[str, datetime] = {}
    for row in nodes:
        if job.cluster and row.get("cluster") not in (None, job.cluster):
            continue
        at = row.get("last_at")
        if not at:
            continue
        moment = parse_api_time(at)
        node = str(row.get("node"))
        last[node] = min(last.get(node, moment), moment)
    return all(node in last and last[node] >= due for node in job.nodes)


def job_events(job: SlurmJob, cluster: str) -> list[dict[str, Any]]:
    """Return the start and end events (POST /api/v1/jobs/events bodies) Slurm supports.

    They are marked ``source = "sacct"``: the collector takes their times, state, exit
    code, names and nodes over the hooks' (collector/events.py), with the array / het-job
    ids (as tags), AllocTRES and the steps as sacct lists them.
    """
    common: dict[str, Any] = {"cluster": cluster, "job_id": job.job_id, "source": "sacct",
                              "tags": job.slurm_tags()}
    for key in ("user", "account", "partition", "name", "comment"):
        value = getattr(job, key)
        if value:
            common[key] = value
    if job.nodes:
        common["nodes"] = list(job.nodes)
    tres = job.alloc_tres
    if tres and len(tres) <= MAX_TRES_CHARS:
        common["alloc_tres"] = tres
    steps = [{"id": step, **({"name": job.step_names[step][:255]}
                             if job.step_names.get(step) else {})}
             for step in job.steps if 0 < len(step) <= MAX_STEP_ID_CHARS]
    if len(steps) > MAX_SLURM_STEPS:
        logger.warning("job %s: %s steps, the first %s kept", job.job_id, len(steps),
                       MAX_SLURM_STEPS)
    events = []
    if job.start is not None:
        events.append({**common, "event": "start", "time": job.start.timestamp()})
    end: dict[str, Any] = {**common, "event": "end", "steps": steps[:MAX_SLURM_STEPS],
                           "time": job.end.timestamp() if job.end else None}
    if job.state:
        end["state"] = job.state[:32]
    if job.exit_code:
        end["exit_code"] = job.exit_code
    if job.kill_requid is not None:
        end["kill_requid"] = job.kill_requid
    if job.end is not None:
        events.append(end)
    return events


def flush_outbox(http: httpx.Client, outbox: Path) -> tuple[int, int]:
    """Deliver the hooks' kept events in time order; return (delivered, still kept)."""
    files = sorted(outbox.glob("*.json")) if outbox.is_dir() else []
    sent = 0
    for i, path in enumerate(files):
        try:
            body = path.read_bytes()
            resp = http.post("/api/v1/jobs/events", content=body,
                             headers={"Content-Type": "application/json"})
        except (httpx.HTTPError, JobEnergyError) as err:
            logger.warning("outbox delivery failed file=%s err=%s", path, err)
            return sent, len(files) - i
        except OSError:
            continue
        if resp.status_code >= 500 or resp.status_code in (401, 403, 429):
            # The event is fine; the credentials (or the server's patience) are not: keep it.
            logger.warning("outbox delivery refused file=%s status=%s reason=%s", path,
                           resp.status_code, error_detail(resp, 300))
            return sent, len(files) - i
        if resp.status_code >= 400:
            logger.error("outbox event rejected file=%s status=%s body=%s", path,
                         resp.status_code, resp.text[:300])
        path.unlink(missing_ok=True)
        sent += 1
    return sent, 0


@dataclass
class SyncReport:
    """What one sync pass did (job ids are Slurm's raw ids)."""

    events_sent: int = 0
    comments: dict[str, str] = field(default_factory=dict)  # job id → AdminComment written
    pending: list[str] = field(default_factory=list)  # ended jobs whose energy is not final
    done: list[str] = field(default_factory=list)  # AdminComment already right: not written
    skipped: list[str] = field(default_factory=list)  # nothing to write (no nodes, or off)
    withheld: list[str] = field(default_factory=list)  # summary would corrupt jobstats data
    errors: list[str] = field(default_factory=list)

    def merge(self, other: SyncReport) -> None:
        """Add another pass's results to this one."""
        self.events_sent += other.events_sent
        self.comments.update(other.comments)
        for name in ("pending", "done", "skipped", "withheld", "errors"):
            getattr(self, name).extend(getattr(other, name))

    def handled(self) -> set[str]:
        """Job ids that need no further pass."""
        return set(self.comments) | set(self.done) | set(self.skipped)


class Syncer:
    """One collector, one Slurm: enrich ended jobs and write their AdminComment.

    Args:
        http: Client whose base URL is the collector/API.
        slurm: Slurm access (:class:`~.slurmclient.SacctJsonClient` normally).
        cluster: Cluster name for events and API lookups (default: sacct's, else
            ``default``).
        settle_s: See :func:`energy_final`.
        admin_comment: Write AdminComment (False: only post events).
    """

    def __init__(self, http: httpx.Client, slurm: SlurmClient, *, cluster: str | None = None,
                 settle_s: float = 5.0, admin_comment: bool = True) -> None:
        self.http = http
        self.slurm = slurm
        self.cluster = cluster
        self.settle_s = settle_s
        self.admin_comment = admin_comment
        self._enriched: set[tuple[str, str]] = set()
        self._nodes: dict[str, list[dict[str, Any]]] = {}

    def cluster_of(self, job: SlurmJob) -> str:
        """Return the cluster name jobenergy files ``job`` under."""
        return self.cluster or job.cluster or "default"

    def run_once(self, *, job_ids: list[str], since: datetime | None,
                 until: datetime | None = None, only_cluster: str | None = None,
                 post_events: bool = True) -> SyncReport:
        """Do one pass over the selected ended jobs.

        Args:
            job_ids: These jobs (or array parents); empty: those of ``[since, until)``.
            since: Start of the window when no ids are given.
            until: End of the window (None: now).
            only_cluster: Leave jobs of other clusters alone.
            post_events: Also post the jobs' events (a factor re-sync needs none).
        """
        report = SyncReport()
        self._nodes = {}  # node progress is read once per pass
        for job in self.slurm.jobs(job_ids=job_ids, since=since, until=until):
            cluster = self.cluster_of(job)
            if job.ended and only_cluster in (None, cluster):
                self._sync_job(job, cluster, report, post_events=post_events)
        return report

    def _sync_job(self, job: SlurmJob, cluster: str, report: SyncReport, *,
                  post_events: bool) -> None:
        unposted = post_events and not has_summary(job.admin_comment)
        if unposted and (cluster, job.job_id) not in self._enriched:
            unposted = False
            if self._post_events(job, cluster, report):
                self._enriched.add((cluster, job.job_id))
        if not self.admin_comment or not job.nodes:
            report.skipped.append(job.job_id)
            return
        # The nodes were asked for this cluster: compare under its name, not sacct's.
        if not energy_final(replace(job, cluster=cluster), self._node_rows(cluster),
                            self.settle_s):
            report.pending.append(job.job_id)
            return
        if unposted:
            # Posted by an earlier pass, maybe before slurmdbd had every step record: once
            # more from this pass's sacct, before the summary makes later passes skip it.
            self._post_events(job, cluster, report)
        resp = self.http.get(f"/api/v1/jobs/{job.job_id}", params={"cluster": cluster})
        if resp.status_code == 404:
            report.pending.append(job.job_id)
            return
        resp.raise_for_status()
        self._write_admin_comment(job, resp.json(), report)

    def _node_rows(self, cluster: str) -> list[dict[str, Any]]:
        if cluster not in self._nodes:
            resp = self.http.get("/api/v1/nodes", params={"cluster": cluster})
            resp.raise_for_status()
            self._nodes[cluster] = resp.json().get("nodes", [])
        return self._nodes[cluster]

    def _write_admin_comment(self, job: SlurmJob, api_job: dict[str, Any],
                             report: SyncReport) -> None:
        """Write the job's AdminComment when it differs from what Slurm holds."""
        existing = job.admin_comment or ""
        text, with_summary = admin_comment_text(existing, format_summary(api_job))
        if not with_summary:
            logger.warning("job %s: AdminComment holds jobstats data that a summary would "
                           "corrupt: summary withheld", job.job_id)
            report.withheld.append(job.job_id)
        if text == existing:
            report.done.append(job.job_id)
            return
        if getattr(self.slurm, "lowercases_admin_comment", False) and (
            text != text.lower() or '"' in text or "'" in text
        ):
            # sacctmgr would lower-case the other content (jobstats' base64) and mangle its
            # quotes: leave it intact.
            logger.warning("job %s: AdminComment holds mixed-case or quoted content that "
                           "sacctmgr would alter: left as it is, summary withheld", job.job_id)
            if job.job_id not in report.withheld:
                report.withheld.append(job.job_id)
            report.done.append(job.job_id)
            return
        target = job.admin_comment_id
        if target is None:
            report.errors.append(f"job {job.job_id}: no id names this array record alone")
            return
        try:
            self.slurm.set_admin_comment(target, text)
        except SlurmError as err:
            report.errors.append(f"job {target}: {err}")
            return
        report.comments[job.job_id] = text

    def _post_events(self, job: SlurmJob, cluster: str, report: SyncReport) -> bool:
        for event in job_events(job, cluster):
            resp = self.http.post("/api/v1/jobs/events", json=event)
            if resp.status_code >= 400:
                report.errors.append(f"job {job.job_id}: event {event['event']} rejected "
                                     f"{resp.status_code}: {resp.text[:200]}")
                return False
            report.events_sent += 1
        return True

    def follow_factor_changes(
        self, handled: Mapping[str, int]
    ) -> tuple[SyncReport, dict[str, int]]:
        """Re-sync the jobs whose stored values factor changes rewrote since ``handled``.

        Args:
            handled: Cluster → the last factor revision already followed.

        Returns:
            The pass's report, and ``handled`` advanced for every cluster whose re-sync had
            no error (jobs not final yet are left to the normal passes).
        """
        report = SyncReport()
        out = dict(handled)
        for cluster, revision in self._factor_revisions().items():
            after = handled.get(cluster, 0)
            if revision <= after:
                continue
            spans, latest = self._changed_spans(cluster, after)
            part = SyncReport()
            for start, end in merge_spans(spans):
                part.merge(self.run_once(job_ids=[], since=start, until=end,
                                         only_cluster=cluster, post_events=False))
            report.merge(part)
            if not part.errors:
                out[cluster] = latest
        return report, out

    def _factor_revisions(self) -> dict[str, int]:
        """Return cluster → factor revision from the API (this Syncer's cluster only, if set)."""
        resp = self.http.get("/api/v1/clusters")
        resp.raise_for_status()
        revisions = {str(c["cluster"]): int(c.get("factors_revision") or 0) for c in resp.json()}
        if self.cluster is not None:
            return {self.cluster: revisions.get(self.cluster, 0)}
        return revisions

    def _changed_spans(self, cluster: str,
                       after: int) -> tuple[list[tuple[datetime, datetime]], int]:
        """Return the hour spans changes after ``after`` rewrote, and the last revision."""
        spans: list[tuple[datetime, datetime]] = []
        latest = after
        while True:
            resp = self.http.get(f"/api/v1/clusters/{cluster}/factor-changes",
                                 params={"after": latest, "limit": FACTOR_CHANGES_PAGE})
            resp.raise_for_status()
            changes = resp.json().get("changes", [])
            for change in changes:
                spans.append((parse_api_time(change["start"]), parse_api_time(change["end"])))
                latest = max(latest, int(change["revision"]))
            if len(changes) < FACTOR_CHANGES_PAGE:
                return spans, latest


def parse_since(text: str | None) -> datetime | None:
    """Parse ``--since``: ``90s``/``30m``/``2h``/``1d`` ago, or any of Slurm's time forms
    (``core/slurm_time.py``: ``now-2hours``, ``today``, ``11/20``, ISO 8601), or epoch s."""
    if not text:
        return None
    m = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return datetime.now(UTC) - timedelta(seconds=int(m.group(1)) * unit)
    try:
        return parse_slurm_time(text, epoch=True)
    except SlurmTimeError as err:
        raise typer.BadParameter(f"invalid --since: {err}; or 30m, 2h, 1d") from err


def _echo_report(report: SyncReport) -> None:
    for job_id, text in report.comments.items():
        typer.echo(f"job {job_id}: AdminComment={text}")
    for error in report.errors:
        typer.echo(f"jobenergy slurm sync: {error}", err=True)


def _sync_until_final(syncer: Syncer, http: httpx.Client, *, job_ids: list[str],
                      since: datetime | None, wait_s: float, poll_s: float,
                      outbox: Path | None) -> int:
    """Pass over the jobs until all are handled or ``wait_s`` ran out; return the exit code."""
    deadline = time.monotonic() + wait_s
    while True:
        if outbox is not None:
            flush_outbox(http, outbox)
        try:
            report = syncer.run_once(job_ids=job_ids, since=since)
        except (SlurmError, httpx.HTTPError, JobEnergyError) as err:
            report = SyncReport(errors=[str(err)])
        _echo_report(report)
        missing = set(job_ids) - report.handled()
        if not report.pending and not report.errors and not missing:
            return 0
        if time.monotonic() >= deadline:
            if report.pending:
                typer.echo(f"energy not final yet for jobs: {','.join(report.pending)}",
                           err=True)
            return 1 if wait_s else 0
        time.sleep(poll_s)
        job_ids = [j for j in job_ids if j in missing]


def _follow_factor_changes(syncer: Syncer, state: Path | None) -> None:
    """Re-sync the jobs of factor changes not followed yet; remember what was followed."""
    path = resolve_state_path(state)
    if path is None:
        return
    handled = load_state(path)
    try:
        report, followed = syncer.follow_factor_changes(handled)
    except (SlurmError, httpx.HTTPError, JobEnergyError) as err:
        typer.echo(f"jobenergy slurm sync: factor changes: {err}", err=True)
        return
    _echo_report(report)
    if followed != handled:
        try:
            save_state(path, followed)
        except OSError as err:
            typer.echo(f"jobenergy slurm sync: cannot save {path}: {err}", err=True)


UrlOpt = Annotated[str, typer.Option("--url", envvar="JOBENERGY_URL", help="jobenergy API")]


@app.command()
def sync(
    url: UrlOpt,
    since: Annotated[str | None, typer.Option(help="Jobs since (30m, 2h, ISO, epoch)")] = "2h",
    jobs: Annotated[str | None, typer.Option("--jobs", "-j", help="Only these job ids")] = None,
    cluster: Annotated[str | None, typer.Option(help="Cluster name (default: from sacct)")] = None,
    wait: Annotated[float, typer.Option(help="Retry until all are final, at most S seconds")] = 0.0,
    poll: Annotated[float, typer.Option(help="Seconds between retries with --wait")] = 2.0,
    settle: Annotated[float, typer.Option(help="Energy is final this long after the end")] = 5.0,
    outbox: Annotated[Path | None, typer.Option(help="Also deliver the hooks' outbox")] = None,
    admin_comment: Annotated[bool, typer.Option(help="Write AdminComment")] = True,
    state: Annotated[Path | None, typer.Option(
        help="Factor revisions already followed (periodic mode; default "
             "/var/lib/jobenergy/slurm-sync-state.json when writable)")] = None,
    log_level: Annotated[
        str, typer.Option(help="debug, info, warning, error or critical")] = "warning",
    log_format: Annotated[str, typer.Option(
        help="auto (journal when stderr is the journal, else text), text, journal or json"
    )] = "auto",
) -> None:
    """Enrich ended jobs from sacct and write their energy into AdminComment."""
    unblock_termination_signals()
    try:
        logs.configure(log_level, log_format)
    except ConfigError as err:
        typer.echo(f"jobenergy slurm sync: {err}", err=True)
        raise typer.Exit(2) from err
    job_ids = [j.strip() for j in (jobs or "").split(",") if j.strip()]
    since_at = None if job_ids else parse_since(since)
    with api_client(url, timeout_s=10.0, program="jobenergy slurm sync") as http:
        syncer = Syncer(http, SacctJsonClient(), cluster=cluster, settle_s=settle,
                        admin_comment=admin_comment)
        code = _sync_until_final(syncer, http, job_ids=job_ids, since=since_at, wait_s=wait,
                                 poll_s=poll, outbox=outbox)
        if not job_ids and admin_comment:
            _follow_factor_changes(syncer, state)
    if code:
        raise typer.Exit(code)


@app.command("flush-outbox")
def flush_outbox_cmd(
    url: UrlOpt,
    outbox: Annotated[Path, typer.Option(help="The hooks' outbox folder")] = Path(
        "/var/spool/jobenergy/outbox"),
) -> None:
    """Deliver job events the Slurm hooks could not send."""
    unblock_termination_signals()
    with api_client(url, timeout_s=10.0, program="jobenergy slurm flush-outbox") as http:
        sent, kept = flush_outbox(http, outbox)
    typer.echo(json.dumps({"delivered": sent, "kept": kept}))
    if kept:
        raise typer.Exit(1)


def main() -> None:
    """Entry point for ``python -m jobenergy.cli.slurm`` (also ``jobenergy slurm``)."""
    app(prog_name="jobenergy slurm")


if __name__ == "__main__":  # pragma: no cover
    main()
