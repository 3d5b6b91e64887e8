"""``/graphql`` on a running ``serve``, driven by gql (a real GraphQL client) over HTTP.

The schema is read by introspection; mutations and queries run through the same executor as
``/ops``: the actor from ``Authorization``, the same statuses, one effect per key, audited.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from gql import Client, GraphQLRequest, gql
from gql.transport.httpx import HTTPXAsyncTransport
from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLNonNull,
    GraphQLObjectType,
    get_introspection_query,
)

from tests.support import Reader, ServeProcess, Topics, seed_ledger, token

pytestmark = pytest.mark.integration

CREDIT = gql(
    """mutation Credit($input: LedgerCreditInput!, $key: String) {
         ledgerCredit(input: $input, idempotencyKey: $key) {
           status commandId idempotencyKey
           output { accountId balance }
           error { code declared message fields { field message } }
         }
       }"""
)
BALANCE = gql(
    """query Balance($id: String!) {
         ledgerBalance(input: {accountId: $id}) { status output { balance } error { code declared } }
       }"""
)


@pytest.fixture
async def accounts(clean_db: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    await seed_ledger(clean_db, [("a1", "alice", "t1"), ("b1", "bob", "t1")])
    yield clean_db


@pytest.fixture
def server(topics: Topics, database_url: str, accounts: Any, serving: Any) -> ServeProcess:
    return serving(topics, database_url)


async def _run(session: Any, document: GraphQLRequest, variables: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = await session.execute(GraphQLRequest(document, variable_values=variables))
    return result


def _client(server: ServeProcess, sub: str | None = "alice", **headers: str) -> Client:
    if sub is not None:
        headers["authorization"] = f"Bearer {token(sub, tenant='t1')}"
    transport = HTTPXAsyncTransport(url=f"{server.url}/graphql", headers=headers, timeout=30)
    return Client(transport=transport, fetch_schema_from_transport=True)


async def test_introspected_schema_is_the_registry(server: ServeProcess) -> None:
    async with _client(server) as session:
        schema = session.client.schema
        assert schema is not None and schema.mutation_type is not None and schema.query_type is not None
        credit = schema.mutation_type.fields["ledgerCredit"]
        assert credit.description and credit.description.startswith("Credit an account")
        assert isinstance(credit.args["input"].type, GraphQLNonNull)
        given = schema.get_type("LedgerCreditInput")
        assert isinstance(given, GraphQLInputObjectType)
        assert {"accountId", "amount"} <= set(given.fields)
        assert isinstance(given.fields["accountId"].type, GraphQLNonNull)
        assert not isinstance(given.fields["flaky"].type, GraphQLNonNull)  # has a default
        assert "ledgerBalance" in schema.query_type.fields  # a query spec is a query
        codes = schema.get_type("LedgerCreditErrorCode")
        assert isinstance(codes, GraphQLEnumType) and set(codes.values) == {"DECLINED"}
        result = schema.get_type("LedgerCreditResult")
        assert isinstance(result, GraphQLObjectType)
        assert {"status", "output", "error", "commandId", "idempotencyKey"} == set(result.fields)


async def test_mutations_and_queries_run_as_commands(
    server: ServeProcess, topics: Topics, kafka_bootstrap: str, accounts: asyncpg.Pool
) -> None:
    async with _client(server) as alice:
        ok = (await _run(alice, CREDIT, {"input": {"accountId": "a1", "amount": "3"}}))["ledgerCredit"]
        assert ok["status"] == "succeeded" and ok["output"] == {"accountId": "a1", "balance": "3"}
        assert ok["error"] is None and ok["idempotencyKey"] == ok["commandId"]

        keyed = {"input": {"accountId": "a1", "amount": "2"}, "key": "gql-1"}
        first = (await _run(alice, CREDIT, keyed))["ledgerCredit"]
        again = (await _run(alice, CREDIT, keyed))["ledgerCredit"]
        assert first["output"] == again["output"] == {"accountId": "a1", "balance": "5"}
        clash = {"input": {"accountId": "a1", "amount": "7"}, "key": "gql-1"}
        conflict = (await _run(alice, CREDIT, clash))["ledgerCredit"]
        assert (conflict["status"], conflict["error"]["code"]) == ("rejected", "IDEMPOTENCY_CONFLICT")

        denied = (await _run(alice, CREDIT, {"input": {"accountId": "b1", "amount": "1"}}))["ledgerCredit"]
        assert (denied["status"], denied["error"]["code"], denied["output"]) == ("denied", "FORBIDDEN", None)
        invalid = (await _run(alice, CREDIT, {"input": {"accountId": "a1", "amount": "-1"}}))["ledgerCredit"]
        assert (invalid["status"], invalid["error"]["code"]) == ("rejected", "INVALID_INPUT")
        assert [f["field"] for f in invalid["error"]["fields"]] == ["amount"]
        refused = {"input": {"accountId": "a1", "amount": "1", "fail": "DECLINED"}}
        declined = (await _run(alice, CREDIT, refused))["ledgerCredit"]
        assert (declined["status"], declined["error"]["code"], declined["error"]["declared"]) == (
            "failed",
            "DECLINED",
            "DECLINED",
        )
        assert invalid["error"]["declared"] is None  # the runner's own code is not the spec's

        read = (await _run(alice, BALANCE, {"id": "a1"}))["ledgerBalance"]
        assert read == {"status": "succeeded", "output": {"balance": "5"}, "error": None}

    async with _client(server, None) as nobody:
        anonymous = (await _run(nobody, CREDIT, {"input": {"accountId": "a1", "amount": "1"}}))[
            "ledgerCredit"
        ]
        assert (anonymous["status"], anonymous["error"]["code"]) == ("denied", "UNAUTHENTICATED")

    async with _client(server, "alice", **{"idempotency-key": "gql-header"}) as keyed_alice:
        once = await _run(keyed_alice, CREDIT, {"input": {"accountId": "a1", "amount": "1"}})
        twice = await _run(keyed_alice, CREDIT, {"input": {"accountId": "a1", "amount": "1"}})
        assert (
            once["ledgerCredit"]["output"]
            == twice["ledgerCredit"]["output"]
            == {"accountId": "a1", "balance": "6"}
        )
        assert (
            once["ledgerCredit"]["idempotencyKey"] == twice["ledgerCredit"]["idempotencyKey"] == "gql-header"
        )

    assert await accounts.fetchval("SELECT balance FROM ledger_accounts WHERE id = 'a1'") == 6
    keys = [r["idempotency_key"] for r in await accounts.fetch("SELECT idempotency_key FROM ledger_effects")]
    assert keys.count("gql-1") == 1 and keys.count("gql-header") == 1
    async with Reader(kafka_bootstrap, topics.audit) as audit:
        entries = [orjson.loads(m.value)["data"] for m in await audit.until(lambda m: len(m) >= 11)]
    assert {e["status"] for e in entries} == {"succeeded", "rejected", "denied", "failed"}


async def test_bad_requests_get_specific_answers(server: ServeProcess) -> None:
    headers = {"authorization": f"Bearer {token('alice', tenant='t1')}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as http:
        plain = await http.post("/graphql", content=b'{"query": "{ operations }"}')  # no content type
        assert plain.status_code == 415 and "application/json" in plain.json()["errors"][0]["message"]
        text = await http.post(
            "/graphql", content=b'{"query": "{ operations }"}', headers={"content-type": "text/plain"}
        )
        assert text.status_code == 415  # what a web page could send without a preflight
        json_type = {"content-type": "application/json; charset=utf-8"}
        not_json = await http.post("/graphql", content=b"{nope", headers=json_type)
        assert not_json.status_code == 400 and "not JSON" in not_json.json()["errors"][0]["message"]
        no_query = await http.post("/graphql", json={"variables": {}})
        assert no_query.status_code == 400
        syntax = await http.post("/graphql", json={"query": "mutation {"})
        [syntax_error] = syntax.json()["errors"]
        assert syntax.status_code == 200 and syntax_error["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"
        assert syntax_error["locations"] == [{"line": 1, "column": 11}] and "data" not in syntax.json()
        unknown = await http.post("/graphql", json={"query": "{ nope }"})
        [unknown_error] = unknown.json()["errors"]
        assert unknown_error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
        assert unknown_error["locations"] == [{"line": 1, "column": 3}]
        many = " ".join(
            f'c{i}: ledgerCredit(input: {{accountId: "a1", amount: "1"}}) {{ status }}' for i in range(33)
        )
        for query in (
            f"mutation {{ {many} }}",
            f"mutation {{ ...F }} fragment F on Mutation {{ {many} }}",  # a fragment hides none
            f"mutation {{ ... on Mutation {{ {many} }} }}",
        ):
            flood = await http.post("/graphql", json={"query": query})
            assert "at most 32 root fields" in flood.json()["errors"][0]["message"], query
        one = 'ledgerCredit(input: {accountId: "a1", amount: "1"}) { status }'
        two = f"a: {one} b: {one}"
        shared = await http.post(
            "/graphql", json={"query": f"mutation {{ {two} }}"}, headers={"idempotency-key": "k"}
        )
        assert "Idempotency-Key names one call" in shared.json()["errors"][0]["message"]
        hidden = await http.post(
            "/graphql",
            json={"query": f"mutation {{ ...T }} fragment T on Mutation {{ {two} }}"},
            headers={"idempotency-key": "k"},
        )
        assert "Idempotency-Key names one call" in hidden.json()["errors"][0]["message"]
        huge = await http.post(
            "/graphql", content=b'{"query": "' + b" " * (2 * 1024 * 1024) + b'"}', headers=json_type
        )
        assert huge.status_code == 413


def _amplifier(k: int) -> str:
    """The review's document: five fragments of ``k`` aliases each, ``k**5`` fields expanded."""
    names = ["S", "A", "B", "C", "D", "E"]
    on = {"S": "__Schema", "A": "__Type", "B": "__Field", "C": "__Type", "D": "__Field", "E": "__Type"}
    via = {"S": "types", "A": "fields", "B": "type", "C": "fields", "D": "type"}
    fragments = [
        f"fragment {n} on {on[n]} {{ "
        + " ".join(f"x{i}: {via[n]} {{ ...{names[j + 1]} }}" for i in range(k))
        + " }"
        for j, n in enumerate(names[:-1])
    ]
    return "{ __schema { ...S } }\n" + "\n".join(fragments) + "\nfragment E on __Type { name }"


async def test_a_document_is_held_to_its_cost(server: ServeProcess) -> None:
    """No token, as a web page could: refused for what it would cost, before it runs, and the
    server answers everyone else meanwhile; what costs more than it shows stops at the budget;
    the full introspection of the schema still works."""
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        for k in (4, 10):
            document = {"query": _amplifier(k)}
            started = asyncio.get_running_loop().create_task(http.post("/graphql", json=document))
            health = await http.get("/healthz")
            answer = await started
            assert health.status_code == 200 and answer.status_code == 200
            [error] = answer.json()["errors"]
            assert error["extensions"]["code"] == "GRAPHQL_BUDGET_EXCEEDED" and "data" not in answer.json()
        # few fields asked, many resolved: every type's fields, thirty times over
        wide = " ".join(f"t{i}: types {{ name fields {{ name type {{ name }} }} }}" for i in range(30))
        stopped = (await http.post("/graphql", json={"query": f"{{ __schema {{ {wide} }} }}"})).json()
        [error] = stopped["errors"]  # one error for every field it stopped
        assert error["extensions"]["code"] == "GRAPHQL_BUDGET_EXCEEDED" and "fields" in error["message"]
        full = await http.post("/graphql", json={"query": get_introspection_query(descriptions=True)})
        body = full.json()
        assert "errors" not in body and len(body["data"]["__schema"]["types"]) > 10


async def test_validation_costs_what_the_document_is(server: ServeProcess) -> None:
    """The shapes that made graphql-core's validation take seconds (fields of one name
    compared pairwise, hundreds of fragments) are refused or answered at once; a real
    conflict is still refused, in this project's words and code."""
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:

        async def errors(query: str, **extra: Any) -> list[dict[str, Any]]:
            answer = await http.post("/graphql", json={"query": query, **extra})
            assert answer.status_code == 200
            return list(answer.json().get("errors", []))

        repeated = "{ __schema { " + " ".join("a: queryType { b: name }" for _ in range(240)) + " } }"
        assert await errors(repeated) == []  # one field asked 240 times is one field
        spreads = "{ __schema { " + " ".join(f"...F{i}" for i in range(65)) + " } }\n"
        spreads += "\n".join(f"fragment F{i} on __Schema {{ a: __typename }}" for i in range(65))
        [too_many] = await errors(spreads)
        assert (
            too_many["extensions"]["code"] == "GRAPHQL_BUDGET_EXCEEDED"
            and "64 fragments" in too_many["message"]
        )
        [conflict] = await errors("{ __schema { types { a: name a: description } } }")
        assert conflict["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
        assert conflict["locations"] == [{"line": 1, "column": 22}, {"line": 1, "column": 30}]
        [nested] = await errors("{ __schema { a: queryType { x: name } a: queryType { x: description } } }")
        assert nested["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
        [args] = await errors('{ a: __type(name: "Query") { name } a: __type(name: "Status") { name } }')
        assert args["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
        [too_long] = await errors("{ " + "operations " * 2001 + "}")
        assert too_long["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"
        # the reviewer's: ten levels of fragments, each spreading the next five times, no field
        fan = "{ ...F0 } " + " ".join(f"fragment F{i} on Query {{ {f'...F{i + 1} ' * 5}}}" for i in range(10))
        assert await errors(fan + " fragment F10 on Query { }") == []  # merged once, not 5**10 times
        [fanned] = await errors(fan + " fragment F10 on Query { __typename }")
        assert fanned["extensions"]["code"] == "GRAPHQL_BUDGET_EXCEEDED"
        two = "query A { operations } query B { operations }"
        [unnamed] = await errors(two)
        assert (
            unnamed["extensions"]["code"] == "OPERATION_RESOLUTION_FAILURE"
            and "operationName" in unnamed["message"]
        )
        [unknown] = await errors(two, operationName="Nope")
        assert (
            unknown["extensions"]["code"] == "OPERATION_RESOLUTION_FAILURE" and "'Nope'" in unknown["message"]
        )
        assert await errors(two, operationName="B") == []
