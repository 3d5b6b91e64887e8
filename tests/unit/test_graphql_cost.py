"""``infra.graphql_cost``: what a document is counted as before it is validated or run."""

from __future__ import annotations

from graphql import build_schema, execute_sync, parse

from infra.graphql_cost import Budget, expanded_fields, first_conflict, limits_for


def _fanout(k: int, levels: int) -> str:
    names = [f"F{i}" for i in range(levels)] + ["Leaf"]
    fragments = [
        f"fragment {n} on Query {{ " + " ".join(f"x{j}: me {{ ...{names[i + 1]} }}" for j in range(k)) + " }"
        for i, n in enumerate(names[:-1])
    ]
    return "{ ...F0 }\n" + "\n".join(fragments) + "\nfragment Leaf on Query { name }"


def test_fragments_are_counted_expanded_and_once() -> None:
    assert expanded_fields(parse("{ a b { c } ... on Q { d } }"), 100) == 4
    assert expanded_fields(parse(_fanout(3, 2)), 10**6) == 3 + 9 + 9  # each spread is its fields
    assert expanded_fields(parse(_fanout(10, 5)), 1000) == 1001  # stops past the cap: 10^5 never built
    cycle = parse("{ ...A } fragment A on Q { x ...B } fragment B on Q { y ...A }")
    assert expanded_fields(cycle, 100) == 2  # validation refuses the cycle; counting ends


def test_fields_of_one_name_conflict_only_when_they_ask_different_things() -> None:
    assert first_conflict(parse("{ a: x a: x ...F } fragment F on Q { a: x }")) is None
    assert first_conflict(parse("{ a: x(n: 1) a: x(n: 1) }")) is None
    assert first_conflict(parse("{ a: x a: y }")) is not None
    assert first_conflict(parse("{ a: x(n: 1) a: x(n: 2) }")) is not None
    merged = first_conflict(parse("{ a: x { b: y } ...F } fragment F on Q { a: x { b: z } }"))
    assert merged is not None and [loc.line for loc in merged.locations or []] == [1, 1]


def test_the_budget_stops_what_lists_multiply() -> None:
    schema = build_schema("type Query { items: [Item] } type Item { n: Int }")
    many = [{"n": i} for i in range(100)]
    budget = Budget(50)
    result = execute_sync(schema, parse("{ items { n } }"), root_value={"items": many}, middleware=[budget])
    assert budget.exceeded and budget.used > 50 and result.errors
    assert limits_for(100, 10, fields=1_000, nbytes=1 << 20) == (1_000, 1 << 20)
    assert limits_for(9_000, 1 << 20, fields=1_000, nbytes=1 << 20) == (18_000, 2 << 20)
