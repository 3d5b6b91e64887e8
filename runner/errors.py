"""Every exception the engine raises or expects a handler to raise, in one place."""

from __future__ import annotations

from typing import Any


class OperationError(Exception):
    """A domain failure a handler reports on purpose: the result is ``failed`` with ``code``.

    Raise it for business outcomes (``ALREADY_PAID``); its transaction's writes are rolled back
    and the outcome is recorded. ``retryable=True`` asks for another attempt instead.
    """

    def __init__(
        self,
        code: str,
        message: str = "",
        *,
        details: dict[str, Any] | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message or code
        self.details = details or {}
        self.retryable = retryable


class RetryableError(Exception):
    """A transient failure (a dropped connection, a timeout): run the attempt again."""


class EnvelopeError(ValueError):
    """A message that is not a command envelope at all; ``reason`` says why (goes to the DLQ)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AuthError(Exception):
    """The caller could not be authenticated; ``reason`` is safe to return to the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RegistryError(Exception):
    """A registry that cannot serve: duplicate spec, missing resolver, unknown operation."""


class UnknownOperation(RegistryError, LookupError):
    """No spec with that key (and version)."""


class LeaseLost(Exception):
    """Another worker took over this run's claim; this attempt must not record its outcome."""


class StoreUnavailable(Exception):
    """The store could not record an outcome: the command must be retried, not acknowledged."""


class StartupError(Exception):
    """Something the operator must fix before serving; the message is one clear line."""
