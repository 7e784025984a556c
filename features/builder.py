"""Model features for (lead, as_of) pairs: batch over tables, or one lead at request time, through one engine."""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn, Self, cast

import numpy as np
import pandas as pd

from features.bots import DEFAULT_BOT_LIMITS, BotLimits, bot_marked_column, keep_touches, touches_are_bots
from features.engine import (
    MAX_LEADS_PER_BLOCK,
    MAX_TIMESTAMP,
    NEVER,
    NOT_YET_CREATED,
    READINESS_STAGES,
    STAGE_CODE,
    STAGES,
    TS_BITS,
    FeatureConfig,
    FunnelBlock,
    compute_engagement,
    engagement_feature_names,
    plan_engine,
    stage_at,
)
from features.fit import DEFAULT_MIN_CATEGORY_COUNT, FitEncoder
from features.spec import ACTIVITY_TYPES, DEFAULT_CONTRACT, LIFECYCLE_CHAIN, LeadContract
from features.validation import normalize_activity_type

log = logging.getLogger(__name__)

NS_PER_SECOND = 1_000_000_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_TYPE_CODE = {t: i for i, t in enumerate(ACTIVITY_TYPES)}
# Batch blocks hold whole accounts and about this many activities: large enough to amortise numpy calls, small
# enough that the per-block work arrays (a few dozen bytes per activity and type) stay well under a gigabyte.
DEFAULT_BLOCK_ACTIVITIES = 1_000_000


_INT64_MIN = np.iinfo(np.int64).min
_ONE_MICROSECOND = dt.timedelta(microseconds=1)
MICROS_PER_SECOND = 1_000_000


def stamps_to_seconds(ns: np.ndarray) -> np.ndarray:
    """Epoch nanoseconds (int64, NaT as int64 min) to epoch seconds rounded up; NaT becomes NEVER."""
    return np.where(ns == _INT64_MIN, NEVER, -(-ns // NS_PER_SECOND))


def as_of_to_seconds(ns: np.ndarray) -> np.ndarray:
    """Epoch nanoseconds of as_of rounded down, so that a touch in the same second is never counted."""
    return ns // NS_PER_SECOND


def record_seconds(value: object, *, round_up: bool) -> int:
    """Epoch seconds of one datetime, pandas Timestamp or ISO string (naive means UTC); NEVER for null.

    Integer arithmetic only, so the result equals the batch path's rounding of the same instant exactly.
    """
    if value is None or value is pd.NaT:
        return int(NEVER)
    if isinstance(value, pd.Timestamp):
        ns = int(value.value)  # UTC nanoseconds whether or not the Timestamp carries a zone
        return -(-ns // NS_PER_SECOND) if round_up else ns // NS_PER_SECOND
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        raise TypeError(f"expected a timestamp, got {type(value).__name__}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    micros = int((value - _EPOCH) // _ONE_MICROSECOND)
    return -(-micros // MICROS_PER_SECOND) if round_up else micros // MICROS_PER_SECOND


def _type_code(value: object) -> int:
    code = _TYPE_CODE.get(value) if isinstance(value, str) else None
    if code is None:
        code = _TYPE_CODE.get(normalize_activity_type(str(value)))
        if code is None:
            raise ValueError(f"unknown activity type {value!r}; accepted: {', '.join(ACTIVITY_TYPES)}")
    return code


def _type_codes(values: Sequence[object]) -> list[int]:
    """`_type_code` of every value; canonical names (the usual case) cost one dict lookup each."""
    codes = [_TYPE_CODE.get(v, -1) if isinstance(v, str) else -1 for v in values]
    return [_type_code(v) for v in values] if -1 in codes else codes


def _seconds_up(values: Sequence[object]) -> list[int]:
    """`record_seconds(value, round_up=True)` of every value; aware datetimes and nulls without a call each.

    Zone-aware datetimes are what the API hands over. For one, `timestamp()` is the exact microsecond count divided
    by 10^6 and correctly rounded: below 2^33 seconds (the year 2242) half a float step is under a microsecond, so
    its ceiling is the exact ceiling.
    """
    never = int(NEVER)
    out: list[int] = []
    for v in values:
        if v is None:
            out.append(never)
        elif type(v) is dt.datetime and v.tzinfo is not None:
            out.append(math.ceil(v.timestamp()))
        else:
            out.append(record_seconds(v, round_up=True))
    return out


def _touch_seconds(values: Sequence[object]) -> np.ndarray:
    """`_seconds_up` of many touch times as an array; the API's all-aware datetimes in one vectorised step."""
    if all(type(v) is dt.datetime and v.tzinfo is not None for v in values):
        # timestamp() then ceiling is exact in range (see _seconds_up), here for every touch at once.
        stamps = cast(Sequence[dt.datetime], values)
        return np.ceil(np.array([v.timestamp() for v in stamps], dtype=np.float64)).astype(np.int64)
    return np.array(_seconds_up(values), dtype=np.int64)


def _owner_rows(index: Mapping[str, int], touch_lead_ids: Sequence[object], lead_id: str) -> list[int]:
    """The block row of each touch's person; a touch of someone who is neither the lead nor a colleague is refused."""
    try:
        return [index[str(x)] for x in touch_lead_ids]
    except KeyError:
        i, owner = next((i, str(x)) for i, x in enumerate(touch_lead_ids) if str(x) not in index)
        raise ValueError(
            f"lead {lead_id!r}: activities[{i}].lead_id {owner!r} is neither the lead nor a colleague"
        ) from None


def _refuse_timeless(seconds: np.ndarray, leads: Sequence[tuple[str, int]]) -> NoReturn:
    """Refuse the first touch without a time (seconds NEVER), naming its lead and its place among the lead's touches.

    `leads` holds (lead_id, number of touches) in the order of `seconds`. A touch is never "never": counted as such it
    would silently drop out of every feature.
    """
    position = int(np.flatnonzero(seconds == NEVER)[0])
    ends = np.cumsum([count for _, count in leads])
    which = int(np.searchsorted(ends, position, side="right"))  # the lead whose touches hold that position
    first = int(ends[which - 1]) if which else 0
    raise ValueError(f"lead {leads[which][0]!r}: activities[{position - first}] has no occurred_at")


def series_ns(series: pd.Series) -> np.ndarray:
    """Epoch nanoseconds (int64, NaT as int64 min) of a canonical UTC timestamp column."""
    return series.to_numpy(dtype="datetime64[ns]").view(np.int64)


def _check_range(seconds: np.ndarray, what: str) -> None:
    real = seconds[seconds != NEVER]
    if real.size and (real.min() < 0 or real.max() > MAX_TIMESTAMP):
        raise ValueError(f"{what}: timestamps must lie between 1970 and 2106")


class IncompatibleModelError(ValueError):
    """A logged model was trained on features this version of the feature engine does not compute."""

    def __init__(self, trained: Sequence[str], current: Sequence[str]) -> None:
        gone = [name for name in trained if name not in current]
        new = [name for name in current if name not in trained]
        detail = f"features it read that no longer exist: {', '.join(gone[:6]) or 'none'}"
        detail += f"; features this version adds: {', '.join(new[:6]) or 'none'}"
        super().__init__(
            "this model was trained with an earlier feature engine and cannot be scored by this version of leadscore"
            f" ({detail}); retrain it with this version (leadscore train), then promote the new model"
        )


@dataclass(frozen=True, slots=True)
class RequestLead:
    """One lead to score at request time: its profile, its colleagues at the same account, and their touches.

    Touches are given as columns (one entry per touch): whose touch it is (the lead's or a colleague's lead_id),
    when it happened and its activity type, with the same accepted values as `transform_records` takes; and, if any
    touch has them, their properties (a mapping, JSON text or None each), read for bot marks (features/bots.py).
    """

    lead: Mapping[str, object]
    colleagues: Sequence[Mapping[str, object]]
    touch_lead_ids: Sequence[str]
    touch_times: Sequence[object]
    touch_types: Sequence[object]
    as_of: dt.datetime
    touch_properties: Sequence[object] = ()


@dataclass(frozen=True, slots=True)
class RequestFeatures:
    """Feature rows of request-time leads, and how many of each lead's own touches before as_of were left out."""

    rows: np.ndarray  # float64 (requests, features)
    ignored_touches: np.ndarray  # int64 (requests,): touches that look automated (features/bots.py)


@dataclass(frozen=True, slots=True)
class _Tables:
    """Leads and activities as arrays in block order (leads sorted by account, activities by lead and time)."""

    lead_ids: pd.Index
    lifecycle: np.ndarray
    account_start: np.ndarray
    account_end: np.ndarray
    act_key: np.ndarray
    act_type: np.ndarray
    fit: np.ndarray
    # Touches left out as automated, as sorted keys (lead << TS_BITS | seconds): counted per pair, as the API does.
    dropped_key: np.ndarray


class FeatureBuilder:
    """Computes model features (fit + engagement) for (lead, as_of) pairs from leads and activities.

    `fit` learns the category vocabularies from training leads. `transform` serves batch snapshots;
    `transform_records` serves one lead at request time with the very same engine, so both give identical rows.
    """

    def __init__(
        self,
        *,
        config: FeatureConfig | None = None,
        contract: LeadContract = DEFAULT_CONTRACT,
        min_category_count: int = DEFAULT_MIN_CATEGORY_COUNT,
        bot_limits: BotLimits = DEFAULT_BOT_LIMITS,
    ) -> None:
        self.config = config
        self.contract = contract
        self.min_category_count = min_category_count
        self.bot_limits = bot_limits

    @property
    def config_(self) -> FeatureConfig:
        """The engagement configuration in force (the default when none was given)."""
        return self.config if self.config is not None else FeatureConfig()

    @property
    def bot_limits_(self) -> BotLimits:
        """The bot limits in force (the defaults for a builder pickled before they existed)."""
        limits: BotLimits = getattr(self, "bot_limits", DEFAULT_BOT_LIMITS)
        return limits

    def fit(self, leads: pd.DataFrame) -> Self:
        """Learn category vocabularies from canonical (validated) training leads."""
        self.fit_encoder_ = FitEncoder(contract=self.contract, min_category_count=self.min_category_count).fit(leads)
        self.fit_feature_names_ = list(self.fit_encoder_.feature_names_)
        self.engagement_feature_names_ = engagement_feature_names(self.config_)
        self.plan_ = plan_engine(self.config_)
        self.feature_names_ = self.fit_feature_names_ + self.engagement_feature_names_
        self.categorical_features_ = [*self.fit_encoder_.categorical_features_, "stage"]
        return self

    # The engine plan is derived from the config: left out of a pickle and rebuilt on load, so that a model logged
    # by an earlier version of the engine (whose plan held other arrays) still loads and scores.
    def __getstate__(self) -> dict[str, object]:
        """The builder's state without the derived engine plan."""
        state = self.__dict__.copy()
        state.pop("plan_", None)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        """Restore a pickled builder, planning the engine afresh for its config.

        A model whose boosters read features this engine no longer computes (or computes others) cannot be scored by
        it: refused here, by name, rather than scored with columns in the wrong places.
        """
        self.__dict__.update(state)
        self.__dict__.pop("plan_", None)
        if "feature_names_" in state:  # fitted
            current = engagement_feature_names(self.config_)
            if self.engagement_feature_names_ != current:
                raise IncompatibleModelError(self.engagement_feature_names_, current)
            self.plan_ = plan_engine(self.config_)

    # ---- batch -------------------------------------------------------------------------------------------------
    def _tables(self, leads: pd.DataFrame, activities: pd.DataFrame) -> _Tables:
        order = np.lexsort((leads["lead_id"].to_numpy(), leads["account_id"].to_numpy()))
        leads = leads.iloc[order]
        if len(leads) > MAX_LEADS_PER_BLOCK:
            raise ValueError(f"at most {MAX_LEADS_PER_BLOCK} leads per call")
        lead_ids = pd.Index(leads["lead_id"].to_numpy())
        account_codes, _ = pd.factorize(leads["account_id"].to_numpy())
        starts = np.flatnonzero(np.r_[True, account_codes[1:] != account_codes[:-1]])
        ends = np.r_[starts[1:], len(leads)]
        sizes = ends - starts
        lifecycle = (
            np.column_stack([stamps_to_seconds(series_ns(leads[c])) for c in LIFECYCLE_CHAIN])
            if len(leads)
            else np.empty((0, len(LIFECYCLE_CHAIN)), dtype=np.int64)
        )
        _check_range(lifecycle, "leads")
        codes = lead_ids.get_indexer(pd.Index(activities["lead_id"]))
        if (codes < 0).any():
            raise ValueError("activities reference leads that are not in the leads table")
        ts = stamps_to_seconds(series_ns(activities["occurred_at"]))
        _check_range(ts, "activities")
        act_type = activities["activity_type"].cat.codes.to_numpy().astype(np.int64)
        flagged = (
            bot_marked_column(activities["properties"])
            if "properties" in activities.columns
            else np.zeros(len(activities), dtype=np.bool_)
        )
        human = keep_touches(codes, np.minimum(ts, MAX_TIMESTAMP), act_type, flagged, self.bot_limits_)
        dropped_key = np.sort((codes[~human].astype(np.int64) << TS_BITS) | ts[~human])
        codes, ts, act_type = codes[human], ts[human], act_type[human]
        key = (codes.astype(np.int64) << TS_BITS) | ts
        act_order = np.lexsort((act_type, key))
        return _Tables(
            lead_ids=lead_ids,
            lifecycle=lifecycle,
            account_start=np.repeat(starts, sizes),
            account_end=np.repeat(ends, sizes),
            act_key=key[act_order],
            act_type=act_type[act_order],
            fit=self.fit_encoder_.transform(leads),
            dropped_key=dropped_key,
        )

    def _blocks(self, tables: _Tables, max_activities: int) -> Iterator[tuple[int, int, int, int]]:
        """(first lead, end lead, first activity, end activity) of consecutive blocks of whole accounts."""
        n_leads = len(tables.lead_ids)
        lead_act_start = np.searchsorted(tables.act_key, np.arange(n_leads + 1, dtype=np.int64) << TS_BITS)
        account_bounds = np.r_[np.unique(tables.account_start), n_leads]
        act_at_bound = lead_act_start[account_bounds]
        i = 0
        while i < len(account_bounds) - 1:
            # Grow the block by whole accounts until it holds about max_activities touches (at least one account).
            j = int(np.searchsorted(act_at_bound, act_at_bound[i] + max_activities, side="right")) - 1
            j = max(j, i + 1)
            yield (int(account_bounds[i]), int(account_bounds[j]), int(act_at_bound[i]), int(act_at_bound[j]))
            i = j

    def transform(
        self,
        leads: pd.DataFrame,
        activities: pd.DataFrame,
        pairs: pd.DataFrame,
        *,
        max_block_activities: int = DEFAULT_BLOCK_ACTIVITIES,
    ) -> pd.DataFrame:
        """Features for every (lead_id, as_of) row of `pairs`, in the same order, from canonical tables.

        Only activities and lifecycle stamps strictly before each row's as_of are used.
        """
        return self.table_features(leads, activities, pairs, max_block_activities=max_block_activities)[0]

    def table_features(
        self,
        leads: pd.DataFrame,
        activities: pd.DataFrame,
        pairs: pd.DataFrame,
        *,
        max_block_activities: int = DEFAULT_BLOCK_ACTIVITIES,
    ) -> tuple[pd.DataFrame, np.ndarray]:
        """`transform`, with the number of each pair's own touches before its as_of left out as automated.

        The count is what `request_features` reports for the same lead, so a batch scored from tables carries the
        API's notes.
        """
        tables = self._tables(leads, activities)
        lead = tables.lead_ids.get_indexer(pd.Index(pairs["lead_id"]))
        if (lead < 0).any():
            missing = pairs["lead_id"].to_numpy()[lead < 0][:5]
            raise ValueError(f"pairs name leads that are not in the leads table, e.g. {list(missing)}")
        as_of_col = pd.to_datetime(pairs["as_of"], utc=True).astype("datetime64[ns, UTC]")
        as_of = as_of_to_seconds(series_ns(as_of_col))
        _check_range(as_of, "as_of")
        engagement = np.empty((len(pairs), len(self.engagement_feature_names_)), dtype=np.float64)
        order = np.argsort(lead, kind="stable")
        sorted_lead = lead[order]
        for lo, hi, a_lo, a_hi in self._blocks(tables, max_block_activities):
            p_lo, p_hi = np.searchsorted(sorted_lead, [lo, hi])
            if p_lo == p_hi:
                continue
            rows = order[p_lo:p_hi]
            block = FunnelBlock(
                lifecycle=tables.lifecycle[lo:hi],
                account_start=tables.account_start[lo:hi] - lo,
                account_end=tables.account_end[lo:hi] - lo,
                act_key=tables.act_key[a_lo:a_hi] - (np.int64(lo) << TS_BITS),
                act_type=tables.act_type[a_lo:a_hi],
            )
            engagement[rows] = compute_engagement(block, lead[rows] - lo, as_of[rows], self.plan_)
        frame = pd.DataFrame(np.hstack([tables.fit[lead], engagement]), columns=self.feature_names_)
        frame.insert(0, "as_of", as_of_col.to_numpy())
        frame.insert(0, "lead_id", pairs["lead_id"].to_numpy())
        # The pair's own dropped touches strictly before its as_of: keys from (lead, 0) up to (lead, as_of).
        base = lead.astype(np.int64) << TS_BITS
        ignored = np.searchsorted(tables.dropped_key, base | np.maximum(as_of, 0)) - np.searchsorted(
            tables.dropped_key, base
        )
        return frame, ignored.astype(np.int64)

    # ---- request time ------------------------------------------------------------------------------------------
    def transform_records(
        self,
        lead: Mapping[str, object],
        activities: Sequence[Mapping[str, object]],
        as_of: dt.datetime,
        colleagues: Sequence[Mapping[str, object]] = (),
    ) -> np.ndarray:
        """Feature row of one lead at as_of, from its profile, its touches and its colleagues at the same account.

        `activities` holds the touches of the lead and of the colleagues (each with lead_id, occurred_at,
        activity_type, optionally properties); touches at or after as_of are ignored, like in batch, and so are
        touches that look automated.
        """
        row: np.ndarray = self.record_features(lead, activities, as_of, colleagues).rows[0]
        return row

    def record_features(
        self,
        lead: Mapping[str, object],
        activities: Sequence[Mapping[str, object]],
        as_of: dt.datetime,
        colleagues: Sequence[Mapping[str, object]] = (),
    ) -> RequestFeatures:
        """`transform_records` as one row, with the number of the lead's own touches before as_of left out."""
        people = [lead, *colleagues]
        index = {str(p["lead_id"]): i for i, p in enumerate(people)}
        lifecycle = np.array(
            [[record_seconds(p.get(c), round_up=True) for c in LIFECYCLE_CHAIN] for p in people], dtype=np.int64
        )
        n = len(people)
        lead_id = str(lead["lead_id"])
        codes = np.array(_owner_rows(index, [a["lead_id"] for a in activities], lead_id), dtype=np.int64)
        ts = np.array([record_seconds(a["occurred_at"], round_up=True) for a in activities], dtype=np.int64)
        if (ts == NEVER).any():
            _refuse_timeless(ts, [(lead_id, len(activities))])
        types = np.array([_type_code(a["activity_type"]) for a in activities], dtype=np.int64)
        _check_range(ts, "activities")
        _check_range(lifecycle, "leads")
        at = np.array([record_seconds(as_of, round_up=False)], dtype=np.int64)
        human = keep_touches(codes, ts, types, touches_are_bots([a.get("properties") for a in activities]),
                             self.bot_limits_)  # fmt: skip
        ignored = int(np.count_nonzero(~human & (codes == 0) & (ts < at[0])))
        codes, ts, types = codes[human], ts[human], types[human]
        key = (codes << TS_BITS) | ts
        order = np.lexsort((types, key))
        block = FunnelBlock(
            lifecycle=lifecycle,
            account_start=np.zeros(n, dtype=np.int64),
            account_end=np.full(n, n, dtype=np.int64),
            act_key=key[order],
            act_type=types[order],
        )
        engagement = compute_engagement(block, np.zeros(1, dtype=np.int64), at, self.plan_)[0]
        row = np.concatenate([self.fit_encoder_.transform_record(lead), engagement])
        return RequestFeatures(rows=row[None, :], ignored_touches=np.array([ignored], dtype=np.int64))

    def lifecycle_stages(self, rows: np.ndarray) -> list[str]:
        """The lifecycle stage (features.engine.STAGES) of each feature row, at its as_of."""
        return lifecycle_stages(rows[:, self.feature_names_.index("stage")])

    def transform_requests(self, requests: Sequence[RequestLead]) -> np.ndarray:
        """Feature rows of many leads at request time (one row per request, in order), in one engine pass.

        Row i equals `transform_records` of request i bit for bit: each request's lead and colleagues form an
        account of their own in one block, and the engine reads every pair's own rows only. One pass over all
        touches costs a few numpy calls instead of a hundred per lead.
        """
        return self.request_features(requests).rows

    def request_features(self, requests: Sequence[RequestLead]) -> RequestFeatures:
        """`transform_requests`, with the number of each lead's own touches before as_of left out as automated."""
        n_features = len(self.feature_names_)
        if not requests:
            return RequestFeatures(np.empty((0, n_features), dtype=np.float64), np.zeros(0, dtype=np.int64))
        lifecycle_rows: list[list[int]] = []
        account_start: list[int] = []
        account_end: list[int] = []
        pair_lead: list[int] = []
        codes: list[int] = []
        for request in requests:
            people = [request.lead, *request.colleagues]
            first = len(lifecycle_rows)
            index = {str(p["lead_id"]): first + i for i, p in enumerate(people)}
            lifecycle_rows += [_seconds_up([p.get(c) for c in LIFECYCLE_CHAIN]) for p in people]
            account_start += [first] * len(people)
            account_end += [first + len(people)] * len(people)
            pair_lead.append(first)
            ids, own = request.touch_lead_ids, str(request.lead["lead_id"])
            if index[own] == first and set(ids) <= {own}:
                codes += [first] * len(ids)  # all the lead's own (the usual case): no lookup per touch
            else:
                codes += _owner_rows(index, ids, own)
        lifecycle = np.array(lifecycle_rows, dtype=np.int64)
        ts = _touch_seconds([t for r in requests for t in r.touch_times])
        types = np.array(_type_codes([t for r in requests for t in r.touch_types]), dtype=np.int64)
        if not len(codes) == len(ts) == len(types):
            raise ValueError("every touch needs a lead_id, a time and an activity type")
        if (ts == NEVER).any():
            _refuse_timeless(ts, [(str(r.lead["lead_id"]), len(r.touch_times)) for r in requests])
        _check_range(ts, "activities")
        _check_range(lifecycle, "leads")
        owner = np.array(codes, dtype=np.int64)
        at = np.array([record_seconds(r.as_of, round_up=False) for r in requests], dtype=np.int64)
        human = keep_touches(owner, ts, types, self._request_bot_marks(requests), self.bot_limits_)
        # Left out and counted: the lead's own touches that the features would otherwise read (before as_of).
        request_of = np.repeat(np.arange(len(requests)), [len(r.touch_times) for r in requests])
        pair = np.array(pair_lead, dtype=np.int64)
        ignored = ~human & (owner == pair[request_of]) & (ts < at[request_of])
        owner, ts, types = owner[human], ts[human], types[human]
        key = (owner << TS_BITS) | ts
        order = np.lexsort((types, key))
        block = FunnelBlock(
            lifecycle=lifecycle,
            account_start=np.array(account_start, dtype=np.int64),
            account_end=np.array(account_end, dtype=np.int64),
            act_key=key[order],
            act_type=types[order],
        )
        engagement = compute_engagement(block, pair, at, self.plan_)
        fit = np.array([self.fit_encoder_.record_values(r.lead) for r in requests], dtype=np.float64)
        return RequestFeatures(
            rows=np.hstack([fit.reshape(len(requests), -1), engagement]),
            ignored_touches=np.bincount(request_of[ignored], minlength=len(requests)).astype(np.int64),
        )

    @staticmethod
    def _request_bot_marks(requests: Sequence[RequestLead]) -> np.ndarray:
        """The bot marks of all requests' touches, in order; requests without properties cost nothing."""
        marks = [
            touches_are_bots(r.touch_properties) if r.touch_properties else np.zeros(len(r.touch_times), np.bool_)
            for r in requests
        ]
        for r, m in zip(requests, marks, strict=True):
            if len(m) != len(r.touch_times):
                raise ValueError(
                    f"lead {r.lead['lead_id']!r}: {len(r.touch_properties)} touch properties for "
                    f"{len(r.touch_times)} touches; give one per touch (None: no properties), or none at all"
                )
        return np.concatenate(marks) if marks else np.zeros(0, dtype=np.bool_)


def open_at(leads: pd.DataFrame, as_of: pd.Timestamp) -> np.ndarray:
    """Which canonical leads are open at as_of: created before it, and their latest stamp before it an open stage.

    Open stages (lead, MQL, SAL, recycled) are those readiness speaks of.
    """
    lifecycle = (
        np.column_stack([stamps_to_seconds(series_ns(leads[c])) for c in LIFECYCLE_CHAIN])
        if len(leads)
        else np.empty((0, len(LIFECYCLE_CHAIN)), dtype=np.int64)
    )
    at = as_of_to_seconds(np.full(len(leads), pd.Timestamp(as_of).value, dtype=np.int64))
    return np.isin(stage_at(lifecycle, at), [STAGE_CODE[s] for s in READINESS_STAGES])


def lifecycle_stages(codes: np.ndarray) -> list[str]:
    """Stage names (features.engine.STAGES) of the feature rows' `stage` codes.

    A lead with no stamp before as_of (created in the very second it is scored: stamps round up, as_of down) is a
    new lead, stage "lead".
    """
    return [STAGES[int(code)] if code != NOT_YET_CREATED else STAGES[0] for code in codes.tolist()]
