"""The registry: which specs this app serves, their handlers, and the resource resolvers."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .context import OperationContext, PolicyContext
from .errors import RegistryError, UnknownOperation
from .spec import AUTH_LEVELS, OperationSpec, parse_version

Handler = Callable[[Any, OperationContext], Awaitable[Any]]

BatchHandler = Callable[[Sequence[tuple[Any, OperationContext]]], Awaitable[Sequence[Any]]]
"""``[(input, ctx), ...] -> [output, ...]``: the handler's work for many commands at once (one
statement for all their rows, say), in the batch's transaction. It must do exactly what the
handler would do for each, in any order. If it raises anything, the batch is rolled back and
every command runs the plain handler instead, so a batch handler never decides a failure."""


@dataclass(frozen=True, slots=True)
class Resource:
    """A resource as policy rules see it: who owns it and in which tenant it lives."""

    id: str
    owner_id: str | None = None
    tenant_id: str | None = None


Resolver = Callable[[str, PolicyContext], Awaitable[Any] | Any]
"""``(resource_id, ctx) -> Resource | Mapping | object | None``, sync or async (see
``runner.policy.as_resource`` for what a returned row may look like)."""

BatchResolver = Callable[[list[str], PolicyContext], Awaitable[Mapping[str, Any]]]
"""``(resource_ids, ctx) -> {id: row}``: loads many resources in one query."""


class _Coalescing:
    """A ``Resolver`` over a ``BatchResolver``: calls made in the same event-loop tick (a batch
    of commands being authorized together) become one ``BatchResolver`` call."""

    def __init__(self, load_many: BatchResolver) -> None:
        self._load_many = load_many
        self._waiting: dict[str, list[asyncio.Future[Any]]] = {}
        self._ctx: PolicyContext | None = None

    async def __call__(self, resource_id: str, ctx: PolicyContext) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self._waiting:
            self._ctx = ctx
            asyncio.get_running_loop().call_soon(self._dispatch)
        self._waiting.setdefault(resource_id, []).append(future)
        return await future

    def _dispatch(self) -> None:
        waiting, self._waiting = self._waiting, {}
        ctx, self._ctx = self._ctx, None
        assert ctx is not None
        task = asyncio.ensure_future(self._load_many(list(waiting), ctx))

        def deliver(done: asyncio.Future[Mapping[str, Any]]) -> None:
            for resource_id, futures in waiting.items():
                for future in futures:
                    if future.done():
                        continue
                    if done.cancelled():
                        future.cancel()
                    elif (error := done.exception()) is not None:
                        future.set_exception(error)
                    else:
                        future.set_result(done.result().get(resource_id))

        task.add_done_callback(deliver)


Upcast = Callable[[Any], Awaitable[Any]]
"""One step up (``runner.versions.install_upcast``): an older spec's validated input to the
newer spec's validated input model."""


@dataclass(frozen=True, slots=True)
class Upcasted:
    """A command's input carried up its upcast chain at admission, which authorized each
    version's input by that version's policy before anything ran. The executor hands this to
    the older spec's (upcasting) handler instead of the input it was sent with, so the inputs
    the handlers get are the ones that were authorized: no upcast runs twice.

    ``inputs`` holds the input of each version up the chain, in order; ``error`` what stopped
    the chain (an upcast that raised), raised where that step would have run, so the command
    fails there as it would have without this (and no handler beyond it runs)."""

    inputs: tuple[Any, ...]
    error: Exception | None = None

    def onward(self) -> Any:
        """What the next version's handler gets: its input when it is the last of the chain,
        else the rest of the chain; raises ``error`` when the chain stopped here."""
        if not self.inputs:
            assert self.error is not None
            raise self.error
        if len(self.inputs) == 1 and self.error is None:
            return self.inputs[0]
        return Upcasted(self.inputs[1:], self.error)


@dataclass(frozen=True, slots=True)
class Installed:
    spec: OperationSpec
    handler: Handler
    batch: BatchHandler | None = None
    upcast_to: OperationSpec | None = None
    """For an older version served by a newer one's handler (``runner.versions.install_upcast``):
    the spec whose handler runs it."""
    upcast: Upcast | None = None
    """With ``upcast_to``: this version's input to ``upcast_to``'s. Admission runs it to
    authorize the command by ``upcast_to``'s policy too (``Upcasted``)."""


class OperationRegistry:
    """Specs unique by (key, version), several versions of one key served side by side.

    A command names its version in ``opversion``; one that names none gets the key's *default*
    version: the highest one whose stability is not ``deprecated`` (the highest of all when every
    one is deprecated). So publishing ``2.0.0`` moves unpinned callers to it, and deprecating it
    moves them back, while callers that pin a version always get exactly that one."""

    def __init__(self) -> None:
        self._ops: dict[str, dict[tuple[int, int, int], Installed]] = {}
        self._defaults: dict[str, Installed] = {}  # per key, what a command naming no version runs
        self._resolvers: dict[str, Resolver] = {}

    def install(
        self,
        spec: OperationSpec,
        handler: Handler,
        batch: BatchHandler | None = None,
        *,
        upcast_to: OperationSpec | None = None,
        upcast: Upcast | None = None,
    ) -> None:
        versions = self._ops.setdefault(spec.key, {})
        version = parse_version(spec.version)
        if version in versions:
            raise RegistryError(f"{spec.key} {spec.version} is installed already")
        if batch is not None and spec.kind == "query":
            raise RegistryError(f"{spec.key}: queries run alone; a batch handler is for commands")
        if (upcast_to is None) != (upcast is None):
            raise RegistryError(f"{spec.key} {spec.version}: an upcast needs both its target and its step")
        versions[version] = Installed(spec, handler, batch, upcast_to, upcast)
        served = [v for v, op in versions.items() if not op.spec.deprecated] or list(versions)
        self._defaults[spec.key] = versions[max(served)]

    def get(self, key: str, version: str | None = None) -> Installed:
        """The installed operation of ``key`` at ``version``; with no version, the default one
        (the highest not deprecated; the highest when all are). ``UnknownOperation`` if none."""
        versions = self._ops.get(key)
        if not versions:
            raise UnknownOperation(f"unknown operation {key!r}")
        if version is None:
            return self._defaults[key]
        try:
            return versions[parse_version(version)]
        except (ValueError, KeyError):
            raise UnknownOperation(f"unknown version {version!r} of {key!r}") from None

    def serving(self, spec: OperationSpec) -> Installed | None:
        """What is installed as exactly ``spec`` (the same object, at its key and version);
        None when nothing is, or another spec of that version is."""
        installed = self._ops.get(spec.key, {}).get(parse_version(spec.version))
        return installed if installed is not None and installed.spec is spec else None

    def __iter__(self) -> Iterator[OperationSpec]:
        for installed in self._installed():
            yield installed.spec

    def __len__(self) -> int:
        return sum(len(v) for v in self._ops.values())

    def resource(self, name: str) -> Callable[[Resolver], Resolver]:
        """Decorator: register the loader rules use for ``Rule(resource=name)``."""

        def register(fn: Resolver) -> Resolver:
            self.add_resource(name, fn)
            return fn

        return register

    def resources(self, name: str) -> Callable[[BatchResolver], BatchResolver]:
        """Decorator: register a loader of many ``name`` resources at once, ``(ids, ctx) ->
        {id: row}``. Commands authorized together (a batch) share one query."""

        def register(fn: BatchResolver) -> BatchResolver:
            self.add_resource(name, _Coalescing(fn))
            return fn

        return register

    def add_resource(self, name: str, resolver: Resolver) -> None:
        if name in self._resolvers:
            raise RegistryError(f"resource {name!r} has a resolver already")
        self._resolvers[name] = resolver

    def resolver(self, name: str) -> Resolver | None:
        return self._resolvers.get(name)

    def problems(self) -> list[str]:
        """What would make a command fail closed at run time, found before serving."""
        found = []
        for spec in self:
            for rule in spec.policy.rules:
                if rule.needs_resource() and rule.resource not in self._resolvers:
                    found.append(
                        f"{spec.key} {spec.version}: no resolver for resource {rule.resource!r}"
                        " (every such command would be denied)"
                    )
        for installed in self._installed():
            if (target := installed.upcast_to) is not None:
                found += self._upcast_problems(installed.spec, target)
        return found

    def _installed(self) -> Iterator[Installed]:
        for key in sorted(self._ops):
            for version in sorted(self._ops[key]):
                yield self._ops[key][version]

    def _upcast_problems(self, spec: OperationSpec, target: OperationSpec) -> list[str]:
        where = f"{spec.key} {spec.version}: upcasts to {target.key} {target.version}"
        if self.serving(target) is None:
            if parse_version(target.version) in self._ops.get(target.key, {}):
                return [f"{where}, but another spec of that version is installed"]
            return [f"{where}, which is not installed (every such command would fail)"]
        if AUTH_LEVELS.index(spec.policy.auth) < AUTH_LEVELS.index(target.policy.auth):
            return [
                f"{where}: its auth {spec.policy.auth!r} is looser than {target.policy.auth!r}"
                f" (callers of {spec.version} would be denied by {target.version}'s policy)"
            ]
        return []

    def check(self) -> None:
        """Raise ``RegistryError`` listing every problem; ``serve`` calls it before consuming."""
        if found := self.problems():
            raise RegistryError("; ".join(found))


def install_op(
    registry: OperationRegistry, spec: OperationSpec, handler: Handler, *, batch: BatchHandler | None = None
) -> None:
    """Install one operation: the one line a new operation adds to the app's registry module.

    ``batch`` optionally gives the same work for many commands at once (see ``BatchHandler``),
    used when commands of this operation run together in one transaction. A handler that is
    not ``async`` or takes the wrong arguments is an error here, not at its first command."""
    if not isinstance(spec, OperationSpec):
        got = type(spec).__name__
        raise RegistryError(f"install_op takes a spec from define_command/define_query, got {got}")
    _check_callable(spec, "handler", handler, ("value", "ctx"))
    if batch is not None:
        _check_callable(spec, "batch handler", batch, ("items",))
    registry.install(spec, handler, batch)


def _check_callable(spec: OperationSpec, what: str, fn: Any, params: tuple[str, ...]) -> None:
    target = fn.__call__ if not inspect.isfunction(fn) and not inspect.ismethod(fn) and callable(fn) else fn
    if not callable(fn):
        raise RegistryError(f"{spec.key}: the {what} is not callable ({type(fn).__name__})")
    if not inspect.iscoroutinefunction(target) and not inspect.iscoroutinefunction(fn):
        raise RegistryError(f"{spec.key}: the {what} {_name(fn)} must be 'async def'")
    try:
        inspect.signature(fn).bind(*params)
    except TypeError:
        raise RegistryError(
            f"{spec.key}: the {what} {_name(fn)} must take {len(params)} positional argument(s) "
            f"({', '.join(params)})"
        ) from None
    except ValueError:
        return  # no signature to read (a builtin): trust it


def _name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or type(fn).__name__)
