"""Published flows: releases in the store, each one a complete, validated flow directory.

A publish validates the whole directory first (flows refer to each other, to tags and
to stages) and writes one immutable release in one transaction: a broken directory is
never published and the previous release keeps serving. Each flow's version goes up
only when its text changed. A rollback publishes an earlier release's text again, as
a new release, so history is never rewritten.
"""

from __future__ import annotations

import difflib
import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.lifecycle_settings import LifecycleSettings
from crm_store.models import FlowRelease, FlowVersion
from flows.loader import load_sources
from flows.model import FlowSet

RELEASES_REMEMBERED = 32


class NothingToPublish(Exception):
    """The directory is exactly what is published already."""


class UnknownRelease(LookupError):
    pass


@dataclass(frozen=True)
class Published:
    release_id: int
    changed: tuple[str, ...]  # flows whose version went up (new flows included)
    removed: tuple[str, ...]


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def current_release_id(session: AsyncSession) -> int | None:
    return await session.scalar(select(func.max(FlowRelease.id)))


async def get_release(session: AsyncSession, release_id: int | None = None) -> FlowRelease:
    """A release by id, or the current one."""
    release_id = release_id if release_id is not None else await current_release_id(session)
    release = await session.get(FlowRelease, release_id) if release_id is not None else None
    if release is None:
        raise UnknownRelease(f"no release {release_id}" if release_id is not None else "nothing is published yet")
    return release


async def publish(
    session: AsyncSession, flows: FlowSet, note: str = "", by: str = "", allow_unchanged: bool = False
) -> Published:
    """Write `flows` (already validated by the loader) as the new current release.

    A flow's version goes up when its text is new; text it had before keeps its old
    version number, so a rollback reads as "coupon back to v1", not "coupon v3".
    """
    current_id = await current_release_id(session)
    current = await session.get(FlowRelease, current_id) if current_id is not None else None
    if current is not None and current.sources == flows.sources and not allow_unchanged:
        raise NothingToPublish(f"release {current.id} already has exactly these files")
    release = FlowRelease(sources=dict(flows.sources), versions={}, note=note[:200], published_by=by[:64])
    session.add(release)
    await session.flush()
    versions: dict[str, int] = {}
    changed: list[str] = []
    for flow_id, flow in sorted(flows.flows.items()):
        text_digest = digest(flows.sources[flow.source_path])
        same_text = await session.scalar(
            select(FlowVersion.version).where(FlowVersion.flow_id == flow_id, FlowVersion.digest == text_digest)
        )
        if same_text is not None:  # unchanged, or back to an earlier text (a rollback): same version
            versions[flow_id] = same_text
            if current is None or current.versions.get(flow_id) != same_text:
                changed.append(flow_id)
            continue
        latest = await session.scalar(select(func.max(FlowVersion.version)).where(FlowVersion.flow_id == flow_id))
        version = (latest or 0) + 1
        session.add(FlowVersion(flow_id=flow_id, version=version, digest=text_digest, release_id=release.id))
        versions[flow_id] = version
        changed.append(flow_id)
    release.versions = versions
    removed = sorted(set(current.versions) - set(versions)) if current else []
    await session.flush()
    return Published(release.id, tuple(changed), tuple(removed))


async def rollback(
    session: AsyncSession, lifecycle: LifecycleSettings, to_release: int | None = None, by: str = ""
) -> Published:
    """Publish again the text of `to_release` (default: the one before the current)."""
    current_id = await current_release_id(session)
    if current_id is None:
        raise UnknownRelease("nothing is published yet")
    if to_release is None:
        to_release = await session.scalar(select(func.max(FlowRelease.id)).where(FlowRelease.id < current_id))
        if to_release is None:
            raise UnknownRelease(f"release {current_id} is the first one: there is nothing to roll back to")
    target = await get_release(session, to_release)
    flows = load_sources(dict(target.sources), lifecycle)  # still valid with today's stages?
    return await publish(session, flows, note=f"rollback to release {target.id}", by=by)


async def history(session: AsyncSession, limit: int = 20) -> list[FlowRelease]:
    rows = await session.scalars(select(FlowRelease).order_by(FlowRelease.id.desc()).limit(limit))
    return list(rows)


def diff(published: dict[str, str], working: dict[str, str]) -> str:
    """A unified diff from the published files to the working ones ("" when equal)."""
    chunks: list[str] = []
    for name in sorted(set(published) | set(working)):
        before, after = published.get(name), working.get(name)
        if before == after:
            continue
        chunks.extend(
            difflib.unified_diff(
                (before or "").splitlines(keepends=True),
                (after or "").splitlines(keepends=True),
                fromfile=f"published/{name}" if before is not None else "/dev/null",
                tofile=f"working/{name}" if after is not None else "/dev/null",
            )
        )
    return "".join(line if line.endswith("\n") else line + "\n" for line in chunks)


class ReleaseCache:
    """Parsed releases by id. Releases never change, so a parsed one is good forever."""

    def __init__(self, lifecycle: LifecycleSettings) -> None:
        self.lifecycle = lifecycle
        self._parsed: OrderedDict[int, FlowSet] = OrderedDict()
        self._versions: dict[int, dict[str, int]] = {}

    async def get(self, session: AsyncSession, release_id: int) -> FlowSet:
        flows = self._parsed.get(release_id)
        if flows is None:
            release = await get_release(session, release_id)
            flows = load_sources(dict(release.sources), self.lifecycle)
            self._parsed[release_id] = flows
            self._versions[release_id] = {name: int(version) for name, version in release.versions.items()}
            if len(self._parsed) > RELEASES_REMEMBERED:
                forgotten, _ = self._parsed.popitem(last=False)
                self._versions.pop(forgotten, None)
        else:
            self._parsed.move_to_end(release_id)
        return flows

    def versions(self, release_id: int) -> dict[str, int]:
        """Flow id -> version in a release already loaded with `get`."""
        return self._versions.get(release_id, {})
