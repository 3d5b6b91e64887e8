"""PostgreSQL: the ``Store`` on asyncpg, and the schema migrations."""

from .migrate import migrate, migration_files
from .store import TRANSIENT_ERRORS, PostgresStore, connect_pool

__all__ = ["TRANSIENT_ERRORS", "PostgresStore", "connect_pool", "migrate", "migration_files"]
