"""Time in pipeline specs: Go duration strings and cron schedules, as Pachyderm reads them.

``datum_timeout``/``job_timeout`` are Go durations (``"30s"``, ``"1m30s"``, ``"1.5h"``,
``"300ms"``). A cron input's ``spec`` is what Pachyderm's cron library accepts in its
standard form: five fields (minute hour day-of-month month day-of-week), a descriptor
(``@hourly``, ``@daily``/``@midnight``, ``@weekly``, ``@monthly``, ``@yearly``/``@annually``)
or ``@every <duration>``. Schedules run in UTC. Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shared.platform.errors import InvalidArgument

_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)([a-zµμ]+)")


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string (``"1m30s"`` → 90.0); raise ``InvalidArgument`` if malformed.

    As in Go, a sign may lead, ``"0"`` alone is zero, and every other number needs a unit.
    """
    body = text.strip()
    sign = 1.0
    if body[:1] in ("-", "+"):
        sign = -1.0 if body[0] == "-" else 1.0
        body = body[1:]
    if body == "0":
        return 0.0
    if not body:
        raise InvalidArgument(f"invalid duration {text!r}: expected e.g. '30s', '1m30s', '2h'")
    total = 0.0
    pos = 0
    while pos < len(body):
        part = _DURATION_PART.match(body, pos)
        if part is None or part.group(1) in ("", "."):
            raise InvalidArgument(
                f"invalid duration {text!r}: expected numbers with units, e.g. '30s', '1m30s', '2h'"
            )
        unit = part.group(2)
        if unit not in _UNIT_SECONDS:
            raise InvalidArgument(
                f"invalid duration {text!r}: unknown unit {unit!r} (use ns, us, ms, s, m or h)"
            )
        total += float(part.group(1)) * _UNIT_SECONDS[unit]
        pos = part.end()
    return sign * total


def format_duration(seconds: float) -> str:
    """The shortest Go-style string for ``seconds`` (``90.0`` → ``"1m30s"``), for display."""
    if seconds == 0:
        return "0s"
    sign = "-" if seconds < 0 else ""
    rest = abs(seconds)
    hours, rest = divmod(rest, 3600)
    minutes, rest = divmod(rest, 60)
    out = sign
    if hours:
        out += f"{int(hours)}h"
    if minutes:
        out += f"{int(minutes)}m"
    if rest or not (hours or minutes):
        out += f"{round(rest, 9):g}s"
    return out


# --- cron -------------------------------------------------------------------------------

_DESCRIPTORS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    )
}
_DAYS = {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int]


_FIELDS = (
    _Field("minute", 0, 59, {}),
    _Field("hour", 0, 23, {}),
    _Field("day of month", 1, 31, {}),
    _Field("month", 1, 12, _MONTHS),
    # 7 is Sunday too, as in Vixie cron; folded onto 0 after parsing.
    _Field("day of week", 0, 7, _DAYS),
)
# Far enough for any satisfiable schedule (Feb 29 on a given weekday recurs within 28 years).
_MAX_SEARCH_DAYS = 366 * 29


@dataclass(frozen=True)
class CronSchedule:
    """A parsed cron spec: either a fixed ``interval`` (``@every``) or five field sets."""

    spec: str
    interval: float | None = None
    minutes: frozenset[int] = frozenset()
    hours: frozenset[int] = frozenset()
    days_of_month: frozenset[int] = frozenset()
    months: frozenset[int] = frozenset()
    days_of_week: frozenset[int] = frozenset()
    # Vixie/robfig rule: when both day fields are restricted, a day matching either one counts.
    days_either: bool = False

    def next_after(self, when: datetime) -> datetime:
        """The first tick strictly after ``when`` (an aware datetime; the answer is in UTC).

        ``@every D`` ticks at ``when + D``, as Pachyderm's cron counts from the last tick.
        """
        if when.tzinfo is None:
            raise InvalidArgument("cron times must carry a time zone")
        when = when.astimezone(UTC)
        if self.interval is not None:
            return when + timedelta(seconds=self.interval)
        start = when.replace(second=0, microsecond=0) + timedelta(minutes=1)
        day = start.replace(hour=0, minute=0)
        for offset in range(_MAX_SEARCH_DAYS):
            current = day + timedelta(days=offset)
            if not self._day_matches(current):
                continue
            for hour in sorted(self.hours):
                for minute in sorted(self.minutes):
                    tick = current.replace(hour=hour, minute=minute)
                    if tick >= start:
                        return tick
        raise InvalidArgument(f"cron spec {self.spec!r} never fires")

    def _day_matches(self, day: datetime) -> bool:
        if day.month not in self.months:
            return False
        dom = day.day in self.days_of_month
        dow = (day.isoweekday() % 7) in self.days_of_week
        return (dom or dow) if self.days_either else (dom and dow)


def parse_cron_spec(spec: str) -> CronSchedule:
    """Parse a cron input's ``spec``; raise ``InvalidArgument`` naming the bad part."""
    text = " ".join(spec.split())
    if not text:
        raise InvalidArgument("invalid cron spec '': expected e.g. '*/10 * * * *' or '@every 1m'")
    if text.startswith("@every"):
        arg = text[len("@every") :].strip()
        if not arg:
            raise InvalidArgument(f"invalid cron spec {spec!r}: '@every' needs a duration")
        seconds = parse_duration(arg)
        if seconds < 1:
            raise InvalidArgument(f"invalid cron spec {spec!r}: the interval must be at least 1s")
        return CronSchedule(spec, interval=seconds)
    if text.startswith("@"):
        if text.lower() not in _DESCRIPTORS:
            raise InvalidArgument(
                f"invalid cron spec {spec!r}: unknown descriptor "
                f"(use @every <duration> or one of {', '.join(sorted(_DESCRIPTORS))})"
            )
        text = _DESCRIPTORS[text.lower()]
    parts = text.split(" ")
    if len(parts) != 5:
        raise InvalidArgument(
            f"invalid cron spec {spec!r}: expected 5 fields "
            f"(minute hour day-of-month month day-of-week), got {len(parts)}"
        )
    sets = [_parse_field(spec, part, field) for part, field in zip(parts, _FIELDS, strict=True)]
    dow = frozenset(d % 7 for d in sets[4])
    # '*' and '?' leave a day field unrestricted; only restricted fields combine with OR.
    restricted = [p not in ("*", "?") and not p.startswith(("*/", "?/")) for p in parts[2:5:2]]
    return CronSchedule(
        spec,
        minutes=sets[0],
        hours=sets[1],
        days_of_month=sets[2],
        months=sets[3],
        days_of_week=dow,
        days_either=all(restricted),
    )


def _parse_field(spec: str, text: str, field: _Field) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        values.update(_parse_item(spec, item, field))
    return frozenset(values)


def _parse_item(spec: str, item: str, field: _Field) -> range:
    def bad(reason: str) -> InvalidArgument:
        return InvalidArgument(f"invalid cron spec {spec!r}: {field.name} {item!r}: {reason}")

    body, _, step_text = item.partition("/")
    step = 1
    if step_text:
        if not step_text.isdigit() or int(step_text) == 0:
            raise bad("the step after '/' must be a positive number")
        step = int(step_text)
    if body in ("*", "?"):
        low, high = field.low, field.high
    else:
        first, dash, last = body.partition("-")
        low = _value(first, field, bad)
        # 'a/n' means 'a-max/n', as in the cron library Pachyderm uses.
        high = _value(last, field, bad) if dash else (field.high if step_text else low)
        if low > high:
            raise bad(f"the range runs backwards ({low} > {high})")
    return range(low, high + 1, step)


def _value(text: str, field: _Field, bad: Callable[[str], InvalidArgument]) -> int:
    name = text.lower()
    if name in field.names:
        return field.names[name]
    if not text.isdigit():
        raise bad("expected a number" + (" or a name" if field.names else ""))
    number = int(text)
    if not field.low <= number <= field.high:
        raise bad(f"out of range {field.low}-{field.high}")
    return number
