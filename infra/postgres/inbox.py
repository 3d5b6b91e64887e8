"""The webhook inbox on Postgres: each verified event id once, every delivery kept."""

from __future__ import annotations

from typing import Any

import asyncpg

from runner.webhooks import InboxState, VerifiedEvent


class PostgresInbox:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def accept(self, provider: str, event: VerifiedEvent, body: bytes) -> InboxState:
        row: Any = await self.pool.fetchrow(
            """INSERT INTO oprunner_webhook_inbox (provider, event_id, event_type, payload, verified)
               VALUES ($1, $2, $3, $4, true)
               ON CONFLICT (provider, event_id) WHERE verified DO NOTHING
               RETURNING id""",
            provider,
            event.id,
            event.type,
            body,
        )
        if row is not None:
            return "new"
        published = await self.pool.fetchval(
            """SELECT published_at IS NOT NULL FROM oprunner_webhook_inbox
               WHERE provider = $1 AND event_id = $2 AND verified""",
            provider,
            event.id,
        )
        return "done" if published else "pending"

    async def mark_published(self, provider: str, event_id: str) -> None:
        await self.pool.execute(
            """UPDATE oprunner_webhook_inbox SET published_at = now()
               WHERE provider = $1 AND event_id = $2 AND verified AND published_at IS NULL""",
            provider,
            event_id,
        )
