"""Group live codes (群活码) in the store: what an admin asks for, its checks, and the rows.

A code is a WeCom join way (`externalcontact/groupchat/add_join_way`,
https://developer.work.weixin.qq.com/document/path/92229) whose `state` is our code (`gc_…`),
so every member who joins through it is known to have come through it. A fission code lets
each member ask for a personal code of their own: a join way over the same groups whose state
names the inviter too. The unique index (parent_id, inviter_id) makes "one personal code per
customer and parent" the database's rule, however many turns ask at once.

Everything a spec names is checked before WeCom is asked for anything (`validate`, then
`check_names` against the store), and every problem is listed at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.codes import new_code
from crm_store.dialect_insert import dialect_insert
from crm_store.group_chat_models import GroupChat, GroupJoinCode
from crm_store.models import Tag, utcnow

CODE_PREFIX = "gc_"
CODE_LENGTH = 8  # gc_ + 8 = 11 characters: well within the state's 30
STATE_MAX = 30  # a join way's state: at most 30 characters (document/path/92229)
MAX_GROUPS = 5  # a join way offers at most 5 groups (document/path/92229)
ROOM_BASE_NAME_MAX = 40  # room_base_name: at most 40 utf-8 characters (document/path/92229)
NAME_MAX = 128
# The welcome template's limits, in bytes (https://developer.work.weixin.qq.com/document/path/92366)
WELCOME_TEXT_MAX_BYTES = 3000
LINK_TITLE_MAX_BYTES = 128
LINK_DESC_MAX_BYTES = 512
MINIPROGRAM_TITLE_MAX_BYTES = 64
URL_MAX = 2048


class GroupCodeError(ValueError):
    """The code cannot be made or changed as asked; `problems` lists every reason at once."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


@dataclass(frozen=True)
class WelcomeLink:
    """A link card sent after the welcome text (group_welcome_template's `link`)."""

    title: str
    url: str
    picurl: str = ""
    desc: str = ""


@dataclass(frozen=True)
class WelcomeMiniprogram:
    """A mini-program card (group_welcome_template's `miniprogram`): the cover is an uploaded media id."""

    title: str
    appid: str
    page: str
    pic_media_id: str


@dataclass(frozen=True)
class GroupCodeSpec:
    """What an admin asks for; the code, config_id and QR come from creating it."""

    name: str
    chat_ids: tuple[str, ...]
    auto_create_room: bool = True
    room_base_name: str = ""
    room_base_id: int = 1
    welcome_text: str = ""
    welcome_link: WelcomeLink | None = None
    welcome_miniprogram: WelcomeMiniprogram | None = None
    tags: tuple[str, ...] = ()
    fission: bool = False

    @property
    def has_welcome(self) -> bool:
        return bool(self.welcome_text.strip() or self.welcome_link or self.welcome_miniprogram)

    def welcome(self) -> dict[str, Any]:
        """The welcome as stored on the code (and shown): {text, link?, miniprogram?}; {} without one."""
        if not self.has_welcome:
            return {}
        stored: dict[str, Any] = {"text": self.welcome_text}
        if self.welcome_link:
            stored["link"] = _fields(self.welcome_link)
        if self.welcome_miniprogram:
            stored["miniprogram"] = _fields(self.welcome_miniprogram)
        return stored


def _fields(card: WelcomeLink | WelcomeMiniprogram) -> dict[str, str]:
    return {key: value for key, value in vars(card).items() if value}


def spec_of(code: GroupJoinCode) -> GroupCodeSpec:
    """The spec a stored code was made from (what `update` starts from)."""
    welcome = code.welcome or {}
    link, mini = welcome.get("link"), welcome.get("miniprogram")
    return GroupCodeSpec(
        name=code.name, chat_ids=tuple(code.chat_ids), auto_create_room=code.auto_create_room,
        room_base_name=code.room_base_name, room_base_id=code.room_base_id, welcome_text=welcome.get("text", ""),
        welcome_link=WelcomeLink(**link) if link else None,
        welcome_miniprogram=WelcomeMiniprogram(**mini) if mini else None,
        tags=tuple(code.tags), fission=code.fission,
    )


def validate(spec: GroupCodeSpec) -> None:
    """Raise GroupCodeError naming every problem of the spec, or return."""
    problems = [*_shape_problems(spec), *_welcome_problems(spec)]
    if problems:
        raise GroupCodeError(problems)


def _shape_problems(spec: GroupCodeSpec) -> list[str]:
    problems = []
    if not spec.name.strip():
        problems.append("the name is empty")
    elif len(spec.name) > NAME_MAX:
        problems.append(f"the name is longer than {NAME_MAX} characters")
    if not spec.chat_ids:
        problems.append("a group live code needs at least one group (--group CHAT_ID)")
    elif len(spec.chat_ids) > MAX_GROUPS:
        problems.append(f"a group live code offers at most {MAX_GROUPS} groups (WeCom's join way limit); "
                        f"{len(spec.chat_ids)} given")
    repeated = sorted({chat for chat in spec.chat_ids if spec.chat_ids.count(chat) > 1})
    if repeated:
        problems.append(f"groups named twice: {', '.join(repeated)}")
    problems += [f"group {chat!r} is not a chat id (1–64 characters)" for chat in spec.chat_ids
                 if not chat.strip() or len(chat) > 64]
    if len(spec.room_base_name) > ROOM_BASE_NAME_MAX:
        problems.append(f"the room base name is longer than {ROOM_BASE_NAME_MAX} characters")
    if spec.room_base_id < 1:
        problems.append(f"the room base number must be 1 or more ({spec.room_base_id})")
    problems += [f"tag {tag!r} is blank or longer than 64 characters" for tag in spec.tags
                 if not tag.strip() or len(tag) > 64]
    return problems


def _too_long(value: str, limit: int) -> bool:
    return len(value.encode()) > limit


def _welcome_problems(spec: GroupCodeSpec) -> list[str]:
    problems = []
    if _too_long(spec.welcome_text, WELCOME_TEXT_MAX_BYTES):
        problems.append(f"the welcome text is longer than {WELCOME_TEXT_MAX_BYTES} bytes "
                        f"({len(spec.welcome_text.encode())})")
    link = spec.welcome_link
    if link is not None:
        if not link.title.strip() or _too_long(link.title, LINK_TITLE_MAX_BYTES):
            problems.append(f"the welcome link needs a title of 1–{LINK_TITLE_MAX_BYTES} bytes")
        if _too_long(link.desc, LINK_DESC_MAX_BYTES):
            problems.append(f"the welcome link's description is longer than {LINK_DESC_MAX_BYTES} bytes")
        problems += [f"the welcome link's {name} is not an http(s) URL: {value!r}"
                     for name, value in (("url", link.url), ("picture", link.picurl))
                     if (value or name == "url") and not _is_url(value)]
    mini = spec.welcome_miniprogram
    if link is not None and mini is not None:  # text goes with one other kind (document/path/92366)
        problems.append("a welcome has a link or a mini-program card, not both")
    if mini is not None:
        if not mini.title.strip() or _too_long(mini.title, MINIPROGRAM_TITLE_MAX_BYTES):
            problems.append(f"the mini-program card needs a title of 1–{MINIPROGRAM_TITLE_MAX_BYTES} bytes")
        problems += [f"the mini-program card needs its {name}" for name, value in
                     (("appid", mini.appid), ("page", mini.page), ("cover (pic_media_id)", mini.pic_media_id))
                     if not value.strip()]
    return problems


def _is_url(value: str) -> bool:
    return value.startswith(("https://", "http://")) and 8 < len(value) <= URL_MAX


async def check_groups(session: AsyncSession, chat_ids: Iterable[str]) -> None:
    """Every chat id is a group the store knows and that is not dismissed, or a GroupCodeError naming the others."""
    problems = await _group_problems(session, list(chat_ids))
    if problems:
        raise GroupCodeError(problems)


async def _group_problems(session: AsyncSession, chat_ids: list[str]) -> list[str]:
    rows = await session.execute(select(GroupChat.chat_id, GroupChat.status).where(GroupChat.chat_id.in_(chat_ids)))
    status = dict(rows.tuples().all())
    problems = []
    unknown = [chat for chat in chat_ids if chat not in status]
    if unknown:
        problems.append(f"unknown group(s) {', '.join(unknown)}: run scrm groupchats sync first "
                        "(and list them with scrm groupchats list)")
    dismissed = [chat for chat in chat_ids if status.get(chat) == "dismissed"]
    if dismissed:
        problems.append(f"dismissed group(s) {', '.join(dismissed)} cannot be offered")
    return problems


async def check_names(session: AsyncSession, spec: GroupCodeSpec) -> None:
    """The spec's groups are known and active, and its tags are in the catalog: every problem at once."""
    problems = await _group_problems(session, list(spec.chat_ids))
    if spec.tags:
        known = set(await session.scalars(select(Tag.name).where(Tag.name.in_(list(spec.tags)))))
        unknown = [tag for tag in spec.tags if tag not in known]
        if unknown:
            problems.append(f"unknown tag(s) {', '.join(unknown)} (add them to tags.yaml and run: scrm flows publish)")
    if problems:
        raise GroupCodeError(problems)


def new_group_code() -> str:
    return CODE_PREFIX + new_code(CODE_LENGTH)


async def add_code(
    session: AsyncSession, spec: GroupCodeSpec, code: str, config_id: str, qr_code: str, template_id: str = ""
) -> GroupJoinCode:
    """Store a code whose join way was created (the code is unique: a clash raises IntegrityError)."""
    validate(spec)
    if not 0 < len(code) <= STATE_MAX:
        raise GroupCodeError([f"the code must be 1–{STATE_MAX} characters: {code!r}"])
    row = GroupJoinCode(
        code=code, name=spec.name.strip(), config_id=config_id, qr_code=qr_code, chat_ids=list(spec.chat_ids),
        auto_create_room=spec.auto_create_room, room_base_name=spec.room_base_name, room_base_id=spec.room_base_id,
        welcome=spec.welcome(), welcome_template_id=template_id, tags=list(spec.tags), fission=spec.fission,
        active=True, created_at=utcnow(),
    )
    session.add(row)
    await session.flush()
    await _claim_groups(session, row)
    return row


def apply_spec(row: GroupJoinCode, spec: GroupCodeSpec, template_id: str) -> None:
    """Change a stored code to `spec` (its join way and template were changed on WeCom first)."""
    row.name, row.chat_ids = spec.name.strip(), list(spec.chat_ids)
    row.auto_create_room, row.room_base_name, row.room_base_id = (
        spec.auto_create_room, spec.room_base_name, spec.room_base_id)
    row.welcome, row.welcome_template_id = spec.welcome(), template_id
    row.tags, row.fission = list(spec.tags), spec.fission


async def _claim_groups(session: AsyncSession, row: GroupJoinCode) -> None:
    """The code's groups name it as the live code that offers them (a group not yet claimed by another)."""
    groups = await session.scalars(select(GroupChat).where(GroupChat.chat_id.in_(list(row.chat_ids))))
    for group in groups:
        if group.code_id is None:
            group.code_id = row.id


async def add_personal(
    session: AsyncSession, parent: GroupJoinCode, inviter_id: int, code: str, config_id: str, qr_code: str
) -> tuple[GroupJoinCode, bool]:
    """The inviter's personal code under `parent`: (the row, True) when this call stored it, (the winner's
    row, False) when another got there first (the caller then takes back its own join way)."""
    won = await session.scalar(
        dialect_insert(session, GroupJoinCode)
        .values(code=code, name=parent.name[:NAME_MAX], config_id=config_id, qr_code=qr_code,
                chat_ids=list(parent.chat_ids), auto_create_room=parent.auto_create_room,
                room_base_name=parent.room_base_name, room_base_id=parent.room_base_id, welcome={},
                welcome_template_id="", tags=list(parent.tags), parent_id=parent.id, inviter_id=inviter_id,
                fission=False, active=True, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["parent_id", "inviter_id"], index_where=text("inviter_id IS NOT NULL"))
        .returning(GroupJoinCode.id)
    )
    row = await personal_code_of(session, parent.id, inviter_id)
    assert row is not None  # inserted now or by the winner, whose transaction committed before ours saw the clash
    return row, won is not None


async def personal_code_of(session: AsyncSession, parent_id: int, inviter_id: int) -> GroupJoinCode | None:
    return await session.scalar(
        select(GroupJoinCode).where(GroupJoinCode.parent_id == parent_id, GroupJoinCode.inviter_id == inviter_id)
    )


async def code_by_code(session: AsyncSession, code: str) -> GroupJoinCode | None:
    """The code as given (a join way's state), or typed by an admin (`GC_k7p3qx9m`, without the prefix)."""
    given = code.strip()
    row = await session.scalar(select(GroupJoinCode).where(GroupJoinCode.code == given))
    if row is not None or not given:
        return row
    bare = given[len(CODE_PREFIX):] if given.lower().startswith(CODE_PREFIX) else given
    return await session.scalar(select(GroupJoinCode).where(GroupJoinCode.code == CODE_PREFIX + bare.upper()))


async def latest_fission_code(session: AsyncSession) -> GroupJoinCode | None:
    """The newest active fission code: what a customer's "invite friends into the group" is about."""
    return await session.scalar(
        select(GroupJoinCode).where(GroupJoinCode.fission.is_(True), GroupJoinCode.active.is_(True),
                                    GroupJoinCode.parent_id.is_(None)).order_by(GroupJoinCode.id.desc()).limit(1))


async def codes(session: AsyncSession, personal: bool = False) -> list[GroupJoinCode]:
    """The live codes, oldest first; with `personal`, the customers' fission codes too."""
    query = select(GroupJoinCode).order_by(GroupJoinCode.id)
    if not personal:
        query = query.where(GroupJoinCode.parent_id.is_(None))
    return list(await session.scalars(query))


async def personal_codes(session: AsyncSession, parent_id: int) -> list[GroupJoinCode]:
    return list(await session.scalars(
        select(GroupJoinCode).where(GroupJoinCode.parent_id == parent_id).order_by(GroupJoinCode.id)))


async def learn_group(session: AsyncSession, code_id: int, group: GroupChat) -> bool:
    """A member came into `group` through the code: WeCom offers it (a group it created when the last was
    full); the code's chat_ids gain it, once, under the code's row lock. True when it was new to the code."""
    known = await session.scalar(select(GroupJoinCode.chat_ids).where(GroupJoinCode.id == code_id))
    if known is not None and group.chat_id in known and group.code_id is not None:
        return False  # the usual case, without the lock: a join into a group the code already offers
    row = await session.scalar(
        select(GroupJoinCode).where(GroupJoinCode.id == code_id).with_for_update().execution_options(
            populate_existing=True)
    )
    if row is None:
        return False
    if group.code_id is None:
        group.code_id = row.parent_id or row.id
    if group.chat_id in row.chat_ids:
        return False
    row.chat_ids = [*row.chat_ids, group.chat_id]  # a new list: the JSON column sees the change
    await session.flush()
    return True


async def deactivate(session: AsyncSession, row: GroupJoinCode) -> None:
    """Inactive: its join way was deleted (joins through it are no longer possible), its history stays."""
    row.active = False
    await session.flush()
