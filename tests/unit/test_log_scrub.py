"""Log lines, text and JSON alike, are scrubbed: exception messages (which may quote input)
never appear, and no value can end a line, forge another one or drive a terminal."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from runner.observability import JsonFormatter, TextFormatter, configure_logging, escape_controls

SECRET = "4242-4242-4242-4242"
# C0, DEL, C1, line/paragraph separators, bidi embeddings/overrides and isolates
RAW_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
HOSTILE = (
    "a\nFAKE 2024-01-01 00:00:00,000 INFO forged: line"
    "\r\x1b[2J\x1b]52;c;c2VjcmV0\x07\x00\x7f\x85\x9b"
    "\u2028\u2029\u202aLRE\u202bRLE\u202cPDF\u202dLRO\u202eRLO\u2066LRI\u2067RLI\u2068FSI\u2069PDI"
    "\v\f\x1c\x1d\x1e"
)

FORMATTERS = [pytest.param(TextFormatter(), id="text"), pytest.param(JsonFormatter(), id="json")]


class Boom(Exception):
    pass


def _raise_with_secret() -> None:
    raise Boom(f"card {SECRET} was refused\n{HOSTILE}")


def _exc_info() -> Any:
    try:
        try:
            raise KeyError(f"cause {SECRET}")
        except KeyError as cause:
            raise ValueError(f"context {SECRET}") from cause
    except ValueError:
        try:
            _raise_with_secret()
        except Boom:
            return sys.exc_info()
    raise AssertionError("unreachable")


def _record(msg: Any = "handler said %s", args: Any = (HOSTILE,), **kw: Any) -> logging.LogRecord:
    record = logging.LogRecord(
        "oprunner.op.docs.pay", logging.ERROR, __file__, 1, msg, args, kw.pop("exc_info", None)
    )
    for key, value in kw.items():
        setattr(record, key, value)
    return record


def _assert_one_clean_line(line: str) -> None:
    assert "\n" not in line and "\r" not in line
    assert len(line.splitlines()) == 1  # splitlines also breaks at \v \f \x1c-\x1e \x85 U+2028/9
    assert not RAW_CONTROL.search(line), RAW_CONTROL.findall(line)
    assert SECRET not in line
    line.encode("utf-8")  # writable, no lone surrogate


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_escape_controls_writes_every_control_out_and_keeps_readable_text() -> None:
    assert escape_controls("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert escape_controls("\x1b[31mred\x07") == "\\x1b[31mred\\x07"
    assert escape_controls("\x00\x7f\x85\x9f") == "\\x00\\x7f\\x85\\x9f"
    assert escape_controls("\u2028\u2029") == "\\u2028\\u2029"
    assert escape_controls("".join(map(chr, range(0x202A, 0x202F)))) == "\\u202a\\u202b\\u202c\\u202d\\u202e"
    assert escape_controls("".join(map(chr, range(0x2066, 0x206A)))) == "\\u2066\\u2067\\u2068\\u2069"
    assert escape_controls("\ud800") == "\\ud800"
    readable = "café naïve Ελληνικά 日本語 한국어 العربية 😀👍🏽 ½ ~ \\ \" '"
    assert escape_controls(readable) == readable
    assert not RAW_CONTROL.search(escape_controls(HOSTILE))


@pytest.mark.parametrize("formatter", FORMATTERS)
def test_an_exception_is_logged_by_type_and_frames_never_by_message(formatter: logging.Formatter) -> None:
    line = formatter.format(_record(exc_info=_exc_info()))
    _assert_one_clean_line(line)
    assert "Boom" in line
    assert "_raise_with_secret" in line  # the traceback's frames are kept
    # (the messages of the exception and those it was raised from all hold SECRET)


@pytest.mark.parametrize("formatter", FORMATTERS)
@pytest.mark.parametrize(
    ("msg", "args"),
    [
        ("store unavailable (%s)", (Boom(SECRET),)),
        ("could not publish: %r", (Boom(SECRET),)),
        ("failures %s", ([Boom(SECRET), (Boom(SECRET),)],)),
        ("by name %(error)s %(n)d", ({"error": Boom(SECRET), "n": 3},)),
        (Boom(SECRET), ()),
    ],
    ids=["str", "repr", "nested", "mapping", "as-message"],
)
def test_exceptions_among_the_arguments_are_logged_by_type(
    formatter: logging.Formatter, msg: Any, args: Any
) -> None:
    line = formatter.format(_record(msg, args))
    _assert_one_clean_line(line)
    assert "Boom" in line


@pytest.mark.parametrize("formatter", FORMATTERS)
def test_arguments_that_do_not_fit_the_format_are_not_logged(formatter: logging.Formatter) -> None:
    line = formatter.format(_record("attempt %d of %d", (SECRET,)))
    _assert_one_clean_line(line)
    assert "attempt %d of %d" in line


@pytest.mark.parametrize("formatter", FORMATTERS)
def test_no_field_can_break_the_line(formatter: logging.Formatter) -> None:
    record = _record(
        f"msg {HOSTILE}",
        (),
        exc_info=_exc_info(),
        command_id=HOSTILE,
        correlation_id=f"c\n{HOSTILE}",
        op=Boom(SECRET),
        odd={"nested": [Boom(SECRET), HOSTILE]},
        surrogate="\ud800x",
        huge=10**5000,  # past what JSON encoders and str() take
    )
    record.name = f"oprunner.{HOSTILE}"
    record.levelname = f"ERROR{HOSTILE}"
    line = formatter.format(record)
    _assert_one_clean_line(line)


@pytest.mark.parametrize("formatter", FORMATTERS)
def test_stack_info_is_logged_on_the_same_line(formatter: logging.Formatter) -> None:
    record = _record("where am I", (), stack_info=f"Stack (most recent call last):\n  File x\n{HOSTILE}")
    record.stack_info = f"Stack (most recent call last):\n  File x\n{HOSTILE}"
    line = formatter.format(record)
    _assert_one_clean_line(line)
    assert "Stack (most recent call last):" in line


def test_the_json_line_keeps_the_values_exactly_and_the_ids() -> None:
    record = _record(
        "handler of %s raised", ("docs.pay",), exc_info=_exc_info(), command_id=HOSTILE, op="docs.pay"
    )
    line = JsonFormatter().format(record)
    _assert_one_clean_line(line)
    entry = json.loads(line)
    assert entry["command_id"] == HOSTILE  # escapes only: the value reads back as it was
    assert entry["message"] == "handler of docs.pay raised"
    assert entry["op"] == "docs.pay" and entry["level"] == "error" and entry["error"] == "Boom"
    assert "_raise_with_secret" in entry["stack"]


def test_extra_fields_cannot_replace_the_lines_own() -> None:
    record = _record("real", (), level="debug", error="forged", stack="forged")
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "error" and "error" not in entry and "stack" not in entry


def test_the_text_line_reads_as_before_with_the_fields_after() -> None:
    record = _record(
        "handler of %s raised", ("docs.pay",), exc_info=_exc_info(), command_id="cmd 1", op="docs.pay"
    )
    line = TextFormatter().format(record)
    _assert_one_clean_line(line)
    assert re.match(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ERROR oprunner\.op\.docs\.pay: handler of docs\.pay raised ",
        line,
    )
    assert ' command_id="cmd 1" op=docs.pay error=Boom stack="  File \\"' in line
    assert "\\n" in line  # the traceback's newlines, written out


def test_a_value_cannot_forge_a_field_of_the_text_line() -> None:
    line = TextFormatter().format(_record("m", (), command_id='x" op="forged', op="real"))
    assert ' command_id="x\\" op=\\"forged" op=real' in line


@pytest.mark.parametrize(("fmt", "kind"), [("text", TextFormatter), ("json", JsonFormatter)])
def test_configure_logging_scrubs_both_formats(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str], fmt: str, kind: type
) -> None:
    configure_logging("INFO", fmt)
    [handler] = root_logger.handlers
    assert isinstance(handler.formatter, kind)
    stream = io.StringIO()
    handler.setStream(stream)  # type: ignore[attr-defined]
    log = logging.getLogger("oprunner.test")
    try:
        _raise_with_secret()
    except Boom as exc:
        log.exception("handler raised %s", exc, extra={"command_id": HOSTILE})
    log.warning("store unavailable (%s); retrying %s", Boom(SECRET), HOSTILE)
    lines = stream.getvalue().split("\n")
    assert lines[-1] == "" and len(lines) == 3
    for line in lines[:2]:
        _assert_one_clean_line(line)


def test_a_record_that_cannot_be_written_is_reported_without_its_arguments(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError("disk full")

    configure_logging("INFO", "text")
    root_logger.handlers[0].setStream(Broken())  # type: ignore[attr-defined]
    logging.getLogger("oprunner.test").error("charging %s", SECRET)
    err = capsys.readouterr().err
    assert SECRET not in err and "OSError" in err
    assert len(err.splitlines()) == 1
