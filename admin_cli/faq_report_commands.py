"""`scrm faq suggest`: what customers asked that nothing answered, grouped into the FAQ entries worth writing.

The loop that makes the FAQ better: suggest → write the answers → `scrm faq import` → publish →
`scrm report faq` (admin_cli/report_commands.py) shows which entries did not help. A few lines
over crm_store/faq_reports.py (the texts) and flows/faq_suggest.py (the clusters).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from zoneinfo import ZoneInfo

import click

from admin_cli.common import in_store, json_option, table
from admin_cli.faq_commands import faq
from admin_cli.main import echo_json, settings_of
from admin_cli.report_commands import parse_moment
from crm_store.faq_reports import MAX_TEXTS, unanswered
from flows.faq_suggest import Suggestion, suggest, suggestions_csv


@faq.command("suggest")
@click.option("--since", default="30d", show_default=True, metavar="WHEN",
              help="From this long ago (30d, 12h, 2w) or this date or time (brand time zone).")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="Clusters to show.")
@click.option("--csv", "csv_path", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the clusters as a CSV for `scrm faq import`, the answers EMPTY for you to fill.")
@json_option
@click.pass_context
def suggest_command(ctx: click.Context, since: str, limit: int, csv_path: Path | None, as_json: bool) -> None:
    """What customers asked that nothing answered, grouped by likeness, most asked first: the FAQ entries
    worth writing next.

    Reads the messages the fallback answered, and the ones the bot offered FAQ choices for and a person
    was asked for within 10 minutes; a miss where the customer asked for a person ("转人工") is left out.
    Each cluster shows how many messages and customers, how many were followed by a handoff, and its
    most frequent texts.

    --csv FILE writes the id,question,answer format of `scrm faq import`: one row per phrasing, the id a
    placeholder (new_01…), the answer column EMPTY. The import refuses an entry without an answer: write
    each answer (and rename ids, drop rows you do not want), then import the file.

    Example: scrm faq suggest --since 7d --limit 10 --csv new-faq.csv
    """
    settings = settings_of(ctx)
    start = parse_moment(since, ZoneInfo(settings.growth.timezone), "--since")
    texts = in_store(settings, lambda session: unanswered(session, start, person_intents=settings.handoff.intents))
    found = suggest(texts, limit)
    if csv_path is not None and found:
        csv_path.write_text(suggestions_csv(found), encoding="utf-8-sig", newline="")  # a BOM: Excel reads UTF-8
    if as_json:
        echo_json({"since": start.isoformat(timespec="seconds") if start else None, "messages": len(texts),
                   "suggestions": [asdict(s) for s in found]})
    elif not found:
        click.echo(f"nothing went unanswered since {since}" + (f"; {csv_path} not written" if csv_path else ""))
    else:
        _echo(found, len(texts), since, csv_path)


def _echo(found: list[Suggestion], messages: int, since: str, csv_path: Path | None) -> None:
    newest = f" (the newest {MAX_TEXTS})" if messages >= MAX_TEXTS else ""
    click.echo(f"{messages} unanswered messages{newest} since {since}; the {len(found)} largest clusters:\n")
    click.echo(table([[s.id, s.count, s.customers, s.handed_off, s.title, " / ".join(s.examples[1:])]
                      for s in found], ["id", "messages", "customers", "then handoff", "title", "also asked as"]))
    if csv_path is not None:
        rows = sum(len(suggestion.questions) for suggestion in found)
        click.echo(f"\nwrote {len(found)} entries ({rows} rows) to {csv_path}: write their answers, then "
                   f"scrm faq import {csv_path}")


__all__ = ["suggest_command"]
