"""``--workers``: how many, read the way uvicorn and gunicorn users expect."""

from __future__ import annotations

import os

import pytest

from runner.cli.workers import worker_count


def test_a_number_is_that_many() -> None:
    assert worker_count("1") == 1 and worker_count("4") == 4


def test_auto_is_the_cores_this_process_may_use() -> None:
    assert worker_count("auto") == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("value", "message"), [("0", "at least 1"), ("-2", "at least 1"), ("two", "'auto'")])
def test_anything_else_is_refused(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        worker_count(value)
