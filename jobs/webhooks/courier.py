"""Deliver every webhook that is due: the job object as `GET /jobs/{id}` shows it, signed with
the tenant's secret. Run by each worker's courier thread (worker/courier.py), in the worker's
own process, never in a job's sandbox."""

from __future__ import annotations

import logging
import time

from jobs.job_object import JobOut
from jobs.logs import log_scope
from jobs.records import JobRecord, utcnow
from jobs.settings import Settings
from jobs.stores import JobStore
from jobs.webhooks import outbox
from jobs.webhooks.delivery import Attempt, attempt
from synflow.webhooks import sign

log = logging.getLogger("worker")

#: webhooks one pass takes on; the next pass takes the rest
BATCH = 100


def message_id(job_id: str) -> str:
    """`webhook-id`: one message per job (its end), the same on every retry."""
    return f"msg_{job_id}"


def deliver(record: JobRecord, settings: Settings) -> Attempt:
    assert record.callback is not None
    secret = settings.webhook_secrets.get(record.tenant)
    if secret is None:
        return Attempt(
            False,
            refused=True,
            error="the service has no webhook secret for this tenant any more "
            "(SYNFLOW_WEBHOOK_SECRETS), so it cannot sign the webhook",
        )
    body = JobOut.of(record).model_dump_json().encode()
    headers = sign(secret, message_id(record.id), int(time.time()), body)
    return attempt(record.callback.url, body, headers, settings)


def deliver_due(jobs: JobStore, settings: Settings) -> list[str]:
    """One pass: every webhook due now gets one attempt; returns the ids of those delivered."""
    delivered = []
    for job_id in jobs.callbacks_due(utcnow(), BATCH):
        record = outbox.claim_attempt(jobs, job_id, settings)
        if record is None or record.callback is None:
            continue  # another worker took it, or it is not due after all
        number = record.callback.attempts
        with log_scope(job_id=job_id, tenant=record.tenant):  # on the JSON log lines
            try:
                result = deliver(record, settings)
            except Exception as exc:  # a bug here must not leave the attempt leased forever
                log.exception("job %s: webhook attempt %d failed unexpectedly", job_id, number)
                error = f"internal error while sending: {type(exc).__name__}"
                result = Attempt(False, error=error)
            outbox.record_attempt(jobs, job_id, number, result, settings)
            if result.delivered:
                delivered.append(job_id)
                log.info("job %s: webhook delivered (attempt %d)", job_id, number)
            else:
                log.warning("job %s: webhook attempt %d: %s", job_id, number, result.error)
    return delivered
