"""``runner.client.Result``: what ``call`` and ``results`` give, typed, and still the event."""

from __future__ import annotations

from runner.client import Result

EVENT = {
    "type": "billing.capturePayment.result",
    "id": "r1",
    "causationid": "cmd-1",
    "correlationid": "flow-1",
    "data": {"status": "failed", "error": {"code": "CARD_DECLINED", "message": "declined"}},
}


def test_a_result_names_its_outcome_and_command() -> None:
    result = Result(EVENT)
    assert (result.status, result.succeeded, result.error_code) == ("failed", False, "CARD_DECLINED")
    assert result.output is None and result.error == {"code": "CARD_DECLINED", "message": "declined"}
    assert (result.command_id, result.correlation_id, result.op) == (
        "cmd-1",
        "flow-1",
        "billing.capturePayment",
    )
    assert "CARD_DECLINED" not in repr(result) and "failed" in repr(result)


def test_a_result_is_still_the_event_as_received() -> None:
    result = Result(EVENT)
    assert result["data"]["status"] == "failed" and dict(result) == EVENT and len(result) == len(EVENT)
    succeeded = Result({"type": "x.result", "data": {"status": "succeeded", "output": {"n": 1}}})
    assert succeeded.succeeded and succeeded.output == {"n": 1} and succeeded.error is None


def test_a_result_of_odd_shape_does_not_raise() -> None:
    odd = Result({"data": "not an object"})
    assert (odd.status, odd.output, odd.error, odd.error_code, odd.command_id) == ("", None, None, None, "")
