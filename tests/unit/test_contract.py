"""Versioned specs: several versions served side by side, upcasts, and the contract lock
(``runner.contract``, ``oprunner specs lock`` / ``specs check``) that catches breaking changes."""

from __future__ import annotations

import json
import sys
import textwrap
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import Field
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
    value: str | None = None


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
    assert set(entry) == {"kind", "stability", "input", "output", "policy", "errors"}
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
        " (callers of 1.0.0 would skip 2.0.0's policy)"
    ]
    with pytest.raises(RegistryError, match="higher version of the same key"):
        install_upcast(OperationRegistry(), V2, V1, lambda old: old)
    with pytest.raises(RegistryError, match="higher version of the same key"):
        install_upcast(
            OperationRegistry(), V1, spec(PayV2, key="docs.other", version="2.0.0"), lambda old: old
        )
