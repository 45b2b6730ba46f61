"""``jobenergy slurm``: enrich jobs from Slurm's accounting and write energy into AdminComment.

    jobenergy slurm sync --url http://collector:8080 [--since 2h | --jobs 12,13] [--wait 120]
    jobenergy slurm flush-outbox --url http://collector:8080 --outbox /var/spool/jobenergy/outbox

``sync`` reads finished jobs from ``sacct --json`` (:mod:`.slurmclient`), posts their start
and end events with what only Slurm knows for sure (name, nodelist, state, exit code, start
and end, array and het-job ids as tags), and, once a job's energy is final — every node of
the job has reported energy up to ``--settle`` seconds past the job's end (``GET
/api/v1/nodes``) — writes a one-line summary into its AdminComment with ``sacctmgr``
(``scontrol update`` refuses finished jobs), keeping any other content::

    energy_kwh=0.412 gpu_kwh=0.39 facility_kwh=0.494 co2e_kg=0.027

so ``sacct -o JobID,AdminComment`` shows it. A job whose AdminComment already holds
``energy_kwh=`` is done and skipped. Run it from EpilogSlurmctld (``JOBENERGY_SYNC_CMD`` in the
hook settings, as SlurmUser, which may modify jobs) and/or from a systemd timer.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from jobenergy.core.units import UJ_PER_KWH

from .slurmclient import SacctJsonClient, SlurmClient, SlurmError, SlurmJob

logger = logging.getLogger(__name__)

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Slurm integration: sacct enrichment, AdminComment, hook outbox.")

SUMMARY_KEYS = ("energy_kwh", "gpu_kwh", "facility_kwh", "co2e_kg")
_SUMMARY_TOKEN = re.compile("^(?:" + "|".join(SUMMARY_KEYS) + r")=\S*$")


def format_summary(job: dict[str, Any]) -> str:
    """Return the AdminComment summary of a ``GET /api/v1/jobs/{id}`` answer."""
    gpu_uj = int((job.get("by_component") or {}).get("gpu") or 0)
    values = (
        float(job.get("energy_kwh") or 0.0),
        gpu_uj / UJ_PER_KWH,
        float(job.get("facility_energy_kwh") or 0.0),
        float(job.get("co2e_kg") or 0.0),
    )
    return " ".join(f"{k}={_kwh_text(v)}" for k, v in zip(SUMMARY_KEYS, values, strict=True))


def _kwh_text(value: float) -> str:
    """Return ``0.412`` / ``0.000001234`` / ``0``: 9 decimals (3.6 mJ), no exponent."""
    return f"{value:.9f}".rstrip("0").rstrip(".") or "0"


def merge_admin_comment(existing: str | None, summary: str) -> str:
    """Put ``summary`` into an AdminComment, replacing an earlier summary, keeping the rest."""
    kept = [t for t in (existing or "").split() if not _SUMMARY_TOKEN.match(t)]
    return " ".join([*kept, summary]) if kept else summary


def has_summary(admin_comment: str | None) -> bool:
    """True when an AdminComment already holds our energy summary."""
    return any(t.startswith("energy_kwh=") for t in (admin_comment or "").split())


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
        moment = datetime.fromisoformat(str(at).replace("Z", "+00:00"))
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        node = str(row.get("node"))
        last[node] = min(last.get(node, moment), moment)
    return all(node in last and last[node] >= due for node in job.nodes)


def job_events(job: SlurmJob, cluster: str) -> list[dict[str, Any]]:
    """Return the start and end events (POST /api/v1/jobs/events bodies) Slurm supports."""
    common: dict[str, Any] = {"cluster": cluster, "job_id": job.job_id}
    for key in ("user", "account", "partition", "name", "comment"):
        value = getattr(job, key)
        if value:
            common[key] = value
    if job.nodes:
        common["nodes"] = list(job.nodes)
    events = []
    if job.start is not None:
        events.append({**common, "event": "start", "time": job.start.timestamp()})
    end: dict[str, Any] = {**common, "event": "end", "tags": job.slurm_tags(),
                           "time": job.end.timestamp() if job.end else None}
    if job.state:
        end["state"] = job.state[:32]
    if job.exit_code:
        end["exit_code"] = job.exit_code
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
        except httpx.HTTPError as err:
            logger.warning("outbox delivery failed file=%s err=%s", path, err)
            return sent, len(files) - i
        except OSError:
            continue
        if resp.status_code >= 500:
            return sent, len(files) - i
        if resp.status_code >= 400:
            logger.error("outbox event rejected file=%s status=%s body=%s", path,
                         resp.status_code, resp.text[:300])
        path.unlink(missing_ok=True)
        sent += 1
    return sent, 0


@dataclass
class SyncReport:
    """What one sync pass did."""

    events_sent: int = 0
    comments: dict[str, str] = field(default_factory=dict)  # job id → AdminComment written
    pending: list[str] = field(default_factory=list)  # ended jobs whose energy is not final
    done: list[str] = field(default_factory=list)  # AdminComment written by an earlier pass
    errors: list[str] = field(default_factory=list)


class Syncer:
    """One collector, one Slurm: enrich ended jobs and write their AdminComment.

    Args:
        http: Client whose base URL is the collector/API.
        slurm: Slurm access (:class:`~.slurmclient.SacctJsonClient` normally).
        cluster: Cluster name for events when sacct gives none.
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

    def run_once(self, *, job_ids: list[str], since: datetime | None) -> SyncReport:
        """Do one pass over the selected jobs."""
        report = SyncReport()
        jobs = [j for j in self.slurm.jobs(job_ids=job_ids, since=since) if j.ended]
        nodes_cache: dict[str, list[dict[str, Any]]] = {}
        for job in jobs:
            cluster = self.cluster or job.cluster or "default"
            if has_summary(job.admin_comment):
                report.done.append(job.job_id)
                continue
            if (cluster, job.job_id) not in self._enriched:
                if self._post_events(job, cluster, report):
                    self._enriched.add((cluster, job.job_id))
            if not self.admin_comment or not job.nodes:
                continue
            if cluster not in nodes_cache:
                resp = self.http.get("/api/v1/nodes", params={"cluster": cluster})
                resp.raise_for_status()
                nodes_cache[cluster] = resp.json().get("nodes", [])
            if not energy_final(job, nodes_cache[cluster], self.settle_s):
                report.pending.append(job.job_id)
                continue
            resp = self.http.get(f"/api/v1/jobs/{job.job_id}", params={"cluster": cluster})
            if resp.status_code == 404:
                report.pending.append(job.job_id)
                continue
            resp.raise_for_status()
            text = merge_admin_comment(job.admin_comment, format_summary(resp.json()))
            try:
                self.slurm.set_admin_comment(job.job_id, text)
            except SlurmError as err:
                report.errors.append(f"job {job.job_id}: {err}")
                continue
            report.comments[job.job_id] = text
        return report

    def _post_events(self, job: SlurmJob, cluster: str, report: SyncReport) -> bool:
        for event in job_events(job, cluster):
            resp = self.http.post("/api/v1/jobs/events", json=event)
            if resp.status_code >= 400:
                report.errors.append(f"job {job.job_id}: event {event['event']} rejected "
                                     f"{resp.status_code}: {resp.text[:200]}")
                return False
            report.events_sent += 1
        return True


def parse_since(text: str | None) -> datetime | None:
    """Parse ``--since``: ``90s``/``30m``/``2h``/``1d`` ago, epoch seconds, or ISO 8601."""
    if not text:
        return None
    m = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return datetime.now(UTC) - timedelta(seconds=int(m.group(1)) * unit)
    try:
        return datetime.fromtimestamp(float(text), UTC)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as err:
        raise typer.BadParameter(
            f"invalid --since {text!r}: use 30m, 2h, 1d, epoch or ISO") from err
    return moment if moment.tzinfo else moment.astimezone(UTC)


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
    log_level: Annotated[str, typer.Option()] = "warning",
) -> None:
    """Enrich ended jobs from sacct and write their energy into AdminComment."""
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job_ids = [j.strip() for j in (jobs or "").split(",") if j.strip()]
    since_at = None if job_ids else parse_since(since)
    deadline = time.monotonic() + wait
    with httpx.Client(base_url=url, timeout=10.0) as http:
        syncer = Syncer(http, SacctJsonClient(), cluster=cluster, settle_s=settle,
                        admin_comment=admin_comment)
        while True:
            if outbox is not None:
                flush_outbox(http, outbox)
            try:
                report = syncer.run_once(job_ids=job_ids, since=since_at)
            except (SlurmError, httpx.HTTPError) as err:
                report = SyncReport(errors=[str(err)])
            for job_id, text in report.comments.items():
                typer.echo(f"job {job_id}: AdminComment={text}")
            for error in report.errors:
                typer.echo(f"jobenergy slurm sync: {error}", err=True)
            missing = set(job_ids) - set(report.comments) - set(report.done)
            if not report.pending and not report.errors and not missing:
                break
            if time.monotonic() >= deadline:
                if report.pending:
                    typer.echo(f"energy not final yet for jobs: {','.join(report.pending)}",
                               err=True)
                raise typer.Exit(1 if wait else 0)
            time.sleep(poll)
            job_ids = [j for j in job_ids if j in missing]


@app.command("flush-outbox")
def flush_outbox_cmd(
    url: UrlOpt,
    outbox: Annotated[Path, typer.Option(help="The hooks' outbox folder")] = Path(
        "/var/spool/jobenergy/outbox"),
) -> None:
    """Deliver job events the Slurm hooks could not send."""
    with httpx.Client(base_url=url, timeout=10.0) as http:
        sent, kept = flush_outbox(http, outbox)
    typer.echo(json.dumps({"delivered": sent, "kept": kept}))
    if kept:
        raise typer.Exit(1)


def main() -> None:
    """Entry point for ``python -m jobenergy.cli.slurm`` (also ``jobenergy slurm``)."""
    app(prog_name="jobenergy slurm")


if __name__ == "__main__":  # pragma: no cover
    main()
