"""Retention: what the runner may forget, and when. ``oprunner prune`` and ``serve``'s
maintenance job both call ``prune``.

- Completed runs past the idempotency window: a command sent again after it, with the same
  key, runs again (its effect is then only as idempotent as its handler and the outside API).
- Webhook inbox rows that were published, past the provider's retry window: an event Stripe
  redelivers after it is taken as new (Stripe retries for up to three days).
- Outbox rows Kafka refused for good (parked), once an operator has had time to look.
- Never the audit log: it is append-only. ``prune`` makes sure next months' partitions exist;
  an operator archives a month by detaching its partition.

Rows go in batches of ``batch`` so no delete holds locks for long.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_TABLES = {
    "runs": ("oprunner_runs", "status = 'completed' AND completed_at < now() - make_interval(secs => $1)"),
    "inbox": (
        "oprunner_webhook_inbox",
        "published_at IS NOT NULL AND received_at < now() - make_interval(secs => $1)",
    ),
    "parked_outbox": (
        "oprunner_outbox",
        "failed_at IS NOT NULL AND failed_at < now() - make_interval(secs => $1)",
    ),
}


@dataclass(frozen=True, slots=True)
class Windows:
    """Seconds each kind of row is kept; 0 keeps it forever."""

    runs: float
    inbox: float
    parked_outbox: float


async def prune(pool: Any, windows: Windows, *, batch: int = 5000, dry_run: bool = False) -> dict[str, int]:
    """Delete (or with ``dry_run`` count) what is past its window; ensure audit partitions.
    Returns the rows per kind, and ``audit_partitions_created``."""
    done: dict[str, int] = {}
    for kind, (table, where) in _TABLES.items():
        seconds = float(getattr(windows, kind))
        if seconds <= 0:
            done[kind] = 0
            continue
        if dry_run:
            done[kind] = int(await pool.fetchval(f"SELECT count(*) FROM {table} WHERE {where}", seconds))
            continue
        total = 0
        while True:
            deleted = await pool.fetchval(
                f"""WITH gone AS (
                        DELETE FROM {table} WHERE ctid = ANY(ARRAY(
                            SELECT ctid FROM {table} WHERE {where} LIMIT $2 FOR UPDATE SKIP LOCKED))
                        RETURNING 1)
                    SELECT count(*) FROM gone""",
                seconds,
                batch,
            )
            total += int(deleted)
            if deleted < batch:
                break
        done[kind] = total
    created = [] if dry_run else await pool.fetch("SELECT oprunner_audit_partitions() AS name")
    done["audit_partitions_created"] = len(created)
    return done
