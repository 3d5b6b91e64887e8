"""Invalid input is described in this project's words: pydantic says which rule failed (its
error type), the sentence is ours, so no pydantic release can change what a caller reads."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

import pytest
from pydantic import Field, ValidationError, field_validator

from runner import Model
from runner.validation import MAX_FIELD_ERRORS, field_errors, message, summary


class Line(Model):
    sku: str = Field(min_length=2, max_length=4)
    quantity: int = Field(gt=0, le=99)


class Order(Model):
    order_id: str
    amount: Decimal = Field(gt=0, max_digits=6, decimal_places=2)
    kind: Literal["card", "bank"] = "card"
    lines: list[Line] = Field(default_factory=list, max_length=3)
    code: str = Field(default="AA", pattern=r"^[A-Z]{2}$")

    @field_validator("order_id")
    @classmethod
    def _known(cls, value: str) -> str:
        if value.startswith("x"):
            raise ValueError("order ids never start with x")
        return value


def errors(data: Any) -> list[dict[str, str]]:
    with pytest.raises(ValidationError) as info:
        Order.model_validate(data)
    return field_errors(info.value)


@pytest.mark.parametrize(
    ("data", "field", "said", "rule"),
    [
        ({"amount": "1"}, "orderId", "required", "missing"),
        (
            {"orderId": "o", "amount": "1", "color": "red"},
            "color",
            "not a field of this input",
            "extra_forbidden",
        ),
        ({"orderId": "o", "amount": "0"}, "amount", "must be greater than 0", "greater_than"),
        ({"orderId": "o", "amount": "1.234"}, "amount", "must have at most 2 digits after the point", None),
        ({"orderId": "o", "amount": "abc"}, "amount", "must be a decimal number", "decimal_parsing"),
        (
            {"orderId": "o", "amount": "1", "kind": "cash"},
            "kind",
            "must be 'card' or 'bank'",
            "literal_error",
        ),
        ({"orderId": 7, "amount": "1"}, "orderId", "must be a string", "string_type"),
        ({"orderId": "xo", "amount": "1"}, "orderId", "order ids never start with x", "value_error"),
        ({"orderId": "o", "amount": "1", "lines": {}}, "lines", "must be a list", "list_type"),
        (
            {"orderId": "o", "amount": "1", "lines": [{}] * 4},
            "lines",
            "must have at most 3 items",
            "too_long",
        ),
        (
            {"orderId": "o", "amount": "1", "lines": [{"sku": "a", "quantity": 1}]},
            "lines.0.sku",
            "must be at least 2 characters",
            None,
        ),
        (
            {"orderId": "o", "amount": "1", "lines": [{"sku": "ab", "quantity": 100}]},
            "lines.0.quantity",
            "must be at most 99",
            None,
        ),
        (
            {"orderId": "o", "amount": "1", "lines": [{"sku": "ab", "quantity": "n"}]},
            "lines.0.quantity",
            "must be a whole number",
            None,
        ),
        (
            {"orderId": "o", "amount": "1", "code": "abc"},
            "code",
            "must match ^[A-Z]{2}$",
            "string_pattern_mismatch",
        ),
        ([1], "data", "must be an object", None),
    ],
)
def test_each_failed_rule_is_said_in_the_projects_words(
    data: Any, field: str, said: str, rule: str | None
) -> None:
    found = {e["field"]: e for e in errors(data)}
    assert found[field]["message"] == said
    if rule is not None:
        assert found[field]["type"] == rule


def test_no_message_is_pydantics_own() -> None:
    with pytest.raises(ValidationError) as info:
        Order.model_validate({"orderId": "xo", "amount": "-1", "kind": 3, "lines": [{}], "junk": 1})
    theirs = {e["msg"] for e in info.value.errors()}
    ours = {e["message"] for e in field_errors(info.value)}
    assert ours and not ours & theirs


def test_a_rule_without_a_sentence_is_named_and_a_long_pattern_is_not_shown() -> None:
    assert message("some_future_rule", None) == "is not valid (some_future_rule)"
    assert message("string_pattern_mismatch", {"pattern": "(" * 200}) == "is not in the expected form"
    assert message("value_error", {}) == "is not valid"


def test_the_cli_line_and_the_bound() -> None:
    with pytest.raises(ValidationError) as info:
        Order.model_validate({"amount": "0"})
    assert summary(info.value) == "orderId: required; amount: must be greater than 0"
    with pytest.raises(ValidationError) as info:
        Order.model_validate({"orderId": "o", "amount": "1", **{f"f{i}": i for i in range(500)}})
    assert len(field_errors(info.value)) == MAX_FIELD_ERRORS


def test_an_authors_custom_error_keeps_its_words_and_a_tag_is_not_echoed() -> None:
    from typing import Annotated

    from pydantic import Discriminator
    from pydantic_core import PydanticCustomError

    class Iban(Model):
        iban: str

        @field_validator("iban")
        @classmethod
        def _check(cls, value: str) -> str:
            raise PydanticCustomError("iban_invalid", "not a valid IBAN: check its two digits")

    with pytest.raises(ValidationError) as info:
        Iban.model_validate({"iban": "x"})
    [found] = field_errors(info.value)
    assert found == {
        "field": "iban",
        "message": "not a valid IBAN: check its two digits",
        "type": "iban_invalid",
    }

    class Card(Model):
        kind: Literal["card"]

    class Bank(Model):
        kind: Literal["bank"]

    class Pay(Model):
        method: Annotated[Card | Bank, Discriminator("kind")]

    with pytest.raises(ValidationError) as info:
        Pay.model_validate({"method": {"kind": "4111111111111111"}})
    [found] = field_errors(info.value)
    assert found["type"] == "union_tag_invalid" and "4111" not in found["message"]
