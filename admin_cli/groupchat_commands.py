"""`scrm groupchats ...`: customer groups (客户群), a few lines over crm_store.group_chat_queries,
crm_store.group_chat_tags and bot.group_chat_sync.

Not to be confused with group-buys (拼团: `scrm campaigns`, `scrm report group-buys`): these are
WeCom's external group chats, which the bot keeps in step with WeCom, tags, and pushes to.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict

import aiohttp
import click
from sqlalchemy.ext.asyncio import AsyncSession

from admin_cli.common import in_store, json_option, table, when
from admin_cli.groupchat_code_commands import codes
from admin_cli.groupchat_push_commands import push, sops
from admin_cli.main import cli, echo_json, settings_of
from admin_cli.progress import progress
from bot.group_chat_sync import SyncAlreadyRunning, SyncTakenOver, full_sync_from
from bot.wechat_api import ApiError
from crm_store.group_chat_queries import GroupDetail, GroupFilter, GroupRow, group_detail, list_groups
from crm_store.group_chat_tags import GroupTagError, tag_groups

STATUSES = ("active", "dismissed", "all")


@cli.group("groupchats")
def groupchats_group() -> None:
    """Customer groups (客户群): WeCom's external group chats, not group-buys (拼团, see scrm campaigns).

    Sync them from WeCom, list and read them, tag them, make group live codes, push to them.
    """


@groupchats_group.command("sync")
@click.option("--restart", is_flag=True, help="Start from the first page instead of resuming an interrupted sync.")
@json_option
@click.pass_context
def sync(ctx: click.Context, restart: bool, as_json: bool) -> None:
    """Read every customer group from WeCom (groupchat/list, then groupchat/get for each), paced under the API's
    limit; an interrupted sync resumes where it stopped. Callbacks keep groups current afterwards.

    Example: scrm groupchats sync   or   scrm groupchats sync --restart
    """
    settings = settings_of(ctx)
    in_store(settings, _nothing)  # the embedded store brought up to date first, as every data command does
    again = "run the command again to continue where it stopped"
    try:
        with progress("groupchats sync", unit="groups", quiet=as_json) as shown:
            outcome = asyncio.run(full_sync_from(settings, restart=restart, progress=shown.update))
            if as_json:
                echo_json(asdict(outcome))
            if outcome.status != "done":  # inside: the progress line says it stopped
                raise click.ClickException(f"sync {outcome.sync_id} stopped after {outcome.groups} groups and "
                                           f"{outcome.calls} API calls ({outcome.error or outcome.status}); {again}")
    except (SyncAlreadyRunning, SyncTakenOver) as exc:  # another process's sync: say whose, start nothing
        raise click.ClickException(str(exc)) from None
    except ApiError as exc:
        raise click.ClickException(f"WeCom refused the sync ({exc}); {again}") from None
    except aiohttp.ClientError as exc:
        raise click.ClickException(f"could not reach WeCom at {settings.wecom.api_base} ({exc}); {again}") from None
    if not as_json:
        click.echo(f"sync {outcome.sync_id}: {outcome.status}, {outcome.groups} groups, {outcome.calls} API calls "
                   f"in {outcome.seconds:.1f} s" + (" (resumed an interrupted sync)" if outcome.resumed else ""))


async def _nothing(session: AsyncSession) -> None:
    return None


@groupchats_group.command("list")
@click.option("--owner", metavar="USERID", help="Owned by this rep.")
@click.option("--tag", help="Carrying this group tag.")
@click.option("--name", "name_contains", help="Name contains this (any case).")
@click.option("--code", metavar="GC_CODE", help="Offered by this group live code.")
@click.option("--status", type=click.Choice(STATUSES), default="active", show_default=True,
              help="Active groups, dismissed ones, or all.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@json_option
@click.pass_context
def list_command(ctx: click.Context, owner: str | None, tag: str | None, name_contains: str | None,
                 code: str | None, status: str, limit: int, offset: int, as_json: bool) -> None:
    """Customer groups matching every filter, newest first: owner, members and customers now, tags, live code.

    Example: scrm groupchats list --owner zhangsan --tag 新品群 --name 首发
    """
    where = GroupFilter(owner, tag, name_contains, None if status == "all" else status, code)
    rows = in_store(settings_of(ctx), lambda session: list_groups(session, where, limit, offset))
    if as_json:
        echo_json([asdict(row) for row in rows])
        return
    if not rows:
        click.echo("no groups match (new groups arrive with callbacks; older ones with: scrm groupchats sync)")
        return
    click.echo(table([[r.chat_id, r.name + ("" if r.status == "active" else " (dismissed)"), r.owner, r.members,
                       r.customers, ", ".join(r.tags), r.code or "", when(r.created)] for r in rows],
                     ["chat id", "name", "owner", "members", "customers", "tags", "code", "created"]))


@groupchats_group.command("show")
@click.argument("chat_id")
@click.option("--changes", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="How many joins and leaves (newest first).")
@json_option
@click.pass_context
def show(ctx: click.Context, chat_id: str, changes: int, as_json: bool) -> None:
    """One customer group: owner, notice, tags, its members now and how each came (scene, live code, inviter),
    and its latest joins and leaves.

    Example: scrm groupchats show wrOgQhDgAAMYQiS5ol9G7gK9JVAAAA
    """

    async def work(session: AsyncSession) -> GroupDetail | None:
        return await group_detail(session, chat_id, changes)

    detail = in_store(settings_of(ctx), work)
    if detail is None:
        raise click.ClickException(f"no group {chat_id!r} (list them with: scrm groupchats list; "
                                   "older groups arrive with: scrm groupchats sync)")
    if as_json:
        echo_json(asdict(detail))
        return
    _print_detail(detail)


def _print_detail(detail: GroupDetail) -> None:
    r: GroupRow = detail.row
    click.echo(f"group {r.chat_id}: {r.name} ({r.status})   owner: {r.owner or '-'}   created: {when(r.created)}")
    click.echo(f"members now: {r.members} ({r.customers} customers)   tags: {', '.join(r.tags) or '-'}   "
               f"live code: {r.code or '-'}   last read in full: {when(detail.synced_at) or 'never'}")
    if detail.notice:
        click.echo(f"notice: {detail.notice}")
    if detail.members_now:
        click.echo(table([[m.kind, m.userid, m.name, m.customer_id or "", when(m.joined_at), m.scene or "-",
                           m.code or "", m.inviter_id or "", m.invitor_userid] for m in detail.members_now],
                         ["kind", "userid", "name", "customer", "joined", "scene", "code", "inviter", "invited by"]))
    click.echo("joins and leaves (newest first):" if detail.recent else "joins and leaves: none yet")
    for c in detail.recent:
        who = f"customer {c.customer_id} {c.customer_name}".rstrip() if c.customer_id else f"{c.kind} {c.userid}"
        extra = "".join([f" code {c.code}" if c.code else "", f" inviter {c.inviter_id}" if c.inviter_id else ""])
        click.echo(f"  {when(c.at)}  {c.change:<5} {who}  {c.scene}{extra}".rstrip())


@groupchats_group.command("tag")
@click.argument("chat_ids", metavar="CHAT_ID...", nargs=-1, required=True)
@click.option("--tag", "tags", multiple=True, required=True, help="A catalog tag (repeat for several).")
@click.option("--remove", is_flag=True, help="Remove the tags instead of adding them.")
@json_option
@click.pass_context
def tag(ctx: click.Context, chat_ids: tuple[str, ...], tags: tuple[str, ...], remove: bool, as_json: bool) -> None:
    """Tag customer groups (or untag them) with tags of the catalog, for finding them and pushing to them;
    an unknown chat id or tag changes nothing.

    Example: scrm groupchats tag wrOgQhDgAAMYQiS5ol9G7gK9JVAAAA wrOgQhDgAAcwMTB7YmDkbeBsgT_AAAA --tag 新品群
    or   scrm groupchats tag wrOgQhDgAAMYQiS5ol9G7gK9JVAAAA --tag 新品群 --remove
    """

    async def work(session: AsyncSession) -> dict[str, list[str]]:
        try:
            return await tag_groups(session, chat_ids, tags, remove=remove)
        except GroupTagError as exc:
            raise click.ClickException("nothing changed: " + "; ".join(exc.problems)) from None

    changed = in_store(settings_of(ctx), work)
    verb = "removed" if remove else "added"
    if as_json:
        echo_json({"changed": changed, "action": verb})
        return
    for chat_id, names in changed.items():
        click.echo(f"group {chat_id}: {verb} {', '.join(names) or 'nothing'}"
                   + ("" if names else f" ({'did not carry them' if remove else 'already tagged'})"))


# The live-code, group-push and group-SOP commands live in modules of their own:
groupchats_group.add_command(codes)
groupchats_group.add_command(push)
groupchats_group.add_command(sops)
