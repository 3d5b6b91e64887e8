"""Transient failures: which errors mean "try again", and how long to wait between tries."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import RetryableError, StoreUnavailable
from ..spec import OperationSpec, Retry

STORE_RETRY = Retry(max_attempts=5, initial_backoff=0.1, max_backoff=2.0)
"""How long to keep trying a store that does not answer before giving the command back."""


def backoff(failures: int, retry: Retry) -> float:
    """Exponential backoff with jitter: uniform in [c/2, c], c = min(max, initial * 2^(n-1))."""
    ceiling = min(retry.max_backoff, retry.initial_backoff * 2 ** (failures - 1))
    return random.uniform(ceiling / 2, ceiling)


class Retrier:
    """The one place that knows what is transient: the network, the store's own errors, the
    app's (``transient_errors``), ``RetryableError``, and a spec's ``retry_on``."""

    def __init__(
        self, transient: tuple[type[BaseException], ...], sleep: Callable[[float], Awaitable[None]]
    ) -> None:
        self.transient: tuple[type[BaseException], ...] = (
            ConnectionError,
            TimeoutError,
            RetryableError,
            *transient,
        )
        self.sleep = sleep

    def is_transient(self, exc: BaseException, spec: OperationSpec | None = None) -> bool:
        return isinstance(exc, self.transient) or (spec is not None and isinstance(exc, spec.retry.retry_on))

    async def pause(self, failures: int, retry: Retry) -> None:
        await self.sleep(backoff(failures, retry))

    async def store(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Call the store, riding out a short outage; past it, give the command back
        (``StoreUnavailable``: the message is not acknowledged)."""
        for attempt in range(1, STORE_RETRY.max_attempts + 1):
            try:
                return await fn()
            except Exception as exc:
                if not self.is_transient(exc):
                    raise
                if attempt == STORE_RETRY.max_attempts:
                    raise StoreUnavailable(f"store unavailable: {exc!r}") from exc
                await self.pause(attempt, STORE_RETRY)
        raise AssertionError("unreachable")


__all__ = ["STORE_RETRY", "Retrier", "backoff"]
