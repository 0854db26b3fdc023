"""Business time on a firm's calendar: time zone (DST-correct), weekly hours, holidays.

Times are POSIX seconds (UTC). The calendar keeps, per local day, its open intervals and the
cumulative business seconds up to its midnight, so `seconds_between` is one bisect and a
few additions however long the span: evaluation computes it for every response.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from ..config import WEEKDAYS, CalendarConfig, country_holidays

#: Recurring holidays are expanded over these years around today: a scan of old mail and a
#: schedule years ahead both see them, and a rule with no end stays finite.
ICS_YEARS_BACK, ICS_YEARS_AHEAD = 15, 5


def load_ics_holidays(path: Path, today: date | None = None) -> set[date]:
    """The days of an iCalendar file's all-day events: repeated ones (RRULE, RDATE) expanded,
    excluded dates (EXDATE) and cancelled events or occurrences left out, DTEND exclusive.
    A timed event (a meeting, a half-day) is not a holiday. ValueError if it does not parse."""
    import icalendar
    import recurring_ical_events

    try:
        cal = icalendar.Calendar.from_ical(path.read_bytes())
    except (ValueError, IndexError, KeyError) as exc:
        raise ValueError(f"{path} is not an iCalendar file: {exc}") from None
    today = today or date.today()
    window = (date(today.year - ICS_YEARS_BACK, 1, 1), date(today.year + ICS_YEARS_AHEAD, 12, 31))
    out: set[date] = set()
    for event in recurring_ical_events.of(cal).between(*window):
        if str(event.get("STATUS", "")).upper() == "CANCELLED":
            continue
        start = event.get("DTSTART")
        if start is None or isinstance(start.dt, datetime):  # timed: not a day off
            continue
        end = event.get("DTEND")
        first: date = start.dt
        last = end.dt if end is not None and not isinstance(end.dt, datetime) else first + timedelta(days=1)
        d = first
        while d < max(last, first + timedelta(days=1)):
            out.add(d)
            d += timedelta(days=1)
    return out


def _parse_ranges(spec: str | list[str]) -> list[tuple[int, int]]:
    out = []
    for r in [spec] if isinstance(spec, str) else spec:
        a, b = r.replace(" ", "").split("-")
        h1, m1 = map(int, a.split(":"))
        h2, m2 = map(int, b.split(":"))
        out.append((h1 * 60 + m1, h2 * 60 + m2))
    return sorted(out)


class BusinessCalendar:
    def __init__(self, timezone: str, hours: Mapping[str, str | list[str]],
                 holidays: Iterable[date] = ()) -> None:
        self.tz = ZoneInfo(timezone)
        self.timezone = timezone
        self.week: list[list[tuple[int, int]]] = [
            _parse_ranges(hours[d]) if d in hours else [] for d in WEEKDAYS
        ]
        self.holidays = frozenset(holidays)
        self._base: date | None = None
        self._starts: list[float] = []  # UTC seconds of each local midnight
        self._cum: list[float] = []  # business seconds from the base to that midnight
        self._open: list[list[tuple[float, float]]] = []

    @classmethod
    def from_config(cls, cal: CalendarConfig) -> BusinessCalendar:
        holidays = set(cal.holidays)
        if cal.holidays_ics:
            holidays |= load_ics_holidays(cal.holidays_ics)
        if cal.holidays_country:
            this_year = date.today().year
            holidays |= country_holidays(cal.holidays_country,
                                         *range(this_year - ICS_YEARS_BACK, this_year + ICS_YEARS_AHEAD + 1))
        return cls(cal.timezone, cal.hours, holidays)

    # --- the day table -----------------------------------------------------------------------
    def _intervals(self, d: date) -> list[tuple[float, float]]:
        if d in self.holidays:
            return []
        out = []
        for s, e in self.week[d.weekday()]:
            start = datetime.combine(d, time(s // 60, s % 60), self.tz).timestamp()
            end = (datetime.combine(d + timedelta(days=1), time(0), self.tz).timestamp() if e >= 1440
                   else datetime.combine(d, time(e // 60, e % 60), self.tz).timestamp())
            out.append((start, end))
        return out

    def _local_date(self, t: float) -> date:
        return datetime.fromtimestamp(t, self.tz).date()

    def _ensure(self, t: float) -> None:
        """Extend the day table so that it covers t (with a margin on both sides)."""
        if self._starts and self._starts[0] <= t < self._starts[-1]:
            return
        d = self._local_date(t)
        lo = d - timedelta(days=40)
        hi = d + timedelta(days=40)
        if self._base is not None:
            lo = min(lo, self._base)
            hi = max(hi, self._base + timedelta(days=len(self._starts) - 1))
        self._base = lo
        self._starts, self._cum, self._open = [], [], []
        acc = 0.0
        day = lo
        while day <= hi:
            self._starts.append(datetime.combine(day, time(0), self.tz).timestamp())
            self._cum.append(acc)
            ivs = self._intervals(day)
            self._open.append(ivs)
            acc += sum(e - s for s, e in ivs)
            day += timedelta(days=1)

    def _index(self, t: float) -> int:
        self._ensure(t)
        return bisect_right(self._starts, t) - 1

    def _position(self, t: float) -> float:
        """Business seconds from the table's base to t (the table must cover t)."""
        i = bisect_right(self._starts, t) - 1
        acc = self._cum[i]
        for s, e in self._open[i]:
            if t <= s:
                break
            acc += (t if t < e else e) - s
        return acc

    # --- the public operations ---------------------------------------------------------------
    def _cover(self, a: float, b: float) -> None:
        """Make the day table cover [a, b]; evaluation calls this 100k+ times, so the common
        case is one comparison."""
        starts = self._starts
        if not starts or a < starts[0] or b >= starts[-1]:
            self._ensure(a)
            self._ensure(b)

    def seconds_between(self, a: float, b: float) -> float:
        if b <= a:
            return 0.0
        self._cover(a, b)
        return self._position(b) - self._position(a)

    def minutes_until(self, b: float) -> Callable[[float], float]:
        """minutes_between(a, b) as a function of a, for many a and one b (waits at `now`):
        b's position is computed once per day table (extending the table rebuilds it)."""
        table: list[float] | None = None
        pos_b = 0.0

        def minutes(a: float) -> float:
            nonlocal table, pos_b
            if a >= b:
                return 0.0
            self._cover(a, b)
            if table is not self._starts:
                table, pos_b = self._starts, self._position(b)
            return (pos_b - self._position(a)) / 60.0

        return minutes

    def minutes_between(self, a: float, b: float) -> float:
        return self.seconds_between(a, b) / 60.0

    def is_open(self, t: float) -> bool:
        i = self._index(t)
        return any(s <= t < e for s, e in self._open[i])

    def next_open(self, t: float, horizon_days: int = 370) -> float:
        """t itself if the firm is open then, else the start of the next opening."""
        i = self._index(t)
        for _ in range(horizon_days):
            for s, e in self._open[i]:
                if t < e:
                    return max(t, s)
            i += 1
            if i >= len(self._starts) - 1:
                # Extending forward keeps the table's base, so indices stay valid.
                self._ensure(self._starts[-1] + 86400 * 2)
        return t  # a calendar with no opening at all: do not hold mail forever

    def add_minutes(self, t: float, minutes: float) -> float:
        """The moment `minutes` business minutes after t."""
        remaining = minutes * 60.0
        i = self._index(t)
        cur = t
        for _ in range(3660):
            for s, e in self._open[i]:
                if cur >= e:
                    continue
                start = max(cur, s)
                if start + remaining <= e:
                    return start + remaining
                remaining -= e - start
                cur = e
            i += 1
            if i >= len(self._starts) - 1:
                self._ensure(self._starts[-1] + 86400 * 2)
            cur = max(cur, self._starts[i])
        return cur


def to_ts(dt: datetime) -> float:
    """Naive UTC (as stored) or aware datetime -> POSIX seconds."""
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


_EPOCH = datetime(1970, 1, 1)


def from_ts(t: float) -> datetime:
    """POSIX seconds -> naive UTC (as stored)."""
    return _EPOCH + timedelta(seconds=t)
