"""The /graphql schema built from a registry: names, types, and the shapes it cannot spell."""

from __future__ import annotations

from typing import Literal

from graphql import GraphQLEnumType, GraphQLNonNull, GraphQLScalarType, print_schema

from infra.graphql import build_schema, field_name
from runner import IO, Meta, Model, OperationRegistry, define_command, define_query, install_op


def test_the_bundled_app_builds() -> None:
    from handlers import app

    schema = build_schema(app.registry)
    assert schema.mutation_type is not None
    assert set(schema.mutation_type.fields) == {
        "billingCapturePayment",
        "billingRecordPayment",
        "billingRecordPaymentFailure",
        "billingRefundPayment",
    }
    assert "ALREADY_PAID" in print_schema(schema)  # a declared error code, as an enum value


def test_field_names_are_camel_case() -> None:
    assert field_name("billing.capturePayment") == "billingCapturePayment"
    assert field_name("a-b.c_d") == "aBCD"
    assert field_name("9lives.x") == "op_9livesX"


class Odd(Model):
    kind: Literal["true", "x-y"]  # not GraphQL enum names: a String
    tags: dict[str, str] = {}  # a map: JSON
    count: int = 0


class Out(Model):
    kind: str


async def _handler(value: Odd, ctx: object) -> Out:
    return Out(kind="x")


def test_shapes_without_a_graphql_form_fall_back() -> None:
    registry = OperationRegistry()
    install_op(
        registry,
        define_command(
            meta=Meta(key="t.odd", version="1.0.0", description="d"), io=IO(input=Odd, output=Out)
        ),
        _handler,
    )
    install_op(
        registry,
        define_query(meta=Meta(key="t.read", version="1.0.0", description="d"), io=IO(input=Odd, output=Out)),
        _handler,
    )
    schema = build_schema(registry)
    given = schema.get_type("TOddInput")
    assert given is not None
    fields = given.fields  # type: ignore[attr-defined]
    kind = fields["kind"].type
    assert isinstance(kind, GraphQLNonNull) and not isinstance(kind.of_type, GraphQLEnumType)
    assert isinstance(fields["tags"].type, GraphQLScalarType) and fields["tags"].type.name == "JSON"
    assert fields["count"].type.name == "Long"  # unbounded: past 32-bit Int
    assert schema.query_type is not None and "tRead" in schema.query_type.fields


class OddV2(Odd):
    note: str = ""


def test_every_version_has_its_own_field_and_types() -> None:
    registry = OperationRegistry()
    v1 = define_command(
        meta=Meta(key="t.odd", version="1.0.0", description="d"), io=IO(input=Odd, output=Out)
    )
    v2 = define_command(
        meta=Meta(key="t.odd", version="2.0.0", description="d"), io=IO(input=OddV2, output=Out)
    )
    install_op(registry, v1, _handler)
    install_op(registry, v2, _handler)
    schema = build_schema(registry)
    assert schema.mutation_type is not None
    assert set(schema.mutation_type.fields) == {"tOdd", "tOdd_v1_0_0"}  # the default, and 1.0.0 pinned
    default, pinned = schema.get_type("TOddInput"), schema.get_type("TOddV1_0_0Input")
    assert "note" in default.fields and "note" not in pinned.fields  # type: ignore[union-attr]
    assert "version" not in schema.mutation_type.fields["tOdd"].args  # the field is the version
