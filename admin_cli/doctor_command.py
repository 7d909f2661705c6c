"""`scrm doctor`: a few lines over bot.doctor, which does the looking."""

from __future__ import annotations

import asyncio

import click

from admin_cli.common import json_option
from admin_cli.main import cli, echo_json, settings_of
from bot.doctor import Report, diagnose, unreadable_config

MARKS = {"ok": "✓", "warn": "!", "fail": "✗"}


@cli.command()
@click.option("--public-url", metavar="URL",
              help="The bot's public base URL, as entered in the consoles (e.g. https://bot.example.com): "
                   "each callback path there must answer WeChat's signed URL check.")
@json_option
@click.pass_context
def doctor(ctx: click.Context, public_url: str | None, as_json: bool) -> None:
    """Check a deployment and say what to fix: one line per check, ✓ fine, ! look at it, ✗ broken.

    Looks at the configuration (complete, no sandbox values, the sandbox off), the store (reachable,
    at the newest migration), Redis, the Rasa model and server, every WeCom secret and the OA's
    (a fresh access token each, then the kf accounts, the app's agent, the reps with customer
    contact), and with --public-url the callback URLs. It writes nothing, but it does buy fresh
    access tokens: on the OA that retires the bot's token five minutes later, and the bot then
    fetches a new one by itself. Exit status 0 when nothing failed, 1 otherwise.

    \b
    Examples:
      scrm doctor
      scrm doctor --public-url https://bot.example.com
      SCRM__WECOM__KF__SECRET=... scrm doctor --json | jq '.checks[] | select(.status != "ok")'
    """
    if public_url and not public_url.startswith(("https://", "http://")):
        raise click.BadParameter("must start with https:// (or http://)", param_hint="--public-url")
    try:
        settings = settings_of(ctx)
    except click.ClickException as exc:
        report = Report((unreadable_config(exc.message),))
    else:
        report = asyncio.run(diagnose(settings, public_url))
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(render(report))
    ctx.exit(1 if report.failed else 0)


def render(report: Report) -> str:
    """One line per check, the fix indented under it, and a last line that counts."""
    width = max(len(check.name) for check in report.checks)
    lines = []
    for check in report.checks:
        lines.append(f"{MARKS[check.status]} {check.name:<{width}}  {check.detail}")
        if check.fix:
            lines.append(f"  {'':<{width}}  fix: {check.fix}")
    failed, warnings = len(report.failed), len(report.warnings)
    if failed or warnings:
        lines.append(f"{failed} failed, {warnings} to look at" + (": fix the ✗ lines first" if failed else ""))
    else:
        lines.append(f"all {len(report.checks)} checks passed")
    return "\n".join(lines)
