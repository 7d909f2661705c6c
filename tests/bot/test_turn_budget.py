"""What one customer turn costs the store, counted with SQLAlchemy's event hooks: a kf text turn and an OA
text turn of a known customer, from the stored callback to the reply in the outbox. The budgets are what
the turn takes today; a change that makes it cost more fails here, so the cost cannot creep back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event

from tests.bot.conftest import Bot

# (statements, transactions) of the worker's part of one turn, per store. The quota ledger costs two: the
# customer's allowance read locked (a notification from another turn cannot spend the same message) and
# written back with what the turn earned and spent.
KF_BUDGET = {"sqlite": (26, 5), "postgres": (21, 5)}
OA_BUDGET = {"sqlite": (18, 3), "postgres": (15, 3)}


@dataclass
class Tally:
    statements: int = 0
    transactions: int = 0


@contextmanager
def counted(bot: Bot) -> Iterator[Tally]:
    tally = Tally()
    engine = bot.runtime.engine.sync_engine

    def statement(*_: Any) -> None:
        tally.statements += 1

    def begin(*_: Any) -> None:
        tally.transactions += 1

    event.listen(engine, "before_cursor_execute", statement)
    event.listen(engine, "begin", begin)
    try:
        yield tally
    finally:
        event.remove(engine, "before_cursor_execute", statement)
        event.remove(engine, "begin", begin)


async def test_a_kf_text_turn_stays_within_its_store_budget(bot: Bot) -> None:
    await bot.simulator.kf_says(bot.url, "wmBudget", "你好")
    await bot.drain()  # the customer is known now, as most customers of a turn are
    await bot.simulator.kf_says(bot.url, "wmBudget", "谢谢")
    with counted(bot) as tally:
        await bot.runtime.inbox.drain()
    assert len(bot.replies_to("wmBudget")) == 1  # the second reply is queued, not yet sent
    print(f"kf text turn: {tally}")
    statements, transactions = KF_BUDGET[bot.runtime.engine.dialect.name.replace("postgresql", "postgres")]
    assert tally.statements <= statements and tally.transactions <= transactions, tally


async def test_an_oa_text_turn_stays_within_its_store_budget(bot: Bot) -> None:
    await bot.simulator.oa_says(bot.url, "oBudget", "你好")
    await bot.drain()
    await bot.simulator.oa_says(bot.url, "oBudget", "谢谢")
    with counted(bot) as tally:
        await bot.runtime.inbox.drain()
    assert len(bot.replies_to("oBudget")) == 1
    print(f"oa text turn: {tally}")
    statements, transactions = OA_BUDGET[bot.runtime.engine.dialect.name.replace("postgresql", "postgres")]
    assert tally.statements <= statements and tally.transactions <= transactions, tally
