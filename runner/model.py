"""The base class of every operation's input and output: camelCase on the wire, strict shape."""

from __future__ import annotations

import collections
import collections.abc as abc
import functools
import sys
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, ForwardRef, TypeVar, Union, get_args, get_origin, get_type_hints

from pydantic import AliasChoices, AliasPath, BaseModel, ConfigDict, Json, RootModel, SecretBytes, SecretStr
from pydantic.alias_generators import to_camel
from pydantic.dataclasses import is_pydantic_dataclass
from pydantic.fields import FieldInfo
from typing_extensions import TypeAliasType

SENSITIVE = "sensitive"
REDACTED = "[REDACTED]"


class Model(BaseModel):
    """Wire names are camelCase (``invoiceId``), attributes snake_case; unknown fields are an error.

    Rejecting unknown fields matters here: a producer that misspells a field, or smuggles an
    actor into the payload (``userId``), gets a ``rejected`` answer instead of a silent drop.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        ser_json_inf_nan="strings",
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready dict with wire (camelCase) names."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# A walker maps one raw value to its redacted copy; ``None`` stands for "nothing to hide here".
Walk = Callable[[Any], Any]
# What a walker does where it meets a model (or type alias): the node may be recursive, so the
# planner never expands it in place, it asks this function instead.
_OnNode = Callable[[Any], "Walk | None"]

_SEQUENCES = {
    list, tuple, set, frozenset, collections.deque, abc.Sequence, abc.MutableSequence, abc.Set,
    abc.MutableSet, abc.Collection, abc.Iterable,
}  # fmt: skip
_MAPPINGS = {dict, collections.OrderedDict, collections.defaultdict, abc.Mapping, abc.MutableMapping}
# ``type X = ...`` (3.12+) makes typing's own alias, which typing_extensions' is not before 3.15
if sys.version_info >= (3, 12):
    _ALIASES: tuple[type, ...] = (TypeAliasType, typing.TypeAliasType)
else:
    _ALIASES = (TypeAliasType,)
# ``Json[T]`` puts an instance of this in the ``Annotated`` metadata (type checkers see an alias)
_JSON: Any = Json


_SECRETS = (SecretStr, SecretBytes)


def _is_sensitive(extra: Any) -> bool:
    return isinstance(extra, dict) and bool(extra.get(SENSITIVE))


def _is_node(tp: Any) -> bool:
    """A named type with fields of its own (or an alias): where a type can refer back to itself."""
    if isinstance(tp, _ALIASES):
        return True
    return isinstance(tp, type) and (issubclass(tp, BaseModel) or is_pydantic_dataclass(tp))


def _hide(_value: Any) -> Any:
    return REDACTED


def _same(value: Any) -> Any:
    return value


class _Mismatch:
    """What a walker returns for a value of the wrong shape: a union tries its other members;
    where none fits, the value is hidden (``_kept``)."""


_MISMATCH: Any = _Mismatch()


def _odd(value: Any) -> Any:
    """A value of the wrong shape where something sensitive belongs: a mismatch, unless it
    holds nothing at all (``null``, which an optional field may be)."""
    return None if value is None else _MISMATCH


def _kept(value: Any) -> Any:
    """What is stored of a walked value: a mismatch, whose shape no walker knew, hidden."""
    return REDACTED if value is _MISMATCH else value


def _all(walks: list[Walk], *, plain: bool = False) -> Walk | None:
    """Apply every walker in turn: before validation nobody knows which union member the data is
    (or which of two fields sharing a key), so it gets the redactions of all those whose shape
    it has. Walkers only hide or descend, so the order does not matter; if one hides the value
    whole, that is all that is left. When no walker fits its shape, the value is a mismatch,
    unless ``plain``: a union member with nothing to hide (``int``, ``None``) may be what it is."""
    if _hide in walks:
        return _hide
    if not walks:
        return None
    if len(walks) == 1 and not plain:
        return walks[0]

    def walk(value: Any) -> Any:
        fits = False
        for each in walks:
            out = each(value)
            if out is not _MISMATCH:
                fits, value = True, out
        return value if fits or plain else _MISMATCH

    return walk


# The walkers below use map and loops, not comprehensions: on Python 3.11 each comprehension is
# one more frame per level of nesting, and a self-referencing model nests as deep as the data.


def _each(item: Walk) -> Walk:
    """Any JSON array (what a list, tuple, set or frozenset is on the wire), item by item."""
    return lambda value: (
        list(map(_kept, map(item, value))) if isinstance(value, list | tuple) else _odd(value)
    )


def _positions(items: list[Walk | None]) -> Walk:
    """A fixed-shape tuple, item by position; surplus items (invalid) get every position's walker."""
    walks, rest = [w or _same for w in items], _all([w for w in items if w]) or _same

    def walk(value: Any) -> Any:
        if not isinstance(value, list | tuple):
            return _odd(value)
        return [_kept((walks[i] if i < len(walks) else rest)(v)) for i, v in enumerate(value)]

    return walk


def _values(item: Walk) -> Walk:
    """A mapping's values; its keys are the data's own, not field names."""
    return lambda value: (
        dict(zip(value, map(_kept, map(item, value.values())), strict=True))
        if isinstance(value, dict)
        else _odd(value)
    )


def _keys(walks: dict[str, Walk]) -> Walk:
    """An object with known fields. A key no field owns (an extra key: invalid) passes through:
    before validation, a key one union member does not know may be another member's field."""

    def walk(value: Any) -> Any:
        if not isinstance(value, dict):
            return _odd(value)
        out = dict(value)
        for key in walks.keys() & value.keys():
            out[key] = _kept(walks[key](value[key]))
        return out

    return walk


def _walk(tp: Any, on_node: _OnNode) -> Walk | None:
    """The walker for a value of annotation ``tp``, or ``None`` when nothing in it is sensitive.

    Wrong-shaped data (a string where an object should be) is invalid, and no field can be told
    from it: where the type holds something sensitive it is hidden whole (``_odd``), since a
    client that puts a card number in the wrong place has still sent a card number.
    """
    if tp in _SECRETS:  # pydantic's own secret types are sensitive, marked or not
        return _hide
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        meta = args[1:]
        if any(isinstance(m, FieldInfo) and _is_sensitive(m.json_schema_extra) for m in meta):
            return _hide
        inner = _walk(args[0], on_node)
        # ``Json[T]`` is a string holding T: it cannot be walked, only hidden whole
        return _hide if inner and any(isinstance(m, _JSON) for m in meta) else inner
    if origin is Union or origin is types.UnionType:
        members = [w for a in args if (w := _walk(a, on_node))]
        return _all(members, plain=len(members) < len(args))
    if isinstance(tp, TypeVar):  # an unparametrized generic model validates against the bound
        return _all([w for a in (tp.__bound__, *tp.__constraints__) if (w := _walk(a, on_node))])
    if isinstance(tp, ForwardRef):  # unresolvable: the model cannot validate anything either
        return _hide
    if _is_node(tp):
        return on_node(tp)
    walks = [_walk(a, on_node) for a in args]
    if not any(walks):
        return on_node(origin) if isinstance(origin, _ALIASES) else None
    if origin is tuple and args[-1] is not Ellipsis:
        return _positions(walks)
    if origin in _SEQUENCES:
        return _each(walks[0]) if walks[0] else None
    if origin in _MAPPINGS and not walks[0]:  # a sensitive key hides the whole mapping
        return _values(walks[1]) if len(walks) > 1 and walks[1] else None
    return _hide  # a container it cannot walk, holding something sensitive: safe side


def _names(name: str, field: FieldInfo) -> tuple[set[str], set[str]]:
    """The keys raw data may carry the field under, and the heads of its ``AliasPath``s."""
    keys, heads = {name, field.alias or name, field.serialization_alias or name}, set()
    alias = field.validation_alias
    for choice in alias.choices if isinstance(alias, AliasChoices) else [alias]:
        if isinstance(choice, str):
            keys.add(choice)
        elif isinstance(choice, AliasPath) and isinstance(choice.path[0], str):
            heads.add(choice.path[0])
    return keys, heads


def _alias_value(alias: Any) -> Any:
    """What an alias stands for. Pydantic spells a recursive alias with a string value, so it is
    resolved in the alias's module as pydantic does; what stays unresolved is hidden."""
    module = sys.modules.get(alias.__module__ or "")
    try:
        holder = types.SimpleNamespace(__annotations__={"value": alias.__value__})
        return get_type_hints(holder, vars(module) if module else None, include_extras=True)["value"]
    except Exception:  # any failure to resolve means: cannot know, so hide
        return ForwardRef(alias.__name__)


def _field_walk(field: FieldInfo, on_node: _OnNode) -> Walk | None:
    """A field marked sensitive is hidden whole, whatever its type holds."""
    return _hide if _is_sensitive(field.json_schema_extra) else _walk(field.annotation, on_node)


def _node_walk(node: Any, on_node: _OnNode) -> Walk | None:
    """The walker for one model, dataclass or type alias, nested nodes left to ``on_node``."""
    if isinstance(node, _ALIASES):
        return _walk(_alias_value(node), on_node)
    if issubclass(node, BaseModel) and not node.__pydantic_complete__:
        node.model_rebuild(raise_errors=False)  # resolve forward references, as validation would
    fields: dict[str, FieldInfo] = getattr(node, "__pydantic_fields__", {})
    if issubclass(node, RootModel):  # the data is the root value itself, not an object around it
        return _field_walk(fields["root"], on_node)
    walks: dict[str, list[Walk]] = {}
    for name, field in fields.items():
        if (walk := _field_walk(field, on_node)) is None:
            continue
        keys, heads = _names(name, field)
        for key, each in [(k, walk) for k in keys] + [(h, _hide) for h in heads]:
            walks.setdefault(key, []).append(each)  # two fields may share a key: both apply
    by_key = {key: w for key, each in walks.items() if (w := _all(each))}
    return _keys(by_key) if by_key else None


@functools.cache
def _leaks(node: Any) -> bool:
    """Whether anything sensitive is reachable from ``node``: a graph search over the nodes, so a
    model that refers to itself (``children: list["Node"]``) ends. Lets the walker skip subtrees
    with nothing to hide instead of copying them."""
    seen, todo = {node}, [node]

    def visit(other: Any) -> None:
        if other not in seen:
            seen.add(other)
            todo.append(other)

    while todo:
        if _node_walk(todo.pop(), visit) is not None:
            return True
    return False


def _nested(node: Any) -> Walk | None:
    """Where a plan meets a model: look its walker up when data gets there, never expand it."""
    return (lambda value: _plan(node)(value)) if _leaks(node) else None


@functools.cache
def _plan(node: Any) -> Walk:
    """Per type, once: redact is on the hot path, the planning is not."""
    return _node_walk(node, _nested) or _same


def redact(model: type[BaseModel], data: Any) -> Any:
    """Replace the values of fields marked ``json_schema_extra={"sensitive": True}``.

    Works on raw wire data too (a rejected command is audited before it validates), so it keys
    on both the wire name and the attribute name, walks every container and union a field's
    type nests models in, and never raises on a JSON value. Data nested past the recursion
    limit (only a self-referencing model allows that) is hidden whole.
    """
    try:
        return _kept(_plan(model)(data))
    except RecursionError:
        return REDACTED
