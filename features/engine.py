"""Point-in-time engagement features: one numpy engine for batch snapshots and single-lead requests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

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
_SQL_COLUMNS = tuple(LIFECYCLE_CHAIN.index(name) for name in (*SQL_STAMPS, "won_at"))

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
    before = lifecycle < as_of[:, None]
    n = lifecycle.shape[1]
    last = n - 1 - np.argmax(before[:, ::-1], axis=1)
    return np.where(before.any(axis=1), last, NOT_YET_CREATED)


def _days(seconds: np.ndarray) -> np.ndarray:
    return seconds.astype(np.float64) / SECONDS_PER_DAY


@dataclass(frozen=True, slots=True)
class EnginePlan:
    """Arrays derived once from a FeatureConfig, so a single-lead call spends nothing on set-up."""

    config: FeatureConfig
    n_features: int
    offsets: np.ndarray  # seconds before as_of: window starts, decay start, buying-group window start
    weights: np.ndarray  # engagement weight per activity type
    high: np.ndarray  # activity type indices that signal high intent
    short: int  # window index for velocity's recent rate
    long: int  # window index for velocity's baseline rate


def plan_engine(config: FeatureConfig) -> EnginePlan:
    """Prepare the engine for `config`."""
    windows = np.asarray(config.windows_days, dtype=np.int64)
    decay_span = int(np.ceil(DECAY_HORIZON_HALF_LIVES * config.half_life_days * SECONDS_PER_DAY))
    offsets = np.concatenate(
        [windows * SECONDS_PER_DAY, [decay_span, config.buying_group_window_days * SECONDS_PER_DAY]]
    )
    return EnginePlan(
        config=config,
        n_features=len(engagement_feature_names(config)),
        offsets=offsets.astype(np.int64),
        weights=np.array([config.engagement_weights.get(t, 0.0) for t in ACTIVITY_TYPES]),
        high=np.array([ACTIVITY_TYPES.index(t) for t in config.high_intent_types], dtype=np.int64),
        # Velocity compares the two shortest windows: last week against the three weeks before (by default).
        short=0,
        long=min(1, len(config.windows_days) - 1),
    )


class _Columns:
    """Fills a preallocated feature matrix left to right (one allocation instead of ~80 column arrays)."""

    def __init__(self, n_rows: int, n_cols: int) -> None:
        self.out = np.empty((n_rows, n_cols), dtype=np.float64)
        self.at = 0

    def put(self, values: np.ndarray) -> None:
        width = 1 if values.ndim == 1 else values.shape[1]
        target = self.out[:, self.at : self.at + width]
        target[...] = values if values.ndim == 2 else values[:, None]
        self.at += width


_UNSUBSCRIBE = ACTIVITY_TYPES.index("unsubscribe")
_MQL = LIFECYCLE_CHAIN.index("mql_at")


def compute_engagement(block: FunnelBlock, lead: np.ndarray, as_of: np.ndarray, plan: EnginePlan) -> np.ndarray:
    """Engagement, lifecycle and buying-group features for (lead code, as_of seconds) pairs of one block.

    Only activities and lifecycle stamps strictly before each pair's as_of are read.
    """
    n_types = len(ACTIVITY_TYPES)
    n_pairs = lead.shape[0]
    n_windows = len(plan.config.windows_days)
    key, types = block.act_key, block.act_type
    # One padding slot keeps "the touch before position hi" indexable when a block has no touches at all.
    ts = np.append(key & MAX_TIMESTAMP, 0)
    base = lead << TS_BITS

    # Cumulative one-hot counts and "position of the last touch of each type" over the block's sorted activities.
    n_acts = key.shape[0]
    rows = np.arange(1, n_acts + 1)
    cum = np.zeros((n_acts + 1, n_types), dtype=np.int32)
    cum[rows, types] = 1
    np.cumsum(cum, axis=0, out=cum)
    last_pos = np.full((n_acts + 1, n_types), -1, dtype=np.int64)
    last_pos[rows, types] = rows - 1
    np.maximum.accumulate(last_pos, axis=0, out=last_pos)

    # One searchsorted for every bound of every pair: lead start, window starts, decay start, buying window, as_of.
    bounds = np.empty((n_pairs, n_windows + 4), dtype=np.int64)
    bounds[:, 0] = base
    bounds[:, 1:-1] = base[:, None] | np.maximum(as_of[:, None] - plan.offsets[None, :], 0)
    bounds[:, -1] = base | as_of
    pos = np.searchsorted(key, bounds.ravel(), side="left").reshape(n_pairs, -1)
    first, hi = pos[:, 0], pos[:, -1]
    decay_lo, bg_lo = pos[:, 1 + n_windows], pos[:, 2 + n_windows]

    out = _Columns(n_pairs, plan.n_features)
    lifecycle = block.lifecycle[lead]
    stage = stage_at(lifecycle, as_of)
    stage_stamp = lifecycle[np.arange(n_pairs), np.maximum(stage, 0)]
    mql = lifecycle[:, _MQL]
    out.put(_days(as_of - lifecycle[:, 0]))
    out.put(stage)
    out.put(np.where(stage >= 0, _days(as_of - stage_stamp), np.nan))
    out.put(np.where(mql < as_of, _days(as_of - np.minimum(mql, as_of)), np.nan))

    cum_hi = cum[hi]
    cum_lo = cum[pos[:, 1 : 1 + n_windows]]  # (P, W, T)
    for j in range(n_windows):
        counts = cum_hi - cum_lo[:, j]
        out.put(counts)
        out.put(counts.sum(axis=1))

    last = last_pos[hi]  # (P, T) positions; valid when inside the lead's own segment
    out.put(np.where(last >= first[:, None], _days(as_of[:, None] - ts[np.maximum(last, 0)]), np.nan))
    out.put(np.where(hi > first, _days(as_of - ts[np.maximum(hi - 1, 0)]), np.nan))
    out.put(hi - first)
    out.put(_decayed(ts, types, decay_lo, hi, as_of, plan))

    # Velocity: the recent touch rate against the rate just before it, as a bounded index in [-1, 1].
    windows = plan.config.windows_days
    recent = (cum_hi - cum_lo[:, plan.short]).sum(axis=1) / windows[plan.short]
    earlier = (cum_lo[:, plan.short] - cum_lo[:, plan.long]).sum(axis=1) / max(
        windows[plan.long] - windows[plan.short], 1
    )
    total_rate = recent + earlier
    out.put(np.divide(recent - earlier, total_rate, out=np.zeros(n_pairs), where=total_rate > 0))

    # Recent touch rate against the lead's own lifetime rate: some people open every e-mail, so a count means
    # more intent from a quiet lead than from a chatty one. Add-one smoothing keeps new leads finite.
    lifetime_days = np.maximum(_days(as_of - lifecycle[:, 0]), 0.0)
    lifetime_rate = ((hi - first) + 1.0) / (lifetime_days + 1.0)
    for j in range(min(2, n_windows)):
        window_rate = (cum_hi - cum_lo[:, j]).sum(axis=1) / windows[j]
        out.put(window_rate / lifetime_rate)

    out.put((cum_hi[:, plan.high] - cum[bg_lo][:, plan.high]).sum(axis=1))
    out.put(cum_hi[:, _UNSUBSCRIBE] - cum[first, _UNSUBSCRIBE] > 0)
    for column in _buying_group(block, lead, as_of, cum, plan.high, plan.config.buying_group_window_days):
        out.put(column)
    return out.out


def _expand_ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flatten half-open ranges [lo, hi) into (owner row, index) arrays without a Python loop."""
    lengths = hi - lo
    owner = np.repeat(np.arange(lo.shape[0]), lengths)
    starts = np.cumsum(lengths) - lengths
    index = np.arange(owner.shape[0]) - starts[owner] + lo[owner]
    return owner, index


def _decayed(
    ts: np.ndarray, types: np.ndarray, lo: np.ndarray, hi: np.ndarray, as_of: np.ndarray, plan: EnginePlan
) -> np.ndarray:
    """Sum of weight * 2^(-age / half-life) over each pair's recent touches.

    Summed per pair from its own rows only (bincount adds in row order), so a lead's value does not depend on which
    other leads share its block: batch and request-time results are bit-identical.
    """
    owner, index = _expand_ranges(lo, hi)
    age_days = _days(as_of[owner] - ts[index])
    values = plan.weights[types[index]] * np.exp2(-age_days / plan.config.half_life_days)
    return np.bincount(owner, weights=values, minlength=lo.shape[0])


def _buying_group(
    block: FunnelBlock, lead: np.ndarray, as_of: np.ndarray, cum: np.ndarray, high: np.ndarray, window_days: int
) -> list[np.ndarray]:
    """Colleagues at the same account: known, engaged, their touches and high-intent touches, and SQLs so far."""
    n_pairs = lead.shape[0]
    pair, member = _expand_ranges(block.account_start[lead], block.account_end[lead])
    keep = member != lead[pair]
    pair, member = pair[keep], member[keep]
    at = as_of[pair]
    life = block.lifecycle[member]
    known = life[:, 0] < at
    mbase = member << TS_BITS
    bounds = np.stack([mbase | np.maximum(at - window_days * SECONDS_PER_DAY, 0), mbase | at], axis=1)
    pos = np.searchsorted(block.act_key, bounds.ravel(), side="left").reshape(-1, 2)
    touches = pos[:, 1] - pos[:, 0]
    high_touches = (cum[pos[:, 1]][:, high] - cum[pos[:, 0]][:, high]).sum(axis=1)
    reached_sql = (life[:, list(_SQL_COLUMNS)] < at[:, None]).any(axis=1)

    def per_pair(values: np.ndarray) -> np.ndarray:
        return np.bincount(pair, weights=values.astype(np.float64), minlength=n_pairs)

    n_known = per_pair(known)
    colleague_touches = per_pair(touches)
    return [
        n_known,
        per_pair(touches > 0),
        colleague_touches,
        per_pair(high_touches),
        per_pair(reached_sql),
        # The account's pulse per person: many touches from one big buying group mean less than from a small one.
        colleague_touches / (n_known + 1.0),
    ]
