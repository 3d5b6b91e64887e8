"""``oprunner tail`` and ``oprunner dlq replay``: reading the runner's topics."""

from __future__ import annotations

import json
from typing import Any

import typer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ..settings import Settings


def _row(stream: str, message: Any) -> str:
    if stream == "dlq":
        headers = {k: v.decode("utf-8", "replace") for k, v in (message.headers or ())}
        where = "/".join(headers.get(f"dlq-{part}", "?") for part in ("topic", "partition", "offset"))
        return f"{where:32} {headers.get('dlq-reason', '')}"
    try:
        event = json.loads(message.value)
    except ValueError:
        return f"(not JSON: {len(message.value or b'')} bytes)"
    data = event.get("data") or {}
    error = data.get("error")
    code = error if isinstance(error, str) else (error or {}).get("code", "")
    if stream == "audit":
        actor = (data.get("actor") or {}).get("id") or "-"
        op = data.get("op") or "-"
        decision = data.get("decision", "")
        return f"{event.get('time', ''):24} {op:30} {data.get('status', ''):9} {decision:6} {actor:14} {code}"
    kind, cause = event.get("type", ""), event.get("causationid", "")
    return f"{event.get('time', ''):24} {kind:38} {data.get('status', ''):9} {cause:38} {code}"


HEADERS = {
    "results": f"{'time':24} {'type':38} {'status':9} {'command':38} error",
    "audit": f"{'time':24} {'operation':30} {'status':9} {'decision':6} {'actor':14} error",
    "dlq": f"{'source':32} reason",
}


async def follow(
    bootstrap: str, topic: str, stream: str, as_json: bool, from_beginning: bool, limit: int | None
) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or {0}
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        if not as_json:
            typer.echo(HEADERS[stream])
        seen = 0
        async for message in consumer:
            if as_json:
                value = message.value or b""
                try:
                    typer.echo(json.dumps(json.loads(value)))
                except ValueError:
                    typer.echo(json.dumps({"raw": value.decode("utf-8", "replace")}))
            else:
                typer.echo(_row(stream, message))
            seen += 1
            if limit is not None and seen >= limit:
                return
    finally:
        await consumer.stop()


async def replay_dlq(settings: Settings, *, limit: int, dry_run: bool) -> int:
    """Replay what is in the DLQ now (up to its end offsets at the start), at most ``limit``.

    Stopping at the start's end offsets matters: a replayed message that is still malformed
    is dead-lettered again, and must not be replayed again by this same run."""
    consumer = AIOKafkaConsumer(
        settings.dlq_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"{settings.group_id}-dlq-replay",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.session_timeout_ms,
    )
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await consumer.start()
    await producer.start()
    count = 0
    try:
        partitions = consumer.partitions_for_topic(settings.dlq_topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
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
                    headers = [(k, v) for k, v in (message.headers or ()) if not k.startswith("dlq-")]
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
