"""The periodic tick: one scheduled job per ``TICK_SECONDS`` slot for the whole deployment.

Each tick schedules the next; every worker schedules one at start. Job ids name the slot and are unique, so
several workers (or a retried tick) never make two ticks for one slot, and a lost chain restarts with the next
worker start or tick retry. RQ's scheduler (``with_scheduler=True``) moves due jobs onto the queue.
"""

from __future__ import annotations

import time

from bridge import jobqueue
from workers.context import WorkerContext


def schedule_tick(ctx: WorkerContext) -> str | None:
    period = ctx.settings.tick_seconds
    slot = int(time.time() // period) + 1
    delay = max(0.0, slot * period - time.time())
    return jobqueue.schedule(ctx.queue, ctx.settings, jobqueue.TICK, delay, job_id=f"tick-{slot}")
