"""The CLI as a user meets it: every startup problem is one clear line and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from infra.devservices import free_port
from tests.support import ROOT, SECRET


def oprunner(*args: str, cwd: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPRUNNER_")}
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        env={**clean, "OPRUNNER_JWT_SECRET": SECRET, **env},
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )


def _one_line_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("oprunner: "), result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (("serve",), {}, "OPRUNNER_DATABASE_URL is not set"),
        (
            ("serve",),
            {"OPRUNNER_DATABASE_URL": "postgresql://x@127.0.0.1:{port}/x"},
            "cannot reach the database",
        ),
        (
            ("migrate",),
            {"OPRUNNER_DATABASE_URL": "postgresql://x@127.0.0.1:{port}/x"},
            "cannot reach the database",
        ),
        (("serve", "nope:registry"), {}, "cannot import 'nope'"),
        (("serve", "runner:Model"), {}, "is not an App or an OperationRegistry"),
        (
            ("serve",),
            {"OPRUNNER_JWT_SECRET": "", "OPRUNNER_DATABASE_URL": "postgresql://x@h/x"},
            "OPRUNNER_JWT_SECRET",
        ),
        (
            ("serve",),
            {"OPRUNNER_MAX_IN_FLIGHT": "zero"},
            "bad setting OPRUNNER_MAX_IN_FLIGHT: must be a whole number",
        ),
        # weak or published secrets are refused before anything is reached
        (("serve",), {"OPRUNNER_JWT_SECRET": "x"}, "OPRUNNER_JWT_SECRET must be at least 32 bytes"),
        (
            ("serve",),
            {"OPRUNNER_JWT_SECRET": "oprunner-dev-secret-not-for-production-0123456789"},
            "OPRUNNER_JWT_SECRET is the published development secret",
        ),
        (
            ("serve",),
            {"OPRUNNER_COMMAND_TOKEN_SECRET": "short"},
            "OPRUNNER_COMMAND_TOKEN_SECRET must be at least 32 bytes",
        ),
        (("serve",), {"OPRUNNER_SERVICE_TOKEN": "eyJ.x.y"}, "OPRUNNER_SERVICE_TOKEN is no longer used"),
        (
            ("serve",),
            {"OPRUNNER_RUN_RETENTION_DAYS": "1"},  # tokens live 7 days by default
            "OPRUNNER_COMMAND_TOKEN_TTL must not outlast OPRUNNER_RUN_RETENTION_DAYS",
        ),
        (("specs", "show", "billing.nope"), {}, "unknown operation"),
        (("serve", "--workers", "0"), {}, "--workers must be at least 1"),
        (("serve", "--workers", "many"), {}, "--workers must be a number or 'auto'"),
        (("serve", "nope:registry", "--workers", "2"), {}, "cannot import 'nope'"),
        (("serve",), {"OPRUNNER_LOG_LEVEL": "loud"}, "bad setting OPRUNNER_LOG_LEVEL"),
        # the producer's mistakes are caught before anything connects (no broker runs here)
        (
            ("send", "billing.nope", "{}", "--token", "t"),
            {},
            "unknown operation 'billing.nope': not in handlers:app",
        ),
        (("call", "billing.nope", "{}", "--token", "t"), {}, "unknown operation 'billing.nope'"),
        (
            ("send", "billing.capturePayment", '{"amount": "-1"}', "--token", "t"),
            {},
            "invalid input: invoiceId: required; amount: must be greater than 0",
        ),
        (("send", "billing.capturePayment", "not json", "--token", "t"), {}, "INPUT"),
    ],
)
def test_startup_problems_are_one_line(args: tuple[str, ...], env: dict[str, str], expected: str) -> None:
    port = str(free_port())
    _one_line_error(oprunner(*args, **{k: v.replace("{port}", port) for k, v in env.items()}), expected)


def test_unreachable_broker_is_one_line(database_url: str) -> None:
    result = oprunner(
        "serve",
        "tests.apps.ledger:registry",
        OPRUNNER_DATABASE_URL=database_url,
        OPRUNNER_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}",
    )
    _one_line_error(result, "cannot reach Kafka")


@pytest.mark.parametrize(
    "args",
    [
        ("tail", "results"),
        ("dlq", "replay"),
        (
            "send",
            "billing.capturePayment",
            '{"invoiceId": "i", "amount": "1", "currency": "eur", "paymentMethodId": "pm"}',
            "--token",
            "t",
        ),
    ],
)
def test_an_unreachable_broker_is_one_line_for_the_producer_commands(args: tuple[str, ...]) -> None:
    result = oprunner(*args, OPRUNNER_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}")
    _one_line_error(result, "cannot reach Kafka at 127.0.0.1:")
    assert "Unclosed" not in result.stderr and "Unable connect" not in result.stderr


def test_migrate_applies_and_is_idempotent(database_url: str) -> None:
    for _ in range(2):
        result = oprunner("migrate", OPRUNNER_DATABASE_URL=database_url)
        assert result.returncode == 0 and "up to date" in result.stdout


def test_workers_that_cannot_reach_the_database_fail_once() -> None:
    """The first worker starts alone: a bad configuration is one worker's one line, and the
    supervisor exits with its code instead of starting the others or restarting it."""
    result = oprunner(
        "serve",
        "tests.apps.ledger:registry",
        "--workers",
        "3",
        OPRUNNER_DATABASE_URL=f"postgresql://x@127.0.0.1:{free_port()}/x",
        OPRUNNER_HTTP_PORT=str(free_port()),
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("oprunner: ")]
    assert len(errors) == 1 and "cannot reach the database" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert "worker 1 started" not in result.stderr + result.stdout


async def test_call_without_a_result_in_time_says_so(kafka_bootstrap: str, topics: Any) -> None:
    """A reachable broker and nobody serving: a timeout, not "cannot reach Kafka"."""
    result = oprunner(
        "call",
        "ledger.credit",
        '{"accountId": "a1", "amount": "1"}',
        "--token",
        "t",
        "--timeout",
        "2",
        "--app",
        "tests.apps.ledger:registry",
        OPRUNNER_KAFKA_BOOTSTRAP=kafka_bootstrap,
        OPRUNNER_COMMANDS_TOPIC=topics.commands,
        OPRUNNER_RESULTS_TOPIC=topics.results,
    )
    _one_line_error(result, "no result for ledger.credit within 2.0s")
