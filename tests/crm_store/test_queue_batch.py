"""Many claimed items finished or noted in one statement: each checked against its own claim."""

from __future__ import annotations

from sqlalchemy import select

from crm_store import work_queue
from crm_store.models import OutboxItem
from crm_store.queue_batch import Note, Outcome, finish_many, note_many
from tests.conftest import Sessions


async def claimed_rows(sessions: Sessions, count: int) -> list[OutboxItem]:
    async with sessions() as session, session.begin():
        session.add_all(OutboxItem(dedup_key=f"row:{index}", queue_key=f"customer:{index}", kind="kf.send_msg",
                                   payload={"n": index}) for index in range(count))
    async with sessions() as session:
        return await work_queue.claim(session, OutboxItem, count, 60)


async def rows_by_id(sessions: Sessions) -> dict[int, OutboxItem]:
    async with sessions() as session:
        return {row.id: row for row in (await session.scalars(select(OutboxItem))).all()}


async def test_finish_many_writes_each_outcome_and_skips_lost_claims(sessions: Sessions) -> None:
    items = await claimed_rows(sessions, 5)
    taken_over = items[2]
    async with sessions() as session, session.begin():  # another worker took it over after its claim expired
        await session.execute(OutboxItem.__table__.update().where(OutboxItem.id == taken_over.id)
                              .values(claim_token="someone-else"))
    outcomes = [Outcome(item.id, str(item.claim_token), "failed" if index == 1 else "done",
                        "errcode 40003: invalid openid" if index == 1 else None)
                for index, item in enumerate(items)]
    async with sessions() as session, session.begin():
        finished = await finish_many(session, OutboxItem, outcomes)
    assert finished == {item.id for item in items} - {taken_over.id}
    rows = await rows_by_id(sessions)
    assert [rows[item.id].status for item in items] == ["done", "failed", "claimed", "done", "done"]
    assert rows[items[1].id].last_error == "errcode 40003: invalid openid"
    assert rows[items[0].id].finished_at is not None and rows[items[0].id].claimed_until is None
    async with sessions() as session, session.begin():  # finishing again: no longer claimed, nothing written
        assert await finish_many(session, OutboxItem, outcomes[:2]) == set()


async def test_note_many_records_progress_on_claims_still_held(sessions: Sessions) -> None:
    items = await claimed_rows(sessions, 3)
    notes = [Note(item.id, str(item.claim_token), "call started") for item in items[:2]]
    notes.append(Note(items[2].id, "a stale token", "call started"))
    async with sessions() as session, session.begin():
        noted = await note_many(session, OutboxItem, notes)
    assert noted == {items[0].id, items[1].id}
    rows = await rows_by_id(sessions)
    assert [rows[item.id].last_error for item in items] == ["call started", "call started", None]
    assert {row.status for row in rows.values()} == {"claimed"}


async def test_empty_batches_touch_nothing(sessions: Sessions) -> None:
    async with sessions() as session, session.begin():
        assert await finish_many(session, OutboxItem, []) == set()
        assert await note_many(session, OutboxItem, []) == set()
