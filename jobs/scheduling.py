"""Which tenant's job runs next: round-robin over tenants, with a per-tenant running cap.

Every job store keeps, per tenant, its oldest queued job, how many of its jobs run, and the
turn at which one of its jobs last started (a counter that grows with every start). The next
job is the oldest queued job of the tenant served least recently among those below the cap;
a tenant never served goes first, ties go to the older queued job. So a tenant that queues
many jobs gets one start per round, like every other tenant with work waiting, and can never
hold more than `max_running` workers (0: no cap). The stores apply the pick and the claim in
one atomic step (jobs/stores/).
"""

from __future__ import annotations

from collections.abc import Mapping


def pick_tenant(
    heads: Mapping[str, int],
    running: Mapping[str, int],
    turns: Mapping[str, int],
    max_running: int,
) -> str | None:
    """`heads`: tenant -> seq of its oldest queued job; `running`: tenant -> running jobs;
    `turns`: tenant -> turn of its last start. None when no tenant may start a job."""
    eligible = [
        tenant for tenant in heads if not max_running or running.get(tenant, 0) < max_running
    ]
    if not eligible:
        return None
    return min(eligible, key=lambda t: (turns.get(t, 0), heads[t]))
