"""``oprunner tail`` and ``oprunner dlq replay --dry-run`` print what others wrote to Kafka:
every control character in it reaches the terminal as a visible escape, never raw."""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from runner.settings import Settings

tail = importlib.import_module("runner.cli.tail")  # ``runner.cli.tail`` is also the command

RAW_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
CLEAR = "\x1b[2J\x1b[H"  # clear the screen
CLIPBOARD = "\x1b]52;c;Y3VybCBldmlsIHwgc2g=\x07"  # OSC 52: write the operator's clipboard
OVERWRITE = "ok\rFAKE succeeded"
HOSTILE = [
    CLEAR,
    CLIPBOARD,
    OVERWRITE,
    "two\nlines",
    "bell\x07",
    "sep\u2028ara\u2029tors",
    "\u202egnp.exe",
    "\u2066iso\u2069",
    "c1\x9b31m\x85",
    "del\x7f",
    "nul\x00",
    "lone \ud800 surrogate",
]
READABLE = "café 日本語 😀 Ελληνικά"


@dataclass
class Message:
    value: bytes | None = None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    key: bytes | None = None
    topic: str = "ops.dlq"
    partition: int = 0
    offset: int = 0


def _event(text: str) -> Message:
    body = {
        "type": f"ops.result.{text}",
        "time": f"2024-01-01T00:00:00Z{text}",
        "causationid": f"cmd-{text}",
        "data": {
            "status": f"failed{text}",
            "error": {"code": f"HANDLER_ERROR{text}", "message": text},
            "op": f"docs.pay{text}",
            "decision": f"deny{text}",
            "actor": {"id": f"user{text}"},
        },
    }
    return Message(json.dumps(body).encode())  # ASCII JSON: lone surrogates survive as \ud800


def _dlq(text: str) -> Message:
    headers = [
        ("dlq-topic", f"ops.commands{text}"),
        ("dlq-partition", f"0{text}"),
        ("dlq-offset", f"7{text}"),
        ("dlq-reason", f"not JSON: {text}"),
    ]
    return Message(b"{", [(k, v.encode("utf-8", "surrogatepass")) for k, v in headers])


def _assert_clean(line: str) -> None:
    assert len(line.splitlines()) == 1
    assert not RAW_CONTROL.search(line), RAW_CONTROL.findall(line)
    line.encode("utf-8")  # the terminal can be written to


@pytest.mark.parametrize("text", HOSTILE)
@pytest.mark.parametrize("stream", ["results", "audit"])
def test_event_rows_escape_every_control_character(stream: str, text: str) -> None:
    line = tail._row(stream, _event(text))
    _assert_clean(line)
    escaped = tail._text(text)
    assert escaped in line and escaped != text


@pytest.mark.parametrize("text", HOSTILE)
def test_dlq_rows_escape_every_header_value(text: str) -> None:
    line = tail._row("dlq", _dlq(text))
    _assert_clean(line)
    assert line.startswith("ops.commands")
    assert "\\x" in line or "\\u" in line or "\\n" in line or "\\r" in line or "\ufffd" in line


def test_escapes_are_visible_and_readable_text_is_left_alone() -> None:
    line = tail._row("results", _event(f"{CLEAR}{CLIPBOARD}{OVERWRITE}{READABLE}"))
    assert "\\x1b[2J\\x1b[H" in line
    assert "\\x1b]52;c;Y3VybCBldmlsIHwgc2g=\\x07" in line
    assert "ok\\rFAKE succeeded" in line
    assert READABLE in line
    assert tail._text("\u2028\u202e\u2066") == "\\u2028\\u202e\\u2066"
    assert (
        tail._row("audit", _event(READABLE)).count(READABLE) == 6
    )  # time, op, status, decision, actor, code


@pytest.mark.parametrize(
    "value",
    [
        None,  # a tombstone
        b"",
        b"\xff\xfe not utf-8",
        b"[1, 2]",
        b'"a string"',
        pytest.param(b"[" * 100_000, id="nested-too-deep"),
        pytest.param(b"1" * 5000, id="too-many-digits"),
        json.dumps({"type": 7, "time": {"a": ["\x1b"]}, "data": "oops"}).encode(),
        json.dumps({"time": [], "data": {"error": ["\x1b[31m"], "actor": "x", "status": 3}}).encode(),
        json.dumps({"data": {"error": {"code": {"nested": "\x1b]0;title\x07"}}}}).encode(),
    ],
)
@pytest.mark.parametrize("stream", ["results", "audit"])
def test_odd_messages_print_a_row_instead_of_stopping_tail(stream: str, value: bytes | None) -> None:
    _assert_clean(tail._row(stream, Message(value)))


def test_dlq_rows_survive_missing_and_null_headers() -> None:
    line = tail._row("dlq", Message(b"", [("dlq-topic", None), ("x\x1b[31m", b"\x1b")]))
    _assert_clean(line)
    assert line.startswith("/?/?")


@pytest.mark.parametrize("text", [*HOSTILE, READABLE])
def test_json_lines_are_ascii_one_line_and_read_back(text: str) -> None:
    message = _event(text)
    line = tail._json_line(message)
    _assert_clean(line)
    assert line.isascii()
    assert json.loads(line) == json.loads(message.value or b"")


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"\x1b[2J not json\n\r",
        pytest.param(b"[" * 100_000, id="nested-too-deep"),
        b"\xff\x1b]52;c;eA==\x07",
    ],
)
def test_json_lines_of_non_json_are_raw_and_escaped(value: bytes | None) -> None:
    line = tail._json_line(Message(value))
    _assert_clean(line)
    assert line.isascii() and "raw" in json.loads(line)


class FakeConsumer:
    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages
        self.committed: list[Any] = []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    def assign(self, tps: Any) -> None:
        pass

    async def topics(self) -> set[str]:
        return {"ops.results"}

    def subscribe(self, topics: list[str]) -> None:
        pass

    def assignment(self) -> set[Any]:
        from aiokafka import TopicPartition

        return {TopicPartition("ops.results", 0)}

    async def seek_to_beginning(self, *tps: Any) -> None:
        pass

    async def seek_to_end(self, *tps: Any) -> None:
        pass

    def __aiter__(self) -> Any:
        return self._iterate()

    async def _iterate(self) -> Any:
        for message in self.messages:
            yield message

    async def end_offsets(self, tps: Any) -> dict[Any, int]:
        return {tp: len(self.messages) for tp in tps}

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, list[Message]]:
        from aiokafka import TopicPartition

        batch, self.messages = self.messages, []
        return {TopicPartition("ops.dlq", 0): batch} if batch else {}

    async def commit(self, offsets: Any) -> None:
        self.committed.append(offsets)


class FakeProducer:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sent: list[Any] = []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send_and_wait(self, *args: Any, **kwargs: Any) -> None:
        self.sent.append((args, kwargs))


@pytest.mark.parametrize(
    ("stream", "as_json"), [("results", False), ("audit", False), ("dlq", False), ("results", True)]
)
async def test_tail_prints_one_escaped_line_per_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stream: str, as_json: bool
) -> None:
    messages = [_dlq(t) if stream == "dlq" else _event(t) for t in HOSTILE]
    monkeypatch.setattr(tail, "AIOKafkaConsumer", lambda **kw: FakeConsumer(messages))
    await tail.follow("localhost:9092", "ops.results", stream, as_json, True, len(messages))
    lines = capsys.readouterr().out.split("\n")
    assert lines[-1] == ""
    assert len(lines) - 1 == len(messages) + (0 if as_json else 1)
    for line in lines[:-1]:
        _assert_clean(line)


async def test_dlq_replay_dry_run_prints_escaped_rows(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    messages = [_dlq(t) for t in HOSTILE]
    for offset, message in enumerate(messages):
        message.offset = offset
    producer = FakeProducer()
    monkeypatch.setattr(tail, "AIOKafkaConsumer", lambda *a, **kw: FakeConsumer(messages))
    monkeypatch.setattr(tail, "AIOKafkaProducer", lambda *a, **kw: producer)
    count = await tail.replay_dlq(Settings(), limit=100, dry_run=True)
    assert count == len(HOSTILE) and producer.sent == []
    lines = capsys.readouterr().out.split("\n")
    assert len(lines) - 1 == len(HOSTILE)
    for line in lines[:-1]:
        _assert_clean(line)
