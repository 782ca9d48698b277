"""Every event the e2e tests make the system produce is checked against its published JSON Schema
(docs/schemas) once the e2e tests are done: the topics are read from where they ended before the
first e2e test to where they end after the last. Records the services published also carry the
CloudEvents Kafka binding's `content-type` header and a `traceparent` header equal to the
envelope's. The raw input topics hold what the tests sent as outside systems, so they are skipped."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator

import jsonschema
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared import schemas
from shared.events import ALL_TOPICS, CONTENT_TYPE, TOPIC_ACTIVITIES_RAW, TOPIC_SUBMISSIONS_RAW

CHECKED_TOPICS = tuple(t for t in ALL_TOPICS if t not in (TOPIC_SUBMISSIONS_RAW, TOPIC_ACTIVITIES_RAW))


async def _ends(consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
    await consumer._client.force_metadata_update()  # noqa: SLF001 - topics may be new
    tps = [TopicPartition(t, p) for t in CHECKED_TOPICS for p in sorted(consumer.partitions_for_topic(t) or ())]
    return await consumer.end_offsets(tps) if tps else {}


def problems_of(record) -> list[str]:
    """What is wrong with one published record (empty when nothing is)."""
    where = f"{record.topic}:{record.partition}:{record.offset}"
    try:
        event = json.loads(record.value)
    except (TypeError, ValueError):
        return [f"{where}: not JSON"]
    event_type = event.get("type") if isinstance(event, dict) else None
    if event_type not in schemas.event_types():
        return [f"{where}: unknown event type {event_type!r}"]
    checker = jsonschema.Draft7Validator(schemas.event_schema(event_type), format_checker=jsonschema.FormatChecker())
    out = [f"{where} {event_type}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
           for e in checker.iter_errors(event)]
    headers = dict(record.headers or ())
    if headers.get("content-type") != CONTENT_TYPE:
        out.append(f"{where} {event_type}: content-type header {headers.get('content-type')!r}")
    if "traceparent" not in event or headers.get("traceparent") != event["traceparent"].encode():
        out.append(f"{where} {event_type}: traceparent header {headers.get('traceparent')!r}, "
                   f"envelope {event.get('traceparent')!r}")
    return out


@pytest.fixture(scope="package", autouse=True)
async def every_event_matches_its_schema(kafka_bootstrap: str) -> AsyncIterator[dict[str, int]]:
    """Yields the per-type count of what was checked (filled in at the end)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    checked: dict[str, int] = {}
    try:
        starts = await _ends(consumer)
        yield checked
        ends = await _ends(consumer)
        todo = {tp: end for tp, end in ends.items() if end > starts.get(tp, 0)}
        problems: list[str] = []
        if todo:
            consumer.assign(list(todo))
            for tp in todo:
                consumer.seek(tp, starts.get(tp, 0))
            while todo:
                batch = await consumer.getmany(*todo, timeout_ms=1000)
                if not batch:
                    problems.append(f"could not read {sorted(map(str, todo))} to their ends")
                    break
                for tp, records in batch.items():
                    for record in records:
                        if record.offset < todo.get(tp, 0):
                            problems += problems_of(record)
                            event_type = json.loads(record.value).get("type", "?") if record.value else "?"
                            checked[event_type] = checked.get(event_type, 0) + 1
                    if records and records[-1].offset + 1 >= todo.get(tp, 0):
                        todo.pop(tp, None)
        print(f"\nschema-checked e2e events: {dict(sorted(checked.items()))}")
        assert not problems, f"{len(problems)} published records break the contract:\n" + "\n".join(problems[:50])
    finally:
        await consumer.stop()
