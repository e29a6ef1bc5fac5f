"""The user-events agent end to end in one process: event in -> the user's list in the
store and the output records sent; a malformed record -> user-events-dlq with its reason;
a redelivered record skipped and counted."""

from __future__ import annotations

import json

from nearline_rec.agents.ingest import ingest
from nearline_rec.composition import settings
from nearline_rec.core.events import UserEvent
from nearline_rec.core.user_state import UserState
from tests.unit.factories import T0

T = settings.topics


def event(n: int, user: str, item: str, kind: str = "like") -> bytes:
    return UserEvent(f"ev-{n}", user, item, kind, T0 + n).encode()


async def test_an_event_gives_the_user_a_list_in_the_store_and_on_the_topic(worker):
    async with ingest.test_context() as agent:
        await agent.put(event(1, "u1", "i0"), key=b"u1", partition=2, wait=False)
        await worker.until(lambda: worker.rt.counters["events_done"] >= 1, "the batch done")

    listed = await worker.store.read_list("u1")
    assert listed is not None
    items = [i["item_id"] for i in listed["items"]]
    assert items and "i0" not in items  # a liked item is not recommended back
    out = worker.sent_to(T.recommendations)
    assert [r[2] for r in out] == [b"u1"]
    assert [i["item_id"] for i in json.loads(out[0][3])["items"]] == items
    # the user's state: into the table and to its changelog, on the event's partition
    (state,) = [r for r in worker.sent if r[0].endswith("user-state-changelog")]
    assert state[1] == 2 and state[2] == b"u1"
    assert UserState.from_bytes(state[3]).user_id == "u1"
    assert worker.rt.counters["events_applied"] == 1
    assert worker.rt.counters["lists_written"] == 1


async def test_a_malformed_record_goes_to_the_dead_letter_topic_with_its_reason(worker):
    async with ingest.test_context() as agent:
        await agent.put(b'{"event_id": "broken"', key=b"u2", wait=False)
        await agent.put(event(2, "u2", "i3"), key=b"u2", wait=False)
        await worker.until(lambda: worker.rt.counters["events_done"] >= 2, "both records done")

    (letter,) = worker.sent_to(T.user_events_dlq)
    value = json.loads(letter[3])
    assert value["reason"] == "not_json"
    assert value["source"]["topic"] == T.user_events and value["source"]["offset"] == 0
    assert worker.rt.dead_letters == {"not_json": 1}
    assert worker.rt.counters["dead_letters"] == 1
    # the valid record after it is applied all the same
    assert await worker.store.read_list("u2") is not None


async def test_a_redelivered_record_is_skipped_and_counted(worker):
    async with ingest.test_context() as agent:
        await agent.put(event(3, "u3", "i1"), key=b"u3", wait=False)
        await worker.until(lambda: worker.rt.counters["events_done"] >= 1, "the first delivery")
        agent.sent_offset = 0  # the same offset again: a redelivery after a crash
        await agent.put(event(3, "u3", "i1"), key=b"u3", wait=False)
        await worker.until(lambda: worker.rt.counters["events_done"] >= 2, "the redelivery")

    assert worker.rt.counters["events_applied"] == 1
    assert worker.rt.counters["events_duplicate"] == 1
    # the list is sent again, the same version (a redelivery re-emits, changes nothing)
    first, again = [json.loads(r[3]) for r in worker.sent_to(T.recommendations)]
    assert again["version"] == first["version"] and again["items"] == first["items"]
