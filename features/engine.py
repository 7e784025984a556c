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


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """Windows and weights of the engagement features; part of the model, logged with it."""

    windows_days: tuple[int, ...] = (7, 30, 90)
    half_life_days: float = 14.0
    buying_group_window_days: int = 30
    high_intent_types: tuple[str, ...] = DEFAULT_HIGH_INTENT
    engagement_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_ENGAGEMENT_WEIGHTS))

    def __post_init__(self) -> None:
        if not self.windows_days or sorted(set(self.windows_days)) != list(self.windows_days):
            raise ValueError(f"windows_days must be strictly increasing, got {self.windows_days}")
        if self.windows_days[0] < 1:
            raise ValueError("windows_days must be at least 1 day")
        if not self.half_life_days >= 1.0:
            raise ValueError(f"half_life_days must be >= 1, got {self.half_life_days}")
        unknown = (set(self.high_intent_types) | set(self.engagement_weights)) - set(ACTIVITY_TYPES)
        if unknown:
            raise ValueError(f"unknown activity types in feature config: {sorted(unknown)}")


def engagement_feature_names(config: FeatureConfig) -> list[str]:
    """Names of the columns `compute_engagement` returns, in order."""
    names: list[str] = ["days_since_created", "stage", "days_in_stage", "days_since_mql"]
    for w in config.windows_days:
        names += [f"n_{t}_{w}d" for t in ACTIVITY_TYPES]
        names.append(f"n_touches_{w}d")
    names += [f"days_since_last_{t}" for t in ACTIVITY_TYPES]
    names += [
        "days_since_last_touch",
        "n_touches_total",
        "engagement_decayed",
        "engagement_velocity",
        *(f"touch_rate_ratio_{w}d" for w in config.windows_days[:2]),
        f"n_high_intent_{config.buying_group_window_days}d",
        "unsubscribed",
        "account_known_colleagues",
        f"account_engaged_colleagues_{config.buying_group_window_days}d",
        f"account_colleague_touches_{config.buying_group_window_days}d",
        f"account_colleague_high_intent_{config.buying_group_window_days}d",
        "account_sql_colleagues",
        f"account_touches_per_colleague_{config.buying_group_window_days}d",
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
    window_days: np.ndarray  # float64 (windows,)
    decay_seconds: int  # decayed engagement reads touches this recent
    buying_group_seconds: int
    weights: np.ndarray  # float64 (types,): engagement weight per activity type
    high: np.ndarray  # bool (types,): the activity types that signal high intent
    short: int  # window index for velocity's recent rate
    long: int  # window index for velocity's baseline rate


def plan_engine(config: FeatureConfig) -> EnginePlan:
    """Prepare the engine for `config`."""
    windows = np.asarray(config.windows_days, dtype=np.int64)
    return EnginePlan(
        config=config,
        n_features=len(engagement_feature_names(config)),
        window_seconds=windows * SECONDS_PER_DAY,
        window_days=windows.astype(np.float64),
        decay_seconds=int(np.ceil(DECAY_HORIZON_HALF_LIVES * config.half_life_days * SECONDS_PER_DAY)),
        buying_group_seconds=config.buying_group_window_days * SECONDS_PER_DAY,
        weights=np.array([config.engagement_weights.get(t, 0.0) for t in ACTIVITY_TYPES]),
        high=np.isin(np.array(ACTIVITY_TYPES), config.high_intent_types),
        # Velocity compares the two shortest windows: last week against the three weeks before (by default).
        short=0,
        long=min(1, len(config.windows_days) - 1),
    )


_UNSUBSCRIBE = ACTIVITY_TYPES.index("unsubscribe")
_MQL = LIFECYCLE_CHAIN.index("mql_at")
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
        key, types, lifecycle, start, end, codes, at, plan.window_seconds, plan.window_days, plan.decay_seconds,
        float(plan.config.half_life_days), plan.buying_group_seconds, plan.weights, plan.high, plan.short, plan.long,
        _SQL_COLUMNS, out,
    )  # fmt: skip
    return out


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
    window_days: np.ndarray,
    decay_seconds: int,
    half_life_days: float,
    buying_group_seconds: int,
    weights: np.ndarray,
    high: np.ndarray,
    short: int,
    long: int,
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
        out[p, 3] = (at - life[_MQL]) / SECONDS_PER_DAY if life[_MQL] < at else np.nan
        col = 4

        counts[:, :] = 0
        for w in range(n_windows):
            window_start[w] = np.searchsorted(act_key, base | max(at - window_seconds[w], 0))
        window_total = np.zeros(n_windows, dtype=np.int64)
        for w in range(n_windows):
            for i in range(window_start[w], hi):
                counts[w, act_type[i]] += 1
            for t in range(n_types):
                out[p, col + t] = counts[w, t]
                window_total[w] += counts[w, t]
            out[p, col + n_types] = window_total[w]
            col += n_types + 1

        last[:] = -1
        unsubscribed = False
        for i in range(first, hi):
            last[act_type[i]] = i
            unsubscribed |= act_type[i] == _UNSUBSCRIBE
        for t in range(n_types):
            out[p, col + t] = (at - (act_key[last[t]] & MAX_TIMESTAMP)) / SECONDS_PER_DAY if last[t] >= 0 else np.nan
        col += n_types
        out[p, col] = (at - (act_key[hi - 1] & MAX_TIMESTAMP)) / SECONDS_PER_DAY if hi > first else np.nan
        out[p, col + 1] = hi - first

        # Decayed engagement: weight * 2^(-age / half-life), summed in block order over the recent touches.
        decayed = 0.0
        for i in range(np.searchsorted(act_key, base | max(at - decay_seconds, 0)), hi):
            age = (at - (act_key[i] & MAX_TIMESTAMP)) / SECONDS_PER_DAY
            decayed += weights[act_type[i]] * np.exp2(-age / half_life_days)
        out[p, col + 2] = decayed

        # Velocity: the recent touch rate against the rate just before it, as a bounded index in [-1, 1].
        recent = window_total[short] / window_days[short]
        earlier = (window_total[long] - window_total[short]) / max(window_days[long] - window_days[short], 1.0)
        total_rate = recent + earlier
        out[p, col + 3] = (recent - earlier) / total_rate if total_rate > 0 else 0.0
        col += 4

        # Recent touch rate against the lead's own lifetime rate: some people open every e-mail, so a count means
        # more intent from a quiet lead than from a chatty one. Add-one smoothing keeps new leads finite.
        lifetime_days = max((at - life[0]) / SECONDS_PER_DAY, 0.0)
        lifetime_rate = ((hi - first) + 1.0) / (lifetime_days + 1.0)
        for j in range(min(2, n_windows)):
            out[p, col] = (window_total[j] / window_days[j]) / lifetime_rate
            col += 1

        group_start = max(at - buying_group_seconds, 0)
        high_touches = 0
        for i in range(np.searchsorted(act_key, base | group_start), hi):
            high_touches += high[act_type[i]]
        out[p, col] = high_touches
        out[p, col + 1] = 1.0 if unsubscribed else 0.0
        col += 2

        # Buying group: colleagues at the same account, known, engaged, their (high-intent) touches and SQLs so far.
        known = engaged = touches = high_colleague = sql = 0.0
        for member in range(account_start[code], account_end[code]):
            member_life = lifecycle[member]
            # A colleague created at or after as_of was not in the CRM yet: neither they nor their touches count, not
            # even touches dated before as_of (anonymous visits a CRM attaches to a contact when it creates it).
            if member == code or member_life[0] >= at:
                continue
            known += 1
            member_base = member << TS_BITS
            lo_m = np.searchsorted(act_key, member_base | group_start)
            hi_m = np.searchsorted(act_key, member_base | at)
            touches += hi_m - lo_m
            engaged += hi_m > lo_m
            for i in range(lo_m, hi_m):
                high_colleague += high[act_type[i]]
            reached = False
            for c in sql_columns:
                reached |= member_life[c] < at
            sql += reached
        out[p, col] = known
        out[p, col + 1] = engaged
        out[p, col + 2] = touches
        out[p, col + 3] = high_colleague
        out[p, col + 4] = sql
        # The account's pulse per person: many touches from one big buying group mean less than from a small one.
        out[p, col + 5] = touches / (known + 1.0)
