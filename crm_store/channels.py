"""Entry channels (渠道活码): entry points that carry a code, who arrived through them, and what they brought.

A channel is a WeCom contact-way QR (`state` = its code, a rota of reps with a daily add
cap each), a kf link (`scene_param` = its code) or an OA parametric QR (`qrscene_<code>`).
Attribution is first touch: a customer's `entry_channel_id` is set once, by a guarded
UPDATE (`… WHERE entry_channel_id IS NULL`), so two arrivals at once cannot both win.
Adds per rep and day (the brand's date, `growth.timezone`) are counted with an upsert
(`adds = adds + 1`), exact under concurrency on PostgreSQL and SQLite alike.
Reports count customers by channel in one grouped query, without an index of their own:
one pass over the customers, however many channels there are.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import Select, case, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from crm_store.dialect_insert import dialect_insert
from crm_store.growth_models import ChannelRepDay, EntryChannel
from crm_store.models import Customer

KINDS = ("contact_way", "kf_link", "oa_qr")
MAX_REPS = 100  # WeCom's limit for one contact way
CODE_MAX = 30  # the contact way's `state` is at most 30 characters


class ChannelError(ValueError):
    """The channel cannot be made as asked; `problems` lists every reason at once."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


@dataclass(frozen=True)
class ChannelSpec:
    """What an admin asks for; the code, config_id and URL come from creating it."""

    name: str
    kind: str
    welcome_flow: str = ""
    tags: tuple[str, ...] = ()
    reps: tuple[str, ...] = ()
    daily_cap: int = 0  # adds per rep per day; 0: no cap
    cost_cents: int = 0
    kf_account: str = ""  # the open_kfid a kf link opens


def validate_spec(spec: ChannelSpec) -> None:
    """Raise ChannelError naming every problem of the spec, or return."""
    problems = [*_shape_problems(spec), *_kind_problems(spec)]
    if problems:
        raise ChannelError(problems)


def _shape_problems(spec: ChannelSpec) -> list[str]:
    problems = []
    if spec.kind not in KINDS:
        problems.append(f"unknown kind {spec.kind!r}; kinds: {', '.join(KINDS)}")
    if not spec.name.strip():
        problems.append("the name is empty")
    elif len(spec.name) > 128:
        problems.append("the name is longer than 128 characters")
    if spec.daily_cap < 0:
        problems.append(f"the daily cap is negative ({spec.daily_cap})")
    if spec.cost_cents < 0:
        problems.append(f"the cost is negative ({spec.cost_cents / 100:.2f} yuan)")
    if len(spec.welcome_flow) > 64:
        problems.append("the welcome flow id is longer than 64 characters")
    problems += [f"tag {tag!r} is blank or longer than 64 characters" for tag in spec.tags
                 if not tag.strip() or len(tag) > 64]
    problems += [f"rep {rep!r} is not a WeCom userid (1–64 characters)" for rep in spec.reps
                 if not rep.strip() or len(rep) > 64]
    repeated = sorted({rep for rep in spec.reps if spec.reps.count(rep) > 1})
    if repeated:
        problems.append(f"reps named twice: {', '.join(repeated)}")
    return problems


def _kind_problems(spec: ChannelSpec) -> list[str]:
    problems = []
    if spec.kind == "contact_way":
        if not spec.reps:
            problems.append("a contact_way channel needs at least one rep")
        if len(spec.reps) > MAX_REPS:
            problems.append(f"a contact way offers at most {MAX_REPS} reps ({len(spec.reps)} given)")
    elif spec.kind in KINDS:
        if spec.reps:
            problems.append(f"reps are for contact_way channels, not {spec.kind}")
        if spec.daily_cap:
            problems.append(f"a daily cap counts adds to reps: only contact_way channels have one, not {spec.kind}")
    if spec.kind == "kf_link" and not spec.kf_account.strip():
        problems.append("a kf_link channel needs the kf account (open_kfid) it opens")
    if spec.kind != "kf_link" and spec.kf_account:
        problems.append("a kf account is for kf_link channels only")
    return problems


async def add_channel(
    session: AsyncSession, spec: ChannelSpec, code: str, config_id: str, url: str, rota: Iterable[str]
) -> EntryChannel:
    """Store a channel whose entry point was created (the code is unique: a clash raises IntegrityError)."""
    validate_spec(spec)
    if not 0 < len(code) <= CODE_MAX:
        raise ChannelError([f"the code must be 1–{CODE_MAX} characters: {code!r}"])
    channel = EntryChannel(
        code=code, name=spec.name.strip(), kind=spec.kind, welcome_flow=spec.welcome_flow, tags=list(spec.tags),
        reps=list(spec.reps), daily_cap=spec.daily_cap, cost_cents=spec.cost_cents, config_id=config_id, url=url,
        rota=list(rota), active=True,
    )
    session.add(channel)
    await session.flush()
    return channel


async def channel_by_code(session: AsyncSession, code: str) -> EntryChannel | None:
    return await session.scalar(select(EntryChannel).where(EntryChannel.code == code))


def brand_day(timezone: str, now: datetime | None = None) -> str:
    """The date (YYYY-MM-DD) in the brand's time zone; a naive `now` is UTC."""
    moment = now or datetime.now(UTC)
    moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return moment.astimezone(ZoneInfo(timezone)).date().isoformat()


async def record_arrival(
    session: AsyncSession, channel: EntryChannel, customer: Customer, rep_userid: str, day: str
) -> bool:
    """The customer came through `channel`; True when it is their first touch (now attributed to it).

    With a rep (a contact way's add), one more add for the rep on `day` is counted either way.
    """
    first = False
    if customer.entry_channel_id is None:
        won = await session.scalar(
            update(Customer)
            .where(Customer.id == customer.id, Customer.entry_channel_id.is_(None))
            .values(entry_channel_id=channel.id)
            .returning(Customer.id)
            .execution_options(synchronize_session=False)
        )
        first = won is not None
        if first:
            set_committed_value(customer, "entry_channel_id", channel.id)
        else:  # another arrival won meanwhile: show its channel, not None
            await session.refresh(customer, ["entry_channel_id"])
    if rep_userid:
        statement = dialect_insert(session, ChannelRepDay).values(channel_id=channel.id, userid=rep_userid, day=day, adds=1)
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=["channel_id", "userid", "day"], set_={"adds": ChannelRepDay.adds + 1}
            )
        )
    return first


async def rep_adds(session: AsyncSession, channel: EntryChannel, day: str) -> dict[str, int]:
    """userid -> adds through the channel on `day` (reps without adds are absent)."""
    rows = await session.execute(
        select(ChannelRepDay.userid, ChannelRepDay.adds).where(
            ChannelRepDay.channel_id == channel.id, ChannelRepDay.day == day
        )
    )
    return dict(rows.tuples().all())


async def reps_under_cap(session: AsyncSession, channel: EntryChannel, day: str) -> list[str]:
    """The channel's reps, in rota order, who may still be added today (all of them without a cap)."""
    if channel.daily_cap <= 0:
        return list(channel.reps)
    adds = await rep_adds(session, channel, day)
    return [rep for rep in channel.reps if adds.get(rep, 0) < channel.daily_cap]


@dataclass(frozen=True)
class RepAdds:
    userid: str
    adds: int  # on the report's day
    cap: int  # 0: no cap
    in_rota: bool  # WeCom offers this rep now


@dataclass(frozen=True)
class ChannelReport:
    code: str
    name: str
    kind: str
    active: bool
    welcome_flow: str
    tags: tuple[str, ...]
    reps: tuple[str, ...]
    rota: tuple[str, ...]
    daily_cap: int
    config_id: str
    url: str
    created_at: datetime
    adds: int  # customers who first arrived through the channel
    conversions: int  # of those, now in a purchase stage
    conversion_rate: float | None
    cost_yuan: float
    cost_per_add: float | None
    cost_per_conversion: float | None
    day: str = ""  # the day of rep_adds (reports of one channel)
    rep_adds: tuple[RepAdds, ...] = ()


def _arrivals(purchase_stages: Iterable[str]) -> Select[int | None, int, int]:
    """Per channel: customers it brought first (merged-away duplicates not counted) and how many bought."""
    bought = case((Customer.stage.in_(list(purchase_stages)), 1))
    return (
        select(
            Customer.entry_channel_id.label("channel_id"),
            func.count().label("adds"),
            func.count(bought).label("conversions"),
        )
        .where(Customer.entry_channel_id.is_not(None), Customer.merged_into_id.is_(None))
        .group_by(Customer.entry_channel_id)
    )


def _per(amount: float, count: int) -> float | None:
    return round(amount / count, 2) if count else None


def _report(
    channel: EntryChannel, adds: int, conversions: int, day: str = "", per_rep: tuple[RepAdds, ...] = ()
) -> ChannelReport:
    cost = channel.cost_cents / 100
    return ChannelReport(
        code=channel.code, name=channel.name, kind=channel.kind, active=channel.active,
        welcome_flow=channel.welcome_flow, tags=tuple(channel.tags), reps=tuple(channel.reps),
        rota=tuple(channel.rota), daily_cap=channel.daily_cap, config_id=channel.config_id, url=channel.url,
        created_at=channel.created_at, adds=adds, conversions=conversions,
        conversion_rate=round(conversions / adds, 4) if adds else None, cost_yuan=cost,
        cost_per_add=_per(cost, adds), cost_per_conversion=_per(cost, conversions), day=day, rep_adds=per_rep,
    )


async def channel_report(
    session: AsyncSession, channel: EntryChannel, purchase_stages: Iterable[str], day: str
) -> ChannelReport:
    """One channel's numbers, with each rep's adds on `day` against the cap."""
    arrivals = _arrivals(purchase_stages).where(Customer.entry_channel_id == channel.id).subquery()
    row = (await session.execute(select(arrivals.c.adds, arrivals.c.conversions))).first()
    adds, conversions = (row[0], row[1]) if row else (0, 0)
    today = await rep_adds(session, channel, day)
    per_rep = tuple(
        RepAdds(rep, today.get(rep, 0), channel.daily_cap, rep in channel.rota) for rep in channel.reps
    )
    return _report(channel, adds, conversions, day, per_rep)


async def list_channels(session: AsyncSession, purchase_stages: Iterable[str]) -> list[ChannelReport]:
    """Every channel, oldest first, with its adds and conversions: one grouped query."""
    arrivals = _arrivals(purchase_stages).subquery()
    rows = await session.execute(
        select(EntryChannel, func.coalesce(arrivals.c.adds, 0), func.coalesce(arrivals.c.conversions, 0))
        .outerjoin(arrivals, arrivals.c.channel_id == EntryChannel.id)
        .order_by(EntryChannel.id)
    )
    return [_report(channel, adds, conversions) for channel, adds, conversions in rows.tuples()]
