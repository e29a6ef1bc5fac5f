"""Operator commands: lag, status, dead-letter inspection and re-drive."""

from __future__ import annotations

import base64
import json
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

import click

from nearline_rec.kafka_clients import client_kwargs
from nearline_rec.settings import Settings
from nearline_rec.tools.clitools import one_line_errors, settings


def group_lag(s: Settings) -> dict[str, Any]:
    """Lag per user-events partition for the worker group, from the broker, plus group state."""
    from kafka import TopicPartition
    from kafka.admin import KafkaAdminClient, OffsetSpec

    admin = KafkaAdminClient(request_timeout_ms=10_000, **client_kwargs(s.kafka))
    try:
        gid = s.worker.app_id
        topic = s.topics.user_events
        meta = admin.describe_topics([topic])[0]
        if meta.get("error_code"):
            raise click.ClickException(f"topic {topic} not found")
        tps = [TopicPartition(topic, p["partition_index"]) for p in meta["partitions"]]
        end = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in tps})
        start = admin.list_partition_offsets({tp: OffsetSpec.EARLIEST for tp in tps})
        committed = admin.list_group_offsets({gid: tps}).get(gid, {})
        group = admin.describe_groups([gid]).get(gid, {})
    finally:
        admin.close()
    rows = []
    for tp in sorted(tps, key=lambda t: t.partition):
        c = committed.get(tp)
        c_off = c.offset if c is not None and c.offset >= 0 else None
        base = c_off if c_off is not None else start[tp].offset
        rows.append(
            {
                "partition": tp.partition,
                "committed": c_off,
                "end": end[tp].offset,
                "lag": max(0, end[tp].offset - base),
            }
        )
    return {
        "group": gid,
        "topic": topic,
        "state": group.get("group_state", "unknown"),
        "members": len(group.get("members", []) or []),
        "partitions": rows,
        "total_lag": sum(r["lag"] for r in rows),
    }


def format_lag(info: dict[str, Any]) -> str:
    lines = [
        f"group {info['group']} on {info['topic']}: state={info['state']} "
        f"members={info['members']} total lag={info['total_lag']}",
        f"{'partition':>9} {'committed':>12} {'end':>12} {'lag':>10}",
    ]
    for r in info["partitions"]:
        committed = "-" if r["committed"] is None else str(r["committed"])
        lines.append(f"{r['partition']:>9} {committed:>12} {r['end']:>12} {r['lag']:>10}")
    return "\n".join(lines)


@click.command()
@click.option(
    "--watch",
    type=click.FloatRange(0.5),
    default=None,
    help="Refresh every N seconds until interrupted.",
)
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def lag(watch: float | None, as_json: bool) -> None:
    """Consumer lag per user-events partition and the group's state, from the broker."""
    s = settings()
    while True:
        info = group_lag(s)
        text = json.dumps(info) if as_json else format_lag(info)
        if watch:
            click.clear()
            click.echo(time.strftime("%H:%M:%S ") + text)
            time.sleep(watch)
        else:
            click.echo(text)
            return


def worker_url(s: Settings, url: str | None) -> str:
    host = "127.0.0.1" if s.worker.web_host in ("0.0.0.0", "") else s.worker.web_host
    return (url or f"http://{host}:{s.worker.web_port}").rstrip("/")


def http_json(url: str, token: str | None = None) -> dict[str, Any]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data
    except urllib.error.HTTPError as exc:
        raise click.ClickException(f"{url} answered {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise click.ClickException(f"no worker at {url}: {reason}") from None


@click.command()
@click.option("--url", help="Worker base URL (default: from NEARLINE_WORKER__WEB_HOST/PORT).")
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def status(url: str | None, as_json: bool) -> None:
    """A worker's mode, lag per partition, throughput and versions."""
    s = settings()
    token = s.serve.token.get_secret_value() if s.serve.token else None
    st = http_json(worker_url(s, url) + "/status/", token)
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    c = st["counters"]
    click.echo(
        f"worker {st['app_id']}  mode={st['mode']} (override {st['override']})  "
        f"lag={st['lag']}  events/s={st['throughput_eps']}  dirty={st['dirty_users']}"
    )
    click.echo(f"  lag by partition: {st['lag_by_partition']}")
    click.echo(
        f"  events in={c.get('events_in', 0)} applied={c.get('events_applied', 0)} "
        f"lists={c.get('lists_written', 0)} degraded lists={c.get('lists_degraded', 0)} "
        f"dead letters={st['dead_letters']}"
    )
    click.echo(
        f"  catalog {st['items']} items ({st['index']} index), model {st['model_version']},"
        f" embeddings {st['embedding_version']}, redis {'ok' if st['redis_ok'] else 'DOWN'}"
    )
    cal = st.get("calibration") or {}
    if cal.get("recall") is not None:
        p = cal.get("setting")
        knobs = "exact search" if p is None else " ".join(f"{k}={v}" for k, v in p.items())
        at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(cal["measured_at"] or 0))
        click.echo(
            f"  nearest neighbours: measured recall@{cal['k']} {cal['recall']:.3f} (target "
            f"{cal['target_recall']}, {'met' if cal['meets_target'] else 'NOT met'}) on "
            f"{cal['heldout_queries']} held-out queries at {at}; {knobs}; {cal['reason']}"
        )
    elif cal.get("enabled"):
        state = "running" if cal.get("running") else "not yet run"
        click.echo(f"  nearest neighbours: calibration {state} ({st['index']} index)")


@click.command()
@click.option("--topic", help="Dead-letter topic (default: NEARLINE_TOPICS__USER_EVENTS_DLQ).")
@click.option(
    "--limit",
    default=10,
    show_default=True,
    type=click.IntRange(0),
    help="Show the last N dead letters.",
)
@click.option(
    "--redrive",
    is_flag=True,
    help="Produce each dead letter's original bytes back to its source topic, once (a"
    " letter cut for size: the original read back from its source topic).",
)
@click.option("--reason", help="Only dead letters with this reason code.")
@one_line_errors
def dlq(topic: str | None, limit: int, redrive: bool, reason: str | None) -> None:
    """Inspect dead letters (counts by reason, latest samples) or re-drive them after a fix.

    Re-drive uses the consumer group <app_id>-dlq-redrive[-<reason>], so a dead letter is
    re-driven once however often the command runs; only dead letters present when it starts
    are read (one that fails again waits for the next run)."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    from nearline_rec.producer import make_producer

    s = settings()
    topic = topic or s.topics.user_events_dlq
    # progress is kept per reason filter: `--reason X` re-drives each X dead letter once
    group = f"{s.worker.app_id}-dlq-redrive{'-' + reason if reason else ''}" if redrive else None
    consumer = KafkaConsumer(
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **client_kwargs(s.kafka),
    )
    counts: Counter[str] = Counter()
    latest: list[dict[str, Any]] = []
    producer = make_producer(s) if redrive else None
    sent = 0
    skipped: list[dict[str, Any]] = []
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise click.ClickException(f"topic {topic} not found")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        # Only what is there now: a re-driven record that fails again lands on this topic
        # and must wait for the next run, or the command would chase its own tail.
        end = consumer.end_offsets(tps)
        deadline = time.monotonic() + 120
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise click.ClickException(f"timed out reading {topic}")
            for tp, msgs in consumer.poll(timeout_ms=1000).items():
                for msg in msgs:
                    if msg.offset >= end[tp]:
                        continue
                    try:
                        doc = json.loads(msg.value)
                    except ValueError:
                        counts["(unreadable dead letter)"] += 1
                        continue
                    if reason and doc.get("reason") != reason:
                        continue
                    counts[doc.get("reason", "?")] += 1
                    latest = (latest + [doc])[-limit:] if limit else []
                    if producer is not None:
                        original = _original(doc, s)
                        if original is None:
                            skipped.append(doc)
                            continue
                        producer.send(doc["source"]["topic"], key=original[0], value=original[1])
                        sent += 1
        if producer is not None:
            producer.flush(timeout=60)
            consumer.commit({tp: OffsetAndMetadata(end[tp], "", -1) for tp in tps})
    finally:
        consumer.close()
        if producer is not None:
            producer.close(timeout=10)
    click.echo(
        f"{sum(counts.values())} dead letters on {topic}"
        + (f" (reason {reason})" if reason else "")
        + ": "
        + (", ".join(f"{r}={n}" for r, n in counts.most_common()) or "none")
    )
    for doc in latest:
        src = doc.get("source", {})
        payload = base64.b64decode(doc["payload_b64"])[:80] if doc.get("payload_b64") else b""
        click.echo(
            f"  {src.get('topic')}[{src.get('partition')}]@{src.get('offset')} "
            f"{doc.get('reason')}: {doc.get('detail', '')[:100]}  payload={payload!r}"
        )
    if redrive:
        click.echo(f"re-drove {sent} dead letters to their source topics")
        for doc in skipped:
            src = doc["source"]
            click.echo(
                f"  not re-driven: {src['topic']}[{src['partition']}]@{src['offset']} was cut"
                f" in its dead letter ({doc.get('payload_bytes')} bytes, sha256"
                f" {doc.get('payload_sha256')}) and is no longer on its source topic"
            )
    sys.stdout.flush()


def _original(doc: dict[str, Any], s: Any) -> tuple[bytes | None, bytes | None] | None:
    """A dead letter's original key and value. A letter keeps at most
    NEARLINE_WORKER__DEAD_LETTER_MAX_BYTES of them; a cut one is read back from its source
    topic and partition at its offset, and used only if its length and sha256 match the
    letter (None when it is gone: retention, compaction)."""

    def b64(name: str) -> bytes | None:
        raw = doc.get(f"{name}_b64")
        return None if raw is None else base64.b64decode(raw)

    key, value = b64("key"), b64("payload")
    if not doc.get("payload_truncated") and not doc.get("key_truncated"):
        return key, value
    import hashlib

    from kafka import KafkaConsumer, TopicPartition

    src = doc["source"]
    tp = TopicPartition(src["topic"], src["partition"])
    consumer = KafkaConsumer(enable_auto_commit=False, **client_kwargs(s.kafka))
    try:
        consumer.assign([tp])
        consumer.seek(tp, src["offset"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for msg in consumer.poll(timeout_ms=1000).get(tp, []):
                if msg.offset != src["offset"]:
                    return None  # compacted or deleted: the record is gone

                def same(raw: bytes | None, name: str) -> bool:
                    if not doc.get(f"{name}_truncated"):
                        return raw == b64(name)
                    return (
                        raw is not None
                        and len(raw) == doc[f"{name}_bytes"]
                        and hashlib.sha256(raw).hexdigest() == doc[f"{name}_sha256"]
                    )

                ok = same(msg.key, "key") and same(msg.value, "payload")
                return (msg.key, msg.value) if ok else None
            if consumer.position(tp) > src["offset"]:
                return None
        return None
    finally:
        consumer.close()


@click.command()
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def experiments(as_json: bool) -> None:
    """A/B variants with their traffic and online figures, summed over all workers."""
    import asyncio

    from nearline_rec.core.experiments import Variant, summarize
    from nearline_rec.storage.redis_store import RedisStore

    s = settings()

    async def read() -> dict[str, int]:
        store = RedisStore(s.redis)
        try:
            return await store.read_experiment_counts(s.experiments.name)
        finally:
            await store.close()

    variants = [Variant(v.name, v.share) for v in s.experiments.variants]
    rows = summarize(asyncio.run(read()), variants)
    if as_json:
        click.echo(json.dumps({"experiment": s.experiments.name, "variants": rows}, indent=2))
        return
    click.echo(f"experiment {s.experiments.name}")
    click.echo(
        f"{'variant':<16} {'share':>6} {'lists':>8} {'events':>8} {'positives':>9} "
        f"{'hit rate':>9} {'on list':>8}"
    )
    for r in rows:
        click.echo(
            f"{r['variant']:<16} {r['share']:>6.2f} {r['lists']:>8} {r['events']:>8} "
            f"{r['positives']:>9} {r['hit_rate']:>9.3f} {r['on_list_rate']:>8.3f}"
        )


COMMANDS = (lag, status, dlq, experiments)
