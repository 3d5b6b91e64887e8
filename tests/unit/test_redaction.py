"""``redact``: sensitive fields are hidden wherever a field's type nests them, in raw wire data."""

from __future__ import annotations

import copy
import functools
import itertools
import json
from collections.abc import Sequence
from typing import Annotated, Any, Generic, Optional, TypeVar, Union

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import AliasChoices, AliasPath, Field, Json, RootModel, create_model
from pydantic.alias_generators import to_camel
from typing_extensions import TypeAliasType

from runner import model as model_module
from runner.model import REDACTED, Model, redact

SECRET = "4111-1111-1111-1111"
R = REDACTED
SENSITIVE: dict[str, Any] = {"sensitive": True}
Secret = Annotated[str, Field(json_schema_extra=SENSITIVE)]  # marked where it stands, e.g. in a list


def sensitive() -> Any:
    return Field(json_schema_extra=SENSITIVE)


class Card(Model):
    card_number: str = sensitive()
    label: str = ""


class Pin(Model):
    pin_code: str = sensitive()


class FrozenCard(Model, frozen=True):
    card_number: str = sensitive()


class Node(Model):
    name: str
    token: str = sensitive()
    children: list[Node] = []


class Tree(Model):
    """Nothing sensitive anywhere, but recursive: planning must end and find nothing."""

    name: str
    kids: list[Tree] = []


class Ping(Model):
    pong: Pong | None = None


class Pong(Model):
    key: str = sensitive()
    ping: Ping | None = None


class Holder(Model):
    pipe_optional: Card | None = None
    typing_optional: Optional[Card] = None  # noqa: UP045 (the typing spelling is the point)
    either: Union[Card, Pin] | None = None  # noqa: UP007
    cards: list[Card] = []
    card_tuple: tuple[Card, ...] = ()
    pair: tuple[str, Card] | None = None
    frozen_cards: set[FrozenCard] = set()
    secrets: frozenset[Secret] = frozenset()
    by_name: dict[str, Card] = {}
    annotated: Annotated[Card, "meta"] | None = None
    annotated_list: Annotated[list[Annotated[Card, "inner"]], "outer"] = []
    combo: list[dict[str, Card | None]] | None = None
    whole_list: list[Card] = sensitive()
    whole_dict: dict[str, str] = sensitive()
    abstract_seq: Sequence[Card] = ()
    node: Node | None = None
    plain: str = ""


def _card(label: str = "l") -> dict[str, Any]:
    return {"cardNumber": SECRET, "label": label}


def _hidden(label: str = "l") -> dict[str, Any]:
    return {"cardNumber": R, "label": label}


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("pipeOptional", _card(), _hidden()),
        ("typingOptional", _card(), _hidden()),
        ("pipeOptional", None, None),
        # a union's members cannot be told apart before validation: every candidate's fields go
        ("either", {"cardNumber": SECRET, "pinCode": SECRET, "label": "x"}, {**_hidden("x"), "pinCode": R}),
        ("cards", [_card("a"), _card("b")], [_hidden("a"), _hidden("b")]),
        ("cardTuple", [_card()], [_hidden()]),
        ("pair", ["first", _card()], ["first", _hidden()]),
        ("pair", ["first", _card(), _card()], ["first", _hidden(), _hidden()]),  # surplus items too
        ("frozenCards", [{"cardNumber": SECRET}], [{"cardNumber": R}]),
        ("secrets", [SECRET, SECRET], [R, R]),
        ("byName", {"home": _card(), "work": _card()}, {"home": _hidden(), "work": _hidden()}),
        ("annotated", _card(), _hidden()),
        ("annotatedList", [_card()], [_hidden()]),
        ("combo", [{"a": _card(), "b": None}, {}], [{"a": _hidden(), "b": None}, {}]),
        ("wholeList", [_card()], R),
        ("wholeDict", {"any": SECRET}, R),
        ("abstractSeq", [_card()], [_hidden()]),
        (
            "node",
            {
                "name": "root",
                "token": SECRET,
                "children": [{"name": "leaf", "token": SECRET, "children": []}],
            },
            {"name": "root", "token": R, "children": [{"name": "leaf", "token": R, "children": []}]},
        ),
        ("plain", "kept", "kept"),
    ],
)
def test_each_shape_is_walked(key: str, value: Any, expected: Any) -> None:
    assert redact(Holder, {key: value}) == {key: expected}


def test_wire_and_attribute_names_are_both_keys() -> None:
    wire = {"pipeOptional": {"cardNumber": SECRET}, "cards": [{"cardNumber": SECRET}]}
    attr = {"pipe_optional": {"card_number": SECRET}, "cards": [{"card_number": SECRET}]}
    assert redact(Holder, wire) == {"pipeOptional": {"cardNumber": R}, "cards": [{"cardNumber": R}]}
    assert redact(Holder, attr) == {"pipe_optional": {"card_number": R}, "cards": [{"card_number": R}]}


def test_validated_wire_form_is_redacted() -> None:
    value = Holder.model_validate(
        {
            "either": {"pinCode": SECRET},
            "pair": ["a", {"cardNumber": SECRET}],
            "frozenCards": [{"cardNumber": SECRET}],
            "combo": [{"k": {"cardNumber": SECRET}}],
            "wholeList": [{"cardNumber": SECRET}],
            "wholeDict": {"k": SECRET},
            "node": {"name": "n", "token": SECRET, "children": [{"name": "c", "token": SECRET}]},
        }
    )
    out = redact(Holder, value.to_wire())
    assert SECRET not in json.dumps(out)
    assert out["either"] == {"pinCode": R}


@pytest.mark.parametrize(
    "value",
    [
        "a string where an object belongs",
        [_card(), "x", 3, None],  # a list where an object belongs: hidden whole
        {"cards": {"cardNumber": SECRET}},  # an object where a list belongs: hidden whole
        {"cards": [SECRET, 4111111111111111]},  # scalars where cards belong: hidden
        {"cards": "nope", "byName": [1, 2], "pair": {"a": 1}, "node": {"children": "x"}},
        {"unknownKey": {"cardNumber": SECRET}, "pipeOptional": {"cardNumber": SECRET, "extra": [1]}},
        {"combo": [[{"x": 1}], None, 5, {"k": [1, 2]}]},
        {1: 2, "": None},
        None,
        12.5,
    ],
)
def test_wrong_shapes_are_hidden_without_raising(value: Any) -> None:
    before = copy.deepcopy(value)
    out = redact(Holder, value)
    assert value == before  # the caller's data is never changed
    if not (isinstance(value, dict) and "unknownKey" in value):  # a key no field owns: as sent
        assert SECRET not in json.dumps(out)
    if isinstance(value, dict) and "cards" in value:
        assert out["cards"] in (R, [R, R])
    if isinstance(value, dict) and "pipeOptional" in value:
        assert out["pipeOptional"] == {"cardNumber": R, "extra": [1]}
        assert out["unknownKey"] == value["unknownKey"]  # no field owns it: nothing to key on


def test_recursive_models_plan_once_and_walk_as_deep_as_the_data() -> None:
    data: dict[str, Any] = {"name": "leaf", "token": SECRET}
    for i in range(150):
        data = {"name": f"n{i}", "token": SECRET, "children": [data, {"name": "x", "token": SECRET}]}
    out = redact(Node, data)
    assert isinstance(out, dict) and out["name"] == "n149"
    assert SECRET not in json.dumps(out)
    assert model_module._plan(Node) is model_module._plan(Node)  # planned once, cached


def test_mutually_recursive_models() -> None:
    data = {"pong": {"key": SECRET, "ping": {"pong": {"key": SECRET, "ping": None}}}}
    assert redact(Ping, data) == {"pong": {"key": R, "ping": {"pong": {"key": R, "ping": None}}}}


def test_recursive_model_with_nothing_sensitive_is_left_as_is() -> None:
    data = {"name": "a", "kids": [{"name": "b", "kids": [{"name": SECRET}]}]}
    assert redact(Tree, data) == data
    assert not model_module._leaks(Tree)


def test_data_nested_past_the_recursion_limit_is_hidden_whole() -> None:
    data: dict[str, Any] = {"name": "leaf", "token": SECRET}
    for _ in range(20_000):
        data = {"name": "n", "children": [data]}
    assert redact(Node, data) == R


class Late(Model):
    """Refers to a model defined below it: planned before any validation, it must still resolve."""

    inner: Later
    many: list[Later] = []


class Later(Model):
    token: str = sensitive()


def test_forward_references_are_resolved_before_planning() -> None:
    assert not Late.__pydantic_complete__  # nothing has validated it yet
    data = {"inner": {"token": SECRET}, "many": [{"token": SECRET}]}
    assert redact(Late, data) == {"inner": {"token": R}, "many": [{"token": R}]}


T = TypeVar("T")
B = TypeVar("B", bound=Card)


class Page(Model, Generic[T]):
    items: list[T]


class BoundPage(Model, Generic[B]):
    items: list[B]


@pydantic.dataclasses.dataclass
class Wallet:
    pin: str = ""
    code: Secret = ""


# pydantic's own spelling of a recursive alias: a string value, resolved in this module
JsonTree = TypeAliasType("JsonTree", "dict[str, JsonTree] | list[JsonTree] | Card | int")
CardList = TypeAliasType("CardList", list[Card])


class Odd(Model):
    page: Page[Card] | None = None
    bound: BoundPage | None = None
    wallet: Wallet | None = None
    tree: JsonTree | None = None
    alias_list: CardList = []
    mixed: Secret | Card | None = None
    embedded: Json[list[Card]] | None = None
    choice: str = Field("", validation_alias=AliasChoices("choiceA", "choice_b"), json_schema_extra=SENSITIVE)
    path: str = Field("", validation_alias=AliasPath("deep", 0), json_schema_extra=SENSITIVE)


class Cards(RootModel[list[Card]]):
    pass


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("page", {"items": [_card()]}, {"items": [_hidden()]}),
        ("bound", {"items": [_card()]}, {"items": [_hidden()]}),
        ("wallet", {"pin": "1", "code": SECRET}, {"pin": "1", "code": R}),
        ("tree", {"a": [_card(), 3, {"b": _card()}]}, {"a": [_hidden(), 3, {"b": _hidden()}]}),
        # a union with a sensitive str among its members hides any value: it may be that str
        ("mixed", _card(), R),
        ("aliasList", [_card()], [_hidden()]),
        ("embedded", json.dumps([_card()]), R),  # a JSON string holding cards: hidden whole
        ("choiceA", SECRET, R),
        ("choice_b", SECRET, R),
        ("deep", [SECRET], R),
    ],
)
def test_other_pydantic_types_are_walked(key: str, value: Any, expected: Any) -> None:
    assert redact(Odd, {key: value}) == {key: expected}


def test_root_model_walks_its_root_value() -> None:
    assert redact(Cards, [_card()]) == [_hidden()]


# Generated models. A shape is a tuple: ("secret",) a str marked sensitive where it stands,
# ("frozenset",) a frozenset of those, ("model", spec) a generated model, or a container around
# a shape: ("list"|"opt"|"tuple"|"pair"|"dict"|"ann", shape) or ("union", shape, shape).
# A model spec is a tuple of fields: ("plain",), ("sensitive",) str fields, ("shape", shape), or
# ("hidden", shape), a field of that shape marked sensitive as a whole.

MARK = "s3cr3t"  # no field name, key or plain value can contain it (their alphabet has no digit 3)
Shape = tuple[Any, ...]
Spec = tuple[tuple[Any, ...], ...]

_str_fields = st.sampled_from([("plain",), ("sensitive",)])


def _spec(shapes: st.SearchStrategy[Shape]) -> st.SearchStrategy[Spec]:
    """A model whose fields are str fields or fields of the given shapes."""
    shaped = st.tuples(st.sampled_from(["shape", "hidden"]), shapes)
    return st.lists(_str_fields | shaped, min_size=1, max_size=4).map(tuple)


def _around(inner: st.SearchStrategy[Shape]) -> st.SearchStrategy[Shape]:
    """One more level: a container or union around shapes, or a model with fields of them."""
    return (
        st.tuples(st.sampled_from(["list", "opt", "tuple", "pair", "dict", "ann"]), inner)
        | st.tuples(st.just("union"), inner, inner)
        | _spec(inner).map(lambda m: ("model", m))
    )


_leaf_shapes = st.sampled_from([("secret",), ("frozenset",)]) | _spec(st.nothing()).map(
    lambda m: ("model", m)
)
model_specs = _spec(st.recursive(_leaf_shapes, _around, max_leaves=4))
_names = itertools.count()


def _field_name(kind: str, i: int) -> str:
    return f"{kind}_{i}_x"  # snake_case, so the camelCase wire name differs: hidden1X


def _annotation(shape: Shape) -> Any:
    kind = shape[0]
    if kind == "secret":
        return Secret
    if kind == "frozenset":
        return frozenset[Secret]
    if kind == "model":
        return _build(shape[1])
    if kind == "union":
        return Union[_annotation(shape[1]), _annotation(shape[2])]  # noqa: UP007
    inner = _annotation(shape[1])
    containers: dict[str, Any] = {
        "list": list[inner],
        "opt": Optional[inner],  # noqa: UP045
        "tuple": tuple[inner, ...],
        "pair": tuple[inner, str],
        "dict": dict[str, inner],
        "ann": Annotated[inner, "meta"],
    }
    return containers[kind]


@functools.cache  # hypothesis draws the same small specs again and again
def _build(spec: Spec) -> type[Model]:
    fields: dict[str, Any] = {}
    for i, (kind, *shape) in enumerate(spec):
        if kind in ("plain", "sensitive"):
            fields[_field_name(kind, i)] = (str, sensitive() if kind == "sensitive" else ...)
        else:
            annotation = _annotation(shape[0])
            fields[_field_name(kind, i)] = (annotation, sensitive() if kind == "hidden" else ...)
    return create_model(f"Gen{next(_names)}", __base__=Model, **fields)


_plain = st.text(alphabet="abc", max_size=3)


@functools.cache
def _values(shape: Shape, path: str, by_alias: bool, secret: bool) -> st.SearchStrategy[Any]:
    """Valid data for a shape; every str that must not show is a sentinel naming its place.
    ``secret``: inside a field marked sensitive as a whole, so every str must not show."""
    kind = shape[0]
    sentinel = st.just(f"{MARK}:{path}")
    plain = sentinel if secret else _plain
    if kind == "secret":
        return sentinel
    if kind == "frozenset":
        return st.lists(st.integers(0, 9).map(lambda n: f"{MARK}:{path}#{n}"), min_size=1, max_size=3)
    if kind == "model":
        return _data(shape[1], path, by_alias, secret)
    if kind == "union":
        return _values(shape[1], path + "|a", by_alias, secret) | _values(
            shape[2], path + "|b", by_alias, secret
        )
    inner = _values(shape[1], path + "." + kind, by_alias, secret)
    if kind in ("list", "tuple"):
        return st.lists(inner, min_size=1, max_size=2)
    if kind == "pair":
        return st.tuples(inner, plain).map(list)
    if kind == "dict":
        keys = st.sampled_from([f"{MARK}:{path}#k1", f"{MARK}:{path}#k2"]) if secret else _plain
        return st.dictionaries(keys, inner, min_size=1, max_size=2)
    if kind == "opt":
        return st.none() | inner
    return inner  # "ann"


@functools.cache
def _data(spec: Spec, path: str, by_alias: bool, secret: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for i, (kind, *shape) in enumerate(spec):
        name = _field_name(kind, i)
        key, where = (to_camel(name) if by_alias else name), f"{path}/{name}"
        if kind == "plain":
            fields[key] = st.just(f"{MARK}:{where}") if secret else _plain
        elif kind == "sensitive":
            fields[key] = st.just(f"{MARK}:{where}")
        else:
            fields[key] = _values(shape[0], where, by_alias, secret or kind == "hidden")
    return st.fixed_dictionaries(fields)


FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.data())
def test_generated_models_never_show_a_sensitive_value(data: st.DataObject) -> None:
    spec = data.draw(model_specs, label="spec")
    model = _build(spec)
    for by_alias in (True, False):  # wire (camelCase) names, then attribute names
        raw = data.draw(_data(spec, "", by_alias), label="wire data" if by_alias else "attribute data")
        before = copy.deepcopy(raw)
        validated = model.model_validate(raw)  # the generator makes valid data, or it tests nothing
        out = json.dumps(redact(model, raw))
        assert MARK not in out, out
        assert raw == before
    assert MARK not in json.dumps(redact(model, validated.to_wire()))


# keys the walkers act on: the fixed models' fields, and every name a generated field can have
_known = ["cards", "pipeOptional", "card_number", "cardNumber", "children", "token", "node", "tree", "deep"]
_generated = [_field_name(k, i) for k in ("plain", "sensitive", "shape", "hidden") for i in range(4)]
_keys = st.sampled_from(_known + _generated + [to_camel(n) for n in _generated]) | st.text(max_size=6)
garbage = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=15,
)


@FAST
@given(model_specs | st.sampled_from([Holder, Node, Odd, Cards]), garbage)
def test_garbage_never_raises(spec: Spec | type[Model], value: Any) -> None:
    model = spec if isinstance(spec, type) else _build(spec)
    before = copy.deepcopy(value)
    json.dumps(redact(model, value))
    assert repr(value) == repr(before)  # unchanged (repr: NaN never equals itself)


def test_pydantic_secret_types_are_sensitive_unmarked() -> None:
    from pydantic import SecretStr

    class Login(Model):
        user: str
        password: SecretStr
        backup: SecretStr | None = None

    raw = {"user": "u", "password": SECRET, "backup": SECRET}
    assert redact(Login, raw) == {"user": "u", "password": R, "backup": R}
