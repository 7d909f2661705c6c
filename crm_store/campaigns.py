"""Group-buy campaigns: defined by admins (CLI options or a YAML file), checked before anything is stored.

A campaign names the product, the group price, how many make a group and how long a
group may take to fill, when the campaign runs, how much stock there is, and who may
join. Every problem with a definition is reported at once, in words an admin can act on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.growth_models import Campaign, GroupBuy, GroupMember
from crm_store.models import utcnow

CAMPAIGN_FIELDS = (
    "code", "name", "product", "price", "group_size", "group_hours", "starts", "ends", "stock",
    "limit_per_customer", "new_customers_only", "fill_stage", "fill_tags",
)


class CampaignError(ValueError):
    """A campaign definition or command an admin must fix; the message lists every problem."""


@dataclass(frozen=True)
class CampaignSpec:
    code: str
    name: str
    product: str
    price_cents: int
    group_size: int
    group_ttl_s: int
    starts_at: datetime
    ends_at: datetime
    stock: int
    limit_per_customer: int = 1
    new_customers_only: bool = False
    fill_stage: str = ""
    fill_tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class CampaignStats:
    campaign: Campaign
    opened: int
    open: int
    filled: int
    expired: int
    members: int
    fill_rate: float | None = None
    by_status: dict[str, int] = field(default_factory=dict)


def spec_from_mapping(
    data: Mapping[str, Any], stage_ids: Sequence[str], tag_names: Sequence[str], timezone: str = "Asia/Shanghai"
) -> CampaignSpec:
    """A spec from a YAML mapping or CLI options; CampaignError listing every problem otherwise.

    Times without a zone are the brand's (`growth.timezone`).
    """
    zone = ZoneInfo(timezone)
    problems: list[str] = []
    unknown = sorted(set(data) - set(CAMPAIGN_FIELDS))
    if unknown:
        problems.append(f"unknown field(s) {unknown}; known: {', '.join(CAMPAIGN_FIELDS)}")
    code = str(data.get("code") or "").strip()
    if not code or len(code) > 32 or not all(c.isalnum() or c in "-_" for c in code) or not code.isascii():
        problems.append("code: 1-32 letters, digits, - or _ (e.g. spring-tea)")
    name = str(data.get("name") or "").strip()
    product = str(data.get("product") or name).strip()
    if not name:
        problems.append("name: required")
    price = _price_cents(data.get("price"), problems)
    size = _whole(data, "group_size", 2, 100, problems, "a group needs at least 2 people")
    hours = _number(data, "group_hours", problems)
    if hours is not None and not 0 < hours <= 24 * 30:
        problems.append("group_hours: more than 0 and at most 720 (30 days)")
    now = utcnow()
    starts = _moment(data.get("starts"), "starts", zone, problems) or now
    ends = _moment(data.get("ends"), "ends", zone, problems)
    if data.get("ends") in (None, ""):
        problems.append("ends: required, e.g. 2026-12-31 or 2026-12-31T20:00")
    if ends is not None and ends <= starts:
        problems.append("ends: must be after starts")
    if ends is not None and ends <= now:
        problems.append("ends: is in the past")
    stock = _whole(data, "stock", 0, 10_000_000, problems, "")
    limit = _whole(data, "limit_per_customer", 1, 1000, problems, "", default=1)
    fill_stage = str(data.get("fill_stage") or "")
    if fill_stage and fill_stage not in stage_ids:
        problems.append(f"fill_stage: unknown stage {fill_stage!r}; stages: {', '.join(stage_ids)}")
    fill_tags = tuple(str(tag) for tag in (data.get("fill_tags") or ()))
    missing = [tag for tag in fill_tags if tag not in tag_names]
    if missing:
        problems.append(f"fill_tags: not in the published tag catalog: {', '.join(missing)} "
                        "(add them to tags.yaml and run: scrm flows publish)")
    if problems:
        raise CampaignError("invalid campaign:\n  " + "\n  ".join(problems))
    assert price is not None and size is not None and hours is not None and ends is not None and stock is not None
    assert limit is not None
    return CampaignSpec(
        code, name, product, price, size, int(hours * 3600), starts, ends, stock, limit,
        bool(data.get("new_customers_only", False)), fill_stage, fill_tags,
    )


async def create_campaign(session: AsyncSession, spec: CampaignSpec) -> Campaign:
    if await campaign_by_code(session, spec.code) is not None:
        raise CampaignError(f"campaign {spec.code!r} already exists (scrm campaigns show {spec.code})")
    campaign = Campaign(
        code=spec.code, name=spec.name, product=spec.product, price_cents=spec.price_cents,
        group_size=spec.group_size, group_ttl_s=spec.group_ttl_s, starts_at=spec.starts_at, ends_at=spec.ends_at,
        stock=spec.stock, sold=0, limit_per_customer=spec.limit_per_customer,
        new_customers_only=spec.new_customers_only, fill_stage=spec.fill_stage, fill_tags=list(spec.fill_tags),
        status="open",
    )
    session.add(campaign)
    await session.flush()
    return campaign


async def campaign_by_code(session: AsyncSession, code: str) -> Campaign | None:
    return await session.scalar(select(Campaign).where(Campaign.code == code))


async def running_campaign(session: AsyncSession, now: datetime | None = None) -> Campaign | None:
    """The campaign a customer who says "开团" gets: open, inside its window, the newest first."""
    now = now or utcnow()
    return await session.scalar(
        select(Campaign)
        .where(Campaign.status == "open", Campaign.starts_at <= now, Campaign.ends_at > now)
        .order_by(Campaign.id.desc())
        .limit(1)
    )


async def close_campaign(session: AsyncSession, code: str) -> Campaign:
    """No new groups or joins; open groups reach their deadline now, so the scheduler tells their members."""
    campaign = await campaign_by_code(session, code)
    if campaign is None:
        raise CampaignError(f"no campaign {code!r} (scrm campaigns list)")
    if campaign.status == "closed":
        raise CampaignError(f"campaign {code!r} is already closed")
    campaign.status, campaign.closed_at = "closed", utcnow()
    await session.execute(
        update(GroupBuy).where(GroupBuy.campaign_id == campaign.id, GroupBuy.status == "open").values(deadline=utcnow())
        .execution_options(synchronize_session=False)
    )
    return campaign


async def campaign_stats(session: AsyncSession, campaign: Campaign) -> CampaignStats:
    counts = dict(
        (await session.execute(
            select(GroupBuy.status, func.count()).where(GroupBuy.campaign_id == campaign.id).group_by(GroupBuy.status)
        )).tuples().all()
    )
    members = await session.scalar(
        select(func.count()).select_from(GroupMember).where(GroupMember.campaign_id == campaign.id)
    )
    opened = sum(counts.values())
    closed = counts.get("filled", 0) + counts.get("expired", 0)
    return CampaignStats(
        campaign, opened, counts.get("open", 0), counts.get("filled", 0), counts.get("expired", 0), members or 0,
        counts.get("filled", 0) / closed if closed else None, counts,
    )


async def list_campaigns(session: AsyncSession) -> list[CampaignStats]:
    campaigns = (await session.scalars(select(Campaign).order_by(Campaign.id))).all()
    return [await campaign_stats(session, campaign) for campaign in campaigns]


def yuan(cents: int) -> str:
    return f"{Decimal(cents) / 100:.2f}"


def _price_cents(value: Any, problems: list[str]) -> int | None:
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        problems.append(f"price: {value!r} is not an amount in yuan (e.g. 59.90)")
        return None
    if value is None or not price.is_finite():
        problems.append("price: required, in yuan (e.g. 59.90)")
        return None
    if price < 0:
        problems.append(f"price: {value} is negative")
        return None
    if price != price.quantize(Decimal("0.01")):
        problems.append(f"price: {value} has more than 2 decimals (fen)")
        return None
    return int(price * 100)


def _number(data: Mapping[str, Any], key: str, problems: list[str]) -> float | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        problems.append(f"{key}: required, a number")
        return None
    try:
        return float(value)
    except ValueError:
        problems.append(f"{key}: {value!r} is not a number")
        return None


def _whole(
    data: Mapping[str, Any], key: str, low: int, high: int, problems: list[str], why: str, default: int | None = None
) -> int | None:
    value = data.get(key, default)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{key}: required, a whole number")
        return None
    if not low <= value <= high:
        problems.append(f"{key}: {value} is out of range {low}..{high}" + (f" ({why})" if why else ""))
        return None
    return value


def _moment(value: Any, key: str, zone: ZoneInfo, problems: list[str]) -> datetime | None:
    """ISO dates and times; a time without a zone is the brand's."""
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            problems.append(f"{key}: {value!r} is not a date/time like 2026-12-01 or 2026-12-01T20:00+08:00")
            return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.astimezone(UTC)
