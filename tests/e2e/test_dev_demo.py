"""``oprunner dev --demo`` as a new user runs it: everything starts, each step as expected."""

from __future__ import annotations

from tests.e2e.test_cli_errors import oprunner


def test_dev_demo_runs_every_step_and_exits_zero() -> None:
    result = oprunner("dev", "--demo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 of 7 steps as expected" in result.stdout
    for step in (
        "capture",
        "same capture again",
        "invalid amount",
        "someone else's invoice",
        "declined card",
        "partial refund",
        "signed Stripe webhook",
    ):
        assert step in result.stdout
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
