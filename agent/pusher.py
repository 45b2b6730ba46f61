"""Deliver spooled batches to the collector, in order, with retry.

Runs in its own thread so a slow or absent collector never delays sampling. A batch leaves
the spool only when the collector answers 2xx (``{"duplicate": true}`` is a success: the
same content was stored before). 401 and 403 are retried like an outage and logged with the
collector's reason: the batch is fine, the credentials or the server's node map are not, and
an operator fixes those without losing data. Each request is signed when it is sent (a MUNGE
credential lives minutes; a batch may wait days in the spool). A 4xx other than
401/403/408/425/429 means the collector refuses
this batch and retrying cannot help; 409 (its key was stored with other content) is such a
refusal, never a success. A refused batch is never dropped: it is moved to ``rejected/``
with the collector's answer, counted in ``jobenergy_agent_batches_rejected_total{reason}``
(reason = the HTTP status) and logged once, at WARNING (DESIGN.md decision 14). Everything
else (connection refused, 5xx, timeouts) is retried with exponential backoff and jitter; a
failure is logged at WARNING when it starts or its reason changes, its repeats at DEBUG, and
the first delivery after it at INFO (an outage of hours is two lines, not one per retry).

The body of each 2xx answer goes to ``on_accepted`` (the agent's budget actions,
``agent/energy_limits.py``), after the batch left the spool: an error there is logged and
never costs a delivery.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable

from jobenergy.agent.httpclient import HttpClient, Response, TransportError
from jobenergy.agent.metrics import AgentMetrics
from jobenergy.agent.spool import Spool, SpooledBatch
from jobenergy.core.munge import MungeError
from jobenergy.core.signing import Signer
from jobenergy.core.text import printable
from jobenergy.core.version import VERSION

logger = logging.getLogger(__name__)

_RETRYABLE_4XX = {408, 425, 429}
_AUTH_4XX = {401, 403}
#: The collector's reason as logged (the ``.reason`` file next to the batch keeps more).
_LOGGED_REASON_CHARS = 300
_KEPT_REASON_CHARS = 2000


def refusal_reason(resp: Response, limit_chars: int) -> str:
    """Return the collector's reason for a 4xx: its JSON ``detail``, else the body, truncated
    and with control characters escaped (it goes into a log line)."""
    try:
        detail = resp.json().get("detail", resp.text)
    except (ValueError, AttributeError):
        detail = resp.text
    text = detail if isinstance(detail, str) else json.dumps(detail, ensure_ascii=False)
    if len(text) > limit_chars:
        text = text[:limit_chars] + "..."
    return printable(text)


class Pusher:
    """Sends the spool's batches to ``POST {collector_url}/api/v1/batches``.

    Args:
        collector_url: Base URL of the collector.
        spool: The agent's spool.
        timeout_s: Per-request timeout.
        backoff_initial_s: First retry delay; doubles up to ``backoff_max_s``.
        metrics: The agent's metrics (refused batches are counted there).
        sign: How requests are signed (``core/signing.py``: MUNGE, bearer); None: not at all.
        verify: How an ``https://`` collector is verified
            (``core/signing.transport_verify``: a TLS context; False: not at all).
        on_accepted: Called with the body of each 2xx answer (in the sender's thread).
    """

    def __init__(
        self,
        collector_url: str,
        spool: Spool,
        *,
        timeout_s: float = 10.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 60.0,
        metrics: AgentMetrics | None = None,
        sign: Signer | None = None,
        verify: bool | ssl.SSLContext = False,
        on_accepted: Callable[[bytes], None] | None = None,
    ) -> None:
        self.url = collector_url.rstrip("/") + "/api/v1/batches"
        self.spool = spool
        self.timeout_s = timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.metrics = metrics
        self.on_accepted = on_accepted
        self.sent_total = 0
        self.failures_total = 0
        self._client = HttpClient(self.url, timeout_s=timeout_s, verify=verify, sign=sign,
                                  user_agent=f"jobenergy-agent/{VERSION}")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff_s = 0.0
        # The failure being retried and how many pushes failed in a row: an outage is logged
        # when it starts (or its reason changes) and when it ends, not at every retry.
        self._failing: str | None = None
        self._failed_in_row = 0

    def notify(self) -> None:
        """Wake the sender: a new batch was sealed."""
        self._wake.set()

    def push_once(self, deadline: float | None = None) -> bool:
        """Try to deliver every pending batch once, in order.

        Args:
            deadline: ``time.monotonic()`` after which no further batch is started.

        Returns:
            True if the spool is empty afterwards, False if delivery stopped at an error.
        """
        for batch in self.spool.pending():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            try:
                body = self.spool.read(batch)
            except FileNotFoundError:
                continue  # dropped by the size cap meanwhile
            timeout_s = self.timeout_s
            if deadline is not None:  # a request never outlives the caller's deadline
                timeout_s = max(0.1, min(timeout_s, deadline - time.monotonic()))
            try:
                resp = self._client.post(
                    body,
                    headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
                    timeout_s=timeout_s,
                )
            except TransportError as err:
                self._failed(f"collector unreachable: {err}")
                return False
            except MungeError as err:
                self._failed(f"cannot sign the request: {err}")
                return False
            if resp.is_success:
                self.spool.ack(batch)
                self.sent_total += 1
                if self.metrics is not None:
                    self.metrics.last_push_success.set_to_current_time()
                self._backoff_s = 0.0
                if self._failing is not None:
                    logger.info("push delivered again after failed_pushes=%s",
                                self._failed_in_row)
                    self._failing, self._failed_in_row = None, 0
                self._accepted(resp)
                continue
            if resp.status_code in _AUTH_4XX:
                self._failed(f"collector answered HTTP {resp.status_code}: "
                             f"{refusal_reason(resp, _LOGGED_REASON_CHARS)}")
                return False
            if 400 <= resp.status_code < 500 and resp.status_code not in _RETRYABLE_4XX:
                self._refused(batch, resp)
                continue
            self._failed(f"collector answered HTTP {resp.status_code}")
            return False
        return True

    def _accepted(self, resp: Response) -> None:
        if self.on_accepted is None:
            return
        try:
            self.on_accepted(resp.content)
        except Exception:  # a bug there must not stop deliveries
            logger.exception("the collector's answer could not be handled")

    def _refused(self, batch: SpooledBatch, resp: Response) -> None:
        """Keep a refused batch in ``rejected/``, count it and log it, once."""
        status = resp.status_code
        kept_at = self.spool.reject(
            batch, f"HTTP {status}: {refusal_reason(resp, _KEPT_REASON_CHARS)}"
        )
        if self.metrics is not None:
            self.metrics.batches_rejected.labels(str(status)).inc()
        logger.warning(
            "collector refused batch, kept seq=%s status=%s reason=%s kept_at=%s",
            batch.seq,
            status,
            refusal_reason(resp, _LOGGED_REASON_CHARS),
            kept_at if kept_at is not None else "(dropped by the spool size cap)",
        )

    def _failed(self, reason: str) -> None:
        self.failures_total += 1
        self._backoff_s = min(self.backoff_max_s, max(self.backoff_initial_s, self._backoff_s * 2))
        self._failed_in_row += 1
        level = logging.DEBUG if reason == self._failing else logging.WARNING
        self._failing = reason
        logger.log(level, "push failed, will retry reason=%s backoff_s=%.1f failed_pushes=%s",
                   reason, self._backoff_s, self._failed_in_row)

    def _next_delay_s(self) -> float | None:
        # "Equal jitter": half fixed so retries never spin, half random so a cluster's agents
        # do not all retry in the same second after a collector outage.
        if not self._backoff_s:
            return None
        return self._backoff_s / 2 + random.uniform(0, self._backoff_s / 2)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                delivered = self.push_once()
            except Exception:  # the sender thread must outlive a full disk or a bug
                logger.exception("push failed unexpectedly, will retry")
                self._failed("unexpected error")
                delivered = False
            delay = None if delivered else self._next_delay_s()
            self._wake.wait(timeout=delay)
            self._wake.clear()

    def start(self) -> None:
        """Start the background sender thread."""
        self._thread = threading.Thread(target=self._run, name="jobenergy-pusher", daemon=True)
        self._thread.start()

    def stop(self, join_timeout_s: float = 2.0) -> bool:
        """Stop the background sender thread (pending batches stay in the spool).

        Returns:
            True when the thread has stopped; False when it is still inside a request to a
            collector that does not answer (a daemon thread: it never holds up the exit).
        """
        self._stop.set()
        self._wake.set()
        if self._thread is None:
            return True
        self._thread.join(timeout=join_timeout_s)
        return not self._thread.is_alive()

    def close(self) -> None:
        """Release the HTTP client."""
        self._client.close()
