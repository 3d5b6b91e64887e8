"""Versions served side by side: an older spec run by a newer spec's handler through an upcast.

A key may have several versions installed at once (``OperationRegistry``: a command picks one
with ``opversion``, or gets the default, the highest not deprecated). When ``2.0.0`` changes
the input, ``1.0.0`` need not keep a handler of its own::

    install_op(registry, CaptureV2, capture)                      # the one handler
    install_upcast(registry, CaptureV1, CaptureV2, lambda old: {**old.to_wire(), "note": ""})

A ``1.0.0`` command is admitted by ``1.0.0``'s spec (its input schema, auth and rules), then
``upcast`` maps its validated input to ``2.0.0``'s input, which is validated again and
authorized by ``2.0.0``'s policy too (its auth level and every rule, with the registry's
resolvers, against the upcast input and the same actor: ``2.0.0``'s handler runs the command,
so ``2.0.0``'s rules hold for it; a refusal is ``denied``, audited as any denial, before any
claim or handler), and ``2.0.0``'s handler runs it with that very input. What is recorded is
the version the command asked for: its result and audit say ``1.0.0`` (and ``deprecated`` if
``1.0.0`` is), and its output is checked against ``1.0.0``'s output schema, so ``1.0.0``'s
callers get what ``1.0.0`` promised. When ``2.0.0``'s output has grown, ``downcast`` maps it
back.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from .context import OperationContext
from .errors import OperationError, RegistryError
from .executor.invocation import validate_output
from .model import Model
from .registry import OperationRegistry, Upcasted
from .spec import OperationSpec, parse_version
from .validation import field_errors

Upcast = Callable[[Any], Any]
"""``old_input -> new_input``: the older spec's validated input model to the newer spec's
input, as its model or a dict (wire or attribute names), or an awaitable of either. It may
raise ``OperationError`` for an input it cannot carry over (a domain failure like any other)."""

Downcast = Callable[[dict[str, Any]], Any]
"""``new_output_wire -> old_output``: the newer handler's output (validated, as wire JSON) to
what the older spec's output schema allows, as a model or a dict, or an awaitable of either."""

UPCAST_INVALID = "UPCAST_INVALID"
"""The error code of a command whose upcast gave input the newer spec refuses: a bug in the
upcast (the older input was valid), recorded as ``failed`` naming the fields."""


def install_upcast(
    registry: OperationRegistry,
    old: OperationSpec,
    new: OperationSpec,
    upcast: Upcast,
    *,
    downcast: Downcast | None = None,
) -> None:
    """Serve ``old`` with ``new``'s handler: ``upcast`` maps each ``old`` input to a ``new`` one.

    ``new`` is one version of the same key, higher than ``old``, installed (before or after this
    call) with its own handler, which may itself be an upcast to a higher one: ``1 -> 2 -> 3``
    chains. Each command is authorized by ``old``'s policy and then, on the upcast input, by
    ``new``'s (and so on up a chain), at admission: ``upcast`` runs there, once per command
    (make it a pure function of its input). ``registry.check()`` (run by ``serve``) reports an
    upcast to a version not installed, and an ``old`` whose auth level is looser than
    ``new``'s (its callers would be denied by ``new``'s).

    The handler gets a context whose ``spec`` is ``new`` (its own) and whose ``upcast_from`` is
    the spec the command asked for (``old``, or the first of a chain); the command's retry,
    timeout and partition key are ``old``'s. Its output must pass ``old``'s output schema, or
    ``downcast`` must make it so (else the command fails with ``OUTPUT_INVALID``). An upcast
    operation has no batch form: its commands run one by one.
    """
    for spec in (old, new):
        if not isinstance(spec, OperationSpec):
            got = type(spec).__name__
            raise RegistryError(f"install_upcast takes specs from define_command/define_query, got {got}")
    if new.key != old.key or parse_version(new.version) <= parse_version(old.version):
        raise RegistryError(
            f"{old.key} {old.version}: an upcast goes to a higher version of the same key, "
            f"not {new.key} {new.version}"
        )
    if new.kind != old.kind:
        raise RegistryError(f"{old.key}: {old.version} is a {old.kind}, {new.version} a {new.kind}")
    for what, fn in (("upcast", upcast), ("downcast", downcast)):
        if fn is not None and not callable(fn):
            raise RegistryError(f"{old.key} {old.version}: the {what} is not callable")
    label = f"{old.key} {old.version} -> {new.version}"

    async def step(value: Any) -> Model:
        return _as_input(new, await _maybe_await(upcast(value)), label)

    async def upcasting(value: Any, ctx: OperationContext) -> Any:
        target = registry.serving(new)
        if target is None:
            raise RegistryError(f"{label}: {new.version} is not installed, or another spec of it is")
        # the executor passes what admission upcast and authorized; a direct call, the input
        onward = value.onward() if isinstance(value, Upcasted) else await step(value)
        raw = await target.handler(
            onward, dataclasses.replace(ctx, spec=new, upcast_from=ctx.upcast_from or ctx.spec)
        )
        if downcast is None:
            return raw
        return await _maybe_await(downcast(validate_output(new.io.output, raw)))

    step.__qualname__ = upcasting.__qualname__ = f"upcast[{label}]"
    registry.install(old, upcasting, upcast_to=new, upcast=step)


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _as_input(new: OperationSpec, mapped: Any, label: str) -> Model:
    model = new.io.input
    if type(mapped) is model:
        return mapped
    if isinstance(mapped, BaseModel):
        mapped = mapped.model_dump(by_alias=True)
    try:
        return model.model_validate(mapped)
    except ValidationError as exc:
        names = ", ".join(sorted({f["field"] for f in field_errors(exc)}))
        raise OperationError(
            UPCAST_INVALID,
            f"{label}: the upcast gave input that {new.version} refuses ({names})",
            details={"fields": field_errors(exc)},
        ) from None
