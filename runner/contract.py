"""The app's contract as a lock file, and the changes to it that break callers.

``lock(registry)`` is every served spec's contract as stable JSON: per key and version its
kind, stability, input and output JSON Schemas (as ``oprunner docs`` writes them), policy,
error codes and partition key. ``breaking(old_lock, new_lock)`` compares two of them, as
``buf breaking`` does for protobuf, and answers one line per change that breaks someone who was
fine with the old one.
``oprunner specs lock`` writes the lock and ``oprunner specs check`` runs the comparison.

The rules follow from who is on each side:

- **Input** is written by producers, who keep sending what the old spec accepted. So an input
  may only *widen*: the new schema must accept every value the old one did. Breaking: a field
  removed (a rename is a removal and an addition), a new required field, an optional field made
  required, a type changed or narrowed (``number -> integer``, ``string -> enum``, an ``anyOf``
  branch dropped, ``null`` no longer accepted), an enum value removed, a bound tightened
  (``maxLength``/``maximum``/``maxItems``/``maxProperties`` lowered or added,
  ``minLength``/``minimum``/``minItems``/``minProperties`` raised or added,
  ``multipleOf``/``pattern``/``format`` added or changed, items made unique), a map's keys
  constrained (``propertyNames`` narrowed, a key pattern of ``patternProperties`` added or
  changed), other fields no longer accepted, and an optional field's **default changed** (a
  caller that omits the field gets other behaviour without sending anything else). An added
  optional field is fine.
- **Output** is read by consumers, who expect what the old spec promised. So an output may only
  *narrow*: every value the new schema allows must be one the old allowed. Breaking: a field
  removed or made optional, ``null`` now possible, a type widened or changed, an enum value
  *added* (a consumer's ``switch`` over the old values meets one it does not know), a bound
  loosened. An added output field is fine: consumers are expected to ignore fields they do not
  know (the tolerant reader; ``additionalProperties: false`` on an output is not held against
  it), as protobuf's readers do.
- **Policy** may only loosen: the auth level raised (``public < user < service < admin``), a
  rule added, a rule's conditions losing an alternative (they are *any of*), its id field
  changed or a missing resource now denied are breaking. A callable condition is compared by
  position only (``<callable>``): what it decides is code, not contract.
- **Partition key**: a change breaks the per-resource order of commands across the deploy (the
  old and the new version's commands of one resource land on different Kafka partitions).
- **Errors**: a code removed breaks callers that handle it. An added code does not (a caller
  must handle unknown codes anyway: the runner has its own).
- **Specs**: a key or a version removed breaks its callers; the kind changed breaks them too.
  A version added is fine, except that it may become the key's *default* (what commands with
  no ``opversion`` run; a deprecation moves the default too): then the old default's contract
  is compared with the new default's, and what breaks is reported for "callers that send no
  opversion". Stability is not compared (a deprecated spec still runs).

Nested objects, arrays, maps (``additionalProperties``), ``anyOf``/``oneOf`` and ``$ref``s into
``$defs`` are walked; a recursive model is compared once per pair of definitions.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .registry import OperationRegistry
from .spec import AUTH_LEVELS, OperationSpec, parse_version

LOCK_FORMAT = "oprunner.lock/1"

Side = Literal["input", "output"]


# -- the lock -----------------------------------------------------------------------------


def spec_contract(spec: OperationSpec) -> dict[str, Any]:
    """One spec's entry in the lock."""
    return {
        "kind": spec.kind,
        "stability": spec.meta.stability,
        "input": spec.input_schema(),
        "output": spec.output_schema(),
        "policy": {
            "auth": spec.policy.auth,
            "rules": [
                {
                    "resource": r.resource,
                    "action": r.action,
                    "condition": [c if isinstance(c, str) else "<callable>" for c in r.conditions],
                    "idField": r.id_field,
                    "ifMissing": r.if_missing,
                }
                for r in spec.policy.rules
            ],
        },
        "errors": sorted(spec.io.errors),
        "partitionKey": spec.partition_key,
    }


def lock(registry: OperationRegistry) -> dict[str, Any]:
    """The contract of every spec ``registry`` serves: ``{"format", "specs": {key: {version: ...}}}``."""
    specs: dict[str, dict[str, Any]] = {}
    for spec in registry:
        specs.setdefault(spec.key, {})[spec.version] = spec_contract(spec)
    return {"format": LOCK_FORMAT, "specs": specs}


def dumps(locked: Mapping[str, Any]) -> str:
    """The lock file's text: sorted keys, two-space indent, a trailing newline (diffs well)."""
    return json.dumps(locked, indent=2, sort_keys=True) + "\n"


def count(locked: Mapping[str, Any]) -> int:
    return sum(len(versions) for versions in locked.get("specs", {}).values())


def default_version(versions: Mapping[str, Any]) -> str | None:
    """What a command without ``opversion`` runs, as ``OperationRegistry.get`` chooses it."""
    served = [v for v, entry in versions.items() if entry.get("stability") != "deprecated"] or list(versions)
    return max(served, key=parse_version, default=None)


# -- the comparison -----------------------------------------------------------------------


def breaking(old_lock: Mapping[str, Any], new_lock: Mapping[str, Any]) -> list[str]:
    """One line per change from ``old_lock`` to ``new_lock`` that breaks a caller (module doc)."""
    old_specs: Mapping[str, Any] = old_lock.get("specs", {})
    new_specs: Mapping[str, Any] = new_lock.get("specs", {})
    found: list[str] = []
    for key in sorted(old_specs):
        old_versions, new_versions = old_specs[key], new_specs.get(key)
        if new_versions is None:
            found.append(f"{key}: spec removed (its callers are left with UNKNOWN_OPERATION)")
            continue
        for version in sorted(old_versions, key=parse_version):
            label = f"{key} {version}"
            if version not in new_versions:
                found.append(
                    f"{label}: version removed (callers that pin it are left with UNKNOWN_OPERATION)"
                )
                continue
            found += [f"{label}: {line}" for line in _entry(old_versions[version], new_versions[version])]
        old_default, new_default = default_version(old_versions), default_version(new_versions)
        if old_default in new_versions and new_default is not None and new_default != old_default:
            label = f"{key} default version {old_default} -> {new_default} (callers that send no opversion)"
            assert old_default is not None
            found += [
                f"{label}: {line}" for line in _entry(old_versions[old_default], new_versions[new_default])
            ]
    return found


def _entry(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    if old.get("kind") != new.get("kind"):
        found.append(f"kind changed {old.get('kind')} -> {new.get('kind')}")
    found += _Schemas("input", covering=new["input"], covered=old["input"]).compare()
    found += _Schemas("output", covering=old["output"], covered=new["output"]).compare()
    found += _policy(old.get("policy", {}), new.get("policy", {}))
    found += [f"error code {code} removed" for code in sorted(set(old["errors"]) - set(new["errors"]))]
    # a lock written before partition keys were locked has none to compare
    if "partitionKey" in old and old["partitionKey"] != new.get("partitionKey"):
        was, now = old["partitionKey"] or "none", new.get("partitionKey") or "none"
        found.append(
            f"partition key changed {was} -> {now} (one resource's commands may run out of order"
            " across the deploy)"
        )
    return found


def _policy(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    old_auth, new_auth = old.get("auth", "user"), new.get("auth", "user")
    if _rank(new_auth) > _rank(old_auth):
        found.append(f"policy auth tightened {old_auth} -> {new_auth}")
    unmatched = list(old.get("rules", []))
    for rule in new.get("rules", []):
        twin = next(
            (r for r in unmatched if (r["resource"], r["action"]) == (rule["resource"], rule["action"])), None
        )
        if twin is None:
            found.append(f"policy rule added: {_rule(rule)}")
            continue
        unmatched.remove(twin)
        if not set(rule["condition"]) >= set(twin["condition"]):
            found.append(f"policy rule {_rule_name(rule)}: condition {_any_of(twin)} -> {_any_of(rule)}")
        if rule.get("idField") != twin.get("idField"):
            found.append(
                f"policy rule {_rule_name(rule)}: id field {twin.get('idField')} -> {rule.get('idField')}"
            )
        if (twin.get("ifMissing"), rule.get("ifMissing")) == ("allow", "deny"):
            found.append(f"policy rule {_rule_name(rule)}: a missing resource is now denied")
    return found


def _rank(auth: str) -> int:
    return AUTH_LEVELS.index(auth) if auth in AUTH_LEVELS else len(AUTH_LEVELS)


def _rule_name(rule: Mapping[str, Any]) -> str:
    return " ".join(str(part) for part in (rule["resource"] or "-", rule["action"]) if part)


def _any_of(rule: Mapping[str, Any]) -> str:
    return " or ".join(rule["condition"])


def _rule(rule: Mapping[str, Any]) -> str:
    return f"{_rule_name(rule)} if {_any_of(rule)}"


# -- schemas ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Branch:
    """One alternative of a schema: a JSON type (or ``any``), its keywords, its enum values."""

    kind: str
    schema: Mapping[str, Any]
    enum: tuple[Any, ...] | None = None
    ref: str | None = None  # the definition it came from, to compare a recursive model once


_JSON_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
_UPPER = {
    "string": "maxLength",
    "array": "maxItems",
    "object": "maxProperties",
    "number": "maximum",
    "integer": "maximum",
}
_LOWER = {
    "string": "minLength",
    "array": "minItems",
    "object": "minProperties",
    "number": "minimum",
    "integer": "minimum",
}
_NO_DEFAULT = object()


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _fits(value: Any, kind: str) -> bool:
    return _kind_of(value) == kind or (kind, _kind_of(value)) == ("number", "integer")


def _accepts(branch: _Branch, value: Any) -> bool:
    """Whether ``branch`` (of a matching kind) takes the enum value ``value``: any value of its
    type, or one of its own (JSON equality: ``true`` is not ``1``)."""
    if branch.enum is None:
        return True
    return any(_kind_of(w) == _kind_of(value) and w == value for w in branch.enum)


def _show(values: Iterable[Any]) -> str:
    return ", ".join(json.dumps(v) for v in values)


class _Schemas:
    """Where ``covered``'s values are not all accepted by ``covering``.

    For an input, ``covering`` is the new schema and ``covered`` the old (new must accept what
    old did); for an output the other way round (old must accept what new produces)."""

    def __init__(self, side: Side, *, covering: Mapping[str, Any], covered: Mapping[str, Any]) -> None:
        self.side = side
        self.roots = (covering, covered)

    def compare(self) -> list[str]:
        covering, covered = self.roots
        return self._covers(covering, covered, self.side, frozenset())

    def _old_new(self, covering: Any, covered: Any) -> tuple[Any, Any]:
        return (covered, covering) if self.side == "input" else (covering, covered)

    # resolving

    def _resolve(self, schema: Any, root: Mapping[str, Any]) -> tuple[Mapping[str, Any], str | None]:
        """``schema`` with its ``$ref`` (and a lone ``allOf``) merged in, and the last ``$ref``
        followed; ``true`` is ``{}``, ``false`` accepts nothing."""
        if schema is True or not isinstance(schema, Mapping):
            return {}, None
        if schema is False:
            return {"not": {}}, None
        followed: list[str] = []
        while True:
            if "$ref" in schema and schema["$ref"] not in followed:
                followed.append(str(schema["$ref"]))
                target = _pointer(root, followed[-1])
                schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
            elif isinstance(schema.get("allOf"), list) and len(schema["allOf"]) == 1:
                inner = schema["allOf"][0]
                schema = {**{k: v for k, v in schema.items() if k != "allOf"}, **inner}
            else:
                return schema, followed[-1] if followed else None

    def _branches(self, schema: Any, root: Mapping[str, Any]) -> list[_Branch]:
        if schema is False:
            return []  # accepts nothing
        schema, ref = self._resolve(schema, root)
        alternatives = schema.get("anyOf", schema.get("oneOf"))
        if isinstance(alternatives, list):
            return [b for alt in alternatives for b in self._branches(alt, root)]
        values: list[Any] | None = None
        if "const" in schema:
            values = [schema["const"]]
        elif isinstance(schema.get("enum"), list):
            values = list(schema["enum"])
        types = schema.get("type")
        if isinstance(types, str):
            types = [types]
        if values is not None:
            kinds = types or sorted({_kind_of(v) for v in values})
            return [_Branch(k, schema, tuple(v for v in values if _fits(v, k)), ref) for k in kinds]
        if types:
            return [_Branch(t, schema, None, ref) for t in types if t in _JSON_TYPES]
        if "properties" in schema or "additionalProperties" in schema:
            return [_Branch("object", schema, None, ref)]
        if "items" in schema or "prefixItems" in schema:
            return [_Branch("array", schema, None, ref)]
        return [_Branch("any", schema, None, ref)]

    # comparing

    def _covers(self, covering: Any, covered: Any, path: str, seen: frozenset[tuple[str, str]]) -> list[str]:
        wide = self._branches(covering, self.roots[0])
        if any(b.kind == "any" for b in wide):
            return []
        found: list[str] = []
        for branch in self._branches(covered, self.roots[1]):
            found += self._branch(wide, branch, path, seen)
        return found

    def _kinds(self, branches: list[_Branch]) -> str:
        if not branches:
            return "nothing"
        return "|".join(sorted({b.kind if b.enum is None else f"enum({b.kind})" for b in branches}))

    def _branch(
        self, wide: list[_Branch], narrow: _Branch, path: str, seen: frozenset[tuple[str, str]]
    ) -> list[str]:
        def candidate(b: _Branch) -> bool:
            return b.kind == narrow.kind or (b.kind, narrow.kind) == ("number", "integer")

        candidates = [b for b in wide if candidate(b)]
        if narrow.kind == "null" and not candidates:
            return [f"{path}: no longer accepts null" if self.side == "input" else f"{path}: may now be null"]
        if narrow.kind == "any" or not candidates:
            what, now = ("any value" if narrow.kind == "any" else self._kinds([narrow])), self._kinds(wide)
            if self.side == "output":
                return [f"{path}: type widened: may now be {what} (was {now})"]
            if narrow.kind == "any":
                return [f"{path}: type narrowed: took any value, now only {now}"]
            return [f"{path}: type narrowed: {what} no longer accepted (now {now})"]
        if narrow.enum is not None:
            lost = [v for v in narrow.enum if not any(_accepts(b, v) for b in candidates)]
            if not lost:
                return []
            if self.side == "input":
                return [f"{path}: enum value(s) removed: {_show(lost)}"]
            return [f"{path}: enum value(s) added: {_show(lost)} (consumers may not handle them)"]
        plain = [b for b in candidates if b.enum is None]
        if not plain:
            values = [v for b in candidates for v in b.enum or ()]
            if self.side == "input":
                return [f"{path}: narrowed from any {narrow.kind} to enum [{_show(values)}]"]
            return [f"{path}: widened from enum [{_show(values)}] to any {narrow.kind}"]
        attempts = [self._same_kind(b, narrow, path, seen) for b in plain]
        return min(attempts, key=len)

    def _same_kind(
        self, wide: _Branch, narrow: _Branch, path: str, seen: frozenset[tuple[str, str]]
    ) -> list[str]:
        if wide.ref is not None and narrow.ref is not None:
            if (wide.ref, narrow.ref) in seen:
                return []  # a recursive model: this pair is being compared further up
            seen = seen | {(wide.ref, narrow.ref)}
        w, n = wide.schema, narrow.schema
        found = self._bounds(wide, narrow, path)
        for keyword in ("pattern", "format", "multipleOf"):
            if keyword in w and (keyword not in n or n[keyword] != w[keyword]):
                old, new = self._old_new(w.get(keyword), n.get(keyword))
                change = "added" if old is None else ("removed" if new is None else "changed")
                found.append(
                    f"{path}: {keyword} {change}" + (f" ({old} -> {new})" if keyword == "multipleOf" else "")
                )
        if narrow.kind == "array":
            if w.get("uniqueItems") and not n.get("uniqueItems"):
                found.append(
                    f"{path}: items must now be unique"
                    if self.side == "input"
                    else f"{path}: items may now repeat"
                )
            found += self._covers(w.get("items", {}), n.get("items", {}), f"{path}[]", seen)
            wide_prefix, narrow_prefix = w.get("prefixItems", []), n.get("prefixItems", [])
            for i, (a, b) in enumerate(zip(wide_prefix, narrow_prefix, strict=False)):
                found += self._covers(a, b, f"{path}[{i}]", seen)
            if len(wide_prefix) != len(narrow_prefix):
                old, new = self._old_new(len(wide_prefix), len(narrow_prefix))
                found.append(f"{path}: tuple length changed {old} -> {new}")
        if narrow.kind == "object":
            found += self._object(w, n, path, seen)
        return found

    def _bounds(self, wide: _Branch, narrow: _Branch, path: str) -> list[str]:
        found: list[str] = []
        kind = narrow.kind
        if kind not in _UPPER:
            return found
        for keyword, sign in ((_UPPER[kind], 1), (_LOWER[kind], -1)):
            exclusive = (
                ("exclusiveMaximum" if sign == 1 else "exclusiveMinimum")
                if keyword in ("maximum", "minimum")
                else None
            )
            a, b = _bound(wide.schema, keyword, exclusive), _bound(narrow.schema, keyword, exclusive)
            # ``a`` must not cut into ``b``: an upper bound must be at least, a lower at most
            if a is None or (b is not None and (a[0] * sign, a[1]) >= (b[0] * sign, b[1])):
                continue
            old, new = self._old_new(a, b)
            text = functools.partial(_bound_text, keyword, exclusive)
            if old is None or new is None:
                found.append(f"{path}: {text(old or new)} {'added' if old is None else 'removed'}")
            elif old[1] == new[1] == 1:
                moved = "lowered" if new[0] < old[0] else "raised"
                found.append(f"{path}: {keyword} {moved} {_num(old[0])} -> {_num(new[0])}")
            else:
                found.append(f"{path}: {text(old)} -> {text(new)}")
        return found

    def _object(
        self, wide: Mapping[str, Any], narrow: Mapping[str, Any], path: str, seen: frozenset[tuple[str, str]]
    ) -> list[str]:
        found: list[str] = []
        wide_props: Mapping[str, Any] = wide.get("properties", {})
        narrow_props: Mapping[str, Any] = narrow.get("properties", {})
        wide_req, narrow_req = set(wide.get("required", [])), set(narrow.get("required", []))
        old_props, new_props = self._old_new(wide_props, narrow_props)
        old_req, new_req = self._old_new(wide_req, narrow_req)
        for name in old_props:
            if name not in new_props:
                found.append(f"{path}.{name}: field removed")
        for name in new_props:
            if name in old_props:
                continue
            if self.side == "input" and name in new_req:
                found.append(f"{path}.{name}: new required field")
        for name in old_props:
            if name not in new_props:
                continue
            if name in new_req and name not in old_req and self.side == "input":
                found.append(f"{path}.{name}: field became required")
            if name in old_req and name not in new_req and self.side == "output":
                found.append(f"{path}.{name}: field made optional")
            found += self._covers(wide_props[name], narrow_props[name], f"{path}.{name}", seen)
            if self.side == "input" and name not in old_req and name not in new_req:
                found += _default_changed(old_props[name], new_props[name], f"{path}.{name}")
        wide_more, narrow_more = _more(wide), _more(narrow)
        found += self._keys(wide, narrow, wide_more, path, seen)
        if narrow_more is False:
            return found
        if wide_more is False:
            if self.side == "input" and not wide.get("patternProperties"):  # else reported as keys
                found.append(f"{path}: no longer accepts other fields")
            return found  # an output's new fields are for tolerant readers (module doc)
        return found + self._covers(wide_more, narrow_more, f"{path}{{}}", seen)

    def _keys(
        self,
        wide: Mapping[str, Any],
        narrow: Mapping[str, Any],
        wide_more: Any,
        path: str,
        seen: frozenset[tuple[str, str]],
    ) -> list[str]:
        """A map's keys: ``propertyNames`` (a string schema every key meets) and
        ``patternProperties`` (the keys' patterns and their values' schemas). Pydantic writes
        the latter for ``dict[Annotated[str, StringConstraints(pattern=...)], V]``, meaning
        that a key must match one of the patterns (see ``_more``)."""
        found = self._covers(
            _key_schema(wide.get("propertyNames", {})),
            _key_schema(narrow.get("propertyNames", {})),
            f"{path}{{keys}}",
            seen,
        )
        wide_patterns: Mapping[str, Any] = wide.get("patternProperties") or {}
        narrow_patterns: Mapping[str, Any] = narrow.get("patternProperties") or {}
        # no patterns: any key; several: a key matches any of them
        if wide_patterns and not (narrow_patterns and set(narrow_patterns) <= set(wide_patterns)):
            old, new = self._old_new(sorted(wide_patterns), sorted(narrow_patterns))
            if not old or not new:
                change = "added" if not old else "removed"
                found.append(f"{path}: key pattern {change} ({', '.join(old or new)})")
            else:
                found.append(f"{path}: key pattern changed ({', '.join(old)} -> {', '.join(new)})")
        for pattern, schema in narrow_patterns.items():
            if pattern in wide_patterns:
                found += self._covers(wide_patterns[pattern], schema, f"{path}{{{pattern}}}", seen)
            elif not wide_patterns and wide_more is not False:
                found += self._covers(wide_more, schema, f"{path}{{{pattern}}}", seen)
        return found


def _more(schema: Mapping[str, Any]) -> Any:
    """An object's ``additionalProperties``: ``true`` when absent, except next to
    ``patternProperties`` (as pydantic writes a map with constrained keys, whose other keys it
    refuses): then ``false``."""
    return schema.get("additionalProperties", not schema.get("patternProperties"))


def _key_schema(schema: Any) -> Any:
    """A ``propertyNames`` schema: keys are strings, whether or not it says so."""
    if isinstance(schema, Mapping) and "type" not in schema:
        return {**schema, "type": "string"}
    return schema


def _default_changed(old: Any, new: Any, path: str) -> list[str]:
    """An optional input field's default: callers that omit the field get it, so a change
    changes what their commands do without their sending anything else."""
    was = old.get("default", _NO_DEFAULT) if isinstance(old, Mapping) else _NO_DEFAULT
    now = new.get("default", _NO_DEFAULT) if isinstance(new, Mapping) else _NO_DEFAULT
    if _canonical(was) == _canonical(now):
        return []
    change = f"{_canonical(was)} -> {_canonical(now)}"
    return [f"{path}: default changed {change} (callers that omit it get the new one)"]


def _canonical(value: Any) -> str:
    return "none" if value is _NO_DEFAULT else json.dumps(value, sort_keys=True)


def _bound(schema: Mapping[str, Any], keyword: str, exclusive: str | None) -> tuple[float, int] | None:
    """A bound as ``(value, 1)`` when inclusive, ``(value, 0)`` when exclusive (for upper bounds,
    exclusive is tighter; lower bounds compare negated, where the same holds)."""
    found: list[tuple[float, int]] = []
    if isinstance(schema.get(keyword), int | float) and not isinstance(schema.get(keyword), bool):
        found.append((schema[keyword], 1))
    if exclusive is not None and isinstance(schema.get(exclusive), int | float):
        found.append((schema[exclusive], 0))
    if not found:
        return None
    upper = keyword.startswith("max")
    return min(found, key=lambda b: (b[0], b[1])) if upper else max(found, key=lambda b: (b[0], -b[1]))


def _bound_text(keyword: str, exclusive: str | None, bound: tuple[float, int]) -> str:
    return f"{keyword if bound[1] or exclusive is None else exclusive} {_num(bound[0])}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _pointer(root: Mapping[str, Any], ref: str) -> Mapping[str, Any]:
    if not ref.startswith("#"):
        return {}  # a remote reference: not followed (treated as any value)
    node: Any = root
    for part in ref[1:].split("/")[1:] if ref != "#" else []:
        part = part.replace("~1", "/").replace("~0", "~")
        node = node.get(part, {}) if isinstance(node, Mapping) else {}
    return node if isinstance(node, Mapping) else {}
