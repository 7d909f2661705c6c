"""What reps type in the WeCom self-built app: take, release, note, reply, list.

    接 42 / take 42          take customer 42 over (also a customer offered to someone else)
    放 42 / release 42       give customer 42 back to the bot
    备注 42 … / note 42 …     a note on customer 42's timeline
    回复 42 … / reply 42 …    answer an OA customer through the bot (kf customers: the kf workspace)
    列表 / list              my customers waiting or in service
Plain text from a rep serving exactly one OA customer is a reply to them. Anything else
gets the list of commands back, and someone who is not a rep is told so: nothing stuck.
"""

from __future__ import annotations

import re

from sqlalchemy.ext.asyncio import AsyncSession

from core.events import InboundEvent, SideEffect, ToRep
from crm_store import handoffs
from crm_store.handoff_models import Rep
from crm_store.models import Customer
from flows.handoff_desk import DeskError, HandoffDesk

VERBS = {
    "接": "take", "take": "take", "放": "release", "release": "release", "备注": "note", "note": "note",
    "回复": "reply", "reply": "reply", "列表": "list", "list": "list", "帮助": "help", "help": "help",
}
COMMAND = re.compile(r"^\s*(?P<verb>接|放|备注|回复|列表|帮助|take|release|note|reply|list|help)"
                     r"\s*(?P<id>\d+)?\s*(?P<rest>.*)$", re.IGNORECASE | re.DOTALL)
HELP = ("可用指令：\n接 客户编号 —— 接待\n放 客户编号 —— 交还机器人\n备注 客户编号 内容\n"
        "回复 客户编号 内容（公众号客户）\n列表 —— 我的客户")


class RepCommands:
    def __init__(self, desk: HandoffDesk) -> None:
        self.desk = desk

    async def handle(self, session: AsyncSession, event: InboundEvent) -> list[SideEffect]:
        userid, text = event.sender, event.text.strip()
        if event.kind != "message" or not text:
            return []
        try:
            return await self._run(session, userid, text)
        except DeskError as exc:
            return [ToRep(userid, str(exc))]

    async def _run(self, session: AsyncSession, userid: str, text: str) -> list[SideEffect]:
        rep = await session.get(Rep, userid)
        if rep is None or not rep.active:
            return [ToRep(userid, "你还不是客服代表，请联系管理员添加（scrm reps add）。")]
        match = COMMAND.match(text)
        if match is None:
            return await self._plain_text(session, rep, text)
        verb, rest = VERBS[match["verb"].lower()], match["rest"].strip()
        if verb == "help":
            return [ToRep(userid, HELP)]
        if verb == "list":
            return [ToRep(userid, await self._list(session, userid))]
        if match["id"] is None:
            raise DeskError(f"请写上客户编号，例如「{match['verb']} 42」。\n{HELP}")
        customer_id = int(match["id"])
        if verb == "take":
            return await self.desk.take(session, userid, customer_id)
        if verb == "release":
            return await self.desk.release(session, userid, customer_id)
        if verb == "note":
            return await self.desk.note(session, userid, customer_id, rest)
        return await self.desk.reply(session, userid, customer_id, rest)

    async def _plain_text(self, session: AsyncSession, rep: Rep, text: str) -> list[SideEffect]:
        serving = [h for h in await handoffs.handoffs_of_rep(session, rep.userid, ("taken",)) if not h.kf_account]
        if len(serving) == 1:
            return await self.desk.reply(session, rep.userid, serving[0].customer_id, text)
        return [ToRep(rep.userid, HELP)]

    async def _list(self, session: AsyncSession, userid: str) -> str:
        mine = await handoffs.handoffs_of_rep(session, userid)
        if not mine:
            return "你当前没有待接待或接待中的客户。"
        lines = []
        for handoff in mine:
            customer = await session.get(Customer, handoff.customer_id)
            name = customer.display_name if customer is not None else ""
            state = "接待中" if handoff.status == "taken" else "待接待"
            lines.append(f"{handoff.customer_id} {name or '客户'}：{state}（{handoff.reason}）")
        return "\n".join(lines)
