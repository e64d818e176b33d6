"""Retention rules (fsbackup/retention.py): hand-computed cases for each rule, Duplicati's policy,
and properties over random version histories."""
from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsbackup.errors import UsageError
from fsbackup.retention import Policy, Version, apply, parse_retention_policy, parse_within

UTC = dt.timezone.utc


def at(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()) * 10**9


def history(*times: str, tags: dict[str, tuple] | None = None) -> list[Version]:
    return [Version(t, at(t), (tags or {}).get(t, ())) for t in times]


def kept(versions, policy, now=None) -> dict[str, list[str]]:
    return {v.id: why for v, why in apply(versions, policy, at(now) if now else None, tz=UTC).keep}


DAYS = history("2026-01-01T10:00", "2026-01-01T18:00", "2026-01-02T09:00", "2026-01-05T09:00",
               "2026-01-12T09:00", "2026-02-03T09:00", "2026-02-04T09:00", "2026-02-04T21:00")


def test_keep_last_keeps_the_n_newest():
    assert kept(DAYS, Policy(last=3)) == {"2026-02-04T21:00": ["newest", "last 3"],
                                          "2026-02-04T09:00": ["last 3"], "2026-02-03T09:00": ["last 3"]}


def test_keep_daily_keeps_the_newest_of_each_of_the_n_most_recent_days_with_versions():
    assert kept(DAYS, Policy(daily=4)) == {"2026-02-04T21:00": ["newest", "daily 4"],
                                           "2026-02-03T09:00": ["daily 4"], "2026-01-12T09:00": ["daily 4"],
                                           "2026-01-05T09:00": ["daily 4"]}


def test_keep_weekly_monthly_yearly_use_iso_weeks_and_calendar_months():
    # ISO weeks: Jan 1-2 2026 are in week 1, Jan 5 in week 2, Jan 12 in week 3, Feb 3-4 in week 6.
    assert set(kept(DAYS, Policy(weekly=3))) == {"2026-02-04T21:00", "2026-01-12T09:00", "2026-01-05T09:00"}
    assert set(kept(DAYS, Policy(monthly=5))) == {"2026-02-04T21:00", "2026-01-12T09:00"}
    assert set(kept(DAYS, Policy(yearly=1))) == {"2026-02-04T21:00"}
    assert set(kept(DAYS, Policy(hourly=2))) == {"2026-02-04T21:00", "2026-02-04T09:00"}


def test_keep_within_counts_back_from_the_newest_version_in_calendar_units():
    assert set(kept(DAYS, Policy(within=parse_within("1d12h")))) == {
        "2026-02-04T21:00", "2026-02-04T09:00", "2026-02-03T09:00"}
    # one month before Feb 4 21:00 is Jan 4 21:00
    assert set(kept(DAYS, Policy(within=parse_within("1m")))) == {
        "2026-02-04T21:00", "2026-02-04T09:00", "2026-02-03T09:00", "2026-01-12T09:00", "2026-01-05T09:00"}
    assert kept(DAYS, Policy(within=parse_within("2w")))["2026-02-03T09:00"] == ["within 2w"]


def test_keep_tag_keeps_every_version_with_one_of_the_tags():
    versions = history(*[v.id for v in DAYS], tags={"2026-01-01T10:00": ("important",), "2026-01-05T09:00": ("x",)})
    assert kept(versions, Policy(tags=("important",))) == {"2026-02-04T21:00": ["newest"],
                                                           "2026-01-01T10:00": ["tag important"]}


def test_rules_combine_and_each_kept_version_says_why():
    versions = history(*[v.id for v in DAYS], tags={"2026-01-01T10:00": ("important",)})
    got = kept(versions, Policy(last=1, daily=2, monthly=2, tags=("important",)))
    assert got == {"2026-02-04T21:00": ["newest", "last 1", "daily 2", "monthly 2"],
                   "2026-02-03T09:00": ["daily 2"], "2026-01-12T09:00": ["monthly 2"],
                   "2026-01-01T10:00": ["tag important"]}


def test_the_newest_version_is_kept_even_when_no_rule_keeps_it():
    assert kept(DAYS, Policy(tags=("nothing-has-it",))) == {"2026-02-04T21:00": ["newest"]}
    assert apply([], Policy(last=1)).keep == []


def test_duplicati_policy_thins_each_frame_from_the_oldest_on():
    frames, texts = parse_retention_policy("1W:1D,4W:1W,12M:1M")
    policy = Policy(frames=frames, frames_text=texts)
    versions = history(
        "2025-01-10T12:00",                                          # older than 12 months: removed
        "2025-06-01T12:00", "2025-06-20T12:00", "2025-07-02T12:00",  # 12M:1M: keep 06-01, 07-02
        "2026-01-10T12:00", "2026-01-14T12:00", "2026-01-18T12:00",  # 4W:1W: keep 01-10, 01-18
        "2026-01-27T08:00", "2026-01-27T20:00", "2026-01-28T07:00",  # 1W:1D: oldest kept, then >= 1 day later
        "2026-01-28T09:00", "2026-01-30T12:00")
    got = kept(versions, policy, now="2026-01-31T00:00")
    assert got == {"2026-01-30T12:00": ["newest"],
                   "2026-01-28T09:00": ["policy 1W:1D"], "2026-01-27T08:00": ["policy 1W:1D"],
                   "2026-01-18T12:00": ["policy 4W:1W"], "2026-01-10T12:00": ["policy 4W:1W"],
                   "2025-07-02T12:00": ["policy 12M:1M"], "2025-06-01T12:00": ["policy 12M:1M"]}


def test_duplicati_policy_unlimited_frame_and_keep_all_interval():
    frames, texts = parse_retention_policy("2D:U,U:1Y")
    policy = Policy(frames=frames, frames_text=texts)
    versions = history("2019-05-01T00:00", "2019-09-01T00:00", "2020-06-01T00:00",
                       "2026-01-29T01:00", "2026-01-29T02:00", "2026-01-30T00:00")
    got = kept(versions, policy, now="2026-01-30T12:00")
    assert got == {"2026-01-30T00:00": ["newest"], "2026-01-29T02:00": ["policy 2D:U"],
                   "2026-01-29T01:00": ["policy 2D:U"], "2020-06-01T00:00": ["policy U:1Y"],
                   "2019-05-01T00:00": ["policy U:1Y"]}


def test_spans_longer_than_the_calendar_keep_everything():
    frames, texts = parse_retention_policy("99999999D:1s,1W:U")
    got = kept(DAYS, Policy(frames=frames, frames_text=texts, within=parse_within("9999999y")))
    assert set(got) == {v.id for v in DAYS}


@pytest.mark.parametrize("bad", ["", "30", "3x", "d3", "1d-2h"])
def test_bad_durations_are_usage_errors(bad):
    with pytest.raises(UsageError):
        parse_within(bad)


@pytest.mark.parametrize("bad", ["1W", "1W:1X", "1W:1D,", "W:1D"])
def test_bad_policies_are_usage_errors(bad):
    with pytest.raises(UsageError):
        parse_retention_policy(bad)


# ---- properties -----------------------------------------------------------------------------

START = at("2020-01-01T00:00")
times = st.lists(st.integers(0, 4 * 365 * 86400), min_size=1, max_size=40, unique=True)
counts = st.integers(0, 6)


def make(offsets: list[int], tagged: set[int] = frozenset()) -> list[Version]:
    return [Version(f"v{i:03}", START + s * 10**9, ("t",) if i in tagged else ()) for i, s in enumerate(offsets)]


policies = st.builds(
    Policy, last=counts, hourly=counts, daily=counts, weekly=counts, monthly=counts, yearly=counts,
    within=st.sampled_from([None, parse_within("3d"), parse_within("2m"), parse_within("1y")]),
    tags=st.sampled_from([(), ("t",)]),
    frames=st.sampled_from([(), parse_retention_policy("1W:1D,4W:1W,12M:1M")[0],
                            parse_retention_policy("7D:U,U:1M")[0]]),
).map(lambda p: Policy(**{**p.__dict__, "frames_text": tuple(f"p{i}" for i in range(len(p.frames)))}))


def ids(decision) -> set[str]:
    return {v.id for v, _ in decision.keep}


@settings(max_examples=300, deadline=None)
@given(times, policies, st.sets(st.integers(0, 40)))
def test_newest_kept_result_is_a_partition_and_idempotent(offsets, policy, tagged):
    versions = make(offsets, tagged)
    now = START + 5 * 365 * 86400 * 10**9
    d = apply(versions, policy, now, tz=UTC)
    newest = max(versions, key=lambda v: (v.time_ns, v.id))
    assert newest.id in ids(d)
    assert ids(d) | {v.id for v in d.remove} == {v.id for v in versions}
    assert not ids(d) & {v.id for v in d.remove}
    kept_versions = [v for v, _ in d.keep]
    assert ids(apply(kept_versions, policy, now, tz=UTC)) == ids(d)     # applying twice removes nothing more


@settings(max_examples=200, deadline=None)
@given(times, st.integers(1, 45))
def test_keep_last_n_keeps_exactly_the_n_newest(offsets, n):
    versions = make(offsets)
    newest_first = sorted(versions, key=lambda v: v.time_ns, reverse=True)
    assert ids(apply(versions, Policy(last=n), tz=UTC)) == {v.id for v in newest_first[:n]}


@settings(max_examples=200, deadline=None)
@given(times, policies, st.sampled_from(["last", "hourly", "daily", "weekly", "monthly", "yearly"]))
def test_a_larger_count_never_keeps_less(offsets, policy, rule):
    versions = make(offsets)
    more = Policy(**{**policy.__dict__, rule: getattr(policy, rule) + 1})
    assert ids(apply(versions, policy, tz=UTC)) <= ids(apply(versions, more, tz=UTC))
