"""Weekly opening hours written the way a brand says them: "mon-fri 09:00-18:00; sat 10:00-16:00".

Used for the brand's office hours (when handoffs go to people at once) and for each rep's
own hours. Times are local to the brand's time zone; a span may not cross midnight (write
two). Parsing names what is wrong, so a typo in config or on the command line is caught
before it silently closes the office.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_NAMES_ZH = ("周一", "周二", "周三", "周四", "周五", "周六", "周日")
ALWAYS = "mon-sun 00:00-24:00"


class HoursError(ValueError):
    pass


@dataclass(frozen=True)
class Span:
    day: int  # 0 = Monday
    start: time
    end: time | None  # None: until midnight (24:00)


@dataclass(frozen=True)
class WeeklyHours:
    spans: tuple[Span, ...]
    text: str

    @classmethod
    def parse(cls, text: str) -> WeeklyHours:
        text = " ".join(text.split())
        spans: list[Span] = []
        for part in (p.strip() for p in text.replace("，", ";").replace(",", ";").split(";")):
            if not part:
                continue
            days_text, _, times_text = part.partition(" ")
            days = _days(days_text, part)
            start, end = _times(times_text.strip(), part)
            spans.extend(Span(day, start, end) for day in days)
        if not spans:
            raise HoursError(f"{text!r}: no hours; write e.g. 'mon-fri 09:00-18:00; sat 10:00-16:00'")
        return cls(tuple(spans), text)

    def is_open(self, at: datetime, zone: ZoneInfo) -> bool:
        local = at.astimezone(zone)
        now = local.time()
        return any(
            span.day == local.weekday() and span.start <= now and (span.end is None or now < span.end)
            for span in self.spans
        )

    def next_open(self, at: datetime, zone: ZoneInfo) -> datetime:
        """`at` itself when open, else the next opening (within a week: every week has a span)."""
        if self.is_open(at, zone):
            return at
        local = at.astimezone(zone)
        best: datetime | None = None
        for ahead in range(8):
            day = (local + timedelta(days=ahead)).date()
            for span in self.spans:
                if span.day != day.weekday():
                    continue
                opening = datetime.combine(day, span.start, zone)
                if opening > local and (best is None or opening < best):
                    best = opening
            if best is not None:
                break
        assert best is not None
        return best.astimezone(at.tzinfo)


def say_when(moment: datetime, now: datetime, zone: ZoneInfo) -> str:
    """今天 14:00, 明天 09:00, or 周一 09:00: what a customer is told."""
    local, today = moment.astimezone(zone), now.astimezone(zone).date()
    days = (local.date() - today).days
    day = "今天" if days == 0 else "明天" if days == 1 else DAY_NAMES_ZH[local.weekday()]
    return f"{day} {local:%H:%M}"


def _days(text: str, part: str) -> list[int]:
    first, _, last = text.lower().partition("-")
    if first not in DAYS or (last and last not in DAYS):
        raise HoursError(f"{part!r}: days are {'/'.join(DAYS)} or a range like mon-fri")
    start, end = DAYS.index(first), DAYS.index(last or first)
    return [(start + n) % 7 for n in range((end - start) % 7 + 1)]


def _times(text: str, part: str) -> tuple[time, time | None]:
    start_text, _, end_text = text.partition("-")
    start, end = _clock(start_text, part), _clock(end_text, part)
    if start is None:
        raise HoursError(f"{part!r}: 24:00 can only end a span")
    if end is not None and end <= start:
        raise HoursError(f"{part!r}: the end must be after the start (split a span that crosses midnight)")
    return start, end


def _clock(text: str, part: str) -> time | None:
    hours, _, minutes = text.strip().partition(":")
    if not (hours.isdigit() and minutes.isdigit() and len(minutes) == 2):
        raise HoursError(f"{part!r}: times are HH:MM-HH:MM, e.g. 09:00-18:00")
    h, m = int(hours), int(minutes)
    if (h, m) == (24, 0):
        return None
    if h > 23 or m > 59:
        raise HoursError(f"{part!r}: {text.strip()} is not a time of day")
    return time(h, m)
