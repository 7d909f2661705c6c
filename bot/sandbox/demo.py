"""What `scrm demo` seeds: a store ready for a tour of the sandbox, made through the product itself.

Each part is made with the store function its own command uses — crm_store.reps (`scrm reps
add`), crm_store.campaigns (`scrm campaigns create`), crm_store.enrolments (`scrm sequences
publish`), bot.channel_api and crm_store.channels (`scrm channels create`) — and a part that is
there already is reported, not made twice. The customers' history is not written into tables:
it is chatted. The sandbox's simulator plays WeChat for three customers against the real app on
a loopback port (signed callbacks, inbox, pipeline, outbox, the fake WeCom API), so their
timelines, tags, stages, group, referral, rewards and handoff are what real conversations leave.

    小美  arrives through the demo channel, opens a group (开团) and asks for her invite code
    阿杰  opens 小美's invite link and joins her group (参团 <code>): it fills, both buy (成交),
          小美 earns the referral rewards and 阿杰 the newcomer's one
    老王  arrives through the channel, asks a price (意向: the nurture sequence new_lead enrols
          him), complains (投诉): a rep takes him, answers in the kf workspace and ends the session

The app's workers run while it plays, so what it stores is claimed by it at once: a `scrm serve`
on the same store (the usual case: it suggested the demo) does not take the demo's messages. The
other way round holds only as long as nobody chats in that sandbox during the seconds the demo
plays: its workers poll the same queues.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from bot.app import FAKE_WECHAT, create_app
from bot.channel_api import create_entry_point
from bot.runtime import RUNTIME, Runtime
from bot.sandbox.fake_wechat import FakeWeChat
from bot.sandbox.simulator import SANDBOX_KF_ACCOUNT, SIMULATOR, Simulator
from bot.settings import Settings
from core.sequences import NurtureSequence
from crm_store import enrolments, group_buys, handoffs, referrals
from crm_store.campaigns import campaign_by_code, create_campaign, running_campaign, spec_from_mapping, yuan
from crm_store.channels import ChannelSpec, add_channel, list_channels
from crm_store.codes import CHANNEL_PREFIX, INVITE_PREFIX, new_code
from crm_store.customer_queries import find_customers
from crm_store.customers import find_identity
from crm_store.lifecycle import Lifecycle
from crm_store.models import as_utc, utcnow
from crm_store.office_hours import ALWAYS
from crm_store.reps import add_rep, get_rep, is_on
from crm_store.tags import tag_counts
from flows.publishing import publish_if_unpublished
from flows.releases import get_release

CAMPAIGN = {"code": "demo-nuts", "name": "坚果礼盒双人团", "product": "坚果礼盒", "price": "59.90", "group_size": 2,
            "group_hours": 24, "stock": 200}
CAMPAIGN_DAYS = 30  # the campaign runs this long from the demo
FILL_TAGS = ("拼团成功",)  # when in the catalog (the shipped tags.yaml has it)
REPS = (("zhangsan", "张三"), ("lisi", "李四"))  # the rep page opens as zhangsan; 老王's complaint goes to lisi
CHANNEL = ChannelSpec("演示海报", "kf_link", welcome_flow="welcome_kf", cost_cents=30_000,
                      kf_account=SANDBOX_KF_ACCOUNT)
XIAOMEI, AJIE, LAOWANG = "wmDemoXiaomei", "wmDemoAjie", "wmDemoLaowang"
NAMES = {XIAOMEI: "小美", AJIE: "阿杰", LAOWANG: "老王"}
TOUR_FLOWS = ("group_buy_entry", "invite_entry", "complaint", "human")  # what the tour's words start


class DemoError(Exception):
    """The demo could not make a part; what it made before stays (a second run reports it)."""


@dataclass(frozen=True)
class Part:
    """One thing the demo made, or found there already (`made` False)."""

    kind: str  # flows, rep, campaign, sequence, channel, customers
    made: bool
    text: str


async def has_customers(session: AsyncSession) -> bool:
    """Anyone in the store? `scrm demo` seeds only a new store, and `scrm serve` suggests it there."""
    return bool(await find_customers(session, limit=1))


def demo_settings(settings: Settings) -> Settings:
    """The configured store, flows, lifecycle and growth; in-process state, keyword NLU (the script's words
    are keywords: no Rasa to start), the fake API on a free port, quick retries."""

    def section(name: str, **values: object) -> object:
        return getattr(settings, name).model_copy(update=values)

    return settings.model_copy(update={
        "redis": section("redis", url=""),
        "sandbox": section("sandbox", enabled=True, api_port=0),
        "nlu": section("nlu", mode="rules"),
        "flows": section("flows", publish_on_start=False),
        "worker": section("worker", poll_interval_s=0.05, retry_base_s=0.05),
    })


@dataclass
class SandboxBot:
    """The real app serving on a loopback port, and WeChat's side of it."""

    runtime: Runtime
    simulator: Simulator
    fake: FakeWeChat
    url: str

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        async with self.runtime.sessions() as session, session.begin():
            yield session

    async def settle(self, status: int = 200) -> None:
        """After a callback (answered `status`): every turn and send it caused is done."""
        if status != 200:
            raise DemoError(f"the bot answered a sandbox callback with HTTP {status}")
        await self.runtime.drain()


@asynccontextmanager
async def playing(settings: Settings) -> AsyncIterator[SandboxBot]:
    """The app with its workers running, on a free loopback port, until the block ends."""
    app = create_app(settings, run_workers=True)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        yield SandboxBot(app[RUNTIME], app[SIMULATOR], app[FAKE_WECHAT], url)
    finally:
        await runner.cleanup()


async def seed(
    settings: Settings, sequences: Mapping[str, NurtureSequence], sources: Mapping[str, str]
) -> list[Part]:
    """Every part, in the order they need each other (the campaign's tags come with the flows' release)."""
    async with playing(demo_settings(settings)) as bot:
        parts = [await _flows(bot), *await _reps(bot), await _campaign(bot),
                 *await _sequences(bot, sequences, sources)]
        code, part = await _channel(bot)
        parts += [part, await History(bot, code).play()]
    return parts


async def _flows(bot: SandboxBot) -> Part:
    settings = bot.runtime.settings
    published = await publish_if_unpublished(bot.runtime.sessions, settings.flows, settings.lifecycle,
                                             settings.nlu)
    async with bot.transaction() as session:
        try:
            release = await get_release(session)
        except LookupError:
            raise DemoError(f"the flows in {settings.flows.directory} do not validate: "
                            "see scrm flows validate") from None
    missing = [flow for flow in TOUR_FLOWS if flow not in release.versions]
    note = f"; the tour needs flows it lacks: {', '.join(missing)}" if missing else ""
    if published is None:
        return Part("flows", False, f"release {release.id} published already{note}")
    return Part("flows", True, f"release {release.id} published from {settings.flows.directory}{note}")


async def _reps(bot: SandboxBot) -> list[Part]:
    handoff = bot.runtime.settings.handoff
    office, zone = handoff.hours, ZoneInfo(handoff.timezone)
    parts = []
    async with bot.transaction() as session:
        for userid, name in REPS:
            rep = await get_rep(session, userid)
            if rep is None or not rep.active:
                await add_rep(session, userid, name, hours=ALWAYS)
                parts.append(Part("rep", True, f"{userid} {name}: on duty around the clock ({ALWAYS})"))
                continue
            hours = rep.hours or f"office hours {office.text}"
            on = "on now" if is_on(rep, utcnow(), office, zone) else \
                f"NOT on now (on duty: {'yes' if rep.on_duty else 'no'}, {hours}): handoffs wait for them"
            parts.append(Part("rep", False, f"{userid} {rep.name or name}: there already, {on}"))
    return parts


async def _campaign(bot: SandboxBot) -> Part:
    settings = bot.runtime.settings
    zone = ZoneInfo(settings.growth.timezone)
    async with bot.transaction() as session:
        campaign = await campaign_by_code(session, str(CAMPAIGN["code"]))
        made = campaign is None
        if campaign is None:
            catalog = {count.tag for count in await tag_counts(session)}
            stages = Lifecycle(settings.lifecycle).stage_ids
            ends = f"{datetime.now(zone) + timedelta(days=CAMPAIGN_DAYS):%Y-%m-%dT%H:%M}"
            data = {**CAMPAIGN, "ends": ends, "fill_tags": [tag for tag in FILL_TAGS if tag in catalog],
                    "fill_stage": next((s for s in settings.growth.purchase_stages if s in stages), "")}
            spec = spec_from_mapping(data, stages, sorted(catalog), zone.key)
            campaign = await create_campaign(session, spec)
        running = await running_campaign(session)
    until = as_utc(campaign.ends_at).astimezone(zone)
    text = (f"{campaign.code} {campaign.name}: {campaign.group_size} people, ¥{yuan(campaign.price_cents)}, "
            f"{campaign.group_ttl_s / 3600:g} h to fill, until {until:%Y-%m-%d %H:%M}")
    if running is None or running.id != campaign.id:
        text += f"; NOTE: 开团 opens a group of {running.code if running else 'no campaign (none is running)'}"
    return Part("campaign", made, text + ("" if made else " (there already)"))


async def _sequences(bot: SandboxBot, sequences: Mapping[str, NurtureSequence], sources: Mapping[str, str]
                     ) -> list[Part]:
    async with bot.transaction() as session:
        published = await enrolments.publish(session, sequences, sources, by="scrm demo")
    return [Part("sequence", one.changed, f"{one.name} v{one.version} " + ("published" if one.changed else
                 "published already")) for one in published]


async def _channel(bot: SandboxBot) -> tuple[str, Part]:
    """The demo's kf link (a fake one: the sandbox's API makes it), welcoming with the kf welcome flow."""
    stages = bot.runtime.settings.growth.purchase_stages
    async with bot.transaction() as session:
        found = next((c for c in await list_channels(session, stages) if c.name == CHANNEL.name), None)
        flows = (await get_release(session)).versions
    if found is not None:
        return found.code, Part("channel", False, f"{found.code} {found.name} ({found.kind}) there already")
    spec = CHANNEL if CHANNEL.welcome_flow in flows else replace(CHANNEL, welcome_flow="")
    code = CHANNEL_PREFIX + new_code(8)
    point = await create_entry_point(bot.runtime.apis, spec.kind, code, spec.reps, spec.kf_account)
    async with bot.transaction() as session:
        await add_channel(session, spec, code, point.config_id, point.url, spec.reps)
    welcome = f", welcomes with {spec.welcome_flow}" if spec.welcome_flow else ""
    cost = f"cost ¥{spec.cost_cents / 100:g}"
    return code, Part("channel", True, f"{code} {spec.name} (kf link, {cost}{welcome})")


class History:
    """Three customers chat through the sandbox (the module's docstring says what they do)."""

    def __init__(self, bot: SandboxBot, channel_code: str) -> None:
        self.bot = bot
        self.channel_code = channel_code

    async def play(self) -> Part:
        if await self._customer_id(XIAOMEI) is not None:
            return Part("customers", False, "小美, 阿杰 and 老王 are there already: "
                        "their history is not played again")
        self.bot.fake.contacts.update({user: {"name": name} for user, name in NAMES.items()})
        group, invite = await self._group_and_invite()
        rep = await self._complaint()
        served = f"{rep} took him, answered and ended the session" if rep else "no rep took him (none on now)"
        return Part("customers", True, f"小美 (through the channel) opened group {group}; 阿杰 came by her "
                    f"invite code {invite} and filled it: both bought, 小美 earned her rewards; 老王 asked a "
                    f"price (意向: nurture sequence), then complained: {served}")

    async def _group_and_invite(self) -> tuple[str, str]:
        await self._enter(XIAOMEI, self.channel_code)
        await self._say(XIAOMEI, "开团")
        async with self.bot.transaction() as session:
            groups = await group_buys.groups_of(session, await self._id(XIAOMEI), limit=1)
        if not groups:
            raise DemoError("小美's 开团 opened no group (is a campaign running? see scrm campaigns list)")
        await self._say(XIAOMEI, "邀请好友")
        async with self.bot.transaction() as session:
            invite = await referrals.invite_code_for(session, await self._id(XIAOMEI))
        await self._enter(AJIE, INVITE_PREFIX + invite)  # 阿杰 opens 小美's invite link
        await self._say(AJIE, f"参团 {groups[0].code}")
        return groups[0].code, invite

    async def _complaint(self) -> str:
        """老王's price question, then a complaint; the rep it reaches takes him ("" when none did)."""
        await self._enter(LAOWANG, self.channel_code)
        await self._say(LAOWANG, "坚果礼盒多少钱")  # 意向: enrolled in the sequences that watch for it
        if self.bot.runtime.nurture is not None:
            await self.bot.runtime.nurture.run_due()  # their first message, unless quiet hours hold it
            await self.bot.settle()
        await self._say(LAOWANG, "不用了")  # no to the coupon offered: a reply to the sequence too
        await self._say(LAOWANG, "投诉：有一袋坚果是坏的")
        customer_id = await self._id(LAOWANG)
        async with self.bot.transaction() as session:
            handoff = await handoffs.open_handoff_of(session, customer_id)
        rep = handoff.rep_userid if handoff is not None else None
        if not rep:
            return ""
        simulator, url, name = self.bot.simulator, self.bot.url, dict(REPS).get(rep, rep)
        await self.bot.settle(await simulator.rep_says(url, rep, f"接 {customer_id}"))
        await self.bot.settle(await simulator.rep_answers(url, rep, LAOWANG, f"您好，我是{name}，马上为您补发一袋，今天发出。"))
        await self._say(LAOWANG, "好的，谢谢！")
        await self.bot.settle(await simulator.rep_ends(url, rep, LAOWANG))
        return f"{rep} {name}"

    async def _enter(self, user: str, scene: str) -> None:
        await self.bot.settle(await self.bot.simulator.kf_enters(self.bot.url, user, scene))

    async def _say(self, user: str, text: str) -> None:
        await self.bot.settle(await self.bot.simulator.kf_says(self.bot.url, user, text))

    async def _customer_id(self, user: str) -> int | None:
        async with self.bot.runtime.sessions() as session:
            identity = await find_identity(session, "wecom", user)
        return None if identity is None else identity.customer_id

    async def _id(self, user: str) -> int:
        customer_id = await self._customer_id(user)
        if customer_id is None:
            raise DemoError(f"{NAMES[user]}'s messages made no customer: see the log above")
        return customer_id
