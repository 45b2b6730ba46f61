"""Slurm job events (prolog/epilog, demo scheduler) merged into the ``job`` row.

Tags come from the job comment (``model=resnet50 phase=training`` tokens) and from the event's
``tags`` (SPANK options, prolog), the event winning; ``model`` and ``phase`` also fill the job
summary columns that leaderboards group by (and, for a job with in-job annotations, the
job-level part of its ``job_board_part`` rows).

Each event's ``nodes``, ``gpus`` and ``tags`` are merged with what is stored as sets (in order,
without repeats) and capped per job (``MAX_JOB_NODES``, ``MAX_JOB_GPUS``, ``MAX_JOB_TAGS``): an
event that would take a job past a cap with its own lists or ``tags`` is refused (422, nothing
changed); tags from the free-text comment only fill the room that is left.
"""

from __future__ import annotations

import re
import shlex
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobenergy.collector.board import refresh_board
from jobenergy.collector.models import Job
from jobenergy.collector.sql import IngestRejected, dialect_insert
from jobenergy.core.schema import MAX_JOB_GPUS, MAX_JOB_NODES, MAX_JOB_TAGS, JobEvent

PHASES = ("training", "inference", "other")
MAX_TAGS = MAX_JOB_TAGS
_LIST_CAPS = {"nodes": MAX_JOB_NODES, "gpus": MAX_JOB_GPUS}


def comment_tags(comment: str | None) -> dict[str, str]:
    """Return the ``key=value`` tokens of a job comment as tags (other words are ignored).

    Tokens are separated by spaces, commas or semicolons; quotes group words
    (``note="two words"``); ``model``/``phase`` keys are case-insensitive; keys are at most 64
    characters, values 255.
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


def apply_job_event(session: Session, event: JobEvent) -> Job:
    """Merge a job start/end event into the ``job`` row, in the caller's transaction.

    A start sets ``start_at``, an end sets ``end_at``, ``state`` and ``exit_code``. Fields the
    event leaves out (None) never erase what is known; tags are merged (stored, then the
    comment's ``key=value`` tokens, then the event's ``tags``). Events may arrive in any order
    and more than once.

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
    start_at = event.time if event.event == "start" else job.start_at
    end_at = event.time if event.event == "end" else job.end_at
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
        if value is not None:
            setattr(job, name, value)
    # Each node's prolog reports its own GPUs (and may report only its node): merge as sets,
    # in order, capped per job.
    for name, cap in _LIST_CAPS.items():
        value = getattr(event, name)
        if value is not None:
            merged = list(dict.fromkeys([*(getattr(job, name) or []), *value]))
            if len(merged) > cap:
                raise IngestRejected(
                    f"{name}: job {event.job_id} on cluster {event.cluster} would have "
                    f"{len(merged)} {name}, at most {cap}"
                )
            setattr(job, name, merged)
    if event.exit_code is not None:
        job.exit_code = str(event.exit_code)
    if event.state is not None:
        job.state = event.state
    elif event.event == "start" and job.state is None:
        job.state = "RUNNING"
    elif event.event == "end" and job.state in (None, "RUNNING"):
        job.state = _end_state(event)
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
