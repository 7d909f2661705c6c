"""`scrm referrals ...`: invite-for-reward (邀请有礼): influencers, who brought whom, the reward ledger.

Each command is one transaction over crm_store (referrals, rewards, social, customer_queries):
the functions the bot uses. Ledger times are the admin's, as in every other command.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict
from typing import Any

import click
from sqlalchemy.ext.asyncio import AsyncSession

from admin_cli.common import in_store, json_option, table, when
from admin_cli.main import cli, echo_json, settings_of
from admin_cli.progress import progress
from crm_store.customer_queries import Influencer, LeaderboardOrder, current_customer, leaderboard, names_of
from crm_store.growth_models import RewardEntry
from crm_store.lifecycle import Lifecycle
from crm_store.models import Customer, as_utc
from crm_store.referrals import MAX_TREE_ROWS, TreeRow, tree, tree_size
from crm_store.rewards import RewardError, ledger, reverse, totals
from crm_store.social import rescore


@cli.group("referrals")
def referrals_group() -> None:
    """Invite-for-reward (邀请有礼): the influencers, who brought whom, the reward ledger, social scores."""


@referrals_group.command("leaderboard")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--by", type=click.Choice(["score", "friends", "converted"]), default="score", show_default=True,
              help="Rank by social score, friends brought, or friends who bought.")
@json_option
@click.pass_context
def leaderboard_command(ctx: click.Context, limit: int, by: LeaderboardOrder, as_json: bool) -> None:
    """The top influencers: friends brought and converted, groups led and filled, conversions further down, score.

    Example: scrm referrals leaderboard --by converted --limit 10
    """
    rows: list[Influencer] = in_store(settings_of(ctx), lambda session: leaderboard(session, by, limit))
    if as_json:
        echo_json([asdict(row) for row in rows])
        return
    if not rows:
        click.echo("nobody has brought anyone yet")
        return
    click.echo(table([[rank, r.name, r.customer_id, r.friends, r.friends_converted, r.groups_led, r.groups_filled,
                       r.downstream_converted, f"{r.score:g}"] for rank, r in enumerate(rows, 1)],
                     ["#", "name", "id", "friends", "converted", "groups led", "filled", "downstream", "score"]))


@referrals_group.command("tree")
@click.argument("customer_id", metavar="CUSTOMER_ID", type=int)
@click.option("--depth", type=click.IntRange(1, 20), default=3, show_default=True, help="Levels below the customer.")
@click.option("--limit", type=click.IntRange(1, MAX_TREE_ROWS), default=200, show_default=True,
              help="People shown at most (level by level, earliest first).")
@json_option
@click.pass_context
def tree_command(ctx: click.Context, customer_id: int, depth: int, limit: int, as_json: bool) -> None:
    """Who the customer brought, and whom they brought: a tree (✓ bought), with how many at each level.

    Example: scrm referrals tree 42 --depth 4 --limit 500
    """
    settings = settings_of(ctx)
    lifecycle = Lifecycle(settings.lifecycle)

    async def work(session: AsyncSession) -> tuple[Customer | None, list[TreeRow], dict[int, int]]:
        root = await current_customer(session, customer_id)
        if root is None:
            return None, [], {}
        return root, await tree(session, root.id, depth, limit), await tree_size(session, root.id, depth)

    root, rows, levels = in_store(settings, work)
    if root is None:
        raise click.ClickException(f"no customer {customer_id} (find one with: scrm customers find --text NAME)")
    total = sum(levels.values())
    if as_json:
        echo_json({"root": {"customer_id": root.id, "name": root.display_name, "stage": root.stage},
                   "levels": levels, "total": total, "shown": len(rows), "rows": [asdict(row) for row in rows]})
        return
    click.echo(f"{root.display_name} #{root.id} ({lifecycle.label(root.stage)})")
    for line in _tree_lines(rows, root.id, lifecycle):
        click.echo(line)
    counts = "   ".join(f"level {level}: {levels[level]}" for level in sorted(levels))
    click.echo(f"{counts}   total: {total}" if total else "brought nobody yet")
    if total > len(rows):
        click.echo(f"… {total - len(rows)} more (showing {len(rows)} of {total}: raise --limit or lower --depth)")


def _tree_lines(rows: list[TreeRow], root_id: int, lifecycle: Lifecycle) -> list[str]:
    """Rows come level by level, so a shown person's inviter is always shown too."""
    children: dict[int | None, list[TreeRow]] = defaultdict(list)
    for row in rows:
        children[row.parent_id].append(row)
    lines: list[str] = []

    def walk(parent: int, prefix: str) -> None:
        below = children.get(parent, [])
        for n, row in enumerate(below, 1):
            last = n == len(below)
            mark = " ✓" if row.converted else ""
            lines.append(f"{prefix}{'└─' if last else '├─'} {row.name} #{row.customer_id} "
                         f"({lifecycle.label(row.stage)}){mark}")
            walk(row.customer_id, prefix + ("   " if last else "│  "))

    walk(root_id, "")
    return lines


@referrals_group.command("rewards")
@click.option("--customer", "customer_id", type=int, metavar="ID", help="Only what this customer received.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="Entries, newest first.")
@json_option
@click.pass_context
def rewards_command(ctx: click.Context, customer_id: int | None, limit: int, as_json: bool) -> None:
    """The reward ledger (grants and reversals, newest first) and the totals per rule.

    Example: scrm referrals rewards --customer 42 --limit 20
    """

    async def work(session: AsyncSession) -> tuple[list[RewardEntry], dict[int, str], dict[str, dict[str, int]]]:
        receiver = None
        if customer_id is not None:
            customer = await current_customer(session, customer_id)
            if customer is None:
                raise click.ClickException(f"no customer {customer_id}")
            receiver = customer.id
        entries = await ledger(session, receiver, limit)
        names = await names_of(session, [e.customer_id for e in entries] + [e.friend_id for e in entries])
        return entries, names, await totals(session)

    entries, names, per_rule = in_store(settings_of(ctx), work)
    if as_json:
        echo_json({"entries": [_entry(e, names) for e in entries], "totals": per_rule})
        return
    click.echo(table([[e.id, when(e.created_at), e.kind, e.rule_id, f"{names.get(e.customer_id, '')} #{e.customer_id}",
                       "" if e.friend_id is None else f"{names.get(e.friend_id, '')} #{e.friend_id}", e.reward,
                       "" if e.reverses_id is None else f"#{e.reverses_id} {e.reason}".rstrip()] for e in entries],
                     ["id", "when", "kind", "rule", "receiver", "friend", "reward", "reverses"])
               if entries else "no rewards yet")
    if per_rule:
        click.echo("totals per rule (whole ledger):")
        click.echo(table([[rule, n["grant"], n["reversal"], n["grant"] - n["reversal"]]
                          for rule, n in sorted(per_rule.items())], ["rule", "grants", "reversals", "net"]))


def _entry(entry: RewardEntry, names: dict[int, str]) -> dict[str, Any]:
    return {"id": entry.id, "at": as_utc(entry.created_at), "kind": entry.kind, "rule_id": entry.rule_id,
            "customer_id": entry.customer_id, "customer": names.get(entry.customer_id, ""),
            "friend_id": entry.friend_id, "friend": names.get(entry.friend_id or 0, ""), "reward": entry.reward,
            "reverses_id": entry.reverses_id, "reason": entry.reason}


@referrals_group.command("reverse")
@click.argument("entry_id", metavar="ENTRY_ID", type=int)
@click.option("--reason", required=True, help="Why (kept in the ledger), e.g. the order was refunded.")
@json_option
@click.pass_context
def reverse_command(ctx: click.Context, entry_id: int, reason: str, as_json: bool) -> None:
    """Take a grant back with a reversal entry in the ledger (the grant itself is never deleted).

    Example: scrm referrals reverse 17 --reason "friend's order refunded"
    """
    if not reason.strip():
        raise click.BadParameter("say why the grant is taken back", param_hint="--reason")

    async def work(session: AsyncSession) -> tuple[RewardEntry, dict[int, str]]:
        reversal = await reverse(session, entry_id, reason.strip())
        return reversal, await names_of(session, [reversal.customer_id, reversal.friend_id])

    try:
        reversal, names = in_store(settings_of(ctx), work)
    except RewardError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        echo_json(_entry(reversal, names))
        return
    click.echo(f"reversal #{reversal.id} of grant #{entry_id}: {reversal.rule_id} ({reversal.reward}) to "
               f"{names.get(reversal.customer_id, '')} #{reversal.customer_id}: {reversal.reason}")


@referrals_group.command("rescore")
@json_option
@click.pass_context
def rescore_command(ctx: click.Context, as_json: bool) -> None:
    """Recompute every social score with the configured weights (growth.social_weights), after changing them.

    Example: scrm referrals rescore
    """
    settings = settings_of(ctx)
    weights = settings.growth.social_weights
    with progress("rescore", unit="scores", quiet=as_json) as shown:  # one transaction: all or nothing
        count = in_store(settings, lambda session: rescore(session, weights, on_progress=shown.update))
    if as_json:
        echo_json({"rescored": count, "weights": weights.model_dump()})
        return
    click.echo(f"rescored {count} customer(s) with weights "
               + ", ".join(f"{name}={value:g}" for name, value in weights.model_dump().items()))
