"""Step 6: run the handler (or an operation's batch handler) and check what it returns.

The result is the outcome's data: ``{"status": "succeeded", "output": ...}`` or
``{"status": "failed", "error": ...}``. Transient errors are raised, not turned into data:
the caller decides whether to try again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from ..auth import CommandSigner
from ..context import OperationContext, Sender
from ..envelope import NUL, nul_paths, visible, without_nul
from ..errors import OperationError, RetryableError
from ..followups import HEADROOM, MAX_DEPTH, MAX_FOLLOW_UPS, MAX_KEY, admits_a_service, follow_up
from ..model import Model
from ..observability import Metrics
from ..registry import OperationRegistry
from ..spec import OperationSpec
from ..validation import field_errors
from .calls import Admitted, Call, Held
from .outcomes import error
from .retries import Retrier

_log = logging.getLogger("oprunner.executor")


class OutputInvalid(Exception):
    """The handler returned something its spec's output schema does not allow."""


class BatchAbort(Exception):
    """A batch handler did not succeed: its commands run one by one, on the plain handler."""


class Rollback(Exception):
    """Leave the handler's transaction without committing; ``data`` is the failure to record."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data


class InTurn:
    """A database handle shared by concurrent resolvers: each call waits for the one before
    (one asyncpg connection runs one query at a time). Batch resolvers make this one call."""

    def __init__(self, db: Any) -> None:
        self._db = db
        self._lock = asyncio.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._db, name)
        if not callable(attr):
            return attr

        async def in_turn(*args: Any, **kwargs: Any) -> Any:
            async with self._lock:
                return await attr(*args, **kwargs)

        return in_turn


class Invoker:
    def __init__(
        self,
        clients: Mapping[str, Any],
        metrics: Metrics | None,
        retrier: Retrier,
        *,
        source: str,
        registry: OperationRegistry,
        signer: CommandSigner | None = None,
        max_message_bytes: int = 1024 * 1024,
    ) -> None:
        self.clients = clients
        self.metrics = metrics
        self.retrier = retrier
        self.source = source
        self.registry = registry
        self.signer = signer  # what signs follow-ups and derives their ids: none, no ctx.send
        self.max_message_bytes = max_message_bytes

    def context(self, spec: OperationSpec, call: Call, db: Any, attempt: int) -> OperationContext:
        command = call.command
        ids = {"command_id": command.id, "correlation_id": command.correlation_id, "op": spec.key}
        call.follow_ups = []  # each attempt starts with none: what a rolled-back one sent is gone
        return OperationContext(
            sender=self._sender(spec, call, self.signer) if self.signer is not None else None,
            db=db,
            actor=call.actor,
            idempotency_key=command.idempotency_key,
            run_key=call.effect_scope,
            spec=spec,
            command_id=command.id,
            correlation_id=command.correlation_id,
            attempt=attempt,
            logger=logging.LoggerAdapter(logging.getLogger(f"oprunner.op.{spec.key}"), ids),
            clients=self.clients,
        )

    def _sender(self, parent: OperationSpec, call: Call, signer: CommandSigner) -> Sender:
        """``ctx.send`` for one attempt of ``call``: each check here fails the handler (its
        parent rolls back) rather than commit a follow-up that could never run."""
        sent, keys = call.follow_ups, set[str]()
        bound = call.actor.bound if call.actor is not None else None
        depth = (bound.depth if bound is not None else 0) + 1
        scopes: list[str] = []  # derived on the first send: most runs send nothing

        def send(spec: OperationSpec, input: Any, key: str | None) -> str:
            if parent.kind == "query":
                raise ValueError(f"{parent.key} is a query: a query reads, it sends no commands")
            if not isinstance(spec, OperationSpec) or spec.kind == "query":
                raise ValueError("ctx.send takes a command's spec (a query is asked, not sent)")
            if self.registry.serving(spec) is None:
                raise ValueError(f"follow-up {spec.key} {spec.version} is not installed in this app")
            if (why := admits_a_service(spec.policy)) is not None:
                raise ValueError(f"follow-up {spec.key} would always be denied: {why}")
            if depth > MAX_DEPTH:
                raise ValueError(f"follow-up {spec.key}: a chain of sends ends at {MAX_DEPTH}")
            if key is not None and (not 0 < len(key) <= MAX_KEY or NUL in key or "#" in key):
                raise ValueError(f"a follow-up key is 1 to {MAX_KEY} characters, without U+0000 or '#'")
            key = key if key is not None else f"{spec.key}#{len(sent) + 1}"  # '#': the defaults'
            if key in keys:
                raise ValueError(f"this run has sent a follow-up with key {key!r} already")
            if len(sent) >= MAX_FOLLOW_UPS:
                raise ValueError(f"a run sends at most {MAX_FOLLOW_UPS} follow-up commands")
            try:
                value = input if type(input) is spec.io.input else spec.io.input.model_validate(input)
            except ValidationError as exc:
                fields = ", ".join(sorted({f["field"] for f in field_errors(exc)}))
                raise ValueError(f"follow-up {spec.key}: invalid input: {fields}") from None
            wire = value.to_wire()
            if nul := nul_paths(wire):
                raise ValueError(f"follow-up {spec.key}: U+0000 at {', '.join(nul)}")
            if not scopes:
                scopes.append(signer.derive(f"{call.effect_scope}\n{call.command.id}")[:32])
            item = follow_up(
                spec,
                wire,
                spec.partition_value(value),
                key=key,
                scope=scopes[0],
                parent=call.command,
                traceparent=call.traceparent,
                source=self.source,
                depth=depth,
            )
            if (size := len(item.command.encode()) + HEADROOM) > self.max_message_bytes:
                raise ValueError(
                    f"follow-up {spec.key} is {size} bytes with its headers, over the "
                    f"{self.max_message_bytes}-byte message limit"
                )
            sent.append(item)
            keys.add(key)
            return item.command.id

        return send

    async def invoke(self, admitted: Admitted, db: Any, attempt: int) -> dict[str, Any]:
        """Run the handler; return the result data. Transient errors propagate."""
        spec = admitted.spec
        ctx = self.context(spec, admitted.call, db, attempt)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(spec.timeout):
                raw = await admitted.installed.handler(admitted.handler_input, ctx)
            output = validate_output(spec.io.output, raw)
        except OperationError as exc:
            if exc.retryable:
                raise RetryableError(exc.code) from exc
            details = {"details": exc.details} if exc.details else {}
            return {
                "status": "failed",
                "error": error(visible(exc.code), visible(exc.message), **without_nul(details)),
            }
        except OutputInvalid as exc:
            return {"status": "failed", "error": error("OUTPUT_INVALID", str(exc))}
        except Exception as exc:
            if self.retrier.is_transient(exc, spec):
                raise
            ctx.logger.exception("handler of %s raised", spec.key)
            return {"status": "failed", "error": error("HANDLER_ERROR", type(exc).__name__)}
        finally:
            if self.metrics is not None:
                self.metrics.handler_seconds.labels(spec.key).observe(time.perf_counter() - started)
        return {"status": "succeeded", "output": output}

    async def invoke_batch(self, items: list[Held], db: Any) -> list[dict[str, Any]]:
        """Run one operation's batch handler for ``items``; the result data of each, or
        ``BatchAbort`` when anything at all goes wrong (each command then runs alone)."""
        installed = items[0].admitted.installed
        spec, batch = installed.spec, installed.batch
        assert batch is not None
        contexts = [(h.admitted.value, self.context(spec, h.admitted.call, db, h.attempt)) for h in items]
        started = time.perf_counter()
        try:
            async with asyncio.timeout(spec.timeout):
                raws = await batch(contexts)
            if len(raws) != len(items):
                raise OutputInvalid(f"batch handler returned {len(raws)} outputs for {len(items)} inputs")
            outputs = [validate_output(spec.io.output, raw) for raw in raws]
        except Exception as exc:
            # Not a retry of any one command (which one failed is unknown): each runs alone
            # next, where its own failures and retries are counted.
            transient = self.retrier.is_transient(exc, spec)
            _log.log(
                logging.INFO if transient else logging.WARNING,
                "batch handler of %s raised %s; running its %d commands one by one",
                spec.key,
                type(exc).__name__,
                len(items),
                exc_info=not transient and not isinstance(exc, (OperationError, OutputInvalid)),
            )
            raise BatchAbort() from exc
        finally:
            if self.metrics is not None:
                share = (time.perf_counter() - started) / len(items)
                seconds = self.metrics.handler_seconds.labels(spec.key)
                for _ in items:
                    seconds.observe(share)
        return [{"status": "succeeded", "output": output} for output in outputs]


def validate_output(output_model: type[Model], raw: Any) -> dict[str, Any]:
    """The handler's output on the wire, or ``OutputInvalid`` (also for U+0000 anywhere in
    it, which no store can record: the command fails rather than its batch's commit)."""
    wire = _wire_output(output_model, raw)
    if nul := nul_paths(wire):
        raise OutputInvalid(f"handler output holds U+0000 at {', '.join(nul)}")
    return wire


def _wire_output(output_model: type[Model], raw: Any) -> dict[str, Any]:
    try:
        if type(raw) is output_model:  # built through its validating constructor already
            return raw.to_wire()
        if isinstance(raw, BaseModel):
            value = output_model.model_validate(raw.model_dump(by_alias=True))
        else:
            value = output_model.model_validate(raw)
    except ValidationError as exc:
        fields = ", ".join(sorted({f["field"] for f in field_errors(exc)}))
        raise OutputInvalid(f"handler output does not match {output_model.__name__}: {fields}") from None
    return value.to_wire()
