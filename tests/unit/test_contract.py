"""Versioned specs: several versions served side by side, upcasts, and the contract lock
(``runner.contract``, ``oprunner specs lock`` / ``specs check``) that catches breaking changes."""

from __future__ import annotations

import itertools
import json
import sys
import textwrap
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from pydantic import Field, StringConstraints
from typer.testing import CliRunner

from runner import (
    IO,
    Executor,
    Meta,
    Model,
    OperationContext,
    OperationError,
    OperationRegistry,
    Policy,
    RegistryError,
    Rule,
    UnknownOperation,
    command,
    define_command,
    define_query,
    install_op,
    install_upcast,
)
from runner.contract import breaking, dumps, lock
from runner.testing import InMemoryStore

ROOT = Path(__file__).parents[2]


class Out(Model):
    ok: bool


def spec(
    input: type[Model],
    output: type[Model] = Out,
    *,
    key: str = "t.op",
    version: str = "1.0.0",
    stability: Any = "stable",
    errors: dict[str, str] | None = None,
    policy: Policy | None = None,
    kind: str = "command",
) -> Any:
    define = define_command if kind == "command" else define_query
    return define(
        meta=Meta(key=key, version=version, description="t", stability=stability),
        io=IO(input=input, output=output, errors=errors or {}),
        policy=policy or Policy(auth="public"),
    )


async def ok(value: Any, ctx: Any) -> Any:
    return {"ok": True}


def locked(*specs: Any) -> dict[str, Any]:
    registry = OperationRegistry()
    for s in specs:
        install_op(registry, s, ok)
    # what is compared is the file's JSON, not Python objects
    result: dict[str, Any] = json.loads(dumps(lock(registry)))
    return result


def diff(old: Any, new: Any) -> list[str]:
    return breaking(
        locked(*old) if isinstance(old, tuple) else locked(old),
        locked(*new) if isinstance(new, tuple) else locked(new),
    )


# -- input ----------------------------------------------------------------------------------


class A(Model):
    name: str
    count: int


class ARenamed(Model):
    title: str
    count: int


class AOptionalAdded(Model):
    name: str
    count: int
    note: str | None = None


class ARequiredAdded(Model):
    name: str
    count: int
    note: str


class ACountGone(Model):
    name: str


def test_input_field_removed_renamed_or_newly_required_is_breaking() -> None:
    assert diff(spec(A), spec(ACountGone)) == ["t.op 1.0.0: input.count: field removed"]
    assert diff(spec(A), spec(ARenamed)) == [
        "t.op 1.0.0: input.name: field removed",
        "t.op 1.0.0: input.title: new required field",
    ]
    assert diff(spec(A), spec(ARequiredAdded)) == ["t.op 1.0.0: input.note: new required field"]
    assert diff(spec(AOptionalAdded), spec(ARequiredAdded)) == [
        "t.op 1.0.0: input.note: field became required",
        "t.op 1.0.0: input.note: no longer accepts null",
    ]


def test_an_added_optional_input_field_is_compatible() -> None:
    assert diff(spec(A), spec(AOptionalAdded)) == []
    assert diff(spec(A), spec(A)) == []


class Num(Model):
    value: float


class Int(Model):
    value: int


class IntOrStr(Model):
    value: int | str


class Str(Model):
    value: str


class Choice(Model):
    value: Literal["a", "b"]


class ChoiceA(Model):
    value: Literal["a"]


class ChoiceABC(Model):
    value: Literal["a", "b", "c"]


class Long(Model):
    value: str = Field(max_length=10, min_length=1)


class Short(Model):
    value: str = Field(max_length=5, min_length=2)


class Patterned(Model):
    value: str = Field(pattern="^[a-z]+$")


class Small(Model):
    value: int = Field(ge=1, le=100)


class Smaller(Model):
    value: int = Field(ge=5, lt=100)


class Nullable(Model):
    value: str | None = ""  # the same default as NotNullable's: only null is compared


class NotNullable(Model):
    value: str = ""


def test_input_types_narrowed_are_breaking() -> None:
    assert diff(spec(Num), spec(Int)) == [
        "t.op 1.0.0: input.value: type narrowed: number no longer accepted (now integer)"
    ]
    assert diff(spec(IntOrStr), spec(Int)) == [
        "t.op 1.0.0: input.value: type narrowed: string no longer accepted (now integer)"
    ]
    assert diff(spec(Str), spec(Choice)) == [
        't.op 1.0.0: input.value: narrowed from any string to enum ["a", "b"]'
    ]
    assert diff(spec(Long), spec(Short)) == [
        "t.op 1.0.0: input.value: maxLength lowered 10 -> 5",
        "t.op 1.0.0: input.value: minLength raised 1 -> 2",
    ]
    assert diff(spec(Str), spec(Patterned)) == ["t.op 1.0.0: input.value: pattern added"]
    assert diff(spec(Small), spec(Smaller)) == [
        "t.op 1.0.0: input.value: maximum 100 -> exclusiveMaximum 100",
        "t.op 1.0.0: input.value: minimum raised 1 -> 5",
    ]
    assert diff(spec(Str), spec(Long)) == [
        "t.op 1.0.0: input.value: maxLength 10 added",
        "t.op 1.0.0: input.value: minLength 1 added",
    ]
    assert diff(spec(Nullable), spec(NotNullable)) == ["t.op 1.0.0: input.value: no longer accepts null"]


def test_input_types_widened_are_compatible() -> None:
    assert diff(spec(Int), spec(Num)) == []
    assert diff(spec(Int), spec(IntOrStr)) == []
    assert diff(spec(Choice), spec(Str)) == []
    assert diff(spec(Short), spec(Long)) == []
    assert diff(spec(Patterned), spec(Str)) == []
    assert diff(spec(Smaller), spec(Small)) == []
    assert diff(spec(NotNullable), spec(Nullable)) == []


def test_input_enum_value_removed_is_breaking_and_one_added_is_not() -> None:
    assert diff(spec(Choice), spec(ChoiceA)) == ['t.op 1.0.0: input.value: enum value(s) removed: "b"']
    assert diff(spec(Choice), spec(ChoiceABC)) == []


class Color(StrEnum):
    RED = "red"
    BLUE = "blue"


class Colour(StrEnum):  # the same wire values under another name: no change on the wire
    RED = "red"


class Street(Model):
    street: str
    number: int


class StreetNoNumber(Model):
    street: str


class Line(Model):
    sku: str
    qty: int
    color: Color


class LineNarrow(Model):
    sku: str
    qty: Literal[1, 2]
    color: Colour


class Order(Model):
    address: Street
    lines: list[Line]
    tags: dict[str, int | str]


class OrderNarrow(Model):
    address: StreetNoNumber
    lines: list[LineNarrow]
    tags: dict[str, int]


def test_nested_objects_arrays_maps_and_refs_are_walked() -> None:
    assert diff(spec(Order), spec(OrderNarrow)) == [
        "t.op 1.0.0: input.address.number: field removed",
        't.op 1.0.0: input.lines[].color: enum value(s) removed: "blue"',
        "t.op 1.0.0: input.lines[].qty: narrowed from any integer to enum [1, 2]",
        "t.op 1.0.0: input.tags{}: type narrowed: string no longer accepted (now integer)",
    ]
    # the other way round, everything widens but a field reappears, required
    assert diff(spec(OrderNarrow), spec(Order)) == ["t.op 1.0.0: input.address.number: new required field"]


class Node(Model):
    name: str
    children: list[Node] = []


class NodeStrict(Model):
    name: str = Field(max_length=3)
    children: list[NodeStrict] = []


def test_a_recursive_model_is_compared_without_looping() -> None:
    assert diff(spec(Node), spec(Node)) == []
    assert diff(spec(Node), spec(NodeStrict)) == ["t.op 1.0.0: input.name: maxLength 3 added"]


class Tags(Model):
    tags: dict[str, str] = {}


class TagsBounded(Model):
    tags: dict[str, str] = Field(default={}, min_length=1, max_length=3)


class KeyedFree(Model):
    m: dict[str, int] = {}


class KeyedPattern(Model):
    m: dict[Annotated[str, StringConstraints(pattern="^[a-z]+$")], int] = {}


class KeyedOtherPattern(Model):
    m: dict[Annotated[str, StringConstraints(pattern="^[a-c]+$")], int] = {}


class KeyedPatternStr(Model):
    m: dict[Annotated[str, StringConstraints(pattern="^[a-z]+$")], str] = {}


class KeyedShort(Model):
    m: dict[Annotated[str, StringConstraints(max_length=3)], int] = {}


def test_map_sizes_and_key_constraints_are_compared() -> None:
    assert diff(spec(Tags), spec(TagsBounded)) == [
        "t.op 1.0.0: input.tags: maxProperties 3 added",
        "t.op 1.0.0: input.tags: minProperties 1 added",
    ]
    assert diff(spec(TagsBounded), spec(Tags)) == []
    assert diff(spec(A, TagsBounded), spec(A, Tags)) == [
        "t.op 1.0.0: output.tags: maxProperties 3 removed",
        "t.op 1.0.0: output.tags: minProperties 1 removed",
    ]
    # keys constrained by a pattern (patternProperties) or otherwise (propertyNames)
    assert diff(spec(KeyedFree), spec(KeyedPattern)) == ["t.op 1.0.0: input.m: key pattern added (^[a-z]+$)"]
    assert diff(spec(KeyedPattern), spec(KeyedOtherPattern)) == [
        "t.op 1.0.0: input.m: key pattern changed (^[a-z]+$ -> ^[a-c]+$)"
    ]
    assert diff(spec(KeyedPattern), spec(KeyedPatternStr)) == [
        "t.op 1.0.0: input.m{^[a-z]+$}: type narrowed: integer no longer accepted (now string)"
    ]
    assert diff(spec(KeyedFree), spec(KeyedShort)) == ["t.op 1.0.0: input.m{keys}: maxLength 3 added"]
    assert diff(spec(KeyedPattern), spec(KeyedFree)) == []
    assert diff(spec(KeyedShort), spec(KeyedFree)) == []
    assert diff(spec(KeyedPattern), spec(KeyedPattern)) == []
    assert diff(spec(A, KeyedPattern), spec(A, KeyedFree)) == [
        "t.op 1.0.0: output.m: key pattern removed (^[a-z]+$)"
    ]


class Capture(Model):
    capture: bool = True
    note: str = ""


class NullDefault(Model):
    value: str | None = None


class CaptureOff(Model):
    capture: bool = False
    note: str = ""


class CaptureOne(Model):
    capture: int = 1
    note: str = ""


def test_a_changed_input_default_is_breaking() -> None:
    """Callers that omit the field silently get other behaviour."""
    assert diff(spec(Capture), spec(CaptureOff)) == [
        "t.op 1.0.0: input.capture: default changed true -> false (callers that omit it get the new one)"
    ]
    assert diff(spec(Capture), spec(CaptureOne)) == [  # JSON equality: true is not 1
        "t.op 1.0.0: input.capture: type narrowed: boolean no longer accepted (now integer)",
        "t.op 1.0.0: input.capture: default changed true -> 1 (callers that omit it get the new one)",
    ]
    assert diff(spec(Capture), spec(Capture)) == []
    assert diff(spec(Nullable), spec(NotNullable)) == ["t.op 1.0.0: input.value: no longer accepts null"]
    assert diff(spec(AOptionalAdded), spec(A)) == ["t.op 1.0.0: input.note: field removed"]
    assert diff(spec(NullDefault), spec(Nullable)) == [
        't.op 1.0.0: input.value: default changed null -> "" (callers that omit it get the new one)'
    ]
    assert diff(spec(A, Capture), spec(A, CaptureOff)) == []  # an output's defaults are not a contract


class Keyed(Model):
    doc_id: str
    other_id: str


def test_a_changed_partition_key_is_breaking() -> None:
    def keyed(partition_key: str | None) -> Any:
        return define_command(
            meta=Meta(key="t.op", version="1.0.0", description="t"),
            io=IO(input=Keyed, output=Out),
            policy=Policy(auth="public"),
            partition_key=partition_key,
        )

    assert locked(keyed("doc_id"))["specs"]["t.op"]["1.0.0"]["partitionKey"] == "doc_id"
    assert diff(keyed("doc_id"), keyed("other_id")) == [
        "t.op 1.0.0: partition key changed doc_id -> other_id"
        " (one resource's commands may run out of order across the deploy)"
    ]
    assert diff(keyed(None), keyed("doc_id")) == [
        "t.op 1.0.0: partition key changed none -> doc_id"
        " (one resource's commands may run out of order across the deploy)"
    ]
    assert diff(keyed("doc_id"), keyed("doc_id")) == []
    # a lock written before partition keys were locked knows none: nothing to compare
    old = locked(keyed("doc_id"))
    del old["specs"]["t.op"]["1.0.0"]["partitionKey"]
    assert breaking(old, locked(keyed("other_id"))) == []


# -- output ---------------------------------------------------------------------------------


class Result(Model):
    id: str
    status: Literal["paid", "pending"]
    url: str


class ResultGrown(Model):
    id: str
    status: Literal["paid", "pending"]
    url: str
    extra: int


class ResultShrunk(Model):
    id: str
    status: Literal["paid", "pending"]


class ResultLoose(Model):
    id: str
    status: Literal["paid", "pending", "refunded"]
    url: str | None = None


class ResultNarrow(Model):
    id: str
    status: Literal["paid"]
    url: str


def test_output_field_removed_optional_nullable_or_a_new_enum_value_is_breaking() -> None:
    assert diff(spec(A, Result), spec(A, ResultShrunk)) == ["t.op 1.0.0: output.url: field removed"]
    assert diff(spec(A, Result), spec(A, ResultLoose)) == [
        't.op 1.0.0: output.status: enum value(s) added: "refunded" (consumers may not handle them)',
        "t.op 1.0.0: output.url: field made optional",
        "t.op 1.0.0: output.url: may now be null",
    ]


def test_output_field_added_or_output_narrowed_is_compatible() -> None:
    assert diff(spec(A, Result), spec(A, ResultGrown)) == []
    assert diff(spec(A, Result), spec(A, ResultNarrow)) == []


class Price(Model):
    amount: int = Field(le=100)


class PriceUnbounded(Model):
    amount: float


def test_an_output_may_only_narrow() -> None:
    assert diff(spec(A, Price), spec(A, PriceUnbounded)) == [
        "t.op 1.0.0: output.amount: type widened: may now be number (was integer)"
    ]
    assert diff(spec(A, PriceUnbounded), spec(A, Price)) == []


# -- policy, errors, specs ------------------------------------------------------------------


class Doc(Model):
    doc_id: str
    other_id: str = ""


def with_policy(auth: Any = "user", *rules: Rule) -> Any:
    return spec(Doc, policy=Policy(auth=auth, rules=list(rules)))


OWNER = Rule(resource="doc", action="edit", condition=("owner", "admin"), id_field="doc_id")


def test_policy_tightened_is_breaking() -> None:
    assert diff(with_policy("user"), with_policy("admin")) == [
        "t.op 1.0.0: policy auth tightened user -> admin"
    ]
    assert diff(with_policy("user"), with_policy("user", OWNER)) == [
        "t.op 1.0.0: policy rule added: doc edit if owner or admin"
    ]
    only_owner = Rule(resource="doc", action="edit", condition="owner", id_field="doc_id")
    assert diff(with_policy("user", OWNER), with_policy("user", only_owner)) == [
        "t.op 1.0.0: policy rule doc edit: condition owner or admin -> owner"
    ]
    other_id = Rule(resource="doc", action="edit", condition=("owner", "admin"), id_field="other_id")
    assert diff(with_policy("user", OWNER), with_policy("user", other_id)) == [
        "t.op 1.0.0: policy rule doc edit: id field doc_id -> other_id"
    ]


def test_policy_loosened_is_compatible() -> None:
    assert diff(with_policy("admin", OWNER), with_policy("user", OWNER)) == []
    assert diff(with_policy("user", OWNER), with_policy("user")) == []
    owner = Rule(resource="doc", action="edit", condition="owner", id_field="doc_id")
    assert diff(with_policy("user", owner), with_policy("user", OWNER)) == []


def test_error_code_removed_is_breaking_and_one_added_is_not() -> None:
    two = spec(A, errors={"GONE": "x", "KEPT": "y"})
    assert diff(two, spec(A, errors={"KEPT": "y"})) == ["t.op 1.0.0: error code GONE removed"]
    assert diff(two, spec(A, errors={"GONE": "x", "KEPT": "y", "NEW": "z"})) == []


def test_specs_and_versions_removed_or_kind_changed_are_breaking() -> None:
    other = spec(A, key="t.other")
    assert diff((spec(A), other), spec(A)) == [
        "t.other: spec removed (its callers are left with UNKNOWN_OPERATION)"
    ]
    v2 = spec(AOptionalAdded, version="2.0.0")
    assert diff((spec(A), v2), v2) == [
        "t.op 1.0.0: version removed (callers that pin it are left with UNKNOWN_OPERATION)"
    ]
    assert diff(spec(A), spec(A, kind="query")) == ["t.op 1.0.0: kind changed command -> query"]


def test_a_version_added_is_compatible_unless_the_new_default_breaks_unpinned_callers() -> None:
    assert diff(spec(A), (spec(A), spec(AOptionalAdded, version="1.1.0"))) == []
    assert diff(spec(A), (spec(A), spec(ARequiredAdded, version="2.0.0", stability="experimental"))) == [
        "t.op default version 1.0.0 -> 2.0.0 (callers that send no opversion): input.note: new required field"
    ]
    # deprecated, it does not become the default: nobody unpinned moves to it
    assert diff(spec(A), (spec(A), spec(ARequiredAdded, version="2.0.0", stability="deprecated"))) == []


def test_the_lock_is_deterministic_and_names_every_version() -> None:
    registry = OperationRegistry()
    install_op(registry, spec(A, version="1.10.0"), ok)
    install_op(registry, spec(A, version="1.9.0", stability="deprecated"), ok)
    text = dumps(lock(registry))
    assert text == dumps(lock(registry)) and text.endswith("}\n")
    entry = json.loads(text)["specs"]["t.op"]["1.9.0"]
    assert set(entry) == {"kind", "stability", "input", "output", "policy", "errors", "partitionKey"}
    assert entry["stability"] == "deprecated" and entry["input"]["required"] == ["name", "count"]


# -- the bundled app checks itself ----------------------------------------------------------


def test_the_bundled_app_matches_its_lock_file() -> None:
    """A spec edit without ``oprunner specs lock`` fails here (the lock is the reviewed contract)."""
    from handlers import app

    on_file = json.loads((ROOT / "oprunner.lock.json").read_text())
    current = lock(app.registry)
    assert breaking(on_file, current) == [], "breaking changes: re-lock only if they are meant"
    assert dumps(current) == (ROOT / "oprunner.lock.json").read_text(), (
        "the specs changed compatibly: run `oprunner specs lock` and commit oprunner.lock.json"
    )


# -- the CLI --------------------------------------------------------------------------------


APP_SOURCE = """
from runner import IO, Meta, Model, OperationRegistry, Policy, define_command, install_op

class In(Model):
    name: str
{extra}

class Out(Model):
    ok: bool

async def handle(value, ctx):
    return {{"ok": True}}

registry = OperationRegistry()
install_op(registry, define_command(
    meta=Meta(key="t.op", version="1.0.0", description="t"),
    io=IO(input=In, output=Out), policy=Policy(auth="public")), handle)
"""


def _app(tmp_path: Path, name: str, extra: str = "") -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(APP_SOURCE.format(extra=extra)))
    return f"{name}:registry"


def test_specs_lock_and_check_exit_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.cli import app as cli

    monkeypatch.syspath_prepend(str(tmp_path))
    runner = CliRunner()
    lock_file = str(tmp_path / "oprunner.lock.json")
    base = _app(tmp_path, "contract_app_base")
    result = runner.invoke(cli, ["specs", "lock", "--app", base, "--out", lock_file])
    assert result.exit_code == 0 and result.output == f"wrote {lock_file} (1 specs)\n"

    result = runner.invoke(cli, ["specs", "check", "--app", base, "--lock", lock_file])
    assert (result.exit_code, result.output) == (0, f"no breaking changes against {lock_file} (1 specs)\n")

    changed = _app(tmp_path, "contract_app_changed", extra="    note: str\n")
    result = runner.invoke(cli, ["specs", "check", "--app", changed, "--lock", lock_file])
    assert (result.exit_code, result.output) == (1, "t.op 1.0.0: input.note: new required field\n")

    missing = str(tmp_path / "nope.json")
    result = runner.invoke(cli, ["specs", "check", "--app", base, "--lock", missing])
    assert result.exit_code == 2 and f"cannot read {missing}" in result.output
    (tmp_path / "bad.json").write_text("{not json")
    result = runner.invoke(cli, ["specs", "check", "--app", base, "--lock", str(tmp_path / "bad.json")])
    assert result.exit_code == 2 and "is not JSON" in result.output
    (tmp_path / "other.json").write_text('{"specs": []}')
    result = runner.invoke(cli, ["specs", "check", "--app", base, "--lock", str(tmp_path / "other.json")])
    assert result.exit_code == 2 and "not an oprunner lock file" in result.output
    result = runner.invoke(cli, ["specs", "check", "--app", "nope_module:registry", "--lock", lock_file])
    assert result.exit_code == 2
    for name in ("contract_app_base", "contract_app_changed"):
        sys.modules.pop(name, None)


# -- versions served side by side -----------------------------------------------------------


class PayV1(Model):
    doc_id: str
    amount: int


class PayV2(Model):
    doc_id: str
    amount_cents: int
    note: str


class Paid(Model):
    receipt: str


class PaidV2(Model):
    receipt: str
    channel: str


V1 = spec(PayV1, Paid, key="docs.pay", version="1.0.0")
V2 = spec(PayV2, Paid, key="docs.pay", version="2.0.0")


def test_the_default_version_is_the_highest_not_deprecated() -> None:
    registry = OperationRegistry()
    install_op(registry, spec(A, version="1.0.0"), ok)
    install_op(registry, spec(A, version="1.2.0"), ok)
    install_op(registry, spec(A, version="2.0.0", stability="deprecated"), ok)
    assert registry.get("t.op").spec.version == "1.2.0"
    assert registry.get("t.op", "2.0.0").spec.version == "2.0.0"  # named, it is served as it is
    everything_deprecated = OperationRegistry()
    install_op(everything_deprecated, spec(A, version="1.0.0", stability="deprecated"), ok)
    install_op(everything_deprecated, spec(A, version="1.1.0", stability="deprecated"), ok)
    assert everything_deprecated.get("t.op").spec.version == "1.1.0"
    with pytest.raises(UnknownOperation):
        registry.get("t.op", "3.0.0")


def served(v2: Any = V2, **upcast_kw: Any) -> tuple[OperationRegistry, Executor, list[tuple[Any, ...]]]:
    seen: list[tuple[Any, ...]] = []
    grown = upcast_kw.pop("grown_output", False) or "downcast" in upcast_kw

    async def pay(value: PayV2, ctx: OperationContext) -> Any:
        upcast_from = ctx.upcast_from.version if ctx.upcast_from else None
        seen.append((value, ctx.spec.version, upcast_from))
        if grown:
            return PaidV2(receipt=f"r-{value.doc_id}", channel="web")
        return Paid(receipt=f"r-{value.doc_id}-{value.amount_cents}")

    registry = OperationRegistry()
    install_op(registry, v2, pay)
    upcast = upcast_kw.pop(
        "upcast", lambda old: {"docId": old.doc_id, "amountCents": old.amount * 100, "note": "v1"}
    )
    install_upcast(registry, V1, v2, upcast, **upcast_kw)
    registry.check()
    return registry, Executor(registry, InMemoryStore(), None), seen


async def test_two_versions_side_by_side_and_an_upcast_runs_the_new_handler() -> None:
    _, executor, seen = served()
    old = await executor.execute(command("docs.pay", {"docId": "d1", "amount": 3}, opversion="1.0.0"))
    assert old.status == "succeeded" and old.output == {"receipt": "r-d1-300"}
    value, handler_spec, upcast_from = seen[-1]
    assert (value, handler_spec, upcast_from) == (
        PayV2(doc_id="d1", amount_cents=300, note="v1"),
        "2.0.0",
        "1.0.0",
    )
    # what is recorded is the version the command asked for
    assert old.result["opversion"] == "1.0.0"
    assert old.audit["data"]["version"] == "1.0.0" and old.audit["data"]["input"] == {
        "docId": "d1",
        "amount": 3,
    }

    new = await executor.execute(command("docs.pay", {"docId": "d2", "amountCents": 5, "note": "n"}))
    assert new.status == "succeeded" and new.result["opversion"] == "2.0.0"
    assert seen[-1][1:] == ("2.0.0", None)
    # v1 input sent without a version goes to the default (2.0.0), which refuses it
    refused = await executor.execute(command("docs.pay", {"docId": "d1", "amount": 3}))
    assert refused.status == "rejected" and refused.error_code == "INVALID_INPUT"


async def test_a_deprecated_newest_version_is_not_the_default_but_still_serves_the_upcast() -> None:
    deprecated_v2 = spec(PayV2, Paid, key="docs.pay", version="2.0.0", stability="deprecated")
    registry, executor, seen = served(deprecated_v2)
    assert registry.get("docs.pay").spec.version == "1.0.0"
    out = await executor.execute(command("docs.pay", {"docId": "d1", "amount": 1}))
    assert out.status == "succeeded" and out.audit["data"]["version"] == "1.0.0"
    assert out.audit["data"]["deprecated"] is False and seen[-1][1:] == ("2.0.0", "1.0.0")


async def test_an_upcast_that_gives_bad_input_fails_clearly() -> None:
    _, executor, _ = served(upcast=lambda old: {"docId": old.doc_id})
    out = await executor.execute(command("docs.pay", {"docId": "d1", "amount": 1}, opversion="1.0.0"))
    assert out.status == "failed" and out.error_code == "UPCAST_INVALID"
    message = out.result["data"]["error"]["message"]
    assert message == "docs.pay 1.0.0 -> 2.0.0: the upcast gave input that 2.0.0 refuses (amountCents, note)"


async def test_an_async_upcast_may_refuse_with_a_domain_error() -> None:
    async def upcast(old: PayV1) -> Any:
        if old.amount > 10:
            raise OperationError("TOO_OLD", "amounts over 10 need 2.0.0")
        return PayV2(doc_id=old.doc_id, amount_cents=old.amount, note="")

    _, executor, _ = served(upcast=upcast)
    out = await executor.execute(command("docs.pay", {"docId": "d1", "amount": 11}, opversion="1.0.0"))
    assert out.status == "failed" and out.error_code == "TOO_OLD"
    out = await executor.execute(command("docs.pay", {"docId": "d1", "amount": 2}, opversion="1.0.0"))
    assert out.status == "succeeded"


async def test_the_old_output_schema_holds_and_a_downcast_can_make_it() -> None:
    grown = spec(PayV2, PaidV2, key="docs.pay", version="2.0.0")
    _, executor, _ = served(grown, grown_output=True)
    old = await executor.execute(command("docs.pay", {"docId": "d1", "amount": 1}, opversion="1.0.0"))
    assert old.status == "failed" and old.error_code == "OUTPUT_INVALID"

    _, executor, _ = served(grown, downcast=lambda out: {"receipt": out["receipt"]})
    old = await executor.execute(command("docs.pay", {"docId": "d1", "amount": 1}, opversion="1.0.0"))
    assert old.status == "succeeded" and old.output == {"receipt": "r-d1"}
    new = await executor.execute(command("docs.pay", {"docId": "d1", "amountCents": 1, "note": ""}))
    assert new.output == {"receipt": "r-d1", "channel": "web"}


def test_upcast_mistakes_are_found_before_serving() -> None:
    registry = OperationRegistry()
    install_upcast(registry, V1, V2, lambda old: old)
    assert registry.problems() == [
        "docs.pay 1.0.0: upcasts to docs.pay 2.0.0, which is not installed (every such command would fail)"
    ]
    with pytest.raises(RegistryError, match="not installed"):
        registry.check()
    strict_v2 = spec(PayV2, Paid, key="docs.pay", version="2.0.0", policy=Policy(auth="admin"))
    install_op(registry, strict_v2, ok)
    assert registry.problems() == [
        "docs.pay 1.0.0: upcasts to docs.pay 2.0.0, but another spec of that version is installed"
    ]
    looser = OperationRegistry()
    install_op(looser, strict_v2, ok)
    install_upcast(looser, V1, strict_v2, lambda old: old)
    assert looser.problems() == [
        "docs.pay 1.0.0: upcasts to docs.pay 2.0.0: its auth 'public' is looser than 'admin'"
        " (callers of 1.0.0 would be denied by 2.0.0's policy)"
    ]
    with pytest.raises(RegistryError, match="higher version of the same key"):
        install_upcast(OperationRegistry(), V2, V1, lambda old: old)
    with pytest.raises(RegistryError, match="higher version of the same key"):
        install_upcast(
            OperationRegistry(), V1, spec(PayV2, key="docs.other", version="2.0.0"), lambda old: old
        )


# -- an upcast answers to the newer version's policy too ------------------------------------

SECRET = "s" * 32


class MoveV1(Model):
    account_id: str


class MoveV2(Model):
    account_id: str
    note: str = ""


class Moved(Model):
    ran_by: str


MOVE_V1 = spec(MoveV1, Moved, key="t.move", version="1.0.0", policy=Policy(auth="user"))
OWNED = Policy(
    auth="user", rules=[Rule(resource="account", action="move", condition="owner", id_field="account_id")]
)
MOVE_V2 = spec(MoveV2, Moved, key="t.move", version="2.0.0", policy=OWNED)


def moving(
    *specs: Any, upcast: Any = None
) -> tuple[OperationRegistry, Executor, list[str], list[tuple[str, str, str]], InMemoryStore]:
    """``specs`` of ``t.move``, each upcast to the next; the newest has the handler. Returns
    the registry, an executor, who the handler ran for, and what the resolver was asked
    (account, the spec version asking, the input's note)."""
    from runner.auth import JwtAuthenticator

    ran: list[str] = []
    asked: list[tuple[str, str, str]] = []

    async def move(value: Any, ctx: OperationContext) -> Any:
        ran.append(ctx.actor.user_id if ctx.actor else "-")
        return Moved(ran_by=ran[-1])

    async def account(account_id: str, ctx: Any) -> Any:
        asked.append((account_id, ctx.spec.version, getattr(ctx.input, "note", "")))
        return {"owner_id": "alice", "tenant_id": "t1"}

    registry = OperationRegistry()
    install_op(registry, specs[-1], move)
    for old, new in itertools.pairwise(specs):
        install_upcast(registry, old, new, upcast or (lambda old: {**old.to_wire(), "note": "up"}))
    registry.add_resource("account", account)
    store = InMemoryStore()
    return registry, Executor(registry, store, JwtAuthenticator(secret=SECRET)), ran, asked, store


def token(sub: str) -> str:
    from runner.testing import mint_token

    return mint_token(SECRET, sub=sub, tenant="t1")


async def test_an_upcast_command_is_authorized_by_the_newer_versions_policy_too() -> None:
    registry, executor, ran, asked, _ = moving(MOVE_V1, MOVE_V2)
    assert registry.problems() == []  # not a registry problem: checked for each command
    pinned = command("t.move", {"accountId": "acc-alice"}, opversion="1.0.0")
    denied = await executor.execute(pinned, token=token("mallory"))
    assert (denied.status, denied.error_code) == ("denied", "FORBIDDEN")
    assert ran == []  # 2.0.0's handler never ran for her
    audit = denied.audit["data"]
    assert (audit["decision"], audit["status"], audit["version"]) == ("deny", "denied", "1.0.0")
    assert audit["input"]["omitted"] is True  # a denial's input is withheld, as any denial's
    assert "2.0.0" in audit["reason"]
    # the resolver saw 2.0.0's input, as the upcast made it, and 2.0.0's spec
    assert asked == [("acc-alice", "2.0.0", "up")]
    # 2.0.0 itself denies her the same way
    direct = await executor.execute(command("t.move", {"accountId": "acc-alice"}), token=token("mallory"))
    assert (direct.status, direct.error_code) == ("denied", "FORBIDDEN")

    allowed = await executor.execute(pinned, token=token("alice"))
    assert (allowed.status, allowed.output) == ("succeeded", {"ranBy": "alice"})
    assert allowed.result["opversion"] == "1.0.0" and ran == ["alice"]


async def test_every_version_up_a_chain_authorizes_the_command() -> None:
    middle = spec(MoveV2, Moved, key="t.move", version="1.5.0", policy=Policy(auth="user"))
    newest = spec(MoveV2, Moved, key="t.move", version="2.0.0", policy=OWNED)
    _, executor, ran, asked, _ = moving(MOVE_V1, middle, newest)
    pinned = command("t.move", {"accountId": "acc-alice"}, opversion="1.0.0")
    denied = await executor.execute(pinned, token=token("mallory"))
    assert (denied.status, denied.error_code, ran) == ("denied", "FORBIDDEN", [])
    assert [version for _, version, _ in asked] == ["2.0.0"]
    ok = await executor.execute(pinned, token=token("alice"))
    assert ok.status == "succeeded" and ran == ["alice"]


async def test_an_upcast_failing_up_a_chain_fails_the_command_there() -> None:
    middle = spec(MoveV2, Moved, key="t.move", version="1.5.0", policy=Policy(auth="user"))
    newest = spec(MoveV2, Moved, key="t.move", version="2.0.0", policy=OWNED)

    def upcast(old: Any) -> Any:
        if isinstance(old, MoveV2):  # 1.5.0 -> 2.0.0
            raise OperationError("NOT_CARRIED", "1.5.0 commands cannot run on 2.0.0")
        return {"accountId": old.account_id}

    _, executor, ran, asked, _ = moving(MOVE_V1, middle, newest, upcast=upcast)
    out = await executor.execute(
        command("t.move", {"accountId": "acc-alice"}, opversion="1.0.0"), token=token("alice")
    )
    assert (out.status, out.error_code, ran, asked) == ("failed", "NOT_CARRIED", [], [])


async def test_the_handler_gets_the_input_that_was_authorized() -> None:
    """The upcast runs once per command, at admission: its result is what the policy judged
    and what the handler gets (an upcast that answered differently twice cannot slip past)."""
    calls: list[str] = []

    def upcast(old: MoveV1) -> Any:
        calls.append(old.account_id)
        # the first answer is Alice's account (allowed), any later one would be someone else's
        return {"accountId": old.account_id if len(calls) == 1 else "acc-bob"}

    registry, executor, _, asked, _ = moving(MOVE_V1, MOVE_V2, upcast=upcast)
    seen: list[str] = []
    real = registry.get("t.move", "2.0.0").handler

    async def spy(value: Any, ctx: OperationContext) -> Any:
        seen.append(value.account_id)
        return await real(value, ctx)

    object.__setattr__(registry.get("t.move", "2.0.0"), "handler", spy)
    out = await executor.execute(
        command("t.move", {"accountId": "acc-alice"}, opversion="1.0.0"), token=token("alice")
    )
    assert out.status == "succeeded" and calls == ["acc-alice"] and seen == ["acc-alice"]
    assert asked == [("acc-alice", "2.0.0", "")]


async def test_an_upcast_to_a_stricter_auth_level_is_denied_per_command() -> None:
    services_only = spec(MoveV2, Moved, key="t.move", version="2.0.0", policy=Policy(auth="service"))
    registry, executor, ran, _, _ = moving(MOVE_V1, services_only)
    assert registry.problems() == [  # still found before serving
        "t.move 1.0.0: upcasts to t.move 2.0.0: its auth 'user' is looser than 'service'"
        " (callers of 1.0.0 would be denied by 2.0.0's policy)"
    ]
    out = await executor.execute(
        command("t.move", {"accountId": "acc-alice"}, opversion="1.0.0"), token=token("alice")
    )
    assert (out.status, out.error_code, ran) == ("denied", "FORBIDDEN", [])


# -- a command redelivered after the default version moved ----------------------------------


class Note(Model):
    account_id: str
    note: str = ""


NOTE_V1 = spec(MoveV1, Moved, key="t.note", version="1.0.0")
NOTE_V2 = spec(Note, Moved, key="t.note", version="2.0.0")


def deploys() -> tuple[Executor, Executor, list[str], InMemoryStore]:
    """One store; before the deploy 1.0.0 alone, after it 2.0.0 is the default and serves
    1.0.0 through an upcast. Returns both executors and the versions the handlers ran."""
    ran: list[str] = []

    async def note(value: Any, ctx: OperationContext) -> Any:
        ran.append(ctx.spec.version)
        return Moved(ran_by=ctx.spec.version)

    store = InMemoryStore()
    before = OperationRegistry()
    install_op(before, NOTE_V1, note)
    after = OperationRegistry()
    install_op(after, NOTE_V2, note)
    install_upcast(after, NOTE_V1, NOTE_V2, lambda old: old.to_wire())
    return Executor(before, store, None), Executor(after, store, None), ran, store


async def test_a_command_redelivered_after_the_default_moved_replays_its_result() -> None:
    """A Kafka redelivery across a rolling deploy: the same message, no opversion, completed
    under 1.0.0; after the deploy 2.0.0 (with a new defaulted field) is the default."""
    before, after, ran, _ = deploys()
    sent = command("t.note", {"accountId": "a1"}, idempotency_key="K")
    first = await before.execute(sent)
    assert (first.status, first.output, first.result["opversion"]) == (
        "succeeded",
        {"ranBy": "1.0.0"},
        "1.0.0",
    )
    again = await after.execute(sent)
    assert (again.status, again.replayed, again.output) == ("succeeded", True, {"ranBy": "1.0.0"})
    assert again.result["opversion"] == again.audit["data"]["version"] == "1.0.0"  # what ran
    assert again.audit["data"]["input"] == {"accountId": "a1"}
    [batched] = await after.execute_many([(sent, None)])  # the batch path too
    assert (batched.status, batched.replayed, batched.output) == ("succeeded", True, {"ranBy": "1.0.0"})
    assert ran == ["1.0.0"]


async def test_a_different_input_still_conflicts_after_the_default_moved() -> None:
    before, after, ran, _ = deploys()
    await before.execute(command("t.note", {"accountId": "a1"}, idempotency_key="K"))
    for data in ({"accountId": "a2"}, {"accountId": "a1", "note": "x"}):
        out = await after.execute(command("t.note", data, idempotency_key="K"))
        assert (out.status, out.error_code) == ("rejected", "IDEMPOTENCY_CONFLICT")
    # a pinned version is the one compared: 1.0.0's run is not 2.0.0's
    pinned = await after.execute(
        command("t.note", {"accountId": "a1"}, idempotency_key="K", opversion="2.0.0")
    )
    assert pinned.error_code == "IDEMPOTENCY_CONFLICT"
    await after.execute(command("t.note", {"accountId": "b1"}, idempotency_key="P", opversion="2.0.0"))
    old = await after.execute(command("t.note", {"accountId": "b1"}, idempotency_key="P", opversion="1.0.0"))
    assert old.error_code == "IDEMPOTENCY_CONFLICT"
    assert ran == ["1.0.0", "2.0.0"]


async def test_a_command_in_flight_when_the_default_moved_is_taken_over_not_refused() -> None:
    """Claimed under 1.0.0 by a worker that died: after the deploy its redelivery waits out
    the dead worker's lease, then runs (now on the default, 2.0.0), once."""
    from runner.executor import fingerprint
    from runner.store import ClaimRequest, run_key

    _, after, ran, store = deploys()
    sent = command("t.note", {"accountId": "a1"}, idempotency_key="K")
    dead = ClaimRequest(
        key=run_key(None, None, "K", kind=None),
        op="t.note",
        version="1.0.0",
        input_hash=fingerprint("t.note", None, {"accountId": "a1"}),
        command_id=sent.id,
        owner="dead-worker/1",
        lease_seconds=0.05,
        idempotency_key="K",
    )
    assert (await store.claim(dead)).attempts == 1
    out = await after.execute(sent)
    assert (out.status, out.replayed, out.audit["data"]["attempt"], ran) == ("succeeded", False, 2, ["2.0.0"])
