"""The soak's customers: kf and OA people chatting, group-buy rushes with invited friends, and probes.

Each person behaves as one does on WeChat: arrives (follows the OA, or opens the kf chat,
maybe through a friend's invite), sends a message, waits for the answer (at most `patience`
seconds), thinks a moment, sends the next. WeChat's side is played as WeChat plays it: a
callback not answered 200 within 5 s is sent again after a short wait, up to 3 times; a kf
callback is only a wake-up (the message itself waits in the fake's kf/sync_msg, so a later
pull still finds it). A few callbacks are sent twice on purpose, as WeChat does when our
answer was slow. Every message and arrival is kept as a `Turn`, with the inbox key its
callback will be stored under, for the audit.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import secrets
import time
from dataclasses import dataclass, field

import aiohttp

from bench.flows import SCRIPTS, text_pools
from bench.ingest import CORP, KEYS, OA_APP
from bench.soak_bot import KF, SoakFake
from bot.sandbox import wechat_side
from bot.sandbox.wechat_side import SignedCallback

OA_ID = "gh_soak"
CALLBACK_TIMEOUT_S = 5.0  # WeChat gives a callback 5 s
RETRIES, RETRY_WAIT_S = 3, 3.0  # then sends it again, up to 3 times
RESEND_SHARE = 0.05  # callbacks WeChat sends a second time although the first was answered
SKIPPED_SCRIPTS = ("complaint", "person", "unsubscribe")  # handoffs and opt-outs: not what the soak is about
CODE_PATIENCE_S = 60.0  # someone waiting for their invite or group code waits longer than for small talk
GROUP_CODE = re.compile(r"团号 ?([0-9A-Za-z]{4,12})")
INVITE_CODE = re.compile(r"邀请码：([0-9A-Za-z]{4,12})")


@dataclass(frozen=True)
class Turn:
    """A message or an arrival a customer sent, and the inbox key the bot stores it under."""

    user: str
    channel: str  # kf | oa
    kind: str  # message | arrival
    inbox_key: str
    sent_at: float  # time.time()
    accepted: bool  # some callback got a 200 (a kf message is pulled later even when not)


@dataclass
class CallbackStats:
    sent: int = 0
    retried: int = 0  # resends after no 200
    given_up: int = 0  # no 200 after every resend
    resent_on_purpose: int = 0


@dataclass
class GrowthStats:
    families: int = 0  # an inviter, friends arriving through the invite, a group among them
    invite_codes: int = 0
    groups_opened: int = 0
    joins_tried: int = 0
    no_code: int = 0  # the leader or inviter got no code back within patience


class WeChatSide:
    """Callbacks as WeChat sends them, to the bot's web process."""

    def __init__(self, base: str, fake: SoakFake, http: aiohttp.ClientSession, rng: random.Random) -> None:
        self.base = base
        self.fake = fake
        self.http = http
        self.rng = rng
        self.stats = CallbackStats()
        self.turns: list[Turn] = []
        self._msg_ids = itertools.count(rng.randrange(10**12) * 1000)
        self._background: set[asyncio.Task[bool]] = set()

    async def post(self, path: str, signed: SignedCallback) -> bool:
        """True once a 200 came back; up to RETRIES resends after a short wait otherwise."""
        self.stats.sent += 1
        for attempt in range(1 + RETRIES):
            if attempt:
                self.stats.retried += 1
                await asyncio.sleep(RETRY_WAIT_S)
            if await self._once(path, signed):
                if self.rng.random() < RESEND_SHARE:
                    self.stats.resent_on_purpose += 1
                    task = asyncio.create_task(self._once(path, signed))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
                return True
        self.stats.given_up += 1
        return False

    async def drain(self) -> None:
        """Wait for the callbacks sent a second time on purpose, before the HTTP session closes."""
        await asyncio.gather(*self._background)

    async def _once(self, path: str, signed: SignedCallback) -> bool:
        try:
            async with self.http.post(self.base + path, params=signed.query, data=signed.body,
                                      timeout=aiohttp.ClientTimeout(total=CALLBACK_TIMEOUT_S)) as response:
                await response.read()
                return response.status == 200
        except (TimeoutError, aiohttp.ClientError):
            return False

    async def _record(self, user: str, channel: str, kind: str, key: str, path: str,
                      signed: SignedCallback) -> Turn:
        sent_at = time.time()
        turn = Turn(user, channel, kind, key, sent_at, await self.post(path, signed))
        self.turns.append(turn)
        return turn

    async def say(self, user: str, channel: str, text: str) -> Turn:
        if channel == "kf":
            msgid = self.fake.add_kf_text(KF, user, text)
            return await self._kf_wake(user, "message", f"kf:{msgid}")
        msg_id = next(self._msg_ids)
        self.fake.oa_customer_acted(user, "message")  # the fake runs in this process and never sees OA callbacks
        xml = wechat_side.oa_text_xml(OA_ID, user, text, msg_id=msg_id)
        return await self._record(user, "oa", "message", f"oa:{msg_id}", "/oa/callback",
                                  wechat_side.sign_oa(*KEYS["oa"], OA_APP, xml, "safe"))

    async def arrive(self, user: str, channel: str, scene: str = "") -> Turn:
        """kf: the customer opens the chat (enter_session, through a link's scene); OA: follows."""
        if channel == "kf":
            self.fake.add_kf_enter_session(KF, user, scene)
            return await self._kf_wake(user, "arrival", f"kf:{self.fake.kf_messages[KF][-1]['msgid']}")
        created = int(time.time())
        self.fake.oa_customer_acted(user, "subscribe")
        xml = wechat_side.oa_event_xml(OA_ID, user, "subscribe", f"qrscene_{scene}" if scene else "", created)
        return await self._record(user, "oa", "arrival", f"oa:{user}:{created}:subscribe", "/oa/callback",
                                  wechat_side.sign_oa(*KEYS["oa"], OA_APP, xml, "safe"))

    async def _kf_wake(self, user: str, kind: str, key: str) -> Turn:
        xml = wechat_side.kf_notification_xml(CORP, KF, secrets.token_hex(8))
        return await self._record(user, "kf", kind, key, "/wecom/kf/callback",
                                  wechat_side.sign_wecom(*KEYS["kf"], CORP, xml))


@dataclass
class Person:
    user: str
    channel: str
    seen: int = 0  # replies read so far

    @classmethod
    def new(cls, channel: str, name: str) -> Person:
        return cls(f"{'wm' if channel == 'kf' else 'o'}Soak{name}", channel)


@dataclass
class Crowd:
    """Everyone the soak plays, on one WeChat side; `running` until the load ends."""

    side: WeChatSide
    fake: SoakFake
    rng: random.Random
    patience_s: float
    load_until: float = 0.0
    growth: GrowthStats = field(default_factory=GrowthStats)
    _names: itertools.count[int] = field(default_factory=itertools.count)
    _pools: dict[str, list[str]] = field(default_factory=text_pools)

    @property
    def running(self) -> bool:
        return time.time() < self.load_until

    def person(self, channel: str | None = None) -> Person:
        return Person.new(channel or self.rng.choice(("kf", "oa")), str(next(self._names)))

    async def say(self, person: Person, text: str) -> list[str]:
        """Send and wait for the answer (the replies that came, possibly none)."""
        await self.side.say(person.user, person.channel, text)
        return await self._answer(person)

    async def arrive(self, person: Person, scene: str = "") -> list[str]:
        await self.side.arrive(person.user, person.channel, scene)
        return await self._answer(person)

    async def _answer(self, person: Person) -> list[str]:
        await self.fake.reply_after(person.user, person.seen, self.patience_s)
        await asyncio.sleep(0.3)  # a turn's second and third messages follow the first
        replies = self.fake.replies_since(person.user, person.seen)
        person.seen += len(replies)
        return replies

    async def think(self, low: float = 1.0, high: float = 3.0) -> None:
        await asyncio.sleep(self.rng.uniform(low, high))

    # ------------------------------------------------------------ chatters

    def script(self) -> list[str]:
        names = [name for name in SCRIPTS if name not in SKIPPED_SCRIPTS]
        name = self.rng.choices(names, [SCRIPTS[n][1] for n in names])[0]
        return [self.rng.choice(self._pools[kind]) for kind in SCRIPTS[name][0]]

    async def chatter(self) -> None:
        """Conversation after conversation, a new customer each, until the load ends."""
        while self.running:
            person = self.person()
            await self.arrive(person)
            turns = self.script()
            if self.rng.random() < 0.3:  # answers the welcome menu with a number first
                turns.insert(0, self.rng.choice(("1", "2", "3")))
            for text in turns:
                if not self.running:
                    return
                await self.think()
                await self.say(person, text)
            await self.think(2.0, 6.0)

    # ------------------------------------------------------------ growth: invites and group-buys

    async def family(self, rushers: int) -> None:
        """An inviter shows their code; three friends arrive through it (kf: the link, OA: typed);
        one opens a group, the others and `rushers` strangers try to join it at the same moment."""
        self.growth.families += 1
        inviter = self.person()
        await self.arrive(inviter)
        await self.think()
        code = await self._code(inviter, INVITE_CODE, await self.say(inviter, "邀请好友"))
        if code is None:
            self.growth.no_code += 1
            return
        self.growth.invite_codes += 1
        friends = await asyncio.gather(*(self._invited(code) for _ in range(3)))
        leader, *joiners = friends
        group = await self._code(leader, GROUP_CODE, await self.say(leader, "我要开团"))
        if group is None:
            self.growth.no_code += 1
            return
        self.growth.groups_opened += 1
        strangers = [self.person() for _ in range(rushers)]
        await asyncio.gather(*(self.arrive(person) for person in strangers))
        await asyncio.gather(*(self._join(person, group) for person in joiners + strangers))  # all at once

    async def _code(self, person: Person, pattern: re.Pattern[str], replies: list[str]) -> str | None:
        """The code in the replies, waiting up to CODE_PATIENCE_S more for it."""
        deadline = time.time() + CODE_PATIENCE_S
        while (found := _first(pattern, replies)) is None and time.time() < deadline:
            if await self.fake.reply_after(person.user, person.seen, deadline - time.time()):
                replies = self.fake.replies_since(person.user, person.seen)
                person.seen += len(replies)
        return found

    async def _invited(self, code: str) -> Person:
        friend = self.person()
        if friend.channel == "kf":
            await self.arrive(friend, f"inv_{code}")
        else:
            await self.arrive(friend)
            await self.think()
            await self.say(friend, f"邀请码 {code}")
        await self.think()
        return friend

    async def _join(self, person: Person, group: str) -> None:
        self.growth.joins_tried += 1
        await self.say(person, f"参团 {group}")

    # ------------------------------------------------------------ probes

    async def probe(self, person: Person, deadline: float, wait_s: float = 10.0) -> float | None:
        """Write 你好 until one is answered (each waits `wait_s`); when the answer came, or None by `deadline`."""
        seen = self.fake.replies[person.user]
        while time.time() < deadline:
            await self.side.say(person.user, person.channel, "你好")
            if await self.fake.reply_after(person.user, seen, min(wait_s, max(deadline - time.time(), 0.1))):
                person.seen = self.fake.replies[person.user]
                return time.time()
        return None


def _first(pattern: re.Pattern[str], replies: list[str]) -> str | None:
    for reply in replies:
        found = pattern.search(reply)
        if found:
            return found.group(1)
    return None
