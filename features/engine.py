"""Point-in-time engagement features: one compiled (numba) engine for batch snapshots and single-lead requests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from features.jit import jit
from features.spec import ACTIVITY_TYPES, LIFECYCLE_CHAIN

SECONDS_PER_DAY = 86_400
# Null timestamps are stored as the largest int64 so that "strictly before as_of" is simply `stamp < as_of`.
NEVER = np.iinfo(np.int64).max
# Activity keys pack (lead code, epoch seconds) into one int64 so a single sorted array serves every lead.
TS_BITS = 32
MAX_TIMESTAMP = (1 << TS_BITS) - 1
MAX_LEADS_PER_BLOCK = 1 << 30
# Decayed engagement sums the touches of the last DECAY_HORIZON_HALF_LIVES half-lives: older touches weigh < 0.4 %.
DECAY_HORIZON_HALF_LIVES = 8

# Stage names, one per LIFECYCLE_CHAIN column: a lead's stage at as_of is that of its latest stamp before as_of.
STAGES: tuple[str, ...] = ("lead", "mql", "sal", "sql", "lost", "recycled", "requalified", "won")
STAGE_CODE: Mapping[str, int] = MappingProxyType({name: i for i, name in enumerate(STAGES)})
NOT_YET_CREATED = -1
# Stages in which a lead is still being nurtured or worked towards qualification: the readiness question applies.
READINESS_STAGES: tuple[str, ...] = ("lead", "mql", "sal", "recycled")
SQL_STAMPS: tuple[str, ...] = ("sql_at", "requalified_at")

# Relative weight of each touch in decayed engagement: bottom-of-funnel actions say far more about intent.
DEFAULT_ENGAGEMENT_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {
        "page_view": 1.0,
        "pricing_page_view": 4.0,
        "email_open": 0.5,
        "email_click": 1.5,
        "form_submit": 3.0,
        "content_download": 3.0,
        "webinar_registered": 2.0,
        "webinar_attended": 4.0,
        "demo_request": 10.0,
        "free_trial_signup": 8.0,
        "meeting_booked": 10.0,
        "unsubscribe": -5.0,
    }
)
DEFAULT_HIGH_INTENT: tuple[str, ...] = ("pricing_page_view", "demo_request", "free_trial_signup", "meeting_booked")
# Touches that say a person is turning away, not engaging: left out of every touch count, recency and buying-group
# figure, so that they can only ever lower readiness (through their own features and their negative weight).
OPT_OUT_TYPES: tuple[str, ...] = ("unsubscribe",)
# "Days since" of a touch that never happened: longer ago than any real touch. A number rather than NaN, so that
# "never" sorts below "long ago" and a monotone constraint covers it (a tree sends NaN wherever it likes).
NO_TOUCH_DAYS = 36_500.0


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """Windows and weights of the engagement features; part of the model, logged with it."""

    windows_days: tuple[int, ...] = (7, 30, 90)
    half_life_days: float = 14.0
    # A person's intent fades within about ten days: a 3-day half-life and a 3-day high-intent count see a hot
    # streak that the weekly window blurs.
    recent_days: int = 3
    recent_half_life_days: float = 3.0
    buying_group_window_days: int = 30
    high_intent_types: tuple[str, ...] = DEFAULT_HIGH_INTENT
    engagement_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_ENGAGEMENT_WEIGHTS))

    def __post_init__(self) -> None:
        if not self.windows_days or sorted(set(self.windows_days)) != list(self.windows_days):
            raise ValueError(f"windows_days must be strictly increasing, got {self.windows_days}")
        if self.windows_days[0] < 1:
            raise ValueError("windows_days must be at least 1 day")
        if not self.half_life_days >= 1.0 or not self.recent_half_life_days >= 1.0:
            raise ValueError(f"half-lives must be >= 1 day, got {self.half_life_days} and {self.recent_half_life_days}")
        if self.recent_days < 1:
            raise ValueError(f"recent_days must be at least 1 day, got {self.recent_days}")
        unknown = (set(self.high_intent_types) | set(self.engagement_weights)) - set(ACTIVITY_TYPES)
        if unknown:
            raise ValueError(f"unknown activity types in feature config: {sorted(unknown)}")


def engagement_feature_names(config: FeatureConfig) -> list[str]:
    """Names of the columns `compute_engagement` returns, in order."""
    names: list[str] = [
        "days_since_created", "stage", "days_in_stage", "days_since_mql", "days_created_to_mql", "days_since_sal",
    ]  # fmt: skip
    for w in config.windows_days:
        names += [f"n_{t}_{w}d" for t in ACTIVITY_TYPES]
        names.append(f"n_touches_{w}d")
    names += [f"days_since_last_{t}" for t in ACTIVITY_TYPES]
    group = config.buying_group_window_days
    names += [
        "days_since_last_touch",
        "n_touches_total",
        "engagement_decayed",
        "engagement_recent",
        f"n_high_intent_{config.recent_days}d",
        f"n_high_intent_{group}d",
        "unsubscribed",
        "account_known_colleagues",
        f"account_engaged_colleagues_{group}d",
        f"account_colleague_touches_{group}d",
        f"account_colleague_high_intent_{group}d",
        "account_sql_colleagues",
        f"account_touches_per_colleague_{group}d",
        f"account_colleague_touches_{config.windows_days[0]}d",
        "days_since_colleague_touch",
        "account_mql_colleagues",
        "account_sal_colleagues",
        "account_lost_colleagues",
        "account_open_opportunities",
        "account_age_days",
    ]
    return names


@dataclass(frozen=True, slots=True)
class FunnelBlock:
    """Leads of whole accounts and their activities as flat arrays; one contiguous activity segment per lead.

    Lead codes 0..n-1 are ordered so that each account's leads are contiguous (buying-group features only ever look
    inside the block). Timestamps are integer epoch seconds: activity and lifecycle stamps rounded up, as_of rounded
    down, so that sub-second rounding can only hide a touch, never leak one.
    """

    lifecycle: np.ndarray  # int64 (n_leads, len(LIFECYCLE_CHAIN)); NEVER where null
    account_start: np.ndarray  # int64 (n_leads,): first lead code of the lead's account
    account_end: np.ndarray  # int64 (n_leads,): one past the last lead code of the lead's account
    act_key: np.ndarray  # int64 (n_acts,): (lead_code << TS_BITS) | ts, sorted ascending
    act_type: np.ndarray  # int64 (n_acts,): index into ACTIVITY_TYPES

    @property
    def n_leads(self) -> int:
        """Number of leads in the block."""
        return int(self.lifecycle.shape[0])


def stage_at(lifecycle: np.ndarray, as_of: np.ndarray) -> np.ndarray:
    """Stage code of each row at as_of: the chain position of its latest stamp strictly before as_of (-1: none)."""
    life = np.ascontiguousarray(lifecycle, dtype=np.int64)
    at = np.ascontiguousarray(as_of, dtype=np.int64)
    out = np.empty(at.shape[0], dtype=np.int64)
    _stages(life, at, out)
    return out


@jit
def _stage(stamps: np.ndarray, as_of: int) -> int:  # pragma: no cover - compiled
    for position in range(stamps.shape[0] - 1, -1, -1):
        if stamps[position] < as_of:
            return position
    return NOT_YET_CREATED


@jit
def _stages(lifecycle: np.ndarray, as_of: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    for row in range(as_of.shape[0]):
        out[row] = _stage(lifecycle[row], as_of[row])


@dataclass(frozen=True, slots=True)
class EnginePlan:
    """Arrays derived once from a FeatureConfig, so a single-lead call spends nothing on set-up."""

    config: FeatureConfig
    n_features: int
    window_seconds: np.ndarray  # int64 (windows,)
    decay_seconds: int  # decayed engagement reads touches this recent
    recent_seconds: int  # the recent high-intent count's window
    recent_decay_seconds: int  # recent engagement reads touches this recent
    buying_group_seconds: int
    weights: np.ndarray  # float64 (types,): engagement weight per activity type
    high: np.ndarray  # bool (types,): the activity types that signal high intent
    engaging: np.ndarray  # bool (types,): the activity types counted as touches (all but the opt-outs)


def plan_engine(config: FeatureConfig) -> EnginePlan:
    """Prepare the engine for `config`."""
    windows = np.asarray(config.windows_days, dtype=np.int64)
    return EnginePlan(
        config=config,
        n_features=len(engagement_feature_names(config)),
        window_seconds=windows * SECONDS_PER_DAY,
        decay_seconds=int(np.ceil(DECAY_HORIZON_HALF_LIVES * config.half_life_days * SECONDS_PER_DAY)),
        recent_seconds=config.recent_days * SECONDS_PER_DAY,
        recent_decay_seconds=int(np.ceil(DECAY_HORIZON_HALF_LIVES * config.recent_half_life_days * SECONDS_PER_DAY)),
        buying_group_seconds=config.buying_group_window_days * SECONDS_PER_DAY,
        weights=np.array([config.engagement_weights.get(t, 0.0) for t in ACTIVITY_TYPES]),
        high=np.isin(np.array(ACTIVITY_TYPES), config.high_intent_types),
        engaging=~np.isin(np.array(ACTIVITY_TYPES), OPT_OUT_TYPES),
    )


_UNSUBSCRIBE = ACTIVITY_TYPES.index("unsubscribe")
_MQL = LIFECYCLE_CHAIN.index("mql_at")
_SAL = LIFECYCLE_CHAIN.index("sal_at")
_LOST = LIFECYCLE_CHAIN.index("lost_at")
_WON = LIFECYCLE_CHAIN.index("won_at")
_REQUALIFIED = LIFECYCLE_CHAIN.index("requalified_at")
_SQL_COLUMNS = np.array([LIFECYCLE_CHAIN.index(name) for name in (*SQL_STAMPS, "won_at")], dtype=np.int64)


def compute_engagement(block: FunnelBlock, lead: np.ndarray, as_of: np.ndarray, plan: EnginePlan) -> np.ndarray:
    """Engagement, lifecycle and buying-group features for (lead code, as_of seconds) pairs of one block.

    Only activities and lifecycle stamps strictly before each pair's as_of are read, and only colleagues created
    before it count. Each pair reads its own lead's and colleagues' rows only, in block order, so a lead's row does
    not depend on which other leads share the block: batch and request-time results are bit-identical.
    """
    out = np.empty((lead.shape[0], plan.n_features), dtype=np.float64)
    key, types, lifecycle, start, end, codes, at = (
        np.ascontiguousarray(a, dtype=np.int64)
        for a in (block.act_key, block.act_type, block.lifecycle, block.account_start, block.account_end, lead, as_of)
    )
    _engagement(
        key, types, lifecycle, start, end, codes, at, plan.window_seconds, plan.decay_seconds,
        float(plan.config.half_life_days), plan.recent_seconds, plan.recent_decay_seconds,
        float(plan.config.recent_half_life_days), plan.buying_group_seconds, plan.weights, plan.high, plan.engaging,
        _SQL_COLUMNS, out,
    )  # fmt: skip
    return out


@jit
def _days_since(at: int, stamp: int) -> float:  # pragma: no cover - compiled
    return (at - stamp) / SECONDS_PER_DAY if stamp < at else np.nan


@jit
def _engagement(
    act_key: np.ndarray,
    act_type: np.ndarray,
    lifecycle: np.ndarray,
    account_start: np.ndarray,
    account_end: np.ndarray,
    lead: np.ndarray,
    as_of: np.ndarray,
    window_seconds: np.ndarray,
    decay_seconds: int,
    half_life_days: float,
    recent_seconds: int,
    recent_decay_seconds: int,
    recent_half_life_days: float,
    buying_group_seconds: int,
    weights: np.ndarray,
    high: np.ndarray,
    engaging: np.ndarray,
    sql_columns: np.ndarray,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled; its behaviour is tested through FeatureBuilder
    n_types = weights.shape[0]
    n_windows = window_seconds.shape[0]
    counts = np.zeros((n_windows, n_types), dtype=np.int64)
    window_start = np.zeros(n_windows, dtype=np.int64)
    last = np.zeros(n_types, dtype=np.int64)
    for p in range(lead.shape[0]):
        code, at = lead[p], as_of[p]
        base = code << TS_BITS
        # The lead's touches strictly before as_of: positions [first, hi) of the sorted keys.
        first = np.searchsorted(act_key, base)
        hi = np.searchsorted(act_key, base | at)
        life = lifecycle[code]
        stage = _stage(life, at)
        out[p, 0] = (at - life[0]) / SECONDS_PER_DAY
        out[p, 1] = stage
        out[p, 2] = (at - life[stage]) / SECONDS_PER_DAY if stage >= 0 else np.nan
        out[p, 3] = _days_since(at, life[_MQL])
        out[p, 4] = (life[_MQL] - life[0]) / SECONDS_PER_DAY if life[_MQL] < at else np.nan
        out[p, 5] = _days_since(at, life[_SAL])
        col = 6

        counts[:, :] = 0
        for w in range(n_windows):
            window_start[w] = np.searchsorted(act_key, base | max(at - window_seconds[w], 0))
        for w in range(n_windows):
            for i in range(window_start[w], hi):
                counts[w, act_type[i]] += 1
            total = 0
            for t in range(n_types):
                out[p, col + t] = counts[w, t]
                total += counts[w, t] * engaging[t]
            out[p, col + n_types] = total
            col += n_types + 1

        last[:] = -1
        last_touch = -1
        n_engaging = 0
        unsubscribed = False
        for i in range(first, hi):
            last[act_type[i]] = i
            if engaging[act_type[i]]:
                last_touch = i
                n_engaging += 1
            unsubscribed |= act_type[i] == _UNSUBSCRIBE
        for t in range(n_types):
            out[p, col + t] = (
                (at - (act_key[last[t]] & MAX_TIMESTAMP)) / SECONDS_PER_DAY if last[t] >= 0 else NO_TOUCH_DAYS
            )
        col += n_types
        out[p, col] = (
            (at - (act_key[last_touch] & MAX_TIMESTAMP)) / SECONDS_PER_DAY if last_touch >= 0 else NO_TOUCH_DAYS
        )
        out[p, col + 1] = n_engaging

        # Decayed engagement: weight * 2^(-age / half-life), summed in block order over the recent touches; once
        # with the long half-life (interest built up over weeks), once with the short one (this week's streak).
        decayed = 0.0
        for i in range(np.searchsorted(act_key, base | max(at - decay_seconds, 0)), hi):
            age = (at - (act_key[i] & MAX_TIMESTAMP)) / SECONDS_PER_DAY
            decayed += weights[act_type[i]] * np.exp2(-age / half_life_days)
        out[p, col + 2] = decayed
        recent = 0.0
        for i in range(np.searchsorted(act_key, base | max(at - recent_decay_seconds, 0)), hi):
            age = (at - (act_key[i] & MAX_TIMESTAMP)) / SECONDS_PER_DAY
            recent += weights[act_type[i]] * np.exp2(-age / recent_half_life_days)
        out[p, col + 3] = recent
        col += 4

        high_recent = 0
        for i in range(np.searchsorted(act_key, base | max(at - recent_seconds, 0)), hi):
            high_recent += high[act_type[i]]
        group_start = max(at - buying_group_seconds, 0)
        high_touches = 0
        for i in range(np.searchsorted(act_key, base | group_start), hi):
            high_touches += high[act_type[i]]
        out[p, col] = high_recent
        out[p, col + 1] = high_touches
        out[p, col + 2] = 1.0 if unsubscribed else 0.0
        col += 3

        # Buying group: colleagues at the same account, known, engaged, their (high-intent) touches, how far their
        # own funnels got, and how long the account has been in the CRM.
        known = engaged = touches = high_colleague = sql = week = 0.0
        mql = sal = lost = open_opportunities = 0.0
        latest = -1
        first_created = life[0]
        week_start = max(at - window_seconds[0], 0)
        for member in range(account_start[code], account_end[code]):
            member_life = lifecycle[member]
            # A colleague created at or after as_of was not in the CRM yet: neither they nor their touches count, not
            # even touches dated before as_of (anonymous visits a CRM attaches to a contact when it creates it).
            if member == code or member_life[0] >= at:
                continue
            known += 1
            first_created = min(first_created, member_life[0])
            member_base = member << TS_BITS
            lo_m = np.searchsorted(act_key, member_base | group_start)
            hi_m = np.searchsorted(act_key, member_base | at)
            week_m = np.searchsorted(act_key, member_base | week_start)
            member_touches = 0
            for i in range(lo_m, hi_m):
                member_touches += engaging[act_type[i]]
                high_colleague += high[act_type[i]]
            for i in range(week_m, hi_m):
                week += engaging[act_type[i]]
            for i in range(hi_m - 1, np.searchsorted(act_key, member_base) - 1, -1):
                if engaging[act_type[i]]:
                    latest = max(latest, act_key[i] & MAX_TIMESTAMP)
                    break
            touches += member_touches
            engaged += member_touches > 0
            reached = False
            for c in sql_columns:
                reached |= member_life[c] < at
            sql += reached
            mql += member_life[_MQL] < at
            sal += member_life[_SAL] < at
            # Closed: won, or lost and not requalified since (a requalified lead is an open opportunity again).
            closed = member_life[_WON] < at or (member_life[_LOST] < at and not member_life[_REQUALIFIED] < at)
            lost += member_life[_LOST] < at
            open_opportunities += reached and not closed
        out[p, col] = known
        out[p, col + 1] = engaged
        out[p, col + 2] = touches
        out[p, col + 3] = high_colleague
        out[p, col + 4] = sql
        # The account's pulse per person: many touches from one big buying group mean less than from a small one.
        out[p, col + 5] = touches / (known + 1.0)
        out[p, col + 6] = week
        out[p, col + 7] = (at - latest) / SECONDS_PER_DAY if latest >= 0 else NO_TOUCH_DAYS
        out[p, col + 8] = mql
        out[p, col + 9] = sal
        out[p, col + 10] = lost
        out[p, col + 11] = open_opportunities
        out[p, col + 12] = (at - first_created) / SECONDS_PER_DAY
