"""``oprunner tail`` and ``oprunner dlq replay``: reading the runner's topics."""

from __future__ import annotations

import json
from typing import Any

import typer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from infra.kafka.deadletters import replay_headers, sender_of

from ..client import PacedFetch, assign_whole_topic
from ..observability import escape_controls
from ..settings import Settings


def _text(value: Any) -> str:
    """A field of someone else's message as one line of inert text: control characters
    (ANSI and OSC sequences, BEL, CR, LF, U+2028, bidi overrides...) written out as visible
    escapes (``\\x1b``), other Unicode left readable."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    elif not isinstance(value, str):
        try:
            value = str(value)
        except (ValueError, RecursionError):  # an int past the digit limit, a nesting too deep
            value = f"({type(value).__name__})"
    return escape_controls(value)


def _get(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None


def _row(stream: str, message: Any) -> str:
    """One table row for a message of ``stream``; every field it shows is escaped."""
    if stream == "dlq":
        headers = {_text(k): _text(v) for k, v in (message.headers or ())}
        where = "/".join(headers.get(f"dlq-{part}", "?") for part in ("topic", "partition", "offset"))
        return f"{where:32} {headers.get('dlq-reason', '')}"
    try:
        event = json.loads(message.value)
    except (ValueError, TypeError, RecursionError):  # not JSON, a tombstone, nested too deep
        return f"(not JSON: {len(message.value or b'')} bytes)"
    if not isinstance(event, dict):
        return f"(not a JSON object: {len(message.value or b'')} bytes)"
    data = _get(event, "data")
    error = _get(data, "error")
    code = _text(error if isinstance(error, str) else _get(error, "code"))
    time, status = _text(event.get("time")), _text(_get(data, "status"))
    if stream == "audit":
        actor = _text(_get(_get(data, "actor"), "id")) or "-"
        op = _text(_get(data, "op")) or "-"
        decision = _text(_get(data, "decision"))
        return f"{time:24} {op:30} {status:9} {decision:6} {actor:14} {code}"
    kind, cause = _text(event.get("type")), _text(event.get("causationid"))
    return f"{time:24} {kind:38} {status:9} {cause:38} {code}"


def _json_line(message: Any) -> str:
    """A message as one line of JSON for ``--json``: ASCII only (every other character,
    controls included, a JSON escape), or ``{"raw": ...}`` for a value that is not JSON."""
    value = message.value or b""
    try:
        return json.dumps(json.loads(value))
    except (ValueError, TypeError, RecursionError):
        return json.dumps({"raw": bytes(value).decode("utf-8", "replace")})


HEADERS = {
    "results": f"{'time':24} {'type':38} {'status':9} {'command':38} error",
    "audit": f"{'time':24} {'operation':30} {'status':9} {'decision':6} {'actor':14} error",
    "dlq": f"{'source':32} reason",
}


async def follow(
    bootstrap: str,
    topic: str,
    stream: str,
    as_json: bool,
    from_beginning: bool,
    limit: int | None,
    fetch_interval_ms: int = 0,
) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",  # for partitions added later
    )
    try:
        await consumer.start()  # a failed start is stopped too: nothing left open
        tps = await assign_whole_topic(consumer, topic)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        if not as_json:
            typer.echo(HEADERS[stream])
        seen = 0
        paced = PacedFetch(consumer, fetch_interval_ms)
        while True:
            fetched = await paced.getmany(timeout_ms=1000)
            for message in (m for messages in fetched.values() for m in messages):
                typer.echo(_json_line(message) if as_json else _row(stream, message))
                seen += 1
                if limit is not None and seen >= limit:
                    return
    finally:
        await consumer.stop()


async def replay_dlq(settings: Settings, *, limit: int, dry_run: bool, token: str | None = None) -> int:
    """Replay what is in the DLQ now (up to its end offsets at the start), at most ``limit``.

    Stopping at the start's end offsets matters: a replayed message that is still malformed
    is dead-lettered again, and must not be replayed again by this same run. Dead letters
    keep no token, only who sent it (``dlq-actor``): ``token`` goes back only on the commands
    of the same sender (subject and tenant), so an operator's token never runs what someone
    else sent; the rest are replayed without one (only public operations then succeed)."""
    owner = _claims_of(token) if token is not None else None
    consumer = AIOKafkaConsumer(
        settings.dlq_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"{settings.group_id}-dlq-replay",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.session_timeout_ms,
    )
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    count = 0
    try:
        await consumer.start()  # a failed start is stopped too (finally): nothing left open
        await producer.start()
        # start waited for the subscribed topic's metadata: its partitions are known here
        partitions = consumer.partitions_for_topic(settings.dlq_topic) or set()
        end = await consumer.end_offsets([TopicPartition(settings.dlq_topic, p) for p in partitions])
        done: set[TopicPartition] = set()
        while count < limit and len(done) < len(end):
            batches = await consumer.getmany(timeout_ms=3000, max_records=limit - count)
            if not batches:
                break
            for tp, messages in batches.items():
                for message in messages:
                    if message.offset >= end.get(tp, 0) or count >= limit:
                        done.add(tp)
                        break
                    headers = replay_headers(
                        message.headers or (), sender_of(message.headers or ()), token, owner
                    )
                    if dry_run:
                        typer.echo(_row("dlq", message))
                    else:
                        await producer.send_and_wait(
                            settings.commands_topic, message.value, key=message.key, headers=headers
                        )
                        await consumer.commit({tp: message.offset + 1})
                    count += 1
                    if message.offset + 1 >= end.get(tp, 0):
                        done.add(tp)
            done |= {tp for tp, offset in end.items() if offset == 0}
    finally:
        await producer.stop()
        await consumer.stop()
    return count


def _claims_of(token: str) -> tuple[Any, Any, Any] | None:
    """``(sub, tenant, kind)`` of a token, unverified: the runner verifies it when the command runs;
    here it only says whose dead letters it may go back on."""
    import jwt

    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    return claims.get("sub"), claims.get("tenant"), claims.get("kind", "user")
