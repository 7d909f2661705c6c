"""Segments: who a push or an admin enrolment is for, as data (stored with the push) and as one query.

A segment is a conjunction of filters over unmerged customers:

    tags (all of)  any_tags  not_tags  stages (ids)  social_min  active_within_days
    inactive_for_days  channel (entry channel code)  reachable (a kf/OA chat in the last 48 h)

`segment_query` is one SELECT of customer ids. Tag filters are EXISTS subqueries on
customer_tags by tag id (its primary key starts with customer_id, and an index (tag_id,
customer_id) lists a tag's customers by itself), so PostgreSQL runs them as semi-joins however
many customers there are; nothing is loaded into Python. Given the tags' ids (`tag_ids`) the
query's text names them (not bound parameters, which a cached generic plan would not look at):
the planner then sees how common each tag is, where a subquery by name leaves it guessing (a
common tag's count took 2-3 times longer on a million customers).

`checked_segment` names every unknown tag, stage and channel before a segment is used: a typo
must not silently mean "nobody" (or, for not_tags, "everybody").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, exists, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.spelling import did_you_mean
from crm_store.growth_models import EntryChannel, SocialStats
from crm_store.lifecycle import Lifecycle
from crm_store.models import Customer, CustomerTag, Tag, utcnow

SERVICE_WINDOW = timedelta(hours=48)  # kf and the OA let the bot write this long after the customer (bot.delivery)
REACHABLE_CHANNELS = ("kf", "oa")


class SegmentError(ValueError):
    """A segment naming something that does not exist, or that nobody can match; every problem listed."""


@dataclass(frozen=True)
class Segment:
    tags: tuple[str, ...] = ()  # every one of these
    any_tags: tuple[str, ...] = ()  # at least one of these
    not_tags: tuple[str, ...] = ()  # none of these
    stages: tuple[str, ...] = ()  # stage ids; any of them
    social_min: float | None = None
    active_within_days: int | None = None  # seen (wrote) within the last N days
    inactive_for_days: int | None = None  # not seen for N days
    channel: str | None = None  # the entry channel's code (ch_…): where they first came from
    reachable: bool = False  # the bot may write to them now (kf/OA 48-hour window)

    def to_data(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()
                if value not in (None, (), False)}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Segment:
        known: dict[str, Any] = {key: tuple(value) if isinstance(value, list) else value
                                 for key, value in data.items() if key in cls.__dataclass_fields__}
        return cls(**known)

    def describe(self) -> str:
        """One line for people: `tags 高意向 & 询价, stage interested, not 已退订, reachable`."""
        parts = [
            self.tags and f"tags {' & '.join(self.tags)}",
            self.any_tags and f"any of {' | '.join(self.any_tags)}",
            self.not_tags and f"not {', '.join(self.not_tags)}",
            self.stages and f"stage {' | '.join(self.stages)}",
            self.social_min is not None and f"social ≥ {self.social_min:g}",
            self.active_within_days is not None and f"active within {self.active_within_days}d",
            self.inactive_for_days is not None and f"inactive for {self.inactive_for_days}d",
            self.channel and f"channel {self.channel}",
            self.reachable and "reachable now",
        ]
        return ", ".join(part for part in parts if part) or "every customer"


@dataclass(frozen=True)
class SampleCustomer:
    id: int
    name: str
    stage: str
    last_seen_at: datetime | None
    tags: tuple[str, ...] = field(default_factory=tuple)


TagIds = Mapping[str, int]


async def tag_ids(session: AsyncSession, segment: Segment) -> dict[str, int]:
    """The ids of the tags the segment names (unknown names are left out)."""
    names = {*segment.tags, *segment.any_tags, *segment.not_tags}
    if not names:
        return {}
    return dict((await session.execute(select(Tag.name, Tag.id).where(Tag.name.in_(names)))).tuples().all())


def _has_any_tag(names: Iterable[str], ids: TagIds) -> ColumnElement[bool]:
    names = list(names)
    if all(name in ids for name in names):
        wanted: Any = [literal(ids[name], literal_execute=True) for name in names]  # in the SQL text
    else:
        wanted = select(Tag.id).where(Tag.name.in_(names))
    return exists().where(CustomerTag.customer_id == Customer.id, CustomerTag.tag_id.in_(wanted))


def segment_conditions(segment: Segment, now: datetime | None = None, exclude_opted_out: bool = False,
                       ids: TagIds | None = None) -> list[ColumnElement[bool]]:
    """The WHERE clauses of the segment on `customers` (merged customers always left out);
    `ids`: the tags' ids from `tag_ids`, or None to find them by name in the query."""
    now = now or utcnow()
    ids = ids or {}
    where: list[ColumnElement[bool]] = [Customer.merged_into_id.is_(None)]
    where += [_has_any_tag([name], ids) for name in segment.tags]
    if segment.any_tags:
        where.append(_has_any_tag(segment.any_tags, ids))
    if segment.not_tags:
        where.append(~_has_any_tag(segment.not_tags, ids))
    if segment.stages:
        where.append(Customer.stage.in_(list(segment.stages)))
    if segment.social_min is not None and segment.social_min > 0:  # no social_stats row: a score of 0
        where.append(exists().where(SocialStats.customer_id == Customer.id, SocialStats.score >= segment.social_min))
    if segment.active_within_days is not None:
        where.append(Customer.last_seen_at >= now - timedelta(days=segment.active_within_days))
    if segment.inactive_for_days is not None:
        cutoff = now - timedelta(days=segment.inactive_for_days)
        where.append(or_(Customer.last_seen_at < cutoff,
                         and_(Customer.last_seen_at.is_(None), Customer.created_at < cutoff)))
    if segment.channel:
        channel_id = select(EntryChannel.id).where(EntryChannel.code == segment.channel).scalar_subquery()
        where.append(Customer.entry_channel_id == channel_id)
    if segment.reachable:
        where.append(Customer.reach["channel"].as_string().in_(REACHABLE_CHANNELS))
        where.append(Customer.reach["at"].as_float() >= (now - SERVICE_WINDOW).timestamp())
    if exclude_opted_out:
        where.append(Customer.marketing_opt_out.is_(False))
    return where


def segment_query(segment: Segment, now: datetime | None = None, exclude_opted_out: bool = False,
                  ids: TagIds | None = None) -> Select[int]:
    """SELECT customers.id of everyone in the segment (unordered)."""
    return select(Customer.id).where(*segment_conditions(segment, now, exclude_opted_out, ids))


async def count_and_sample(session: AsyncSession, segment: Segment, sample: int = 10, now: datetime | None = None,
                           exclude_opted_out: bool = False) -> tuple[int, list[SampleCustomer]]:
    """How many customers the segment has, and the `sample` newest of them with their tags."""
    where = segment_conditions(segment, now, exclude_opted_out, await tag_ids(session, segment))
    count = int(await session.scalar(select(func.count()).select_from(Customer).where(*where)) or 0)
    if not count or sample <= 0:
        return count, []
    rows = (await session.execute(
        select(Customer.id, Customer.display_name, Customer.stage, Customer.last_seen_at)
        .where(*where).order_by(Customer.id.desc()).limit(sample))).tuples().all()
    tags: dict[int, list[str]] = {row[0]: [] for row in rows}
    tag_rows = await session.execute(select(CustomerTag.customer_id, Tag.name).join(Tag, Tag.id == CustomerTag.tag_id)
                                     .where(CustomerTag.customer_id.in_(list(tags))).order_by(Tag.name))
    for customer_id, name in tag_rows.tuples():
        tags[customer_id].append(name)
    return count, [SampleCustomer(id_, name or "", stage, seen, tuple(tags[id_])) for id_, name, stage, seen in rows]


async def checked_segment(session: AsyncSession, segment: Segment, lifecycle: Lifecycle) -> Segment:
    """The segment with stage labels turned into ids; SegmentError naming every unknown tag, stage or channel."""
    problems: list[str] = []
    names = {*segment.tags, *segment.any_tags, *segment.not_tags}
    catalog = list(await session.scalars(select(Tag.name).order_by(Tag.name))) if names else []
    for name in sorted(names - set(catalog)):
        problems.append(f"tag {name!r} is not in the tag catalog{did_you_mean(name, catalog)} (see: scrm tags list)")
    stages: list[str] = []
    for stage in segment.stages:
        try:
            stages.append(lifecycle.resolve(stage))
        except ValueError as exc:
            problems.append(str(exc))
    for key in ("active_within_days", "inactive_for_days", "social_min"):
        value = getattr(segment, key)
        if value is not None and value < 0:
            problems.append(f"{key}: may not be negative ({value})")
    if segment.channel and await session.scalar(
            select(EntryChannel.id).where(EntryChannel.code == segment.channel)) is None:
        problems.append(f"no entry channel {segment.channel!r} (see: scrm channels list)")
    active, inactive = segment.active_within_days, segment.inactive_for_days
    if active is not None and inactive is not None and inactive >= active:
        problems.append(f"nobody is both active within {active} days and inactive for {inactive} days")
    if set(segment.tags) & set(segment.not_tags):
        problems.append(f"tags both required and excluded: {', '.join(sorted(set(segment.tags) & set(segment.not_tags)))}")
    if problems:
        raise SegmentError("bad segment:\n  " + "\n  ".join(problems))
    return replace(segment, stages=tuple(dict.fromkeys(stages)))
