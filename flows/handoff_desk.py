"""The handoff desk: hands customers to reps and takes them back.

In a customer's turn the engine asks the desk first whether a person has the customer
(then the bot stays silent), and afterwards whether the turn calls for a person (a flow's
handoff step, an intent such as want_human, two messages in a row not understood, a
high-value signal). Reps, the CLI and the scheduler act through the same methods. Every
method works in the caller's transaction and returns the effects to write with it: the
customer's messages, the rep's card, the kf session moves.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from core.events import LEAVING, KfState, Notify, Reply, SideEffect, ToRep
from crm_store import handoffs, media_items
from crm_store.conversations import active_conversation, end_conversation
from crm_store.customers import record
from crm_store.handoff_models import Handoff, Rep
from crm_store.handoff_settings import HandoffSettings
from crm_store.lifecycle import Lifecycle
from crm_store.models import Customer, as_utc, utcnow
from crm_store.office_hours import say_when
from crm_store.social import stats_of
from crm_store.tags import tags_of
from flows.turn import Turn

REASON_LABELS = {
    "want_human": "客户要求人工", "complain": "客户投诉", "complaint": "客户投诉", "low_confidence": "机器人连续没听懂",
    "high_value": "高价值客户", "order_status": "查询订单",
}


class DeskError(ValueError):
    """A rep or admin action that cannot be done, said so the person knows what to do."""


MEDIA_LABELS = {"image": "图片", "voice": "语音", "video": "视频", "file": "文件"}


class HandoffDesk:
    def __init__(self, settings: HandoffSettings, lifecycle: Lifecycle,
                 media_link: Callable[[int], str] | None = None) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.zone = ZoneInfo(settings.timezone)
        self.media_link = media_link  # a stored media item's id -> a signed link for the rep ("": none can be made)

    # ------------------------------------------------------------ in the customer's turn

    async def holds(self, turn: Turn) -> bool:
        """True when a person has the customer (or the event is the rep's): the bot says nothing."""
        event, session, customer = turn.event, turn.session, turn.customer
        none_open = turn.facts is not None and not turn.facts.open_handoff
        handoff = None if none_open else await handoffs.open_handoff_of(session, customer.id)
        now = utcnow()
        if event.kind == "rep_message":
            servicer = str(event.extra.get("servicer", ""))
            turn.note("rep.message", rep=servicer)
            if handoff is not None and servicer:
                if handoff.status != "taken":
                    handoffs.take(handoff, servicer, now, self.settings)
                    turn.note("handoff.taken", handoff=handoff.id, rep=servicer, how="answered in kf")
                handoffs.touch(handoff, now, self.settings, rep_spoke=True)
            return True
        if event.kind == "session_ended":
            if handoff is not None:
                turn.effects.extend(await self._close(session, handoff, customer, "wecom", tell_customer=False))
            return True
        if handoff is None:
            return False
        if event.kind in LEAVING:
            turn.effects.extend(await self._close(session, handoff, customer, "customer_left", tell_customer=False))
            return False
        if event.kind in ("message", "menu_click"):
            turn.note("handoff.customer_waiting" if handoff.status != "taken" else "handoff.customer_message",
                      handoff=handoff.id, rep=handoff.rep_userid or "")
        return True

    async def after_turn(self, turn: Turn) -> None:
        """Hand off when the turn calls for a person, unless a person already has the customer."""
        reason, detail = await self._reason(turn)
        if not reason:
            return
        if reason == "low_confidence":  # no third "please choose" after two misses: a person answers
            turn.effects[:] = [effect for effect in turn.effects if not isinstance(effect, Reply)]
        await self.hand_off(turn, reason, detail, say_connecting=not turn.handoff)

    async def _reason(self, turn: Turn) -> tuple[str, str]:
        if turn.handoff:
            return ("complain" if turn.handoff == "complaint" else turn.handoff), "flow"
        event, intent = turn.event, turn.intent
        if event.kind != "message":
            return "", ""
        if turn.fell_back and intent is not None and intent.name in self.settings.intents \
                and intent.confidence >= self.settings.low_confidence:  # no flow handles it: the desk does
            return intent.name, f"intent {intent.confidence:.2f}"
        if turn.fell_back and await self._misunderstood_twice(turn):
            return "low_confidence", "not understood twice in a row"
        return await self._high_value(turn)

    async def _misunderstood_twice(self, turn: Turn) -> bool:
        """This message and the one before both fell back below the confidence threshold."""
        confidence = turn.intent.confidence if turn.intent is not None else 0.0
        if confidence >= self.settings.low_confidence:
            return False
        turn.note("nlu.not_understood", confidence=round(confidence, 3))
        return await handoffs.previous_not_understood(turn.session, turn.customer.id)

    async def _high_value(self, turn: Turn) -> tuple[str, str]:
        signal = self.settings.high_value
        customer, session = turn.customer, turn.session
        found = ""
        if customer.stage in signal.stages:
            found = f"stage {self.lifecycle.label(customer.stage)}"
        keyword = next((word for word in signal.keywords if word and word in turn.event.text), "")
        if not found and keyword:
            found = f"said {keyword}"
        amount = _number(turn.slots.get(signal.amount_slot, ""))
        if not found and signal.amount_min is not None and amount is not None and amount >= signal.amount_min:
            found = f"{signal.amount_slot} {amount:g} yuan"
        if not found and signal.social_min is not None:
            stats = await stats_of(session, customer.id)
            if stats is not None and stats.score >= signal.social_min:
                found = f"social value {stats.score:g}"
        if not found:
            return "", ""
        since = utcnow() - timedelta(hours=signal.cooldown_h)
        if await handoffs.handed_off_since(session, customer.id, "high_value", since):
            return "", ""
        return "high_value", found

    async def hand_off(self, turn: Turn, reason: str, detail: str, say_connecting: bool = True) -> Handoff | None:
        event, session, customer, now = turn.event, turn.session, turn.customer, utcnow()
        kf = event.channel == "kf"
        handoff = await handoffs.start(
            session, customer, reason, now, detail=detail, intent=turn.intent.name if turn.intent else "",
            channel=event.channel, kf_account=event.account if kf else "", kf_customer=event.sender if kf else "",
        )
        if handoff is None:
            return None
        conversation = await active_conversation(session, customer.id)
        if conversation is not None:
            end_conversation(conversation, "handoff")
        texts = await handoffs.last_customer_texts(session, customer.id, self.settings.last_messages)
        routed = await handoffs.route(session, handoff, customer, self.settings, now, texts)
        turn.note("handoff.opened", handoff=handoff.id, reason=reason, detail=detail, rep=handoff.rep_userid or "",
                  why=routed.why)
        messages = self.settings.messages
        if routed.rep is not None:
            if say_connecting:
                turn.reply(messages.connecting)
            turn.effects.extend(await self._offer(session, handoff, customer, texts))
        elif routed.why == "closed" and routed.opens_at is not None:
            turn.reply(messages.queued.format(opens_at=say_when(routed.opens_at, now, self.zone)))
        else:
            turn.reply(messages.busy)
        return handoff

    # ------------------------------------------------------------ offers, cards, closing

    async def _offer(self, session: AsyncSession, handoff: Handoff, customer: Customer, texts: list[str],
                     escalated_from: str = "") -> list[SideEffect]:
        """The rep's card, and in kf the session moved to them (WeCom shows it in their workspace)."""
        assert handoff.rep_userid is not None
        media = await self._latest_media(session, customer.id)
        effects: list[SideEffect] = [await self.card(session, handoff, customer, texts, escalated_from, media)]
        if media is not None and self.settings.card_url:  # the card's own link is the customer's page: one more
            effects.append(ToRep(handoff.rep_userid, f'客户最近发来的{media[0]}：<a href="{media[1]}">查看</a>'))
        if handoff.kf_account and handoff.kf_customer:
            effects.append(KfState(customer.id, handoff.kf_account, handoff.kf_customer, 3, handoff.rep_userid))
        return effects

    async def _latest_media(self, session: AsyncSession, customer_id: int) -> tuple[str, str] | None:
        """What the customer last sent that is kept, and a link to it: (label, url); None without one."""
        item = None if self.media_link is None else await media_items.latest_stored(session, customer_id)
        url = self.media_link(item.id) if item is not None and self.media_link is not None else ""
        if item is None or not url:
            return None
        return MEDIA_LABELS.get(item.kind, "文件") + (f"「{item.filename[:40]}」" if item.filename else ""), url

    async def card(self, session: AsyncSession, handoff: Handoff, customer: Customer, texts: list[str],
                   escalated_from: str = "", media: tuple[str, str] | None = None) -> ToRep:
        """The textcard; with `media` (the latest kept item: label, link) a line names it and, unless handoff.card_url
        gives the card a link of its own, the card opens it."""
        assert handoff.rep_userid is not None
        tags = await tags_of(session, customer.id)
        stats = await stats_of(session, customer.id)
        name = customer.display_name or f"客户{customer.id}"
        reason = REASON_LABELS.get(handoff.reason, handoff.reason)
        lines = [
            f'<div class="gray">{reason}' + (f"（{handoff.detail}）" if handoff.detail not in ("", "flow") else "")
            + (f"，{escalated_from} 未接待，转给您" if escalated_from else "") + "</div>",
            f'<div class="normal">阶段：{self.lifecycle.label(customer.stage)}　社交价值：'
            f'{stats.score if stats else 0:g}</div>',
            f'<div class="normal">标签：{"、".join(tags) or "无"}</div>',
        ]
        if handoff.intent:
            lines.append(f'<div class="normal">意图：{handoff.intent}</div>')
        if media is not None:
            where = "见下条消息" if self.settings.card_url else "点「详情」查看"
            lines.append(f'<div class="normal">最近发来：{media[0]}（{where}）</div>')
        lines.extend(f'<div class="highlight">「{text[:60]}」</div>' for text in texts)
        lines.append(f"回复「接 {customer.id}」接待，「放 {customer.id}」交还机器人")
        url = self.settings.card_url.format(customer_id=customer.id) if self.settings.card_url else ""
        url = url or (media[1] if media is not None else "")
        return ToRep(handoff.rep_userid, "\n".join(lines), title=f"转人工：{name}（{self.lifecycle.label(customer.stage)}）",
                     url=url)

    async def _close(self, session: AsyncSession, handoff: Handoff, customer: Customer, by: str,
                     tell_customer: bool = True, message: str = "") -> list[SideEffect]:
        """Back to the bot: the customer told (unless they left), the rep told, the kf session ended."""
        rep = handoff.rep_userid
        was_with_rep = handoff.status in ("offered", "taken")
        handoffs.close(handoff, by, customer.stage, utcnow())
        text = (message or self.settings.messages.released) if tell_customer else ""
        await record(session, customer.id, "handoff.closed", {"handoff": handoff.id, "by": by, "rep": rep or "",
                                                              "told": text})
        effects: list[SideEffect] = []
        if was_with_rep and handoff.kf_account and handoff.kf_customer and by != "wecom":
            # while a rep has the kf session the API may not write to the customer: the closing words
            # go with the msg_code that ending the session returns
            effects.append(KfState(customer.id, handoff.kf_account, handoff.kf_customer, 4, farewell=text))
        elif text:
            effects.append(Notify(customer.id, text, reason="handoff.closed"))
        if rep and by != "rep":
            effects.append(ToRep(rep, f"{customer.display_name or '客户'}（{customer.id}）已交还机器人：{_BY.get(by, by)}"))
        return effects

    # ------------------------------------------------------------ reps, admins and the scheduler

    async def take(self, session: AsyncSession, rep_userid: str, customer_id: int) -> list[SideEffect]:
        rep, handoff, customer = await self._rep_handoff(session, rep_userid, customer_id)
        if handoff.status == "taken" and handoff.rep_userid != rep.userid:
            raise DeskError(f"{handoff.rep_userid} 已在接待客户 {customer_id}")
        moved = handoff.rep_userid != rep.userid
        handoffs.take(handoff, rep.userid, utcnow(), self.settings)
        await record(session, customer.id, "handoff.taken", {"handoff": handoff.id, "rep": rep.userid})
        effects: list[SideEffect] = [ToRep(rep.userid, f"已接待 {customer.display_name or '客户'}（{customer.id}）。"
                                                   f"结束时回复「放 {customer.id}」。")]
        if moved and handoff.kf_account and handoff.kf_customer:
            effects.append(KfState(customer.id, handoff.kf_account, handoff.kf_customer, 3, rep.userid))
        return effects

    async def release(self, session: AsyncSession, by_userid: str, customer_id: int, admin: bool = False
                      ) -> list[SideEffect]:
        """A rep (or an admin, with `admin`) gives the customer back to the bot."""
        if admin:
            customer = await _customer(session, customer_id)
            handoff = await handoffs.open_handoff_of(session, customer.id)
            if handoff is None:
                raise DeskError(f"customer {customer_id} is not handed off (see: scrm handoffs list)")
        else:
            rep, handoff, customer = await self._rep_handoff(session, by_userid, customer_id)
            if handoff.rep_userid not in (None, rep.userid):
                raise DeskError(f"客户 {customer_id} 由 {handoff.rep_userid} 接待，只有 TA 能交还")
        effects = await self._close(session, handoff, customer, "admin" if admin else "rep")
        if not admin:
            effects.append(ToRep(by_userid, f"已将客户 {customer.id} 交还机器人。"))
        return effects

    async def note(self, session: AsyncSession, rep_userid: str, customer_id: int, text: str) -> list[SideEffect]:
        rep = await _rep(session, rep_userid)
        customer = await _customer(session, customer_id)
        if not text.strip():
            raise DeskError(f"备注内容为空：回复「备注 {customer_id} 内容」")
        await record(session, customer.id, "rep.note", {"rep": rep.userid, "text": text.strip()[:1000]})
        return [ToRep(rep.userid, f"已为客户 {customer.id} 记下备注。")]

    async def reply(self, session: AsyncSession, rep_userid: str, customer_id: int, text: str) -> list[SideEffect]:
        """A rep answers through the app (OA customers; kf customers are answered in the kf workspace)."""
        rep, handoff, customer = await self._rep_handoff(session, rep_userid, customer_id)
        if handoff.kf_account:
            raise DeskError(f"客户 {customer_id} 在微信客服中：请在微信客服工作台直接回复")
        if not text.strip():
            raise DeskError(f"回复内容为空：回复「回复 {customer_id} 内容」")
        now = utcnow()
        if handoff.status != "taken":
            handoffs.take(handoff, rep.userid, now, self.settings)
        handoffs.touch(handoff, now, self.settings, rep_spoke=True)
        await record(session, customer.id, "rep.message", {"rep": rep.userid, "text": text.strip()[:500]})
        return [Notify(customer.id, text.strip(), reason="rep.message")]

    async def _rep_handoff(self, session: AsyncSession, rep_userid: str, customer_id: int
                           ) -> tuple[Rep, Handoff, Customer]:
        rep = await _rep(session, rep_userid)
        customer = await _customer(session, customer_id)
        handoff = await handoffs.open_handoff_of(session, customer.id)
        if handoff is None:
            raise DeskError(f"客户 {customer_id} 当前没有转人工（机器人正在服务）")
        return rep, handoff, customer

    async def due(self, session: AsyncSession, handoff: Handoff, now: datetime) -> list[SideEffect]:
        """What the scheduler does with a handoff whose time came: look again, escalate, or give back."""
        customer = await session.get(Customer, handoff.customer_id)
        assert customer is not None
        age = (now - as_utc(handoff.created_at)).total_seconds()
        returned = self.settings.messages.returned
        if handoff.status == "taken":
            return await self._close(session, handoff, customer, "timeout", message=returned)
        if age >= self.settings.queued_give_up_s or (
                handoff.status == "offered" and age >= self.settings.idle_release_s):
            return await self._close(session, handoff, customer, "unanswered", message=returned)
        previous = handoff.rep_userid or ""
        texts = await handoffs.last_customer_texts(session, customer.id, self.settings.last_messages)
        routed = await handoffs.route(session, handoff, customer, self.settings, now, texts)
        if routed.rep is None and previous:  # nobody else: remind the same rep, who keeps it
            rep = await session.get(Rep, previous)
            if rep is not None and rep.active:
                handoff.status, handoff.rep_userid = "offered", previous
                handoff.due_at = now + timedelta(seconds=self.settings.answer_within_s)
                await record(session, customer.id, "handoff.reminded", {"handoff": handoff.id, "rep": previous})
                return [ToRep(previous, f"提醒：客户 {customer.id} 仍在等待，回复「接 {customer.id}」接待。")]
        if routed.rep is None:
            return []
        kind = "handoff.escalated" if previous else "handoff.offered"
        await record(session, customer.id, kind, {"handoff": handoff.id, "from": previous, "rep": routed.rep.userid,
                                                  "why": routed.why})
        effects = await self._offer(session, handoff, customer, texts, escalated_from=previous)
        if previous and previous != routed.rep.userid:
            effects.append(ToRep(previous, f"客户 {customer.id} 超时未接待，已转给 {routed.rep.name or routed.rep.userid}。"))
        return effects

    async def reassign(self, session: AsyncSession, handoff: Handoff, left_userid: str, now: datetime
                       ) -> list[SideEffect]:
        """The rep left the company: their open handoff goes to someone else (or back to the queue)."""
        customer = await session.get(Customer, handoff.customer_id)
        assert customer is not None
        handoff.tried = [*handoff.tried, left_userid]
        handoff.status, handoff.rep_userid = "queued", None
        texts = await handoffs.last_customer_texts(session, customer.id, self.settings.last_messages)
        routed = await handoffs.route(session, handoff, customer, self.settings, now, texts)
        await record(session, customer.id, "handoff.reassigned", {"handoff": handoff.id, "from": left_userid,
                                                                  "rep": routed.rep.userid if routed.rep else ""})
        if routed.rep is None:
            return []
        return await self._offer(session, handoff, customer, texts, escalated_from=left_userid)


_BY = {"timeout": "长时间无回复", "unanswered": "无人接待", "admin": "管理员操作", "customer_left": "客户已离开",
       "wecom": "会话已结束", "rep_left": "接待人员已离职"}


async def _rep(session: AsyncSession, userid: str) -> Rep:
    rep = await session.get(Rep, userid)
    if rep is None or not rep.active:
        raise DeskError("你还不是客服代表，请联系管理员添加（scrm reps add）")
    return rep


async def _customer(session: AsyncSession, customer_id: int) -> Customer:
    customer = await session.get(Customer, customer_id)
    while customer is not None and customer.merged_into_id is not None:
        customer = await session.get(Customer, customer.merged_into_id)
    if customer is None:
        raise DeskError(f"没有编号为 {customer_id} 的客户")
    return customer


def _number(text: str) -> float | None:
    cleaned = text.replace(",", "").replace("元", "").replace("¥", "").strip()
    try:
        return float(cleaned)
    except ValueError:
        return None


