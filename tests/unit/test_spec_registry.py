"""Spec definitions, the Model conventions, the registry, and the bundled capturePayment spec."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from runner import (
    IO,
    Meta,
    Model,
    OperationRegistry,
    RegistryError,
    UnknownOperation,
    define_command,
    install_op,
)
from runner.types import CurrencyCode, NonEmptyString, PositiveAmount
from specs.billing import CapturePayment, CapturePaymentInput


class In(Model):
    invoice_id: NonEmptyString
    amount: PositiveAmount
    currency: CurrencyCode


class Out(Model):
    ok: bool


def _spec(version: str = "1.0.0", **kw: Any) -> Any:
    return define_command(
        meta=Meta(key="t.op", version=version, description="t"), io=IO(input=In, output=Out), **kw
    )


async def _handler(value: Any, ctx: Any) -> Any:
    return {"ok": True}


def test_model_wire_names_and_unknown_fields() -> None:
    value = In.model_validate({"invoiceId": "i", "amount": "1.5", "currency": "EUR"})
    assert value.invoice_id == "i" and value.currency == "eur"
    assert value.to_wire() == {"invoiceId": "i", "amount": "1.5", "currency": "eur"}
    with pytest.raises(ValidationError):
        In.model_validate({"invoiceId": "i", "amount": "1", "currency": "eur", "userId": "x"})


@pytest.mark.parametrize(
    "bad",
    [
        {"invoiceId": " ", "amount": "1", "currency": "eur"},
        {"invoiceId": "i", "amount": "0", "currency": "eur"},
        {"invoiceId": "i", "amount": "-3", "currency": "eur"},
        {"invoiceId": "i", "amount": "NaN", "currency": "eur"},
        {"invoiceId": "i", "amount": "1", "currency": "xyz"},
        {"invoiceId": "i", "amount": "1", "currency": "euro"},
    ],
)
def test_types_refuse_bad_values(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        In.model_validate(bad)


def test_meta_and_define_validate() -> None:
    with pytest.raises(ValueError, match=r"domain\.camelCaseName"):
        Meta(key="NoDot", version="1.0.0", description="x")
    with pytest.raises(ValueError, match=r"MAJOR\.MINOR\.PATCH"):
        Meta(key="a.b", version="1.0", description="x")
    with pytest.raises(ValueError, match="partition_key"):
        _spec(partition_key="nope")


def test_registry_versions() -> None:
    registry = OperationRegistry()
    install_op(registry, _spec("1.2.0"), _handler)
    install_op(registry, _spec("1.10.0"), _handler)
    install_op(registry, _spec("1.9.3"), _handler)
    assert registry.get("t.op").spec.version == "1.10.0"
    assert registry.get("t.op", "1.2.0").spec.version == "1.2.0"
    assert len(registry) == 3
    with pytest.raises(RegistryError, match="installed already"):
        install_op(registry, _spec("1.2.0"), _handler)
    with pytest.raises(UnknownOperation):
        registry.get("t.op", "2.0.0")
    with pytest.raises(UnknownOperation):
        registry.get("t.other")


def test_capture_payment_spec_is_as_declared() -> None:
    m = CapturePayment.meta
    assert (m.key, m.version, m.stability) == ("billing.capturePayment", "1.0.0", "stable")
    assert m.description == "Process a payment for an invoice"
    assert m.goal == "Capture funds from customer payment method"
    assert m.context == "Called when customer confirms purchase"
    assert m.owners == ("team-billing",) and m.tags == ("payments", "stripe", "critical")
    assert set(CapturePayment.input_schema()["properties"]) == {
        "invoiceId",
        "amount",
        "currency",
        "paymentMethodId",
    }
    assert set(CapturePayment.output_schema()["properties"]) == {
        "transactionId",
        "status",
        "receiptUrl",
    }
    assert CapturePayment.sensitive_fields() == ["paymentMethodId"]
    rule = CapturePayment.policy.rules[0]
    assert (CapturePayment.policy.auth, rule.resource, rule.action, rule.conditions) == (
        "user",
        "invoice",
        "pay",
        ("owner",),
    )
    assert CapturePayment.partition_key == "invoice_id"
    assert (
        CapturePaymentInput.model_validate(
            {"invoiceId": "inv", "amount": "10", "currency": "USD", "paymentMethodId": "pm"}
        ).currency
        == "usd"
    )
    described = CapturePayment.describe()
    assert described["input"]["additionalProperties"] is False


def test_definition_mistakes_are_errors_where_they_are_made() -> None:
    from runner import IO, Meta, Policy, RegistryError, define_command, install_op

    with pytest.raises(ValueError, match="auth is one of public, user, service, admin"):
        Policy(auth="users")  # type: ignore[arg-type]
    meta = Meta(key="t.mistakes", version="1.0.0", description="t")
    spec = define_command(meta=meta, io=IO(input=Model, output=Model))
    registry = OperationRegistry()

    def sync_handler(value: Any, ctx: Any) -> Any:
        return value

    async def one_argument(value: Any) -> Any:
        return value

    async def fine(value: Any, ctx: Any) -> Any:
        return value

    with pytest.raises(RegistryError, match="must be 'async def'"):
        install_op(registry, spec, sync_handler)  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match="must take 2 positional argument"):
        install_op(registry, spec, one_argument)  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match=r"batch handler .* must take 1 positional"):
        install_op(registry, spec, fine, batch=fine)  # type: ignore[arg-type]
    install_op(registry, spec, fine)


def test_retry_on_takes_a_list_and_refuses_what_is_not_an_exception() -> None:
    from runner import Retry

    assert Retry(retry_on=[KeyError]).retry_on == (KeyError,)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exception classes"):
        Retry(retry_on=("KeyError",))  # type: ignore[arg-type]
