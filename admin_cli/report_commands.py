"""`scrm report ...`: read-only reports over the store (crm_store.reports, crm_store.reports_bot,
crm_store.faq_reports, crm_store.group_chat_reports), as tables, as `--json`, or all of them in one
self-contained HTML file (inline CSS and SVG, no scripts).

Two reports have "group" in them and must not be confused: `group-buys` (拼团, the growth
campaigns; once called `groups`, which still works) and `group-chats` (客户群, WeCom customer groups).

--since and --until are dates or times in the brand's time zone (growth.timezone), or a span back
from now (30d, 12h, 2w); --until is exclusive, and a bare date means the end of that day.
"""

from __future__ import annotations

import html
import re
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, is_dataclass
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
from sqlalchemy.ext.asyncio import AsyncSession

from admin_cli.common import in_store, json_option, table
from admin_cli.main import cli, echo_json, settings_of
from bot.settings import Settings
from crm_store.faq_reports import faq_stats
from crm_store.group_chat_reports import GroupChatReport, group_chats_report
from crm_store.lifecycle import Lifecycle
from crm_store.reports import channels_report, funnel_report, groups_report, rate, referrals_report
from crm_store.reports_bot import bots_report, handoffs_report, messages_report, nlu_report, nurture_report

Window = tuple[datetime | None, datetime | None]
Loader = Callable[[AsyncSession, datetime | None, datetime | None], Awaitable[Any]]
Rows = tuple[list[str], list[list[Any]]]  # headers, rows
AGO = re.compile(r"(\d+)\s*([hdw])")  # 30d: thirty days before now
AGO_UNITS = {"h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True)
class Section:
    """What one report shows: a title, its headline figures, tables, and one bar chart."""

    title: str
    figures: list[tuple[str, Any]]
    tables: list[Rows]
    bars: list[tuple[str, float]]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def parse_moment(value: str | None, zone: ZoneInfo, option: str, end: bool = False) -> datetime | None:
    """A date (YYYY-MM-DD) or time (YYYY-MM-DD HH:MM) in `zone`, or a span back from now (30d, 12h, 2w);
    a bare --until date means the day after."""
    if value is None:
        return None
    if ago := AGO.fullmatch(value.strip().lower()):
        return datetime.now(zone) - timedelta(**{AGO_UNITS[ago[2]]: int(ago[1])})
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.ClickException(f"{option}: {value!r} is not a date; write YYYY-MM-DD, 'YYYY-MM-DD HH:MM' "
                                   "or a span back from now (30d, 12h, 2w)") from None
    if end and len(value.strip()) == 10 and moment.time() == time(0):
        moment += timedelta(days=1)
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


def _loaders(settings: Settings) -> dict[str, Loader]:
    lifecycle = Lifecycle(settings.lifecycle)
    purchase = settings.growth.purchase_stages
    fallback = settings.flows.fallback_flow
    return {
        "funnel": lambda s, a, b: funnel_report(s, a, b, lifecycle=lifecycle),
        "channels": lambda s, a, b: channels_report(s, a, b, purchase_stages=purchase),
        "group-buys": groups_report,
        "group-chats": lambda s, a, b: group_chats_report(s, a, b, timezone=settings.growth.timezone),
        "referrals": referrals_report, "nurture": nurture_report,
        "handoffs": handoffs_report, "bots": lambda s, a, b: bots_report(s, a, b, fallback_flow=fallback),
        "messages": messages_report, "nlu": nlu_report, "faq": faq_stats,
    }


def _window(settings: Settings, since: str | None, until: str | None) -> Window:
    zone = ZoneInfo(settings.growth.timezone)
    start, end = parse_moment(since, zone, "--since"), parse_moment(until, zone, "--until", end=True)
    if start is not None and end is not None and end <= start:
        raise click.ClickException(f"--until ({until}) must be after --since ({since})")
    return start, end


def _data(report: Any) -> Any:
    if isinstance(report, list):
        return [_data(item) for item in report]
    return asdict(report) if is_dataclass(report) and not isinstance(report, type) else report


# ---------------------------------------------------------------- sections: what each report shows


def _funnel(r: Any) -> Section:
    stages = [[s.label, s.stage, s.current, s.reached, _pct(s.conversion_from_previous)] for s in r.stages]
    weeks = [[w.week, w.new_customers, *(w.reached[s.stage] for s in r.stages)] for w in r.weeks]
    return Section("Lifecycle funnel", [("new customers", r.new_customers)],
                   [(["stage", "id", "now", "reached", "from previous"], stages),
                    (["week", "new", *(s.stage for s in r.stages)], weeks)],
                   [(s.label, s.reached) for s in r.stages])


def _channels(lines: Any) -> Section:
    rows = [[c.code, c.name, c.kind, c.adds, c.conversions, _pct(c.conversion_rate), f"¥{c.cost_yuan:.2f}",
             "-" if c.cost_per_add is None else f"¥{c.cost_per_add:.2f}"] for c in lines]
    return Section("Entry channels", [("channels", len(lines))],
                   [(["code", "name", "kind", "adds", "conversions", "rate", "cost", "cost/add"], rows)],
                   [(c.name, c.adds) for c in lines])


def _group_buys(lines: Any) -> Section:
    rows = [[c.code, c.name, c.groups_opened, c.filled, c.expired, c.still_open, _pct(c.fill_rate), c.members,
             c.seats_sold, f"¥{c.revenue_yuan:.2f}", f"{c.sold}/{c.stock}"] for c in lines]
    return Section("Group-buys", [("groups opened", sum(c.groups_opened for c in lines)),
                                  ("filled", sum(c.filled for c in lines))],
                   [(["campaign", "name", "opened", "filled", "expired", "open", "fill rate", "members",
                      "seats sold", "revenue", "stock sold"], rows)],
                   [(c.code, c.filled) for c in lines])


def _group_chats(r: GroupChatReport) -> Section:
    days = [[d.day, d.joins, d.leaves, d.joins - d.leaves] for d in r.days]
    inviters = [[i.customer_id, i.name, i.joins, i.members_now] for i in r.top_inviters]
    codes = [[c.code, c.name, c.groups, c.joins, c.leaves, c.members_now] for c in r.codes]
    owner = [("owner", r.owner)] if r.owner else []
    return Section("Customer groups (客户群)",
                   [*owner, ("groups now", r.groups_now), ("members now", r.members_now),
                    ("customers now", r.customers_now), ("joins", r.joins), ("leaves", r.leaves)],
                   [([f"day ({r.timezone})", "joins", "leaves", "net"], days),
                    (["inviter", "name", "brought", "still in"], inviters),
                    (["live code", "name", "groups", "joins", "leaves", "customers now"], codes)],
                   [(d.day, d.joins) for d in r.days[-31:]])  # the last month's joins


def _referrals(r: Any) -> Section:
    inviters = [[i.customer_id, i.name, i.friends, i.converted] for i in r.top_inviters]
    board = [[i.customer_id, i.name, i.friends, i.friends_converted, i.groups_filled, f"{i.score:g}"]
             for i in r.influencers]
    return Section("Referrals", [("friends brought", r.friends), ("converted", r.converted),
                                 ("conversion", _pct(r.conversion_rate)), ("rewards granted", r.rewards_granted),
                                 ("rewards reversed", r.rewards_reversed)],
                   [(["inviter", "name", "friends", "converted"], inviters),
                    (["influencer", "name", "friends", "converted", "groups filled", "score"], board)],
                   [(i.name or str(i.customer_id), i.friends) for i in r.top_inviters])


def _nurture(r: Any) -> Section:
    seqs = [[s.sequence, s.enrolled, s.active, s.completed, s.exited, s.converted, s.sent, s.replied,
             _pct(s.reply_rate)] for s in r.sequences]
    pushes = [[p.id, p.name, p.status, p.audience, p.sent, p.replied, p.skipped, p.failed, _pct(p.reply_rate)]
              for p in r.pushes]
    return Section("Nurture and pushes", [("sequences", len(r.sequences)), ("pushes", len(r.pushes))],
                   [(["sequence", "enrolled", "active", "completed", "exited", "converted", "sent", "replied",
                      "reply rate"], seqs),
                    (["push", "name", "status", "audience", "sent", "replied", "skipped", "failed", "reply rate"],
                     pushes)],
                   [(s.sequence, s.sent) for s in r.sequences] + [(f"push {p.name}", p.sent) for p in r.pushes])


def _handoffs(r: Any) -> Section:
    reps = [[f.userid, f.name, f.offered, f.taken, f.open_now,
             "-" if f.median_first_response_s is None else f"{f.median_first_response_s:.0f}s", f.advanced]
            for f in r.reps]
    return Section("Handoffs", [("opened", r.opened), *((f"reason {k}", v) for k, v in r.by_reason.items()),
                                *((f"closed by {k}", v) for k, v in r.closed_by.items())],
                   [(["rep", "name", "offered", "taken", "open now", "median response", "advanced"], reps)],
                   [(f.userid, f.taken) for f in r.reps])


def _bots(r: Any) -> Section:
    flows = [[f.flow, f.started, f.active, f.ended, f.handoffs, _pct(f.containment), _pct(f.handoff_rate),
              ", ".join(f"{k} {v}" for k, v in f.ended_by.items())] for f in r.flows]
    return Section("Bot flows", [("messages", r.messages), ("conversations", r.conversations),
                                 ("containment", _pct(r.containment)), ("handoff rate", _pct(r.handoff_rate)),
                                 ("handoffs opened", r.handoffs_opened), ("fallback rate", _pct(r.fallback_rate))],
                   [(["flow", "started", "active", "ended", "handoffs", "containment", "handoff rate", "ended by"],
                     flows)],
                   [(f.flow, f.started) for f in r.flows])


def _messages(r: Any) -> Section:
    kinds = [[k.kind, k.messages, k.customers, _pct(k.share)] for k in r.by_kind]
    return Section("Inbound messages by kind", [("messages", r.messages), ("kinds", len(r.by_kind))],
                   [(["kind", "messages", "customers", "share"], kinds)],
                   [(k.kind, k.messages) for k in r.by_kind])


def _nlu(r: Any) -> Section:
    return Section("NLU health", [("messages", r.messages), ("parsed", r.parsed), ("nlu_fallback", r.fallback),
                                  ("out_of_scope", r.out_of_scope), ("unknown rate", _pct(r.unknown_rate)),
                                  ("low confidence", r.low_confidence),
                                  ("low-confidence rate", _pct(r.low_confidence_rate))],
                   [(["not understood (add to training data)", "times"], [[u.text, u.count] for u in r.top_unknown])],
                   [(u.text[:24], u.count) for u in r.top_unknown])


def _faq(lines: Any) -> Section:
    rows = [[f.entry, f.asked, f.answered, f.chosen, f.offered, f.followed_by_handoff, f.repeated, f.not_helped,
             _pct(f.not_helped_rate)] for f in lines]
    asked, not_helped = sum(f.asked for f in lines), sum(f.not_helped for f in lines)
    worst = sorted((f for f in lines if f.not_helped), key=lambda f: (-f.not_helped, f.entry))[:15]
    return Section("FAQ", [("entries", len(lines)), ("answers given", asked), ("did not help", not_helped),
                           ("did-not-help rate", _pct(rate(not_helped, asked)))],
                   [(["entry", "asked", "answered", "chosen", "offered", "then handoff", "then repeat",
                      "did not help", "rate"], rows)],
                   [(f.entry, f.not_helped) for f in worst])  # the entries that most often did not help


SECTIONS: dict[str, Callable[[Any], Section]] = {
    "funnel": _funnel, "channels": _channels, "group-buys": _group_buys, "group-chats": _group_chats,
    "referrals": _referrals, "nurture": _nurture,
    "handoffs": _handoffs, "bots": _bots, "messages": _messages, "nlu": _nlu, "faq": _faq,
}

# ---------------------------------------------------------------- text and HTML


def _echo_section(section: Section) -> None:
    click.echo("   ".join(f"{name}: {value}" for name, value in section.figures))
    for headers, rows in section.tables:
        if rows:
            click.echo()
            click.echo(table(rows, headers))


def svg_bars(bars: list[tuple[str, float]], width: int = 560, bar_height: int = 18) -> str:
    """A horizontal bar chart as inline SVG: one labelled bar per item, scaled to the largest."""
    if not bars:
        return '<svg width="1" height="1" role="img"></svg>'
    label_w, value_w = 170, 60
    top = max((value for _, value in bars), default=0) or 1
    height = len(bars) * (bar_height + 6) + 6
    parts = [f'<svg width="{width}" height="{height}" role="img">']
    for n, (label, value) in enumerate(bars):
        y = 6 + n * (bar_height + 6)
        length = max(0.0, (width - label_w - value_w) * value / top)
        parts.append(
            f'<text x="{label_w - 6}" y="{y + bar_height - 5}" text-anchor="end">{html.escape(str(label)[:28])}</text>'
            f'<rect x="{label_w}" y="{y}" width="{length:.1f}" height="{bar_height}" fill="#4a7bd0"/>'
            f'<text x="{label_w + length + 4:.1f}" y="{y + bar_height - 5}">{value:g}</text>')
    return "".join(parts) + "</svg>"


CSS = ("body{font-family:-apple-system,'PingFang SC','Microsoft YaHei',sans-serif;margin:2em;color:#222}"
       "h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}"
       "table{border-collapse:collapse;margin:.8em 0}td,th{border:1px solid #ddd;padding:3px 8px;font-size:.9em}"
       "th{background:#f3f5f9}.figures span{display:inline-block;margin-right:1.5em}svg text{font-size:12px}")


def _html_section(section: Section) -> str:
    figures = "".join(f"<span>{html.escape(name)}: <b>{html.escape(str(value))}</b></span>"
                      for name, value in section.figures)
    tables = "".join(
        "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
        + "</table>" if rows else "<p>nothing in this period</p>"
        for headers, rows in section.tables)
    return f"<h2>{html.escape(section.title)}</h2><p class='figures'>{figures}</p>{svg_bars(section.bars)}{tables}"


def render_html(sections: list[Section], period: str) -> str:
    body = "".join(_html_section(section) for section in sections)
    return (f"<!DOCTYPE html><html lang='zh'><head><meta charset='utf-8'><title>SCRM report</title>"
            f"<style>{CSS}</style></head><body><h1>SCRM report</h1><p>{html.escape(period)}</p>{body}</body></html>")


# ---------------------------------------------------------------- commands


def window_options(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.option("--until", metavar="DATE", help="Up to this date or time (exclusive; a date: its end).")(
        function)
    return click.option("--since", metavar="DATE", help="From this date or time (brand time zone), or this long "
                        "ago (30d, 12h).")(function)


@cli.group("report")
def report_group() -> None:
    """Read-only reports: funnel, channels, group-buys (拼团), customer groups (客户群, group-chats), referrals,
    nurture, handoffs, bot flows, messages by kind, NLU, FAQ; or all of them in one HTML file."""


def _show(report: Any, name: str, as_json: bool) -> None:
    if as_json:
        echo_json(_data(report))
        return
    _echo_section(SECTIONS[name](report))


def _report_command(name: str, doc: str, report: str = "", note: str = "") -> None:
    """`scrm report NAME`; with `report`, a hidden old name for that report, saying `note` on stderr."""

    @report_group.command(name, help=doc, hidden=bool(report))
    @window_options
    @json_option
    @click.pass_context
    def command(ctx: click.Context, since: str | None, until: str | None, as_json: bool) -> None:
        if note:
            click.echo(note, err=True)
        settings = settings_of(ctx)
        start, end = _window(settings, since, until)
        load = _loaders(settings)[report or name]
        _show(in_store(settings, lambda session: load(session, start, end)), report or name, as_json)


for _name, _doc in {
    "funnel": "New customers per week and how many reached each stage, with stage-to-stage conversion.\n\n"
              "Example: scrm report funnel --since 2026-01-01 --until 2026-03-31",
    "channels": "Each entry channel: customers it brought in the period, conversions, cost per add.\n\n"
                "Example: scrm report channels --since 2026-03-01 --json",
    "group-buys": "Each group-buy (拼团) campaign: groups opened, filled, expired, fill rate, members, seats sold. "
                  "For customer groups (客户群) see: scrm report group-chats.\n\n"
                  "Example: scrm report group-buys --since 2026-03-01",
    "referrals": "Friends brought and converted, rewards, the period's top inviters and the influencer board.\n\n"
                 "Example: scrm report referrals --since 2026-03-01",
    "nurture": "Sequences (enrolments, sends, replies, conversions) and pushes (sent, replied, skipped).\n\n"
               "Example: scrm report nurture --since 2026-03-01",
    "handoffs": "Handoffs by reason and closer, and per rep: offered, taken, response time.\n\n"
                "Example: scrm report handoffs --since 2026-03-01",
    "bots": "Per flow: conversations started, ended by reason, containment, handoff rate; fallback rate.\n\n"
            "Example: scrm report bots --since 2026-03-01 --json",
    "messages": "Customer messages by kind (text, image, voice, video, file, location, link, miniprogram, …): "
                "how many, from how many customers, and each kind's share.\n\n"
                "Example: scrm report messages --since 30d --json",
    "nlu": "NLU health: messages parsed, fallback and out-of-scope rate, low confidence, top unknown messages.\n\n"
           "Example: scrm report nlu --since 2026-03-01",
    "faq": "Per FAQ entry: asked (answered at once or chosen from an offer), offered as a choice, and how often "
           "an answer was followed within 10 minutes by a handoff or the same entry again (did not help).\n\n"
           "Example: scrm report faq --since 30d --json",
}.items():
    _report_command(_name, _doc)

_report_command("groups", "The old name of `scrm report group-buys` (拼团), kept working; it says so on stderr.\n\n"
                "Example: scrm report groups --json", report="group-buys",
                note="note: `scrm report groups` is now `scrm report group-buys` (拼团); customer groups (客户群) "
                     "are `scrm report group-chats`")


@report_group.command("group-chats")
@click.option("--owner", metavar="USERID", help="Only the groups this rep owns now.")
@window_options
@json_option
@click.pass_context
def group_chats_command(ctx: click.Context, owner: str | None, since: str | None, until: str | None,
                        as_json: bool) -> None:
    """Customer groups (客户群, not group-buys): customers' joins and leaves per day (the brand's days), groups
    and members now, top inviters (whose personal codes brought the most), and per group live code.

    Example: scrm report group-chats --since 30d --owner zhangsan
    """
    settings = settings_of(ctx)
    start, end = _window(settings, since, until)
    report = in_store(settings, lambda session: group_chats_report(
        session, start, end, timezone=settings.growth.timezone, owner=owner))
    _show(report, "group-chats", as_json)


@report_group.command("html")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("report.html"),
              show_default=True, help="The HTML file to write.")
@window_options
@click.pass_context
def html_command(ctx: click.Context, output: Path, since: str | None, until: str | None) -> None:
    """Every report in one self-contained HTML file (inline CSS and SVG charts, nothing fetched).

    Example: scrm report html -o report.html --since 2026-03-01
    """
    settings = settings_of(ctx)
    start, end = _window(settings, since, until)
    loaders = _loaders(settings)

    async def work(session: AsyncSession) -> list[Section]:
        return [SECTIONS[name](await load(session, start, end)) for name, load in loaders.items()]

    sections = in_store(settings, work)
    period = f"{start:%Y-%m-%d %H:%M} → " if start else "from the start → "
    period += f"{end:%Y-%m-%d %H:%M}" if end else "now"
    output.write_text(render_html(sections, f"{period} ({settings.growth.timezone})"), encoding="utf-8")
    click.echo(f"wrote {output} ({len(sections)} reports)")
