"""What the soak's totals are made of: the fake API's record of what customers received, read against the store.

The bench's own bookkeeping only says what customers sent (each `Turn` and its inbox key).
Whether it was answered, and how often, comes from the two witnesses that matter: the outbox
rows the turn wrote (dedup key `<inbox key>#<n>`) and what the fake WeCom/OA API received. A
kf message carries its outbox id as msgid, so it is matched exactly; an OA message has no id,
so OA deliveries are matched to rows by recipient and content (done rows first). A delivery
no row explains is a message delivered twice.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from bench.checks import Check
from bench.soak_people import Turn
from bot.sandbox.fake_kf import Sent
from crm_store.growth_settings import RewardRule

MESSAGE_PATHS = {"kf/send_msg": "kf", "kf/send_msg_on_event": "kf", "message/custom/send": "oa"}
MESSAGE_KINDS = ("kf.send_msg", "kf.send_msg_on_event", "oa.custom_send")  # the outbox rows that write to customers
UNFINISHED = ("pending", "claimed")
WELCOME_LATE = "welcome code's 20 seconds had passed"  # the sender's reason: WeChat's window, not the bot's choice
OUTCOME_UNKNOWN = "outcome unknown"


@dataclass(frozen=True)
class Row:
    """An outbox row that writes to a customer."""

    id: int
    dedup_key: str
    kind: str
    status: str
    error: str
    customer_id: int | None
    payload: dict[str, Any]
    finished_at: float | None  # time.time() of its outcome (done or failed)

    @property
    def origin(self) -> str:
        """The inbox key of the turn that wrote it (or the wake-up, the nurture send…)."""
        return self.dedup_key.rsplit("#", 1)[0]


@dataclass
class Deliveries:
    """Outbox rows the fake received (row id -> when), and what no row explains."""

    at: dict[int, float] = field(default_factory=dict)
    unexplained: list[Sent] = field(default_factory=list)  # deliveries no row explains: a row's message again
    sent_not_received: int = 0  # rows the bot marked done that never arrived
    resends_absorbed: int = 0  # kf resends of a delivered msgid, dropped by WeCom as they should be

    @property
    def twice(self) -> int:
        return len(self.unexplained)


@dataclass(frozen=True)
class LostTurn:
    turn: Turn
    cause: str
    at: float  # when its reply failed (the fault to blame), or when it was sent when nothing was written


@dataclass
class TurnOutcomes:
    total: Counter[str] = field(default_factory=Counter)  # by "kf message", "oa arrival"…
    answered_at: list[float] = field(default_factory=list)
    lost: Counter[str] = field(default_factory=Counter)  # by cause
    lost_turns: list[LostTurn] = field(default_factory=list)
    with_rep: int = 0  # turns of customers a flow handed to a person: theirs to answer, not the bot's
    welcome_late: int = 0  # kf arrivals whose only answer missed WeChat's 20 s for the welcome code

    @property
    def lost_at(self) -> list[float]:
        return [lost.at for lost in self.lost_turns]


@dataclass(frozen=True)
class Ledger:
    grants: int
    twice: int  # more than one grant per rule, receiver and friend (or tier)
    messages_twice: int  # a reward's message received more often than it was granted


@dataclass(frozen=True)
class Groups:
    groups: int
    filled: int
    members: int
    overfilled: int
    inconsistent: int  # the members counter is not the number of member rows


@dataclass(frozen=True)
class Queues:
    inbox: dict[str, int]
    outbox: dict[str, int]
    outcome_unknown: int
    outcome_unknown_delivered: int  # of those, how many the fake did receive
    failed: Counter[str]  # other failed outbox rows, by reason
    inbox_failed: Counter[str]

    def stuck(self, counts: dict[str, int]) -> int:
        return sum(counts.get(status, 0) for status in UNFINISHED)


@dataclass(frozen=True)
class Audit:
    turns: TurnOutcomes
    deliveries: Deliveries
    ledger: Ledger
    groups: Groups
    queues: Queues
    marketing: Counter[str]  # "sequence sent", "push skipped"…
    marketing_due: int  # nurture and push sends due and still pending

    def checks(self) -> list[Check]:
        lost = sum(self.turns.lost.values())
        return [
            (f"replies lost: {lost} of {sum(self.turns.total.values())} turns", lost == 0),
            (f"replies twice: {self.deliveries.twice}", self.deliveries.twice == 0),
            (f"rewards granted twice: {self.ledger.twice} in the ledger, {self.ledger.messages_twice} reward "
             f"messages received twice ({self.ledger.grants} grants)",
             self.ledger.twice + self.ledger.messages_twice == 0),
            (f"groups overfilled: {self.groups.overfilled} of {self.groups.groups}", self.groups.overfilled == 0),
            (f"inbox items stuck (pending or claimed): {self.queues.stuck(self.queues.inbox)}",
             self.queues.stuck(self.queues.inbox) == 0),
            (f"outbox items stuck (pending or claimed): {self.queues.stuck(self.queues.outbox)}",
             self.queues.stuck(self.queues.outbox) == 0),
            (f"messages the bot marked sent that never arrived: {self.deliveries.sent_not_received}",
             self.deliveries.sent_not_received == 0),
        ]


# ---------------------------------------------------------------- matching deliveries to rows


def recipient(sent: Sent) -> tuple[str, str]:
    """(identity kind, user) a delivered message went to."""
    return ("oa" if sent.path == "message/custom/send" else "wecom", str(sent.body.get("_to") or sent.to))


def _content_key(to: str, body: dict[str, Any]) -> str:
    return to + "|" + json.dumps({k: v for k, v in body.items() if not k.startswith("_") and k != "touser"},
                                 sort_keys=True, ensure_ascii=False)


def match(rows: Sequence[Row], sent: Iterable[Sent], resends_absorbed: int) -> Deliveries:
    found = Deliveries(resends_absorbed=resends_absorbed)
    by_msgid = {f"scrm{row.id}": row for row in rows if row.kind.startswith("kf.")}
    oa_rows: dict[str, list[Row]] = defaultdict(list)
    for oa_row in sorted((r for r in rows if r.kind == "oa.custom_send"), key=lambda r: (r.status != "done", r.id)):
        oa_rows[_content_key(str(oa_row.payload.get("touser", "")), oa_row.payload)].append(oa_row)
    for message in sent:
        channel = MESSAGE_PATHS.get(message.path)
        row: Row | None
        if channel is None:
            continue
        if channel == "kf":
            msgid = str(message.body.get("msgid", ""))
            if not msgid.startswith("scrm"):
                continue  # a row's follow-up call (a farewell after a session move), not a row's own message
            row = by_msgid.get(msgid)
        else:
            waiting = oa_rows.get(_content_key(message.to, message.body)) or []
            row = waiting.pop(0) if waiting else None
        if row is None or row.id in found.at:
            found.unexplained.append(message)
        else:
            found.at[row.id] = message.at
    found.sent_not_received = sum(1 for row in rows if row.status == "done" and row.id not in found.at)
    return found


# ---------------------------------------------------------------- turns


@dataclass(frozen=True)
class Store:
    """What the audit reads from the store once, keyed for lookups."""

    customers: dict[tuple[str, str], int]  # (identity kind, external id) -> customer id
    inbox: dict[str, tuple[str, str]]  # dedup key -> (status, last error)
    rows: list[Row]
    handed_off: dict[int, float]  # customer id -> when a flow first handed them to a person


def turn_outcomes(turns: Sequence[Turn], store: Store, delivered: Deliveries) -> TurnOutcomes:
    by_origin: dict[str, list[Row]] = defaultdict(list)
    for row in store.rows:
        by_origin[row.origin].append(row)
    outcomes = TurnOutcomes()
    for turn in turns:
        outcomes.total[f"{turn.channel} {turn.kind}"] += 1
        customer = store.customers.get(("wecom" if turn.channel == "kf" else "oa", turn.user))
        if customer is not None and store.handed_off.get(customer, float("inf")) <= turn.sent_at:
            outcomes.with_rep += 1
            continue
        result = _turn_result(turn, customer, store, by_origin.get(turn.inbox_key, []), delivered)
        if result.answered:
            outcomes.answered_at.append(result.at)
        elif turn.kind == "arrival" and all(WELCOME_LATE in part for part in result.cause.split("; ")):
            outcomes.welcome_late += 1
        else:
            outcomes.lost[result.cause] += 1
            outcomes.lost_turns.append(LostTurn(turn, result.cause, result.at))
    return outcomes


@dataclass(frozen=True)
class TurnResult:
    cause: str  # "answered", or why not
    at: float  # answered: when its first reply arrived; lost: when its reply failed (or when it was sent)

    @property
    def answered(self) -> bool:
        return self.cause == "answered"


def _turn_result(turn: Turn, customer: int | None, store: Store, rows: list[Row],
                 delivered: Deliveries) -> TurnResult:
    inbox = store.inbox.get(turn.inbox_key)
    if inbox is None:
        lost = "answered 200, not stored" if turn.accepted else "callback refused through every WeChat retry"
        return TurnResult(lost, turn.sent_at)
    if inbox[0] != "done":
        return TurnResult(f"inbox {inbox[0]}: {_short(inbox[1])}", turn.sent_at)
    mine = [row for row in rows if row.customer_id == customer]
    if not mine:
        return TurnResult("processed, no reply written", turn.sent_at)
    times = [delivered.at[row.id] for row in mine if row.id in delivered.at]
    if times:
        return TurnResult("answered", min(times))
    reasons = sorted({f"reply {row.status}: {_short(row.error)}" for row in mine})
    failed = [row.finished_at for row in mine if row.finished_at is not None]
    return TurnResult("; ".join(reasons), max(failed, default=turn.sent_at))


def _short(error: str) -> str:
    return re.sub(r"\d{3,}", "N", (error or "-").split("\n")[0])[:70]


# ---------------------------------------------------------------- reading the store


async def read_store(connection: asyncpg.Connection, turns: Sequence[Turn]) -> Store:
    customers = {(r["kind"], r["external_id"]): r["customer_id"]
                 for r in await connection.fetch("SELECT kind, external_id, customer_id FROM identities")}
    inbox = {r["dedup_key"]: (r["status"], r["last_error"] or "") for r in await connection.fetch(
        "SELECT dedup_key, status, last_error FROM inbox WHERE dedup_key = ANY($1::text[])",
        [turn.inbox_key for turn in turns])}
    rows = [Row(r["id"], r["dedup_key"], r["kind"], r["status"], r["last_error"] or "", r["customer_id"],
                json.loads(r["payload"]) if isinstance(r["payload"], str) else dict(r["payload"]), r["finished"])
            for r in await connection.fetch(
                "SELECT id, dedup_key, kind, status, last_error, customer_id, payload, "
                "extract(epoch FROM finished_at)::float8 AS finished FROM outbox "
                "WHERE kind = ANY($1::text[]) ORDER BY id", list(MESSAGE_KINDS))]
    handed_off = {r["customer_id"]: r["at"] for r in await connection.fetch(
        "SELECT customer_id, extract(epoch FROM min(created_at))::float8 AS at FROM handoffs GROUP BY customer_id")}
    return Store(customers, inbox, rows, handed_off)


async def ledger(connection: asyncpg.Connection, sent: Sequence[Sent], store: Store,
                 rules: Sequence[RewardRule]) -> Ledger:
    grants = await connection.fetch("SELECT rule_id, customer_id FROM reward_ledger WHERE kind = 'grant'")
    twice = await connection.fetchval(
        "SELECT count(*) FROM (SELECT 1 FROM reward_ledger WHERE kind = 'grant' GROUP BY rule_id, customer_id, "
        "CASE WHEN grant_key LIKE '%:tier%' THEN 0 ELSE friend_id END HAVING count(*) > 1) AS repeated")
    granted = Counter((r["rule_id"], r["customer_id"]) for r in grants)
    patterns = {rule.id: _reward_pattern(rule) for rule in rules}
    received: Counter[tuple[str, int]] = Counter()
    for message in sent:
        customer = store.customers.get(recipient(message)) if message.path in MESSAGE_PATHS else None
        for rule_id, pattern in patterns.items():
            if customer is not None and pattern.fullmatch(message.text):
                received[(rule_id, customer)] += 1
    messages_twice = sum(max(0, count - granted[key]) for key, count in received.items())
    return Ledger(len(grants), int(twice or 0), messages_twice)


def _reward_pattern(rule: RewardRule) -> re.Pattern[str]:
    text = (rule.message or "恭喜！您获得了奖励：{reward}").replace("{reward}", rule.reward)
    return re.compile(".*".join(re.escape(part) for part in text.split("{friend}")))


async def groups(connection: asyncpg.Connection) -> Groups:
    row = await connection.fetchrow(
        "SELECT count(*) AS groups, count(*) FILTER (WHERE status = 'filled') AS filled, "
        "coalesce(sum(rows), 0) AS members, count(*) FILTER (WHERE members > size OR rows > size) AS overfilled, "
        "count(*) FILTER (WHERE members <> rows) AS inconsistent FROM (SELECT g.size, g.members, g.status, "
        "(SELECT count(*) FROM group_members m WHERE m.group_id = g.id) AS rows FROM group_buys g) AS g")
    return Groups(row["groups"], row["filled"], int(row["members"]), row["overfilled"], row["inconsistent"])


async def _statuses(connection: asyncpg.Connection, table: str) -> dict[str, int]:
    rows = await connection.fetch(f"SELECT status, count(*) AS n FROM {table} GROUP BY 1")
    return {row["status"]: row["n"] for row in rows}


async def queues(connection: asyncpg.Connection, delivered: Deliveries) -> Queues:
    inbox, outbox = [await _statuses(connection, table) for table in ("inbox", "outbox")]
    failed = await connection.fetch("SELECT id, last_error FROM outbox WHERE status = 'failed'")
    unknown = [r["id"] for r in failed if (r["last_error"] or "").startswith(OUTCOME_UNKNOWN)]
    other = Counter(_short(r["last_error"]) for r in failed if r["id"] not in set(unknown))
    inbox_failed = Counter(_short(r["last_error"]) for r in await connection.fetch(
        "SELECT last_error FROM inbox WHERE status = 'failed'"))
    return Queues(inbox, outbox, len(unknown), sum(1 for row_id in unknown if row_id in delivered.at), other,
                  inbox_failed)


async def marketing(connection: asyncpg.Connection) -> tuple[Counter[str], int]:
    rows = await connection.fetch(
        "SELECT CASE WHEN push_id IS NULL THEN 'sequence' ELSE 'push' END AS source, status, count(*) AS n, "
        "count(*) FILTER (WHERE status = 'pending' AND due_at <= now()) AS due FROM nurture_sends GROUP BY 1, 2")
    return Counter({f"{r['source']} {r['status']}": r["n"] for r in rows}), sum(r["due"] for r in rows)


async def audit(dsn: str, turns: Sequence[Turn], sent: Sequence[Sent], resends_absorbed: int,
                rules: Sequence[RewardRule]) -> Audit:
    connection = await asyncpg.connect(dsn)
    try:
        store = await read_store(connection, turns)
        delivered = match(store.rows, sent, resends_absorbed)
        sends, due = await marketing(connection)
        rewards = await ledger(connection, sent, store, rules)
        return Audit(turn_outcomes(turns, store, delivered), delivered, rewards, await groups(connection),
                     await queues(connection, delivered), sends, due)
    finally:
        await connection.close()


async def unfinished(dsn: str, due_by: float) -> int:
    """Inbox and outbox items pending or claimed, and nurture sends pending and due by `due_by`."""
    connection = await asyncpg.connect(dsn)
    try:
        return int(await connection.fetchval(
            "SELECT (SELECT count(*) FROM inbox WHERE status IN ('pending', 'claimed')) "
            "+ (SELECT count(*) FROM outbox WHERE status IN ('pending', 'claimed')) "
            "+ (SELECT count(*) FROM nurture_sends WHERE status = 'pending' AND due_at <= to_timestamp($1))",
            due_by))
    finally:
        await connection.close()


def rate(moments: Iterable[float], start: float, end: float) -> float:
    """Events per second in [start, end)."""
    return sum(1 for moment in moments if start <= moment < end) / max(end - start, 1e-9)
