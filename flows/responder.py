"""The built-in responder: welcomes, answers greetings, and tells everyone else a person will follow up."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from core.events import LEAVING, Effect, InboundEvent, MenuItem, Note, Reply
from crm_store.models import Customer
from flows.pipeline import Next
from flows.turn import Turn

if TYPE_CHECKING:
    from nlu.intent import Intent

WELCOME = "你好{name}，欢迎光临！我是小助手，有什么可以帮您？"
GREETING = "你好{name}！请问有什么可以帮您？"
PASS_ON = "收到您的消息，我们会转给同事处理，稍后回复您。"
THANKS = "不客气，随时为您服务～"
MENU = (MenuItem("price", "问价格"), MenuItem("human", "找人工"))
MENU_ANSWERS = {
    "price": "请告诉我您想了解哪款商品，我帮您查价格。",
    "human": "好的，已为您记录，同事会尽快联系您。",
}
WELCOMING_KINDS = {"enter_session", "contact_added", "subscribe", "scan"}


class BuiltinResponder:
    """A real, minimal conversation: greet, welcome with a menu, pass everything else on."""

    name = "builtin_responder"

    async def __call__(self, turn: Turn, next: Next) -> None:
        """Answers the turn itself: nothing after it runs."""
        turn.effects.extend(self.answer(turn.event, turn.customer, turn.intent))

    def answer(self, event: InboundEvent, customer: Customer, intent: Intent | None) -> Sequence[Effect]:
        name = f"，{customer.display_name}" if customer.display_name else ""
        if event.kind in WELCOMING_KINDS:
            return [Reply(WELCOME.format(name=name), menu=MENU), Note("bot.welcomed", {"scene": event.scene})]
        if event.kind in LEAVING:
            return [Note("customer.left", {"via": event.kind})]
        if event.kind == "menu_click" or event.menu_id:
            answer = MENU_ANSWERS.get(event.menu_id)
            return [Reply(answer)] if answer else [Reply(PASS_ON), Note("bot.passed_on", {"menu": event.menu_id})]
        if event.kind != "message":
            return []
        said = intent.name if intent else ""
        if said == "greet":
            return [Reply(GREETING.format(name=name), menu=MENU)]
        if said == "thanks":
            return [Reply(THANKS)]
        return [Reply(PASS_ON), Note("bot.passed_on", {"intent": said})]
