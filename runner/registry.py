"""The registry: which specs this app serves, their handlers, and the resource resolvers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .context import OperationContext, PolicyContext
from .errors import RegistryError, UnknownOperation
from .spec import OperationSpec, parse_version

Handler = Callable[[Any, OperationContext], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Resource:
    """A resource as policy rules see it: who owns it and in which tenant it lives."""

    id: str
    owner_id: str | None = None
    tenant_id: str | None = None


Resolver = Callable[[str, PolicyContext], Awaitable[Any] | Any]
"""``(resource_id, ctx) -> Resource | Mapping | object | None``, sync or async (see
``runner.policy.as_resource`` for what a returned row may look like)."""


@dataclass(frozen=True, slots=True)
class Installed:
    spec: OperationSpec
    handler: Handler


class OperationRegistry:
    """Specs unique by (key, version); asking for a key alone gives its highest version."""

    def __init__(self) -> None:
        self._ops: dict[str, dict[tuple[int, int, int], Installed]] = {}
        self._resolvers: dict[str, Resolver] = {}

    def install(self, spec: OperationSpec, handler: Handler) -> None:
        versions = self._ops.setdefault(spec.key, {})
        version = parse_version(spec.version)
        if version in versions:
            raise RegistryError(f"{spec.key} {spec.version} is installed already")
        versions[version] = Installed(spec, handler)

    def get(self, key: str, version: str | None = None) -> Installed:
        versions = self._ops.get(key)
        if not versions:
            raise UnknownOperation(f"unknown operation {key!r}")
        if version is None:
            return versions[max(versions)]
        try:
            return versions[parse_version(version)]
        except (ValueError, KeyError):
            raise UnknownOperation(f"unknown version {version!r} of {key!r}") from None

    def __iter__(self) -> Iterator[OperationSpec]:
        for key in sorted(self._ops):
            for version in sorted(self._ops[key]):
                yield self._ops[key][version].spec

    def __len__(self) -> int:
        return sum(len(v) for v in self._ops.values())

    def resource(self, name: str) -> Callable[[Resolver], Resolver]:
        """Decorator: register the loader rules use for ``Rule(resource=name)``."""

        def register(fn: Resolver) -> Resolver:
            self.add_resource(name, fn)
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
        return found

    def check(self) -> None:
        """Raise ``RegistryError`` listing every problem; ``serve`` calls it before consuming."""
        if found := self.problems():
            raise RegistryError("; ".join(found))


def install_op(registry: OperationRegistry, spec: OperationSpec, handler: Handler) -> None:
    """Install one operation: the one line a new operation adds to the app's registry module."""
    registry.install(spec, handler)
