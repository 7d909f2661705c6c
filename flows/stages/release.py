"""Release: the published flows the turn runs on; with nothing published, the built-in responder answers.

When the turn's release is not the one the NLU's FAQ keyword rules were last given (a new
`scrm faq publish` or `scrm flows publish`, in this process or another), the rules are given
the release's FAQ before the intent stage asks them: with Rasa down, a newly published entry
answers at once, without a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from core.events import OUTSIDE_THE_CHAT
from flows.faq_model import FaqBook
from flows.pipeline import Next
from flows.releases import ReleaseCache, current_release_id
from flows.responder import BuiltinResponder
from flows.turn import Release, Turn

log = logging.getLogger("scrm.flows")


class ReleaseStage:
    name = "release"

    def __init__(self, releases: ReleaseCache, understand: Callable[[Turn], Awaitable[None]],
                 faq_published: Callable[[FaqBook], None] | None = None) -> None:
        self.releases = releases
        self.understand = understand  # the built-in responder answers by intent
        self.faq_published = faq_published  # the NLU's keyword rules follow the published FAQ
        self.unpublished = BuiltinResponder()
        self._warned = False
        self._faq_release: int | None = None

    async def __call__(self, turn: Turn, next: Next) -> None:
        facts = turn.facts  # read with the customer: no query of its own
        release_id = facts.release_id if facts is not None else await current_release_id(turn.session)
        if release_id is None and turn.event.kind in OUTSIDE_THE_CHAT:
            await next()  # nobody to answer; sequences and rewards still follow a stage
            return
        if release_id is None:
            if not self._warned:
                log.warning("flows.unpublished: no flows are published; the built-in responder answers")
                self._warned = True
            await self.understand(turn)
            await self.unpublished(turn, next)
            return
        turn.release = Release(release_id, await self.releases.get(turn.session, release_id))
        if self.faq_published is not None and release_id != self._faq_release:
            self._faq_release = release_id
            self.faq_published(turn.release.flows.faq)
            log.info("flows.faq.rules_follow release=%s entries=%s", release_id, len(turn.release.flows.faq.entries))
        await next()
