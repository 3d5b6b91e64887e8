"""oprunner: declared operations run exactly once per idempotency key, every outcome audited.

The public API is re-exported here; the modules behind it are implementation.
"""

from .app import App
from .auth import Actor, JwtAuthenticator, mint_token
from .context import OperationContext, PolicyContext
from .envelope import CommandEnvelope, command, parse_command
from .errors import (
    AuthError,
    EnvelopeError,
    OperationError,
    RegistryError,
    RetryableError,
    StoreUnavailable,
    UnknownOperation,
)
from .executor import Executor, Outcome
from .model import Model
from .registry import OperationRegistry, Resource, install_op
from .spec import (
    IO,
    Meta,
    OperationSpec,
    Policy,
    Retry,
    Rule,
    define_command,
    define_event,
    define_query,
)
from .store import Store
from .versions import install_upcast
from .webhooks import MappedCommand, VerifiedEvent, WebhookRejected, WebhookSource

__all__ = [
    "IO",
    "Actor",
    "App",
    "AuthError",
    "CommandEnvelope",
    "EnvelopeError",
    "Executor",
    "JwtAuthenticator",
    "MappedCommand",
    "Meta",
    "Model",
    "OperationContext",
    "OperationError",
    "OperationRegistry",
    "OperationSpec",
    "Outcome",
    "Policy",
    "PolicyContext",
    "RegistryError",
    "Resource",
    "Retry",
    "RetryableError",
    "Rule",
    "Store",
    "StoreUnavailable",
    "UnknownOperation",
    "VerifiedEvent",
    "WebhookRejected",
    "WebhookSource",
    "command",
    "define_command",
    "define_event",
    "define_query",
    "install_op",
    "install_upcast",
    "mint_token",
    "parse_command",
]
