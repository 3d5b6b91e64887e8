"""The ``Store`` contract of tests/unit/test_store_contract.py, run on ``PostgresStore``."""

from __future__ import annotations

import asyncpg
import pytest

from infra.postgres import PostgresStore
from runner.store import Store
from tests.unit.test_store_contract import StoreContract


class TestPostgresStore(StoreContract):
    @pytest.fixture
    def store(self, clean_db: asyncpg.Pool) -> Store:
        return PostgresStore(clean_db)
