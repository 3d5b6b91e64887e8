"""What one GraphQL document may cost: counted before validation and during execution.

graphql-core's validation costs about 30 µs per node of the document, so the document's size
is bounded first (tokens and fragments, ``infra.graphql``); its one rule that costs more,
``OverlappingFieldsCanBeMergedRule``, compares fields of one response name pairwise (500
repeats took 1.5 s), and is replaced by ``first_conflict``, which merges them in one pass.
Then three limits, because each stops what the others cannot:

- **fields after fragments are expanded** (``expanded_fields``), before validation: aliases
  and fragments let a 1 KB document ask for millions of fields (five fragments of ten
  aliases each are 10⁵), and graphql-core's own validation is quadratic in fields of one
  name, so the count comes first and is done without expanding anything twice;
- **fields resolved** (``Budget``), during execution: lists multiply the expanded fields by
  their lengths (introspection's ``types { fields { args … } }``), which only execution
  knows; past the budget every further field fails at once, so the rest costs nothing;
- **response bytes**, after: what is sent is bounded even when few fields hold much.
"""

from __future__ import annotations

from typing import Any

from graphql import (
    ArgumentNode,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLResolveInfo,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    print_ast,
)

BUDGET_EXCEEDED = "GRAPHQL_BUDGET_EXCEEDED"
"""``extensions.code`` of a document refused, or stopped, for what it would cost."""


def expanded_fields(document: DocumentNode, cap: int) -> int:
    """The fields of ``document``'s operations with every fragment spread expanded and every
    alias counted, or ``cap + 1`` as soon as it is past ``cap``. Each fragment is counted
    once and remembered, so the count costs the document's size, whatever it expands to. A
    spread of an unknown fragment, or of one being counted (a cycle), counts nothing here:
    validation refuses both."""
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    known: dict[str, int] = {}
    counting: set[str] = set()

    def count(selections: SelectionSetNode | None) -> int:
        total = 0
        for selection in selections.selections if selections is not None else ():
            if isinstance(selection, FieldNode):
                total += 1 + count(selection.selection_set)
            elif isinstance(selection, InlineFragmentNode):
                total += count(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                if name not in known and name in fragments and name not in counting:
                    counting.add(name)
                    known[name] = count(fragments[name].selection_set)
                    counting.discard(name)
                total += known.get(name, 0)
            if total > cap:
                return cap + 1
        return total

    total = 0
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            total += count(definition.selection_set)
            if total > cap:
                return cap + 1
    return total


def first_conflict(document: DocumentNode) -> GraphQLError | None:
    """The first pair of fields that answer under one name but ask different things (another
    field, or other arguments), each selection set merged with the fragments spread into it,
    as GraphQL merges them; ``None`` when there is none. What graphql-core's
    ``OverlappingFieldsCanBeMergedRule`` checks, flattening each fragment once, in time
    linear in the fields expanded (``expanded_fields`` bounds them first). Every parent in
    one merged set is one object type here: the schema has no interfaces or unions, so
    fields of one name always meet."""
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    flat: dict[str, list[FieldNode]] = {}  # each fragment's fields, through its spreads, once
    path: set[str] = set()  # the fragments being flattened: a cycle is validation's to refuse

    def fields_of(selections: SelectionSetNode) -> list[FieldNode]:
        """The fields of one selection set with fragments merged in, each node once: spreading
        a fragment twice (or five times, ten levels deep) adds nothing the first did not."""
        found: dict[int, FieldNode] = {}
        for selection in selections.selections:
            if isinstance(selection, FieldNode):
                found[id(selection)] = selection
            elif isinstance(selection, InlineFragmentNode):
                found.update((id(f), f) for f in fields_of(selection.selection_set))
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                if name in fragments and name not in path and name not in flat:
                    path.add(name)
                    flat[name] = fields_of(fragments[name].selection_set)
                    path.discard(name)
                found.update((id(f), f) for f in flat.get(name, ()))
        return list(found.values())

    def check(sets: list[SelectionSetNode]) -> GraphQLError | None:
        groups: dict[str, list[FieldNode]] = {}
        for selections in sets:
            for field in fields_of(selections):
                groups.setdefault((field.alias or field.name).value, []).append(field)
        for name, fields in groups.items():
            first = fields[0]
            asked = (first.name.value, _arguments(first.arguments))
            for other in fields[1:]:
                if (other.name.value, _arguments(other.arguments)) != asked:
                    return GraphQLError(
                        f"fields answered as {name!r} ask for different things: give them different aliases",
                        [first, other],
                    )
            nested = [f.selection_set for f in fields if f.selection_set is not None]
            if nested and (conflict := check(nested)) is not None:
                return conflict
        return None

    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    for operation in operations:
        if (conflict := check([operation.selection_set])) is not None:
            return conflict
    return None


def _arguments(arguments: tuple[ArgumentNode, ...] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((a.name.value, print_ast(a.value)) for a in arguments or ()))


class Budget:
    """graphql-core middleware counting the fields one execution resolves. Past ``limit``
    each further field below a root field's own is an error without being resolved, so what a
    document still asks for is answered by nulls at the cost of a counter; ``exceeded`` tells
    the caller."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.exceeded = False

    def resolve(self, next_: Any, root: Any, info: GraphQLResolveInfo[Any], **args: Any) -> Any:
        self.used += 1
        # a root field and its own fields always resolve: a mutation's status and commandId
        # (non-null) would otherwise null the call that ran, and there are few of them
        if self.used > self.limit and info.path.prev is not None and info.path.prev.prev is not None:
            self.exceeded = True
            raise GraphQLError(self.message, extensions={"code": BUDGET_EXCEEDED})
        return next_(root, info, **args)

    @property
    def message(self) -> str:
        """What a document past the budget is told, for each field and for the whole answer."""
        return f"the document resolves more than {self.limit} fields: ask for fewer"


def limits_for(resolved: int, size: int, *, fields: int, nbytes: int) -> tuple[int, int]:
    """The fields and bytes one response may have: at least ``fields`` and ``nbytes``, and
    twice what the schema's own full introspection takes, so that a large app's clients can
    always read its schema."""
    return max(fields, 2 * resolved), max(nbytes, 2 * size)


def coded(message: str, code: str = BUDGET_EXCEEDED) -> dict[str, Any]:
    return {"message": message, "extensions": {"code": code}}


__all__ = [
    "BUDGET_EXCEEDED",
    "Budget",
    "coded",
    "expanded_fields",
    "first_conflict",
    "limits_for",
]
