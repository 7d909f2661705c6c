"""Release: the published flows the turn runs on; with nothing published, the built-in responder answers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from core.events import OUTSIDE_THE_CHAT
from flows.pipeline import Next
from flows.releases import ReleaseCache, current_release_id
from flows.responder import BuiltinResponder
from flows.turn import Release, Turn

log = logging.getLogger("scrm.flows")


class ReleaseStage:
    name = "release"

    def __init__(self, releases: ReleaseCache, understand: Callable[[Turn], Awaitable[None]]) -> None:
        self.releases = releases
        self.understand = understand  # the built-in responder answers by intent
        self.unpublished = BuiltinResponder()
        self._warned = False

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
        await next()
