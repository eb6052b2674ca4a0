"""A job's webhook state on its record, changed in the job store's atomic `update` so that
workers racing for one delivery cannot both record it:

    pending --claim_attempt--> pending (attempts + 1, leased until next_attempt_at)
    pending --record_attempt--> delivered | refused | failed (after `webhook_attempts`)
                                | pending (retry after `webhook_backoff` x 2^(attempt - 1))

The record is the outbox: a worker that dies mid-attempt leaves it pending, and once the lease
runs out another worker tries again (at least once; the `webhook-id` lets a receiver drop a
repeat).
"""

from __future__ import annotations

from datetime import timedelta

from jobs.lifecycle import transition
from jobs.records import JobRecord, utcnow
from jobs.settings import Settings
from jobs.stores import JobStore
from jobs.webhooks.delivery import Attempt


def lease_seconds(settings: Settings) -> float:
    """Longer than one attempt can take (connect, send and answer, each up to the timeout)."""
    return 3 * settings.webhook_timeout + 30


def claim_attempt(store: JobStore, job_id: str, settings: Settings) -> JobRecord | None:
    """Take the next attempt of a webhook that is due; None if it is not (or no longer)."""
    now = utcnow()

    def change(r: JobRecord) -> JobRecord | None:
        due = r.callback_due
        if due is None or due > now or r.callback is None:
            return None
        callback = r.callback.model_copy(
            update={
                "attempts": r.callback.attempts + 1,
                "next_attempt_at": now + timedelta(seconds=lease_seconds(settings)),
            }
        )
        return r.model_copy(update={"callback": callback})

    return transition(store, job_id, change)


def record_attempt(
    store: JobStore, job_id: str, number: int, result: Attempt, settings: Settings
) -> JobRecord | None:
    """Record how attempt `number` went (ignored if another attempt was claimed since)."""

    def change(r: JobRecord) -> JobRecord | None:
        callback = r.callback
        if callback is None or callback.status != "pending" or callback.attempts != number:
            return None
        if result.delivered:
            update = {"status": "delivered", "last_error": None, "next_attempt_at": None}
        elif result.refused:
            update = {"status": "refused", "last_error": result.error, "next_attempt_at": None}
        elif number >= settings.webhook_attempts:
            update = {"status": "failed", "last_error": result.error, "next_attempt_at": None}
        else:
            wait = settings.webhook_backoff * 2 ** (number - 1)
            update = {
                "last_error": result.error,
                "next_attempt_at": utcnow() + timedelta(seconds=wait),
            }
        return r.model_copy(update={"callback": callback.model_copy(update=update)})

    return transition(store, job_id, change)
