"""Which versions a retention policy keeps, and why. Pure functions: no I/O, no index.

Two families of rules, freely combined (a version is kept when any rule keeps it):

- restic's: --keep-last N, --keep-hourly/daily/weekly/monthly/yearly N (for the N most recent
  periods that have versions, keep the newest version of each period; calendar periods in local
  time, weeks are ISO weeks), --keep-within DURATION (relative to the newest version, not to the
  clock, so a machine that stopped backing up does not lose its history), --keep-tag TAG;
- Duplicati's --retention-policy "1W:1D,4W:1W,12M:1M": each version (but the newest) falls in the
  shortest time frame, counted back from now, that contains it; within a frame versions are
  thinned from the oldest on, keeping one and then the next that is at least one interval newer
  than the last kept (so the OLDEST of each interval survives, as Duplicati does). An interval of
  U or 0 keeps all; a frame of U is unlimited; versions older than the longest frame are removed.

The newest version is always kept.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Sequence

from .errors import UsageError


@dataclass(frozen=True)
class Version:
    id: str
    time_ns: int
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Span:
    """A calendar length: years and months are calendar steps, the rest fixed seconds."""
    years: int = 0
    months: int = 0
    seconds: int = 0
    text: str = ""

    def is_zero(self) -> bool:
        return not (self.years or self.months or self.seconds)

    def before(self, t: dt.datetime) -> dt.datetime:
        try:
            return _add_months(t, -(12 * self.years + self.months)) - dt.timedelta(seconds=self.seconds)
        except OverflowError:             # a span longer than the calendar: since the beginning
            return dt.datetime.min.replace(tzinfo=t.tzinfo)

    def after(self, t: dt.datetime) -> dt.datetime:
        try:
            return _add_months(t, 12 * self.years + self.months) + dt.timedelta(seconds=self.seconds)
        except OverflowError:
            return dt.datetime.max.replace(tzinfo=t.tzinfo)


UNLIMITED = None      # a Duplicati time frame or interval of "U"


@dataclass(frozen=True)
class Policy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Span | None = None
    tags: tuple[str, ...] = ()
    frames: tuple[tuple[Span | None, Span | None], ...] = ()    # Duplicati (time frame, interval) pairs
    frames_text: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return not (self.last or self.hourly or self.daily or self.weekly or self.monthly or self.yearly
                    or self.within is not None or self.tags or self.frames)


@dataclass
class Decision:
    keep: list[tuple[Version, list[str]]] = field(default_factory=list)   # newest first, with reasons
    remove: list[Version] = field(default_factory=list)                    # newest first


# ---- parsing --------------------------------------------------------------------------------

_SPAN_PART = re.compile(r"(\d+)([a-zA-Z])")
# --keep-within: y years, m months, w weeks, d days, h hours (restic's letters)
_WITHIN_UNITS = {"y": ("years", 1), "m": ("months", 1), "w": ("seconds", 7 * 86400), "d": ("seconds", 86400),
                 "h": ("seconds", 3600)}
# --retention-policy: Duplicati's letters, case matters (M months, m minutes)
_POLICY_UNITS = {"Y": ("years", 1), "M": ("months", 1), "W": ("seconds", 7 * 86400), "D": ("seconds", 86400),
                 "h": ("seconds", 3600), "m": ("seconds", 60), "s": ("seconds", 1)}


def _parse_span(text: str, units: dict, what: str) -> Span:
    parts = _SPAN_PART.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise UsageError(f"'{text}' is not a {what}")
    fields = {"years": 0, "months": 0, "seconds": 0}
    for number, unit in parts:
        if unit not in units:
            raise UsageError(f"'{text}' is not a {what}: unknown unit '{unit}'")
        name, scale = units[unit]
        fields[name] += int(number) * scale
    return Span(**fields, text=text)


def parse_within(text: str) -> Span:
    """--keep-within: e.g. 30d, 2w, 1y6m, 12h."""
    return _parse_span(text.strip(), _WITHIN_UNITS, "duration (e.g. 30d, 2w, 1y6m, 12h)")


def parse_retention_policy(text: str) -> tuple[tuple[tuple[Span | None, Span | None], ...], tuple[str, ...]]:
    """Duplicati's "FRAME:INTERVAL,...", e.g. "1W:1D,4W:1W,12M:1M,U:1Y"; returns (pairs, their texts)."""
    what = "retention policy entry (e.g. 1W:1D,4W:1W,12M:1M)"
    pairs: list[tuple[Span | None, Span | None]] = []
    texts = []
    for item in text.replace(" ", "").split(","):
        frame, sep, interval = item.partition(":")
        if not sep:
            raise UsageError(f"'{item}' is not a {what}")
        span = [UNLIMITED if s == "U" else _parse_span(s, _POLICY_UNITS, what) for s in (frame, interval)]
        pairs.append((span[0], span[1]))
        texts.append(item)
    return tuple(pairs), tuple(texts)


# ---- time helpers ---------------------------------------------------------------------------

def _add_months(t: dt.datetime, months: int) -> dt.datetime:
    y, m = divmod(t.month - 1 + months, 12)
    year, month = t.year + y, m + 1
    if year < dt.MINYEAR:
        return dt.datetime.min.replace(tzinfo=t.tzinfo)
    if year > dt.MAXYEAR:
        return dt.datetime.max.replace(tzinfo=t.tzinfo)
    for day in (t.day, 30, 29, 28):       # the 31st of a shorter month is its last day
        try:
            return t.replace(year=year, month=month, day=day)
        except ValueError:
            continue
    raise AssertionError("unreachable")


def _local(ns: int, tz) -> dt.datetime:
    """The version's time as a calendar time: local time unless `tz` is given (tests)."""
    return dt.datetime.fromtimestamp(ns / 1e9, tz)


_BUCKETS = (
    ("hourly", lambda t: (t.year, t.month, t.day, t.hour)),
    ("daily", lambda t: (t.year, t.month, t.day)),
    ("weekly", lambda t: tuple(t.isocalendar())[:2]),
    ("monthly", lambda t: (t.year, t.month)),
    ("yearly", lambda t: (t.year,)),
)


# ---- applying -------------------------------------------------------------------------------

def apply(versions: Sequence[Version], policy: Policy, now_ns: int | None = None, tz=None) -> Decision:
    """Split `versions` into kept (with reasons) and removed, both newest first. `now_ns` is only
    used by Duplicati-style frames (default: the newest version's time)."""
    ordered = sorted(versions, key=lambda v: (v.time_ns, v.id), reverse=True)
    reasons: dict[str, list[str]] = {v.id: [] for v in ordered}
    if not ordered:
        return Decision()
    reasons[ordered[0].id].append("newest")
    for v in ordered[:policy.last]:
        reasons[v.id].append(f"last {policy.last}")
    for name, bucket in _BUCKETS:
        count = getattr(policy, name)
        last_key = None
        for v in ordered:
            if count <= 0:
                break
            key = bucket(_local(v.time_ns, tz))
            if key != last_key:
                reasons[v.id].append(f"{name} {getattr(policy, name)}")
                last_key = key
                count -= 1
    if policy.within is not None:
        newest = _local(ordered[0].time_ns, tz)
        cutoff = policy.within.before(newest)
        for v in ordered:
            if _local(v.time_ns, tz) >= cutoff:
                reasons[v.id].append(f"within {policy.within.text}")
    for v in ordered:
        for tag in policy.tags:
            if tag in v.tags:
                reasons[v.id].append(f"tag {tag}")
    if policy.frames:
        now = _local(ordered[0].time_ns if now_ns is None else now_ns, tz)
        for v, why in _thin_by_frames(ordered[1:], policy, now, tz):
            reasons[v.id].append(why)
    decision = Decision()
    for v in ordered:
        if reasons[v.id]:
            decision.keep.append((v, reasons[v.id]))
        else:
            decision.remove.append(v)
    return decision


def _thin_by_frames(candidates: list[Version], policy: Policy, now: dt.datetime, tz) -> list[tuple[Version, str]]:
    """Duplicati's thinning: (version, reason) for each version a frame keeps."""
    def frame_start(frame: Span | None) -> dt.datetime:
        return dt.datetime.min.replace(tzinfo=now.tzinfo) if frame is UNLIMITED else frame.before(now)

    frames = sorted(zip(policy.frames, policy.frames_text), key=lambda f: frame_start(f[0][0]), reverse=True)
    buckets: list[list[tuple[dt.datetime, Version]]] = [[] for _ in frames]
    for v in candidates:
        t = _local(v.time_ns, tz)
        for i, ((frame, _), _) in enumerate(frames):
            if t >= frame_start(frame):
                buckets[i].append((t, v))
                break                     # older than every frame: not kept by the policy
    kept = []
    for ((_, interval), text), bucket in zip(frames, buckets):
        last_kept: dt.datetime | None = None
        for t, v in sorted(bucket, key=lambda tv: (tv[1].time_ns, tv[1].id)):    # oldest first
            if interval is UNLIMITED or interval.is_zero() or last_kept is None or t >= interval.after(last_kept):
                kept.append((v, f"policy {text}"))
                last_kept = t
    return kept
