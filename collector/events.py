"""Slurm job events (prolog/epilog, demo scheduler) merged into the ``job`` row.

Tags come from the job comment (``model=resnet50 phase=training`` tokens) and from the event's
``tags`` (SPANK options, prolog), the event winning; ``model`` and ``phase`` also fill the job
summary columns that leaderboards group by (and, for a job with in-job annotations, the
job-level part of its ``job_board_part`` rows).

Each event's ``nodes``, ``gpus`` and ``tags`` are merged with what is stored as sets (in order,
without repeats) and capped per job (``MAX_JOB_NODES``, ``MAX_JOB_GPUS``, ``MAX_JOB_TAGS``): an
event that would take a job past a cap with its own lists or ``tags`` is refused (422, nothing
changed); tags from the free-text comment only fill the room that is left.

Slurm's accounting is the source of truth (DESIGN.md decision 10): the events of the Slurm
sync (``jobenergy slurm sync``, ``source = "sacct"``) set start, end, state, exit code, names
and the node list whatever is stored, with what only sacct knows (AllocTRES, the steps, who
cancelled, the array / het-job ids); a hook's event after them only fills what is unknown.
"""

from __future__ import annotations

import logging
import re
import shlex
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobenergy.collector.board import refresh_board
from jobenergy.collector.models import Job
from jobenergy.collector.sql import IngestRejected, dialect_insert
from jobenergy.core.schema import MAX_JOB_GPUS, MAX_JOB_NODES, MAX_JOB_TAGS, JobEvent

logger = logging.getLogger(__name__)

PHASES = ("training", "inference", "other")
MAX_TAGS = MAX_JOB_TAGS
_LIST_CAPS = {"nodes": MAX_JOB_NODES, "gpus": MAX_JOB_GPUS}
#: Tags only the hooks set (slurm_plugins/jobenergy-hook.sh drops them from --energy-tag).
RESERVED_TAG_PREFIX = "energy_limit"


def comment_tags(comment: str | None) -> dict[str, str]:
    """Return the ``key=value`` tokens of a job comment as tags (other words are ignored).

    Tokens are separated by spaces, commas or semicolons; quotes group words
    (``note="two words"``); ``model``/``phase`` keys are case-insensitive; keys are at most 64
    characters, values 255. ``energy_limit*`` keys are left out: they record the job's
    ``--energy-limit`` and what the node agent did at it (the hooks send them), which the
    job's owner must not be able to write.
    """
    if not comment:
        return {}
    try:
        tokens = shlex.split(comment)
    except ValueError:  # an unbalanced quote: fall back to plain words
        tokens = comment.split()
    # Users write "model=a phase=b", "model=a,phase=b" or "model=a; phase=b": split on all.
    tokens = [t for token in tokens for t in re.split(r"[,;]", token) if t.strip()]
    tags: dict[str, str] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        key = key.strip()
        if key.lower() in ("model", "phase"):
            key = key.lower()  # the two keys the leaderboards read
        value = value.strip()
        if key == "phase":
            value = value.lower()
        if key.lower().startswith(RESERVED_TAG_PREFIX):
            continue
        if sep and key and len(key) <= 64 and len(tags) < MAX_TAGS:
            tags[key] = value[:255]
    return tags


def _merge_tags(job: Job, event: JobEvent) -> dict[str, str]:
    """Merge the event's tags, then its comment's, into ``job.tags``, at most ``MAX_TAGS``.

    Returns the tags this event set (event tags winning over the comment's).

    Raises:
        IngestRejected: The event's own ``tags`` would take the job past the cap.
    """
    stored = dict(job.tags or {})
    merged = {**stored, **event.tags}
    if len(merged) > MAX_TAGS:
        raise IngestRejected(
            f"tags: job {event.job_id} on cluster {event.cluster} would have {len(merged)} "
            f"tags, at most {MAX_TAGS}"
        )
    applied = dict(event.tags)
    for key, value in comment_tags(event.comment).items():
        if key in event.tags:
            continue
        if key in merged or len(merged) < MAX_TAGS:  # the comment fills what room is left
            merged[key] = value
            applied[key] = value
    if merged != stored:
        job.tags = merged
    return applied


def _end_state(event: JobEvent) -> str:
    """Return the state an end event implies when it names none."""
    if event.exit_code is None:
        return "ENDED"
    return "COMPLETED" if str(event.exit_code) in ("0", "0:0") else "FAILED"


#: The tags that carry Slurm's array and het-job ids (hooks: $SLURM_ARRAY_JOB_ID ...; sync).
SLURM_ID_TAGS = (("array_job_id", "array_task_id"), ("het_job_id", "het_job_offset"))
_SLURM_NUMBER = re.compile(r"\d{1,10}")


def _apply_slurm_ids(job: Job, event: JobEvent, slurm: bool) -> None:
    """Set the job's array / het-job ids from the event's tags.

    The sync's (sacct's) event sets both pairs, clearing those sacct does not give: a user can
    put any tag on a job with the SPANK options, so a hook's ids count only until the sync
    has told. Only all-digit ids, as Slurm's, are taken.
    """
    if not slurm and job.synced_at is not None:
        return
    for id_key, sub_key in SLURM_ID_TAGS:
        main, sub = event.tags.get(id_key), event.tags.get(sub_key)
        if main and sub and _SLURM_NUMBER.fullmatch(main) and _SLURM_NUMBER.fullmatch(sub):
            setattr(job, id_key, str(int(main)))
            setattr(job, sub_key, int(sub))
        elif slurm:
            setattr(job, id_key, None)
            setattr(job, sub_key, None)


def apply_job_event(session: Session, event: JobEvent) -> Job:
    """Merge a job start/end event into the ``job`` row, in the caller's transaction.

    A start sets ``start_at``, an end sets ``end_at``, ``state`` and ``exit_code``. Fields the
    event leaves out (None) never erase what is known; tags are merged (stored, then the
    comment's ``key=value`` tokens, then the event's ``tags``). Events may arrive in any order
    and more than once.

    The Slurm sync's events (``source = "sacct"``) are authoritative: they set the times,
    state, exit code, names and node list whatever is stored, and mark the job
    (``synced_at``); from then on a hook's event (a node epilog's end arriving late) only
    fills what is still unknown.

    Args:
        session: Session inside an open transaction (not committed here).
        event: The validated event.

    Returns:
        The updated job row.

    Raises:
        IngestRejected: The event would make the job end before it starts.
    """
    conn = session.connection()
    now = datetime.now(UTC)
    # Make sure the row exists, then lock it: two events for a new job cannot both insert.
    conn.execute(
        dialect_insert(conn)(Job)
        .values(cluster=event.cluster, job_id=event.job_id, updated_at=now)
        .on_conflict_do_nothing(index_elements=[Job.cluster, Job.job_id])
    )
    job = session.scalars(
        select(Job)
        .where(Job.cluster == event.cluster, Job.job_id == event.job_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    slurm = event.source == "sacct"
    # Once the Slurm sync has set the job, a hook's event only fills what is still unknown:
    # a node epilog's end event arriving after the sync must not replace sacct's times.
    fill_only = job.synced_at is not None and not slurm
    if (event.event == "start" and not slurm and job.end_at is not None
            and event.time > job.end_at and event.user is not None
            and job.user not in (None, event.user)):
        # Job ids are the key; Slurm reuses them (MaxJobId wraps, a controller started from
        # scratch). The row keeps its owner; budgets count no energy after its end.
        logger.warning("job %s on cluster %s: start of user %r after %r's job of that id "
                       "ended (%s): Slurm reused the id? The stored job keeps its owner",
                       event.job_id, event.cluster, event.user, job.user,
                       job.end_at.isoformat())
    start_at, end_at = job.start_at, job.end_at
    if event.event == "start" and not (fill_only and start_at is not None):
        start_at = event.time
    if event.event == "end" and not (fill_only and end_at is not None):
        end_at = event.time
    if (slurm and job.synced_at is None and event.event == "start" and end_at is not None
            and end_at < start_at):
        end_at = None  # a hook's end that sacct's start contradicts: sacct's end follows
    if start_at is not None and end_at is not None and end_at < start_at:
        raise IngestRejected(
            f"job {event.job_id} on cluster {event.cluster}: end {end_at.isoformat()} is "
            f"before start {start_at.isoformat()}"
        )
    job.start_at, job.end_at = start_at, end_at
    if start_at is not None:
        job.begin_at = start_at
    for name in ("user", "uid", "account", "partition", "name", "comment"):
        value = getattr(event, name)
        if value is not None and not (fill_only and getattr(job, name) is not None):
            setattr(job, name, value)
    # Each node's prolog reports its own GPUs (and may report only its node): merge as sets,
    # in order, capped per job. Slurm's accounting has the job's whole node list: it replaces.
    for name, cap in _LIST_CAPS.items():
        value = getattr(event, name)
        if value is not None and not (fill_only and name == "nodes" and job.nodes):
            kept = [] if slurm and name == "nodes" else getattr(job, name) or []
            merged = list(dict.fromkeys([*kept, *value]))
            if len(merged) > cap:
                raise IngestRejected(
                    f"{name}: job {event.job_id} on cluster {event.cluster} would have "
                    f"{len(merged)} {name}, at most {cap}"
                )
            setattr(job, name, merged)
    if event.exit_code is not None and not (fill_only and job.exit_code is not None):
        job.exit_code = str(event.exit_code)
    if event.state is not None and not (fill_only and job.state not in (None, "RUNNING")):
        job.state = event.state
    elif event.event == "start" and job.state is None:
        job.state = "RUNNING"
    elif event.event == "end" and job.state in (None, "RUNNING"):
        job.state = _end_state(event)
    _apply_slurm_ids(job, event, slurm)
    if event.alloc_tres is not None:
        job.alloc_tres = event.alloc_tres
    if event.kill_requid is not None:
        job.kill_requid = event.kill_requid
    if event.steps is not None:
        job.slurm_steps = [step.model_dump(exclude_none=True) for step in event.steps]
    if slurm:
        job.synced_at = now
    new_tags = _merge_tags(job, event)
    if new_tags:
        if new_tags.get("model"):
            job.model = new_tags["model"][:255]
        if new_tags.get("phase", "").lower() in PHASES:
            job.phase = new_tags["phase"].lower()
    job.updated_at = now
    session.flush()
    if job.annotated:
        # The un-annotated rest of the job is on the board under its job-level model/phase.
        refresh_board(conn, job.cluster, [job.job_id])
    return job
