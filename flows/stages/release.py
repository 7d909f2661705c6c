"""Release: the published flows the turn runs on; with nothing published, the built-in responder answers."""

from __future__ import annotations

import logging

from core.events import OUTSIDE_THE_CHAT
from flows.pipeline import Next
from flows.releases import ReleaseCache
from flows.responder import BuiltinResponder
from flows.turn import Release, Turn

log = logging.getLogger("scrm.flows")


class ReleaseStage:
    name = "release"

    def __init__(self, releases: ReleaseCache) -> None:
        self.releases = releases
        self.unpublished = BuiltinResponder()
        self._warned = False

    async def __call__(self, turn: Turn, next: Next) -> None:
        current = await self.releases.current(turn.session)
        if current is None and turn.event.kind in OUTSIDE_THE_CHAT:
            await next()  # nobody to answer; sequences and rewards still follow a stage
            return
        if current is None:
            if not self._warned:
                log.warning("flows.unpublished: no flows are published; the built-in responder answers")
                self._warned = True
            await self.unpublished(turn, next)
            return
        turn.release = Release(*current)
        await next()
