"""Timer-trigger schedule engine: fixed-rate and cron rules for TIMER triggers.

Pure computation: no I/O, no clock reads except the default ``anchor`` of
:func:`parse_schedule`. The rules follow the FunctionGraph user guide
(section 6.2, "fixed rate", and section 6.15, "cron expression rules").

Schedule types
==============

``Rate`` (fixed rate)
    ``<n>m``, ``<n>h`` or ``<n>d`` with a whole number ``n``: minutes in (0, 60],
    hours in (0, 24], days in (0, 30]. The trigger fires at ``anchor + k * interval``
    for k >= 1.

``Cron``
    An optional zone prefix ``CRON_TZ=Area/City`` (``TZ=`` is accepted too), then one of:

    * ``@every <duration>``: a Go duration (units ``ns``, ``us`` (also spelt with the
      micro sign or the Greek mu), ``ms``, ``s``, ``m``, ``h``; decimals and compound
      forms such as ``1.5h``, ``2h30m`` and ``500ms`` are allowed). **The minimum is
      100ms**; zero, negative or shorter durations are rejected. Durations are kept at
      microsecond resolution (sub-microsecond remainders are truncated). It fires at
      ``anchor + k * interval`` for k >= 1.
    * a descriptor, as robfig/cron defines them (seconds = 0): ``@yearly`` /
      ``@annually`` (``0 0 0 1 1 *``), ``@monthly`` (``0 0 0 1 * *``), ``@weekly``
      (``0 0 0 * * 0``), ``@daily`` / ``@midnight`` (``0 0 0 * * *``), ``@hourly``
      (``0 0 * * * *``).
    * fields ``second minute hour day month [weekday]``. Six fields, or five fields with
      the *weekday* omitted. Five fields are NOT unix minute-first cron: ``*/5 * * * *``
      fires every 5 seconds. Ranges: second 0-59, minute 0-59, hour 0-23, day 1-31,
      month 1-12 or JAN-DEC, weekday 0-6 or SUN-SAT (0 = Sunday); names are
      case-insensitive. Specials: ``*``; ``,`` lists; ``a-b`` ranges; ``/`` steps
      (``n/m`` starts at n and steps by m up to the field maximum; ``a-b/m``;
      ``*/m``); ``?`` (day and weekday only) means "no specific value", like ``*``.
      ``L``, ``W`` and ``#`` are not supported.

    Day and weekday combine as in robfig/cron and Vixie cron: if either field is
    unrestricted (``*``, ``*/1`` or ``?``), a date must match both fields (the
    unrestricted one matches every date); if both are restricted, a date matches when
    EITHER field matches (``*/2`` counts as restricted, as in robfig/cron). An
    expression that can never fire (``0 0 0 30 2 *``) is rejected when parsed; leap
    days are fine (``0 0 0 29 2 ?``), and searches run at least 8 years ahead.

Time zones and daylight-saving time (documented policy)
=======================================================

* Cron fields are matched on the wall clock of the schedule's zone: ``CRON_TZ`` when
  given, otherwise the region's zone (``default_tz``).
* Spring-forward gap: a wall-clock time that does not exist fires once, at the first
  instant after the gap (Europe/Berlin 2026-03-29 02:30 fires at 03:00+02:00).
  Several gap times collapse into that single fire, and it is not doubled if the
  schedule also fires naturally at that instant. ``preview()`` marks it
  ``"dst-gap-shifted"`` (unless the schedule fires naturally at that instant anyway).
  This applies to every cron schedule, including ones whose hour field is ``*``: on
  Berlin's spring-forward day ``0 7 * * * *`` fires at 01:07+01:00, 03:00+02:00
  (shifted) and 03:07+02:00.
* Fall-back overlap: a wall-clock time that occurs twice fires once, at its first
  occurrence, UNLESS the hour field selects all 24 hours (``*``, ``*/1``, ``0-23``,
  ``@hourly`` ...). Such a schedule is interval-like and fires at both occurrences.
  ``preview()`` marks every fire whose wall-clock time is ambiguous ``"dst-overlap"``.
* Rate and ``@every`` are absolute durations and do not depend on DST.

Returned datetimes
==================

Fire times are aware datetimes in the schedule's zone, with ``fold=1`` on the second
occurrence of a repeated wall-clock time. Python compares and subtracts datetimes that
share a ``tzinfo`` by wall clock, ignoring ``fold``: compare fire times in UTC
(``dt.astimezone(UTC)``) or via ``timestamp()``. ``format_fire_time`` always shows the
correct offset.

Misfires
========

The engine keeps no state. ``next_after(t)`` is the first fire strictly after ``t``.
A scheduler that was down can either resume with ``next_after(now)``, which skips the
missed fires, or replay them with ``iter_after(last_fire)``. Fire times are whole
seconds for cron; an ``after`` with a fraction of a second is treated as the whole
second it falls in.

Performance
===========

Each cron field is precomputed once as a sorted tuple, and the day-of-month and
weekday rules as bitmasks. ``next_after`` advances field by field (year, month,
day, hour, minute, second) with bisection and never steps second by second. Matching
days per month shape are cached and shared between schedules.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from datetime import MAXYEAR, UTC, date, datetime, timedelta
from functools import lru_cache
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "MIN_EVERY",
    "NOTE_DST_GAP_SHIFTED",
    "NOTE_DST_OVERLAP",
    "NOTE_NONE",
    "CronSchedule",
    "IntervalSchedule",
    "Schedule",
    "ScheduleError",
    "format_fire_time",
    "parse_schedule",
]

NOTE_NONE = ""
NOTE_DST_GAP_SHIFTED = "dst-gap-shifted"
NOTE_DST_OVERLAP = "dst-overlap"

MIN_EVERY = timedelta(milliseconds=100)
"""Smallest interval accepted for ``@every``."""

_HORIZON_YEARS = 10  # leap days can be 8 years apart (2096 -> 2104)
_PROBE_SECONDS = 2 * 86400  # window searched for a fall-back transition
_ONE_SECOND = timedelta(seconds=1)
_NAIVE_EPOCH = datetime(1970, 1, 1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = _NAIVE_EPOCH.toordinal()
_MAX_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # index = month; Feb may be 29
_FIELD_FORM = "second minute hour day month [weekday]"


class ScheduleError(ValueError):
    """A schedule that cannot be parsed, or that can never fire.

    The message names the offending part, its value and the allowed range or form.
    """


# --------------------------------------------------------------------------- helpers


def format_fire_time(dt: datetime) -> str:
    """ISO-8601 with the UTC offset, e.g. ``2018-06-01T08:30:00+08:00``.

    Milliseconds are included only when non-zero (``2018-06-01T08:30:00.500+08:00``);
    any sub-millisecond part is dropped.
    """
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"format_fire_time needs a timezone-aware datetime, got {dt!r}")
    millis = dt.microsecond // 1000
    if millis:
        return dt.replace(microsecond=millis * 1000).isoformat(timespec="milliseconds")
    return dt.isoformat(timespec="seconds")


def _require_aware(value: datetime, what: str) -> None:
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {value.isoformat()}")


def _epoch_seconds(value: datetime) -> int:
    """Whole UTC seconds since the epoch, rounded down."""
    delta = value.astimezone(UTC) - _EPOCH
    return delta.days * 86400 + delta.seconds


def _offset_seconds(aware: datetime) -> int:
    offset = aware.utcoffset()
    if offset is None:  # pragma: no cover - ZoneInfo always answers
        raise ValueError(f"no UTC offset for {aware!r}")
    return offset.days * 86400 + offset.seconds


def _offset_at(tz: ZoneInfo, instant: int) -> int:
    return _offset_seconds(datetime.fromtimestamp(instant, tz))


def _wall_seconds(wall: datetime) -> int:
    """Seconds of a naive wall-clock time, counted as if it were UTC."""
    return (wall.toordinal() - _EPOCH_ORDINAL) * 86400 + wall.hour * 3600 + wall.minute * 60 + wall.second


def _naive(seconds: int) -> datetime:
    return _NAIVE_EPOCH + timedelta(seconds=seconds)


def _find_transition(tz: ZoneInfo, lo: int, hi: int) -> int:
    """First instant in ``(lo, hi]`` whose UTC offset differs from the offset at ``lo``.

    The caller guarantees that the offsets at ``lo`` and ``hi`` differ. tzdata
    transitions fall on whole seconds, so bisection over seconds finds the exact instant.
    """
    before = _offset_at(tz, lo)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offset_at(tz, mid) == before:
            lo = mid
        else:
            hi = mid
    return hi


def _load_zone(name: str, where: str) -> ZoneInfo:
    if not name:
        raise ScheduleError(f"{where}: time zone is empty (expected an IANA name such as Asia/Shanghai)")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError, UnicodeError) as exc:
        raise ScheduleError(
            f"{where}: unknown time zone {name!r} (expected an IANA name such as Asia/Shanghai)"
        ) from exc


@lru_cache(maxsize=8192)
def _month_shape(year: int, month: int) -> tuple[int, int]:
    """(weekday of the 1st with Sunday = 0, number of days) of a month."""
    first = date(year, month, 1)
    following = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
    return (first.weekday() + 1) % 7, (following - first).days


@lru_cache(maxsize=65536)
def _matching_days(dom_mask: int, dow_mask: int, either: bool, first_weekday: int, length: int) -> tuple[int, ...]:
    """Days of a month with this shape that satisfy the day and weekday masks."""
    days = []
    for day in range(1, length + 1):
        dom_ok = bool(dom_mask >> day & 1)
        dow_ok = bool(dow_mask >> ((first_weekday + day - 1) % 7) & 1)
        if (dom_ok or dow_ok) if either else (dom_ok and dow_ok):
            days.append(day)
    return tuple(days)


# --------------------------------------------------------------------------- schedules


class Schedule(ABC):
    """A parsed timer schedule. Instances are immutable and safe to share."""

    __slots__ = ("expression", "interval", "kind", "tz")

    kind: str
    """``"rate"``, ``"every"`` or ``"cron"``."""
    expression: str
    """The schedule text exactly as given."""
    tz: ZoneInfo
    """Zone in which fire times are expressed (``CRON_TZ``, or the default zone)."""
    interval: timedelta | None
    """The fixed interval for rate and ``@every``; ``None`` for cron."""

    @abstractmethod
    def _next(self, after: datetime) -> tuple[datetime, str]:
        """First fire strictly after ``after`` (aware) and its DST note."""

    def next_after(self, after: datetime) -> datetime:
        """First fire strictly after ``after`` (timezone-aware), expressed in ``self.tz``.

        Raises :class:`ScheduleError` only if no fire exists before year 10000.
        """
        _require_aware(after, "after")
        return self._next(after)[0]

    def iter_after(self, after: datetime) -> Iterator[datetime]:
        """Successive fires strictly after ``after``, strictly increasing."""
        _require_aware(after, "after")
        current = after
        while True:
            try:
                current = self._next(current)[0]
            except ScheduleError:
                return
            yield current

    def preview(self, count: int, start: datetime) -> list[tuple[datetime, str]]:
        """The next ``count`` fires after ``start``, each with a DST note.

        The note is ``""``, ``"dst-gap-shifted"`` (moved out of a spring-forward gap)
        or ``"dst-overlap"`` (wall-clock time that occurs twice on a fall-back day).
        """
        _require_aware(start, "start")
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        out: list[tuple[datetime, str]] = []
        current = start
        while len(out) < count:
            try:
                fire, note = self._next(current)
            except ScheduleError:
                break
            out.append((fire, note))
            current = fire
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, expression={self.expression!r}, tz={self.tz.key!r})"


class IntervalSchedule(Schedule):
    """Fixed rate or ``@every``: fires at ``anchor + k * interval`` for k >= 1."""

    __slots__ = ("anchor",)

    interval: timedelta
    anchor: datetime
    """Start of the interval grid, in UTC."""

    def __init__(self, kind: str, expression: str, tz: ZoneInfo, interval: timedelta, anchor: datetime) -> None:
        _require_aware(anchor, "anchor")
        if interval <= timedelta(0):
            raise ScheduleError(f"{kind} schedule {expression!r}: interval must be positive")
        self.kind = kind
        self.expression = expression
        self.tz = tz
        self.interval = interval
        self.anchor = anchor.astimezone(UTC)

    def _next(self, after: datetime) -> tuple[datetime, str]:
        # Both operands in UTC: aware arithmetic within one zone would be wall-clock arithmetic.
        elapsed = after.astimezone(UTC) - self.anchor
        steps = 1 if elapsed < self.interval else elapsed // self.interval + 1
        try:
            fire = self.anchor + steps * self.interval
            return fire.astimezone(self.tz), NOTE_NONE
        except (OverflowError, ValueError) as exc:
            raise ScheduleError(f"{self.kind} schedule {self.expression!r}: no fire time before year 10000") from exc


class CronSchedule(Schedule):
    """A cron schedule (fields or descriptor) matched on the wall clock of ``tz``."""

    __slots__ = (
        "_all_hours",
        "_dom_mask",
        "_dow_mask",
        "_either_day",
        "days",
        "hours",
        "minutes",
        "months",
        "seconds",
        "weekdays",
    )

    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: tuple[int, ...]

    def __init__(
        self,
        expression: str,
        tz: ZoneInfo,
        fields: tuple[
            tuple[int, ...],
            tuple[int, ...],
            tuple[int, ...],
            tuple[int, ...],
            tuple[int, ...],
            tuple[int, ...],
        ],
        day_unrestricted: bool,
        weekday_unrestricted: bool,
    ) -> None:
        self.kind = "cron"
        self.expression = expression
        self.tz = tz
        self.interval = None
        self.seconds, self.minutes, self.hours, self.days, self.months, self.weekdays = fields
        self._dom_mask = sum(1 << d for d in self.days)
        self._dow_mask = sum(1 << d for d in self.weekdays)
        self._either_day = not day_unrestricted and not weekday_unrestricted
        self._all_hours = len(self.hours) == 24

    @property
    def interval_like(self) -> bool:
        """True when the hour field selects all 24 hours (fires twice in a fall-back overlap)."""
        return self._all_hours

    # -- wall-clock search

    def _days_of(self, year: int, month: int) -> tuple[int, ...]:
        first_weekday, length = _month_shape(year, month)
        return _matching_days(self._dom_mask, self._dow_mask, self._either_day, first_weekday, length)

    def _next_wall(self, start: datetime) -> datetime | None:
        """Smallest matching naive wall-clock time >= ``start`` (whole seconds), or None."""
        year, month, day = start.year, start.month, start.day
        hour, minute, second = start.hour, start.minute, start.second
        months, hours, minutes, seconds = self.months, self.hours, self.minutes, self.seconds
        last_year = min(year + _HORIZON_YEARS, MAXYEAR)
        while year <= last_year:
            i = bisect_left(months, month)
            if i == len(months):
                year, month, day, hour, minute, second = year + 1, 1, 1, 0, 0, 0
                continue
            if months[i] != month:
                month, day, hour, minute, second = months[i], 1, 0, 0, 0
            days = self._days_of(year, month)
            i = bisect_left(days, day)
            if i == len(days):
                day, hour, minute, second = 1, 0, 0, 0
                if month == 12:
                    year, month = year + 1, 1
                else:
                    month += 1
                continue
            if days[i] != day:
                day, hour, minute, second = days[i], 0, 0, 0
            i = bisect_left(hours, hour)
            if i == len(hours):
                day, hour, minute, second = day + 1, 0, 0, 0
                continue
            if hours[i] != hour:
                hour, minute, second = hours[i], 0, 0
            i = bisect_left(minutes, minute)
            if i == len(minutes):
                hour, minute, second = hour + 1, 0, 0
                continue
            if minutes[i] != minute:
                minute, second = minutes[i], 0
            i = bisect_left(seconds, second)
            if i == len(seconds):
                minute, second = minute + 1, 0
                continue
            return datetime(year, month, day, hour, minute, seconds[i])
        return None

    def _matches_wall(self, wall: datetime) -> bool:
        return self._next_wall(wall) == wall

    # -- wall clock -> instants

    def _first_instant(self, wall: datetime) -> tuple[int, str]:
        """The (first) fire instant of a matching wall-clock time, with its DST note."""
        tz = self.tz
        seconds = _wall_seconds(wall)
        off0 = _offset_seconds(wall.replace(tzinfo=tz, fold=0))
        off1 = _offset_seconds(wall.replace(tzinfo=tz, fold=1))
        if off0 == off1:
            return seconds - off0, NOTE_NONE
        if off0 > off1:  # ambiguous: fold=0 is the first occurrence
            return seconds - off0, NOTE_DST_OVERLAP
        # In a gap: fire at the transition, the first instant after the gap.
        transition = _find_transition(tz, seconds - off1, seconds - off0)
        natural = self._matches_wall(_naive(transition + off1))
        return transition, NOTE_NONE if natural else NOTE_DST_GAP_SHIFTED

    def _next_instant(self, after: int) -> tuple[int, str]:
        tz = self.tz
        local = datetime.fromtimestamp(after, tz)
        wall = local.replace(tzinfo=None, fold=0)
        offset_now = _offset_seconds(local)
        if local.fold:
            # `after` is the second occurrence of an ambiguous wall-clock time.
            offset_first = _offset_seconds(local.replace(fold=0))
            transition = _find_transition(tz, _wall_seconds(wall) - offset_first, after)
            overlap_end = _naive(transition + offset_first)
            if self._all_hours:
                again = self._next_wall(wall + _ONE_SECOND)
                if again is not None and again < overlap_end:
                    return _wall_seconds(again) - offset_now, NOTE_DST_OVERLAP
            candidate = self._next_wall(overlap_end)
        else:
            candidate = self._next_wall(wall + _ONE_SECOND)
        if candidate is None:
            raise ScheduleError(f"cron schedule {self.expression!r}: no fire time before year 10000")
        first = self._first_instant(candidate)
        if self._all_hours and not local.fold:
            # Second occurrences of ambiguous times lie right after a fall-back transition.
            probe = min(first[0], after + _PROBE_SECONDS)
            if _offset_at(tz, probe) < offset_now:
                transition = _find_transition(tz, after, probe)
                before = _offset_at(tz, transition - 1)
                later = _offset_at(tz, transition)
                if later < before:
                    again = self._next_wall(_naive(transition + later))
                    if again is not None and again < _naive(transition + before):
                        second = _wall_seconds(again) - later
                        if second < first[0]:
                            return second, NOTE_DST_OVERLAP
        return first

    def _next(self, after: datetime) -> tuple[datetime, str]:
        try:
            instant, note = self._next_instant(_epoch_seconds(after))
            return datetime.fromtimestamp(instant, self.tz), note
        except ScheduleError:
            raise
        except (OverflowError, ValueError) as exc:
            raise ScheduleError(f"cron schedule {self.expression!r}: no fire time before year 10000") from exc


# --------------------------------------------------------------------------- parsing


class _Field(NamedTuple):
    name: str
    low: int
    high: int
    names: Mapping[str, int]
    question: bool
    allowed: str


_MONTH_NAMES = {
    name: number
    for number, name in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), start=1
    )
}
_WEEKDAY_NAMES = {name: number for number, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}

_FIELDS = (
    _Field("second", 0, 59, {}, False, "0-59"),
    _Field("minute", 0, 59, {}, False, "0-59"),
    _Field("hour", 0, 23, {}, False, "0-23"),
    _Field("day", 1, 31, {}, True, "1-31"),
    _Field("month", 1, 12, _MONTH_NAMES, False, "1-12 or JAN-DEC"),
    _Field("weekday", 0, 6, _WEEKDAY_NAMES, True, "0-6 or SUN-SAT, 0 = Sunday"),
)

_DESCRIPTORS = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}

_DIGITS = re.compile(r"[0-9]+")
_UNSUPPORTED_L = re.compile(r"L|LW|[0-9]+L|[A-Z]{3}L")
_UNSUPPORTED_W = re.compile(r"W|[0-9]+W")

_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # Greek small letter mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_UNIT_LIST = "ns, us, \u00b5s, ms, s, m, h"
_MAX_DURATION_NS = (1 << 63) - 1
_MIN_EVERY_NS = 100_000_000
_DECIMAL = "0123456789"

_RATE_UNITS = {"m": ("minutes", 60, 60), "h": ("hours", 24, 3600), "d": ("days", 30, 86400)}


class _FieldError(Exception):
    """Internal: a field problem, turned into a ScheduleError with context."""


def _field_value(text: str, field: _Field) -> int:
    if _DIGITS.fullmatch(text):
        value = int(text)
        if not field.low <= value <= field.high:
            raise _FieldError(f"{value} is out of range {field.allowed}")
        return value
    upper = text.upper()
    if upper in field.names:
        return field.names[upper]
    if not text:
        raise _FieldError(f"missing value (allowed {field.allowed})")
    if _UNSUPPORTED_L.fullmatch(upper):
        raise _FieldError("'L' (last) is not supported")
    if _UNSUPPORTED_W.fullmatch(upper):
        raise _FieldError("'W' (nearest weekday) is not supported")
    if field.names:
        raise _FieldError(f"unknown name {text!r} (allowed {field.allowed})")
    raise _FieldError(f"{text!r} is not a number (allowed {field.allowed})")


@lru_cache(maxsize=4096)
def _parse_field(text: str, index: int) -> tuple[tuple[int, ...], bool]:
    """Values of one field, sorted, and whether the field is unrestricted (``*``/``?``)."""
    field = _FIELDS[index]
    parts = text.split(",")
    values: set[int] = set()
    unrestricted = False
    for part in parts:
        try:
            _add_part(part, field, len(parts) > 1, values)
        except _FieldError as exc:
            raise _FieldError(f"{part!r}: {exc}" if len(parts) > 1 else str(exc)) from None
        unrestricted = unrestricted or part in ("?", "*", "*/1")
    return tuple(sorted(values)), unrestricted


def _add_part(part: str, field: _Field, in_list: bool, values: set[int]) -> None:
    """Add the values of one comma-separated element of a field."""
    if not part:
        raise _FieldError("empty list element")
    if "?" in part:
        if not field.question:
            raise _FieldError("'?' is only allowed in the day and weekday fields")
        if part != "?" or in_list:
            raise _FieldError("'?' must be used alone")
        values.update(range(field.low, field.high + 1))
        return
    if "#" in part:
        raise _FieldError("'#' (nth weekday of the month) is not supported")
    base, slash, step_text = part.partition("/")
    step = 1
    if slash:
        if not _DIGITS.fullmatch(step_text):
            raise _FieldError(f"step {step_text!r} must be a whole number >= 1")
        step = int(step_text)
        if step < 1:
            raise _FieldError(f"step must be at least 1, got {step}")
    if base == "*":
        start, end = field.low, field.high
    else:
        start_text, dash, end_text = base.partition("-")
        start = _field_value(start_text, field)
        if dash:
            end = _field_value(end_text, field)
            if start > end:
                raise _FieldError(f"range {base!r} is reversed ({start} > {end}); write low-high")
        else:
            end = field.high if slash else start
    values.update(range(start, end + 1, step))


def _parse_go_duration(text: str) -> int:
    """A Go ``time.ParseDuration`` string, in nanoseconds (may be negative)."""
    rest = text
    negative = False
    if rest[:1] in ("+", "-"):
        negative = rest[0] == "-"
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise _FieldError("empty duration")
    total = 0
    while rest:
        if rest[0] != "." and rest[0] not in _DECIMAL:
            raise _FieldError(f"expected a number at {rest!r}")
        i = 0
        while i < len(rest) and rest[i] in _DECIMAL:
            i += 1
        whole_text, rest = rest[:i], rest[i:]
        fraction_text = ""
        if rest.startswith("."):
            rest = rest[1:]
            i = 0
            while i < len(rest) and rest[i] in _DECIMAL:
                i += 1
            fraction_text, rest = rest[:i], rest[i:]
        if not whole_text and not fraction_text:
            raise _FieldError("a '.' needs digits")
        i = 0
        while i < len(rest) and rest[i] != "." and rest[i] not in _DECIMAL:
            i += 1
        unit, rest = rest[:i], rest[i:]
        if not unit:
            raise _FieldError(f"missing unit (allowed: {_DURATION_UNIT_LIST})")
        if unit not in _DURATION_UNITS:
            raise _FieldError(f"unknown unit {unit!r} (allowed: {_DURATION_UNIT_LIST})")
        scale = _DURATION_UNITS[unit]
        total += int(whole_text or "0") * scale
        if fraction_text:
            total += int(fraction_text) * scale // 10 ** len(fraction_text)
        if total > _MAX_DURATION_NS:
            raise _FieldError("duration is too large")
    return -total if negative else total


def _parse_every(expression: str, argument: str, tz: ZoneInfo, anchor: datetime) -> IntervalSchedule:
    where = f"cron schedule {expression!r}"
    if not argument:
        raise ScheduleError(f"{where}: @every needs a duration such as 30m, 1.5h, 2h30m or 500ms")
    try:
        nanoseconds = _parse_go_duration(argument)
    except _FieldError as exc:
        raise ScheduleError(f"{where}: @every duration {argument!r}: {exc}") from None
    if nanoseconds < _MIN_EVERY_NS:
        raise ScheduleError(f"{where}: @every duration {argument!r} must be at least 100ms")
    interval = timedelta(microseconds=nanoseconds // 1000)
    return IntervalSchedule("every", expression, tz, interval, anchor)


def _parse_cron(expression: str, default_zone: ZoneInfo, anchor: datetime) -> Schedule:
    where = f"cron schedule {expression!r}"
    body = expression.strip()
    if not body:
        raise ScheduleError(f"{where}: expression is empty; expected {_FIELD_FORM} or a descriptor")
    tz = default_zone
    head, *tail = body.split(None, 1)
    if head.upper().startswith(("CRON_TZ=", "TZ=")):
        prefix, _, zone_name = head.partition("=")
        tz = _load_zone(zone_name, f"{where}: {prefix}={zone_name}")
        body = tail[0].strip() if tail else ""
        if not body:
            raise ScheduleError(f"{where}: nothing after {prefix}={zone_name}; expected {_FIELD_FORM}")
    if body.startswith("@"):
        word, *arguments = body.split(None, 1)
        word_lower = word.lower()
        argument = arguments[0].strip() if arguments else ""
        if word_lower == "@every":
            return _parse_every(expression, argument, tz, anchor)
        if word_lower not in _DESCRIPTORS:
            raise ScheduleError(
                f"{where}: unknown descriptor {word!r} (allowed: @yearly, @annually, @monthly, @weekly, "
                "@daily, @midnight, @hourly, @every <duration>)"
            )
        if argument:
            raise ScheduleError(f"{where}: descriptor {word} takes no arguments, got {argument!r}")
        texts = _DESCRIPTORS[word_lower].split()
    else:
        texts = body.split()
        if len(texts) not in (5, 6):
            raise ScheduleError(f"{where}: expected 5 or 6 fields: {_FIELD_FORM}, got {len(texts)}")
        if len(texts) == 5:
            texts.append("*")
    parsed = []
    for index, text in enumerate(texts):
        try:
            parsed.append(_parse_field(text, index))
        except _FieldError as exc:
            raise ScheduleError(f"{where}: {_FIELDS[index].name} field {text!r}: {exc}") from None
    (seconds, _), (minutes, _), (hours, _), (days, day_any), (months, _), (weekdays, weekday_any) = parsed
    if weekday_any and not day_any and not any(day <= _MAX_DAYS[month] for month in months for day in days):
        raise ScheduleError(f"{where}: never fires: day field {texts[3]!r} does not occur in month field {texts[4]!r}")
    return CronSchedule(expression, tz, (seconds, minutes, hours, days, months, weekdays), day_any, weekday_any)


def _parse_rate(expression: str, tz: ZoneInfo, anchor: datetime) -> IntervalSchedule:
    where = f"rate schedule {expression!r}"
    text = expression.strip()
    if not text:
        raise ScheduleError(f"{where}: expected a whole number followed by m, h or d (e.g. 5m)")
    cut = len(text)
    while cut > 0 and text[cut - 1].isalpha():
        cut -= 1
    number, unit = text[:cut].strip(), text[cut:]
    if unit not in _RATE_UNITS:
        if not unit:
            raise ScheduleError(f"{where}: missing unit; unit must be m, h or d")
        raise ScheduleError(f"{where}: unit must be m, h or d, got {unit!r}")
    label, maximum, unit_seconds = _RATE_UNITS[unit]
    if not re.fullmatch(r"[+-]?[0-9]+", number):
        if re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", number):
            raise ScheduleError(f"{where}: only whole numbers are allowed")
        raise ScheduleError(f"{where}: expected a whole number followed by m, h or d (e.g. 5m)")
    value = int(number)
    if not 0 < value <= maximum:
        raise ScheduleError(f"{where}: {label} must be in (0, {maximum}]")
    return IntervalSchedule("rate", expression, tz, timedelta(seconds=value * unit_seconds), anchor)


def parse_schedule(schedule_type: str, schedule: str, *, default_tz: str, anchor: datetime | None = None) -> Schedule:
    """Parse a TIMER trigger rule.

    ``schedule_type`` is ``"Rate"`` or ``"Cron"`` (case-insensitive). ``default_tz`` is
    the IANA zone used when there is no ``CRON_TZ`` (the region's zone); rate schedules
    report their fire times in it. ``anchor`` (aware; default: now in UTC) is the
    start of the grid for rate and ``@every``: they fire at ``anchor + k * interval``
    for k >= 1. Raises :class:`ScheduleError` with a precise message.
    """
    if not isinstance(schedule_type, str):
        raise ScheduleError(f"schedule type must be a string, got {type(schedule_type).__name__}")
    if not isinstance(schedule, str):
        raise ScheduleError(f"schedule must be a string, got {type(schedule).__name__}")
    zone = _load_zone(default_tz, "default time zone")
    if anchor is None:
        anchor = datetime.now(UTC)
    else:
        _require_aware(anchor, "anchor")
    kind = schedule_type.strip().lower()
    if kind == "rate":
        return _parse_rate(schedule, zone, anchor)
    if kind == "cron":
        return _parse_cron(schedule, zone, anchor)
    raise ScheduleError(f"schedule type {schedule_type!r}: must be Rate or Cron")
