"""The outbox sender: delivers each outbox row through the WeCom / OA API, once.

A row whose claim expired while it was being sent (the process died mid-call) is sent
again only when the call is idempotent (kf `msgid`, single-use codes, the app's
duplicate check); an OA customer-service message is then marked failed as "outcome
unknown" instead: a possibly missing message is visible to admins, a double one is not
undoable. That mark is written only when the request is about to leave (the token in
hand): whatever fails before — Redis down, no token, the connection refused — left
nothing at WeChat, so the row is put back and tried again. A row with media is uploaded first
(bot/media_uploads.py), in its kind's `prepare` step.

Before its call a row takes one call from the API's budget (bot/api_budget.py), shared by every
sender process; with none left it is put back until there is, without using an attempt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.api_budget import ApiBudgets
from bot.corp_tags import CorpTags
from bot.delivery import FAREWELL, OUTBOX_KINDS, SAME_STATE, follow_up, too_late, with_idempotency_key
from bot.media_uploads import MediaUploads
from bot.outcome_writer import committed, note_writer, outcome_writer
from bot.queue_runner import put_back_after_fault
from bot.quota import SPENDS_ALLOWANCE
from bot.webhook_sender import WebhookSender
from bot.wechat_api import RATE_LIMITED, ApiError, NotSent, RetryableApiError, WeChatApi
from core import metrics
from core.allowance import QUOTA_REFUSALS, refusal_reason
from crm_store import allowances, work_queue
from crm_store.customers import record
from crm_store.models import Lane, OutboxItem
from crm_store.queue_batch import Note, Outcome
from crm_store.webhooks import WEBHOOK_POST
from crm_store.work_queue import ClaimLost

log = logging.getLogger("scrm.sender")

CALL_STARTED = "call started"
MEDIA_KINDS = ("kf.send_msg", "oa.custom_send", "app.message_send")  # kinds whose rows may carry media to upload
MARKETING_PAUSE_MAX_S = 60.0  # marketing over its budget share: looked at again at least this often
INVALID_MEDIA_ID = 40007  # the platform forgot an uploaded id (past its 3 days, or early)

# Turns a stored payload into the API body just before the call; None: nothing to send.
Prepare = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]


class OutboxSender:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        apis: Mapping[str, WeChatApi],
        max_attempts: int,
        retry_base_s: float,
        rate_limit_pause_s: float = 2.0,
        webhooks: WebhookSender | None = None,
        finish_within_s: float = 30.0,
        media: MediaUploads | None = None,
        budgets: ApiBudgets | None = None,
        marketing_share: float = 1.0,
    ) -> None:
        self.sessions = sessions
        self.budgets = budgets  # every sender process's calls to an API count against one budget
        self.marketing_share = marketing_share  # of each budget marketing sends may fill: the rest waits for replies
        for credential, path, _ in OUTBOX_KINDS.values():
            if budgets is not None and credential in apis:  # left() shows every API the outbox calls, used or not
                budgets.budget(apis[credential].credential, path)
        self.finish_within_s = finish_within_s  # recording an outcome is retried this long (under the claim ttl)
        self.outcomes = outcome_writer(sessions, finish_within_s)
        self.notes = note_writer(sessions, within_s=0)  # a note that cannot be written: the call does not leave
        self.apis = apis
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self.rate_limit_pause_s = rate_limit_pause_s
        self.on_rate_limited: Callable[[float, int | None], None] = lambda seconds, lane: None
        self.sent = 0
        self.prepare: dict[str, Prepare] = {}
        self.webhooks = webhooks  # "webhook.post" rows are HTTP posts to our endpoints, not WeChat API calls
        if "wecom.contacts" in apis:  # mark_tag is stored by tag names; WeCom wants corp tag ids
            self.prepare["contacts.mark_tag"] = CorpTags(apis["wecom.contacts"], sessions).prepare_mark_tag
        self.media = media  # rows with media keep their source; the upload happens here, just before the call
        if media is not None:
            for kind in MEDIA_KINDS:
                self.prepare[kind] = media.preparer(OUTBOX_KINDS[kind][0])

    async def send(self, item: OutboxItem) -> None:
        if item.kind == WEBHOOK_POST:
            await self._send_webhook(item)
            return
        credential, path, idempotent = OUTBOX_KINDS[item.kind]
        if not idempotent and item.last_error == CALL_STARTED:
            metrics.SEND_ERRORS.labels(item.kind, "unknown").inc()
            log.warning("sender.outcome_unknown id=%s kind=%s: the sender stopped during the call; not resent",
                        item.id, item.kind)
            await self._close(item, "failed", "outcome unknown: the sender stopped during the call; not resent")
            return
        late, body = too_late(item.payload)
        if late:
            metrics.SEND_ERRORS.labels(item.kind, "late").inc()
            log.warning("sender.too_late id=%s kind=%s", item.id, item.kind)
            await self._close(item, "failed", "not sent: the welcome code's 20 seconds had passed")
            return
        if await self._over_budget(item, credential, path):
            return

        async def leaving() -> None:  # the last moment before the request leaves: from here it may arrive
            await self.notes.submit(Note(item.id, str(item.claim_token), CALL_STARTED))

        try:
            payload: dict[str, Any] | None = body
            if item.kind in self.prepare:
                payload = await self.prepare[item.kind](body)
            if payload is not None:
                body = {key: value for key, value in payload.items() if key != FAREWELL}
                response = await self.apis[credential].post(path, with_idempotency_key(item.kind, body, item.id),
                                                            None if idempotent else leaving)
                second = follow_up(item.kind, payload, response)
                if second is not None:
                    await self._follow_up(item, credential, *second)
        except NotSent as exc:
            await self._not_sent(item, exc)
            return
        except ApiError as exc:
            if exc.errcode == INVALID_MEDIA_ID and self.media and await self.media.forget(credential, item.payload):
                exc = RetryableApiError(exc.errcode, f"{exc.errmsg} (the cached media id is dropped: uploaded again)")
            if item.kind == "kf.service_state_trans" and exc.errcode == SAME_STATE and item.attempts > 1:
                await self._close(item, "done", "already moved (resent after an interrupted attempt)")
                return
            if not idempotent and not exc.refused:
                metrics.SEND_ERRORS.labels(item.kind, "unknown").inc()
                log.warning("sender.outcome_unknown id=%s kind=%s %s: not resent (see scrm outbox list --status "
                            "failed)", item.id, item.kind, exc.errmsg)
                await self._close(item, "failed", f"outcome unknown ({exc.errmsg}); not resent")
                return
            await self._failed(item, exc)
            return
        await self._close(item, "done", None)
        self.sent += 1
        metrics.SENT.labels(item.kind).inc()

    async def _over_budget(self, item: OutboxItem, credential: str, path: str) -> bool:
        """No call left in the API's budget now: the row is put back until one is, its attempt given back (the
        budget stopped it, not the row), and claiming pauses a moment, as after a 45009. A marketing row that
        reached marketing's share pauses only the marketing lane, until the budget has room for it again:
        replies and notices are still claimed and sent."""
        if self.budgets is None:
            return False
        ceiling = self.marketing_share if item.lane == Lane.MARKETING else 1.0
        later = await self.budgets.take(self.apis[credential].credential, path, ceiling=ceiling)
        if later is None:
            return False
        log.debug("sender.over_budget id=%s kind=%s api=%s for_s=%.1f", item.id, item.kind, later.api, later.wait_s)
        if ceiling < 1.0:
            self.on_rate_limited(min(later.wait_s, MARKETING_PAUSE_MAX_S), Lane.MARKETING)
        else:
            self.on_rate_limited(min(later.wait_s, self.rate_limit_pause_s), None)
        reason = f"waiting for the {later.api} budget ({later.wait_s:.0f} s)"
        try:
            await self._record(lambda session: work_queue.retry_later(session, item, later.wait_s, reason, refund=True))
        except ClaimLost:
            log.warning("sender.claim_lost id=%s", item.id)
        return True

    async def _send_webhook(self, item: OutboxItem) -> None:
        if self.webhooks is None:
            await self._close(item, "failed", "webhooks are not set up in this sender")
            return
        if await self.webhooks.deliver(item):
            self.sent += 1
            metrics.SENT.labels(item.kind).inc()

    async def _follow_up(self, item: OutboxItem, credential: str, path: str, body: dict[str, Any]) -> None:
        """The row's own call succeeded: a failing follow-up is logged, not retried with it (no repeat)."""
        try:
            await self.apis[credential].post(path, body)
        except ApiError as exc:
            metrics.SEND_ERRORS.labels(item.kind, str(exc.errcode)).inc()
            log.warning("sender.follow_up_failed id=%s path=%s %s", item.id, path, exc)

    async def _not_sent(self, item: OutboxItem, exc: NotSent) -> None:
        """Nothing left for WeChat. Our shared state down: put back without using up an attempt;
        otherwise (the connection refused) an ordinary retry."""
        if exc.component == "redis":
            metrics.SEND_ERRORS.labels(item.kind, str(exc.errcode)).inc()
            await put_back_after_fault(self.sessions, item, "redis", exc, "outbox.token")
            return
        await self._failed(item, exc)

    async def _failed(self, item: OutboxItem, exc: ApiError) -> None:
        metrics.SEND_ERRORS.labels(item.kind, str(exc.errcode)).inc()
        reason = f"errcode {exc.errcode}: {exc.errmsg}"
        if exc.errcode in QUOTA_REFUSALS and item.kind in SPENDS_ALLOWANCE:
            await self._refused(item, exc, reason)
            return
        if exc.errcode == RATE_LIMITED:
            self.on_rate_limited(self.rate_limit_pause_s, None)
        if exc.retryable and item.attempts < self.max_attempts:
            delay = work_queue.backoff_s(item.attempts, self.retry_base_s)
            log.warning("sender.retry id=%s kind=%s %s in %.0fs", item.id, item.kind, reason, delay)
            await self._record(lambda session: work_queue.retry_later(session, item, delay, reason))
            return
        log.error("sender.failed id=%s kind=%s %s", item.id, item.kind, reason)
        await self._close(item, "failed", reason)

    async def _refused(self, item: OutboxItem, exc: ApiError, reason: str) -> None:
        """The platform would not take it (quota, window, a rep's session): not retried blindly. The ledger
        believed otherwise (another system may write to the customer too): it is corrected from the refusal."""
        why = refusal_reason(exc.errcode)
        metrics.QUOTA_DECISIONS.labels(item.kind, f"refused_{why}").inc()
        log.warning("sender.refused id=%s kind=%s customer=%s %s", item.id, item.kind, item.customer_id, reason)

        async def correct(session: AsyncSession) -> None:
            await work_queue.finish(session, item, "failed", f"refused by the platform ({why}): {reason}")
            if item.customer_id is not None:
                channel = item.kind.split(".")[0]
                allowance = await allowances.load(session, item.customer_id, channel)
                await allowances.save(session, item.customer_id, allowance.refused(exc.errcode, time.time()))
                await record(session, item.customer_id, "outbound.refused",
                             {"reason": why, "errcode": exc.errcode, "via": item.kind})

        try:
            await self._record(correct)
        except ClaimLost:
            log.warning("sender.claim_lost id=%s", item.id)

    async def _close(self, item: OutboxItem, status: str, error: str | None) -> None:
        """The outcome, committed with those of the other sends finishing now (bot/outcome_writer.py)."""
        if not await self.outcomes.submit(Outcome(item.id, str(item.claim_token), status, error)):
            log.warning("sender.claim_lost id=%s", item.id)

    async def _record(self, write: Callable[[AsyncSession], Awaitable[None]]) -> None:
        """Write an outcome. The call has been made (or refused): while the store is restarting, try
        again for as long as the claim lasts rather than leave the row looking interrupted mid-call."""
        await committed(self.sessions, write, self.finish_within_s)
