"""The served OpenAPI document: valid OpenAPI 3.1, and true of the server that serves it.

``oprunner serve`` runs the bundled billing app (Stripe webhooks configured) against the
session's Postgres, broker and Stripe stand-in. The document is fetched from it over loopback
and checked with openapi-spec-validator; then schemathesis sends requests generated from that
document (schema-valid and schema-violating ones), without a token and with a valid one, and
checks every answer against it: no 5xx, only declared statuses, declared content types,
bodies and headers as their schemas say, invalid data refused, declared auth enforced. The
happy paths (a capture, its run, a refund, a signed webhook and its replay) are sent once
each and checked the same way, so the success bodies are held to the document too.

Schemathesis runs its examples, coverage (boundary values, missing and wrong-typed parts,
unexpected methods) and fuzzing phases with every check it has. Two are told what this API
means: a well-formed command may fail in its domain with 422 (INVOICE_NOT_FOUND for an
invoice nobody has), and a generated webhook delivery cannot carry a valid signature of its
own body, so its 400 is expected (signed deliveries are sent by the happy-path test).

Deterministic: one fixed seed (each operation's derived from it), derandomized generation, no
example database, a fixed number of fuzzed examples per operation
(``OPRUNNER_OPENAPI_EXAMPLES`` and ``OPRUNNER_OPENAPI_SEED`` explore further).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import requests
import schemathesis
from hypothesis import core as hypothesis_core
from hypothesis.internal.conjecture import engine as hypothesis_engine
from hypothesis.strategies._internal import collections as hypothesis_collections
from hypothesis.vendor import pretty as hypothesis_pretty
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from runner.docs import OPENAPI_PATH
from tests.support import ServeProcess, Topics, token

WEBHOOK_SECRET = "whsec_test_" + "o" * 24
API_KEY = "sk_test_oprunner"
# Per operation: fuzzed examples (the coverage phase adds its own boundary cases), and the
# seed; the environment may ask for more or another seed to explore, CI keeps these.
EXAMPLES = int(os.environ.get("OPRUNNER_OPENAPI_EXAMPLES", "25"))
SEED = int(os.environ.get("OPRUNNER_OPENAPI_SEED", "20240601"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    ignored_auth,
]
EXPECTED_PATHS = {
    "/ops/billing.capturePayment",
    "/ops/billing.recordPayment",
    "/ops/billing.recordPaymentFailure",
    "/ops/billing.refundPayment",
    "/ops/runs/{id}",
    "/ops/runs",
    "/ops/specs",
    "/ops/dlq",
    "/ops/dlq/replay",
    "/webhooks/{provider}",
    "/healthz",
    "/readyz",
    "/metrics",
    OPENAPI_PATH,
}


@pytest.fixture(scope="module")
async def server(kafka_bootstrap: str, database_url: str, stripe_url: str) -> AsyncIterator[ServeProcess]:
    """One ``oprunner serve`` of the billing app for the whole module, on topics of its own."""
    topics = Topics()
    await topics.create(kafka_bootstrap)
    env = topics.env(
        kafka_bootstrap,
        database_url,
        OPRUNNER_STRIPE_API_KEY=API_KEY,
        OPRUNNER_STRIPE_API_BASE=stripe_url,
        OPRUNNER_STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
    )
    proc = ServeProcess(env, app="handlers:registry").start()
    try:
        proc.wait_serving()
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def bearer(sub: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sub, tenant='t1')}"}


def test_the_served_document_is_valid_openapi_and_covers_every_route(server: ServeProcess) -> None:
    response = httpx.get(server.url + OPENAPI_PATH, timeout=10)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    document = response.json()
    validate(document)  # raises with the first violation
    assert set(document["paths"]) == EXPECTED_PATHS
    provider = document["paths"]["/webhooks/{provider}"]["post"]["parameters"][0]
    assert provider["schema"] == {"enum": ["stripe"]}  # what this server has configured


def st_config(**extra: Any) -> schemathesis.Config:
    """Every check, the examples, coverage and fuzzing phases, reproducible from one seed."""
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "cache": {"enabled": False},  # no failures replayed from an earlier run
            "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
            "generation": {
                "mode": "all",
                "max-examples": EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "phases": {"stateful": {"enabled": False}},
            "checks": {
                # A well-formed command may still fail in the domain (INVOICE_NOT_FOUND for an
                # invoice id nobody has): 422, with the operation's error code.
                "positive_data_acceptance": {"expected-statuses": ["2xx", 401, 403, 404, 409, 422]},
            },
            "operations": [
                {
                    # a generated delivery cannot carry a valid HMAC of its own body; signed
                    # deliveries are sent by test_success_answers_match_the_document
                    "include-path": "/webhooks/{provider}",
                    "checks": {"positive_data_acceptance": {"enabled": False}},
                }
            ],
            "request-timeout": 20,
            **extra,
        }
    )


@pytest.fixture(params=["anonymous", "alice"])
def api(request: pytest.FixtureRequest, server: ServeProcess) -> Any:
    """The served document, loaded by schemathesis; ``alice`` sends a valid bearer token."""
    headers = bearer() if request.param == "alice" else {}
    return schemathesis.openapi.from_url(
        server.url + OPENAPI_PATH, config=st_config(headers=headers, **{"base-url": server.url})
    )


# Loading schemathesis's test builder patches Hypothesis for the whole process (a printer that
# prints nothing, a larger buffer), after which every other property test in the session would
# report a falsifying example as `x=,`. So its pytest plugin is off (`-p no:schemathesis` in
# pyproject.toml), the patch is undone as soon as it is made, and is in force only while this
# module's tests run (schemathesis patches once per process).
_HYPOTHESIS = (hypothesis_core, hypothesis_engine, hypothesis_collections)
_ORIGINAL = (hypothesis_pretty.RepresentationPrinter, hypothesis_engine.BUFFER_SIZE)
schema = schemathesis.pytest.from_fixture("api")
_PATCHED = (hypothesis_core.RepresentationPrinter, hypothesis_engine.BUFFER_SIZE)


def _hypothesis_as(state: tuple[Any, int]) -> None:
    printer, buffer_size = state
    hypothesis_core.RepresentationPrinter = printer  # type: ignore[misc]
    for module in _HYPOTHESIS:
        module.BUFFER_SIZE = buffer_size  # type: ignore[attr-defined]


_hypothesis_as(_ORIGINAL)


@pytest.fixture(scope="module", autouse=True)
def schemathesis_hypothesis() -> Iterator[None]:
    _hypothesis_as(_PATCHED)
    try:
        yield
    finally:
        _hypothesis_as(_ORIGINAL)


@schema.parametrize()
def test_the_server_answers_as_its_document_says(case: Any, http: requests.Session) -> None:
    case.call_and_validate(session=http)


# -- the happy paths, held to the same document -------------------------------------------


def sign(body: bytes) -> str:
    stamp = int(time.time())
    digest = hmac.new(WEBHOOK_SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


@pytest.fixture
async def invoice(server: ServeProcess, pg_pool: asyncpg.Pool) -> str:
    """An unpaid invoice of alice's (the app's tables exist once ``serve`` has migrated)."""
    invoice_id = f"inv_{uuid.uuid4().hex[:10]}"
    await pg_pool.execute(
        """INSERT INTO billing_invoices (id, owner_id, tenant_id, amount, currency)
           VALUES ($1, 'alice', 't1', $2, 'eur')""",
        invoice_id,
        Decimal("25.00"),
    )
    return invoice_id


def test_success_answers_match_the_document(
    server: ServeProcess, invoice: str, http: requests.Session
) -> None:
    schema = schemathesis.openapi.from_url(server.url + OPENAPI_PATH)

    def send(path: str, method: str, expected: int, **parts: Any) -> Any:
        case = schema[path][method].Case(**parts)
        response = case.call_and_validate(base_url=server.url, session=http, checks=CHECKS, timeout=30)
        assert response.status_code == expected, response.text
        return response.json()

    capture = {"invoiceId": invoice, "amount": "25.00", "currency": "EUR", "paymentMethodId": "pm_card_visa"}
    keyed = {**bearer(), "Idempotency-Key": f"pay-{invoice}"}
    paid = send("/ops/billing.capturePayment", "POST", 200, body=capture, headers=keyed)
    assert paid["output"]["status"] == "succeeded"
    again = send("/ops/billing.capturePayment", "POST", 200, body=capture, headers=keyed)
    assert again["output"] == paid["output"]
    send("/ops/billing.capturePayment", "POST", 409, body={**capture, "amount": "1"}, headers=keyed)
    send("/ops/billing.capturePayment", "POST", 422, body=capture, headers=bearer())  # ALREADY_PAID
    run = send("/ops/runs/{id}", "GET", 200, path_parameters={"id": paid["commandId"]}, headers=bearer())
    assert run["status"] == "succeeded" and run["result"]["output"] == paid["output"]
    send("/ops/runs/{id}", "GET", 404, path_parameters={"id": paid["commandId"]}, headers=bearer("bob"))

    refund = {"invoiceId": invoice, "amount": "5"}
    later = {**bearer(), "Prefer": "respond-async"}
    accepted = send("/ops/billing.refundPayment", "POST", 202, body=refund, headers=later)
    deadline = time.monotonic() + 30
    while True:
        run_id = {"id": accepted["commandId"]}
        shown = send("/ops/runs/{id}", "GET", 200, path_parameters=run_id, headers=bearer())
        if shown["status"] not in ("pending", "running") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert shown["status"] == "succeeded", shown

    # a webhook is signed over its exact bytes: sent as they are, its answer checked the same way
    event = {
        "id": f"evt_{uuid.uuid4().hex[:12]}",
        "object": "event",
        "type": "payment_intent.succeeded",
        "data": {"object": {"id": "pi_x", "object": "payment_intent", "metadata": {"invoice_id": invoice}}},
    }
    body = orjson.dumps(event)
    hook = {"Stripe-Signature": sign(body), "Content-Type": "application/json"}
    case = schema["/webhooks/{provider}"]["POST"].Case(path_parameters={"provider": "stripe"}, body=event)
    for duplicate in (False, True):
        response = http.post(f"{server.url}/webhooks/stripe", data=body, headers=hook, timeout=30)
        case.validate_response(response, checks=CHECKS)
        assert response.status_code == 200, response.text
        assert response.json().get("duplicate", False) is duplicate
