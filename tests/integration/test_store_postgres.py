"""The ``Store`` contract of tests/unit/test_store_contract.py, run on ``PostgresStore``."""

from __future__ import annotations

import asyncpg
import pytest

from infra.postgres import PostgresStore
from runner.errors import LeaseLost
from runner.store import ClaimStatus, Store
from tests.unit.test_store_contract import StoreContract, outcome, request


class TestPostgresStore(StoreContract):
    @pytest.fixture
    def store(self, clean_db: asyncpg.Pool) -> Store:
        return PostgresStore(clean_db)

    async def test_a_run_written_meanwhile_by_a_claimer_without_the_lock_loses_the_batch(
        self, store: Store, clean_db: asyncpg.Pool
    ) -> None:
        """A claimer that takes no claim lock (a process of the version before it, during a
        rolling upgrade) commits a run for a key a batch holds without a row: the batch's
        write of that run fails as a lost claim (rolled back, its commands run alone), never
        as the store refusing the command's data."""
        with pytest.raises(LeaseLost):
            async with store.transaction() as tx:
                [claim] = await tx.claim_many([request()])
                assert claim.status is ClaimStatus.ACQUIRED
                await clean_db.execute(
                    """INSERT INTO oprunner_runs (run_key, op, version, input_hash, command_id, status,
                                                  attempts, lease_owner, lease_until, idempotency_key)
                       VALUES ('k1', 'docs.pay', '1.0.0', 'h1', 'cmd-k1', 'running', 1, 'old', now(), 'k1')"""
                )
                await tx.complete_many([("k1", "w1", outcome("cmd-k1"))], [])
        assert await clean_db.fetchval("SELECT lease_owner FROM oprunner_runs WHERE run_key = 'k1'") == "old"
        assert await clean_db.fetchval("SELECT count(*) FROM oprunner_audit") == 0
