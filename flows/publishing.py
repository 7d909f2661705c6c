"""Publishing a flow directory: validate everything, then one transaction for release and tag catalog.

Used by `scrm flows publish` and by the server's first start (when nothing is
published yet, the configured directory — the shipped flows by default — is).
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_store.lifecycle_settings import LifecycleSettings
from crm_store.tags import sync_catalog
from flows.loader import FlowLoadError, intents_of_domain, load_sources, read_directory
from flows.model import FlowSet
from flows.releases import Published, current_release_id, publish
from flows.settings import FlowSettings
from nlu.settings import NluSettings

log = logging.getLogger("scrm.flows")


def known_intents(nlu: NluSettings) -> frozenset[str]:
    """The intents the NLU is trained on, so flows cannot wait for an intent that never comes."""
    return intents_of_domain(nlu.project_path() / "domain.yml") | {"nlu_fallback"}


def validate(sources: dict[str, str], lifecycle: LifecycleSettings, nlu: NluSettings,
             assets: Path | None = None) -> FlowSet:
    """The flows of `sources`, checked against the lifecycle and the NLU's intents (FlowLoadError); with
    `assets` (the configured flow directory: the sender reads say steps' media files from it), those files too."""
    return load_sources(sources, lifecycle, known_intents(nlu), assets)


async def publish_flows(session: AsyncSession, flows: FlowSet, note: str = "", by: str = "") -> Published:
    """Publish validated flows and bring the tag catalog up to date, in the caller's transaction."""
    published = await publish(session, flows, note=note, by=by)
    await sync_catalog(session, flows.tags.groups)
    return published


async def publish_if_unpublished(
    sessions: async_sessionmaker[AsyncSession], flows: FlowSettings, lifecycle: LifecycleSettings, nlu: NluSettings
) -> Published | None:
    """First start: publish the configured directory. A broken one is logged and not published."""
    async with sessions() as session:
        if await current_release_id(session) is not None:
            return None
    try:
        flow_set = validate(read_directory(Path(flows.directory)), lifecycle, nlu, Path(flows.directory))
    except FlowLoadError as exc:
        log.error("flows.publish_failed directory=%s\n%s", flows.directory, exc)
        return None
    try:
        async with sessions() as session, session.begin():
            if await current_release_id(session) is not None:
                return None
            published = await publish_flows(session, flow_set, note="first start", by="scrm serve")
    except IntegrityError:  # another instance published at the same moment
        return None
    log.info("flows.published release=%s flows=%s", published.release_id, len(flow_set.flows))
    return published
