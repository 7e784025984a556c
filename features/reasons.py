"""Human-readable reasons: model contributions summed per reason group and phrased from the lead's own values."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, NamedTuple

import numpy as np

from features.engine import DEFAULT_HIGH_INTENT, NO_TOUCH_DAYS, OPT_OUT_TYPES, STAGES, FeatureConfig
from features.spec import ACTIVITY_TYPES

# Fit: the profile. Behaviour: what the lead and its colleagues did. Context: where the lead stands in the funnel
# and for how long; it moves readiness, but it is bookkeeping a rep reads as background, never as a merit.
Side = Literal["fit", "behaviour", "context"]
Row = np.ndarray | Sequence[float]  # one lead's feature values, in the builder's column order

# What a touch of each kind says in a sentence ("requested a demo 2 days ago").
ACTIVITY_PHRASES: Mapping[str, str] = {
    "page_view": "visited the website",
    "pricing_page_view": "viewed the pricing page",
    "email_open": "opened a marketing e-mail",
    "email_click": "clicked a link in an e-mail",
    "form_submit": "submitted a form",
    "content_download": "downloaded content",
    "webinar_registered": "registered for a webinar",
    "webinar_attended": "attended a webinar",
    "demo_request": "requested a demo",
    "free_trial_signup": "signed up for a free trial",
    "meeting_booked": "booked a meeting",
    "unsubscribe": "unsubscribed from e-mail",
}
# The same touches counted, for leads that have none ("no demo requests so far").
ACTIVITY_NOUNS: Mapping[str, str] = {
    "page_view": "website visits",
    "pricing_page_view": "pricing-page views",
    "email_open": "e-mail opens",
    "email_click": "e-mail clicks",
    "form_submit": "form submissions",
    "content_download": "content downloads",
    "webinar_registered": "webinar registrations",
    "webinar_attended": "webinars attended",
    "demo_request": "demo requests",
    "free_trial_signup": "free-trial signups",
    "meeting_booked": "meetings booked",
    "unsubscribe": "unsubscribes",
}
_CATEGORY_LABELS: Mapping[str, str] = {
    "industry": "industry",
    "country": "country",
    "region": "region",
    "seniority": "seniority",
    "department": "department",
    "source": "lead source",
    "channel": "channel",
}
# Funnel stages as sales ops spell them in a sentence (the rest read as they are).
_STAGE_NAMES: Mapping[str, str] = {"mql": "MQL", "sal": "SAL", "sql": "SQL"}
_WINDOWED = re.compile(r"^n_(?P<type>[a-z_]+)_(?P<days>\d+)d$")
# From this many rows on, reasons are ranked with numpy: for a batch of 1,000 leads, a fifth of phrasing its reasons.
NUMPY_RANK_MIN_ROWS = 32
# A concrete touch that helped (a demo request, a trial) comes before volume and buying-group reasons: it is what a
# rep opens the call with. It must have moved readiness by at least this much (log-odds) to count as helping.
CONCRETE_MIN_IMPACT = 0.02
_GROUP_OF_PREFIX: tuple[tuple[str, str], ...] = (
    ("account_", "buying_group"),
    ("days_since_colleague_", "buying_group"),
    ("n_high_intent_", "high_intent"),
    ("n_touches_", "activity_level"),
    ("engagement_", "activity_level"),
)


class Reason(NamedTuple):
    """One reason behind a score: which side (fit or behaviour), its signed impact in log-odds, and a sentence."""

    # A named tuple, not a frozen dataclass: a batch of 1,000 leads makes 6,000 of them, and a frozen dataclass's
    # __init__ (one object.__setattr__ per field) costs three times as much.
    group: str
    side: Side
    impact: float
    label: str


def reason_group(feature: str, fit_features: Sequence[str]) -> tuple[str, Side]:
    """The reason group a model feature belongs to, and whether it speaks of fit or behaviour."""
    if feature in fit_features:
        if feature in ("employee_count_log", "size_band"):
            return "company_size", "fit"
        if feature in ("seniority", "seniority_rank", "title_rank"):
            return "seniority", "fit"
        if feature == "annual_revenue_log":
            return "revenue", "fit"
        if feature == "email_free_domain":
            return "email_domain", "fit"
        return feature, "fit"
    if feature.startswith("days_since_last_") and feature.removeprefix("days_since_last_") in ACTIVITY_TYPES:
        return feature.removeprefix("days_since_last_"), "behaviour"
    match = _WINDOWED.match(feature)
    if match and match["type"] in ACTIVITY_TYPES:
        return match["type"], "behaviour"
    if feature == "unsubscribed":
        return "unsubscribe", "behaviour"
    for prefix, group in _GROUP_OF_PREFIX:
        if feature.startswith(prefix):
            return group, "behaviour"
    if feature in ("days_since_last_touch", "n_touches_total"):
        return "activity_level", "behaviour"
    if feature == "days_since_created":
        return "lead_age", "context"
    return "lifecycle", "context"  # stage, days_in_stage, days_since_mql, days_created_to_mql, days_since_sal


def _finite(value: float) -> bool:
    return not math.isnan(value)


def _ago(days: float) -> str:
    """'3 hours ago', 'yesterday', '5 days ago': whole units elapsed (a touch 18 hours before is not "today")."""
    whole = int(days)
    if whole == 0:
        hours = int(days * 24)
        return "within the hour" if hours == 0 else f"{_count(hours, 'hour')} ago"
    return "yesterday" if whole == 1 else f"{whole:,} days ago"


def _for(days: float) -> str:
    """'for 5 hours', 'for 1 day', 'for 13 days'."""
    if int(days) == 0:
        hours = int(days * 24)
        return "for less than an hour" if hours == 0 else f"for {_count(hours, 'hour')}"
    return f"for {_count(days, 'day')}"


def _count(n: float, noun: str, plural: str | None = None) -> str:
    """'1 colleague', '3 colleagues', '1 touch', '2 touches' (give `plural` where adding an s is wrong)."""
    k = int(n)
    return f"{k:,} {noun}" if k == 1 else f"{k:,} {plural or noun + 's'}"


def top_k(
    impacts: np.ndarray, columns: list[int], k: int, first: np.ndarray | None = None
) -> tuple[list[list[int]], list[list[float]]]:
    """Per row, the positions in `columns` of the k largest |impact|s, and those impacts; ties keep column order.

    `first` (rows x columns, 0, 1, 2, ...) ranks reasons in tiers before |impact|: higher tiers go first, and within
    a tier the larger |impact|.
    """
    if first is not None:
        side = impacts[:, columns]
        # |impact| plus a bonus per tier larger than any impact: tiers sort first, by |impact| within each tier.
        key = np.abs(side) + first * 1e6
        order = np.argsort(-key, axis=1, kind="stable")[:, :k]
        return order.tolist(), np.take_along_axis(side, order, axis=1).tolist()
    if impacts.shape[0] >= NUMPY_RANK_MIN_ROWS:
        side = impacts[:, columns]
        order = np.argsort(-np.abs(side), axis=1, kind="stable")[:, :k]
        return order.tolist(), np.take_along_axis(side, order, axis=1).tolist()
    # A few rows (single leads) are ranked in plain Python: numpy's per-call cost (fancy indexing, argsort) is
    # several times the sorting itself. Both sorts are stable, so both ways rank alike.
    positions = range(len(columns))
    ranked_rows: list[list[int]] = []
    impact_rows: list[list[float]] = []
    for impact_row in impacts.tolist():
        side_row = [impact_row[c] for c in columns]
        ranked = sorted(positions, key=[-abs(v) for v in side_row].__getitem__)[:k]
        ranked_rows.append(ranked)
        impact_rows.append([side_row[p] for p in ranked])
    return ranked_rows, impact_rows


class _Aggregate(NamedTuple):
    """A feature that adds up touches of several kinds: where it sits, and the columns that tell each kind's part."""

    column: int  # the feature
    home: int  # its own reason group
    groups: np.ndarray  # reason group of each kind of touch
    counts: np.ndarray  # column of each kind's count in a window
    recency: np.ndarray  # column of each kind's "days since last"
    weights: np.ndarray  # each kind's weight in the sum
    how: str  # count: the counts; within: touches within `scale` days; decay: halving every `scale` days; latest
    scale: float


def _parts(aggregate: _Aggregate, values: np.ndarray) -> np.ndarray:
    """(rows x kinds) what each kind of touch put into the aggregate, as well as the row's values tell it.

    Counts are exact; decayed sums are estimated from each kind's count and its latest touch, which is all a row
    holds, and is only used to share the aggregate's impact out.
    """
    counts = values[:, aggregate.counts]
    since = values[:, aggregate.recency]
    if aggregate.how == "count":
        return np.asarray(counts * aggregate.weights, dtype=np.float64)
    if aggregate.how == "within":
        return np.where(since < aggregate.scale, np.maximum(counts, 1.0), 0.0)
    if aggregate.how == "decay":
        decay = np.exp2(-np.minimum(since, NO_TOUCH_DAYS) / aggregate.scale)
        return np.asarray(aggregate.weights * counts * decay, dtype=np.float64)
    latest = np.zeros_like(since)  # the kind of the latest touch gets it all
    touched = since < NO_TOUCH_DAYS
    first = np.argmin(np.where(touched, since, np.inf), axis=1)
    latest[np.arange(len(since)), first] = touched[np.arange(len(since)), first]
    return latest


class ReasonLabeler:
    """Groups feature contributions into reasons and phrases each from the lead's feature values.

    Built from the feature names and the fit encoder's vocabularies, so it travels inside the logged model.
    """

    def __init__(
        self,
        *,
        feature_names: Sequence[str],
        fit_features: Sequence[str],
        vocabularies: Mapping[str, Sequence[str]],
        windows_days: Sequence[int],
        buying_group_window_days: int,
        config: FeatureConfig | None = None,
    ) -> None:
        self.feature_names = list(feature_names)
        self.config = config
        self.fit_features = list(fit_features)
        self.vocabularies = {k: list(v) for k, v in vocabularies.items()}
        self.windows_days = list(windows_days)
        self.buying_group_window_days = buying_group_window_days
        groups: list[str] = []
        sides: list[Side] = []
        member = np.zeros(len(self.feature_names), dtype=np.int64)
        for j, name in enumerate(self.feature_names):
            group, side = reason_group(name, self.fit_features)
            if group not in groups:
                groups.append(group)
                sides.append(side)
            member[j] = groups.index(group)
        self.groups = groups
        self.sides = sides
        # (features x groups) 0/1 matrix: contributions @ membership sums each group's features in one product.
        self.membership = np.zeros((len(self.feature_names), len(groups)))
        self.membership[np.arange(len(self.feature_names)), member] = 1.0
        self._index = {name: j for j, name in enumerate(self.feature_names)}

    @functools.cached_property
    def _side_columns(self) -> dict[Side, list[int]]:
        # Derived on first use, so that labelers pickled before it existed load too.
        return {side: [g for g, s in enumerate(self.sides) if s == side] for side in ("fit", "behaviour", "context")}

    @functools.cached_property
    def _concrete(self) -> tuple[list[int], list[int], np.ndarray, np.ndarray]:
        """Behaviour positions naming a kind of touch: its "days since last" column, the sign that helps, its tier.

        The tier is where a reason goes when the touch helped: 2 for a high-intent touch, 1 for any other. A touch
        helps readiness when its impact is positive, an opt-out (unsubscribe) when it is negative: either is
        a concrete fact a rep can act on; a demo request, a trial, the pricing page or a meeting most of all.
        """
        config = getattr(self, "config", None)
        high = set(config.high_intent_types if config is not None else DEFAULT_HIGH_INTENT)
        positions, columns, signs, tiers = [], [], [], []
        for position, g in enumerate(self._side_columns["behaviour"]):
            group = self.groups[g]
            column = self._index.get(f"days_since_last_{group}")
            if group in ACTIVITY_PHRASES and column is not None:
                positions.append(position)
                columns.append(column)
                signs.append(-1.0 if group in OPT_OUT_TYPES else 1.0)
                tiers.append(2.0 if group in high else 1.0)
        return positions, columns, np.array(signs), np.array(tiers)

    def _concrete_first(self, impacts: np.ndarray, values: np.ndarray) -> np.ndarray | None:
        """(rows x behaviour groups) tiers of the reasons to give first, 0 for the rest.

        First come the touches the lead made that helped readiness, high-intent ones before the others.
        """
        positions, columns, signs, tiers = self._concrete
        if not positions or not len(impacts):
            return None
        behaviour = self._side_columns["behaviour"]
        tier = np.zeros((impacts.shape[0], len(behaviour)))
        happened = values[:, columns] < NO_TOUCH_DAYS
        helped = impacts[:, [behaviour[p] for p in positions]] * signs >= CONCRETE_MIN_IMPACT
        tier[:, positions] = np.where(happened & helped, tiers, 0.0)
        return tier

    def group_impacts(self, contributions: np.ndarray) -> np.ndarray:
        """(rows x groups) log-odds impacts from (rows x features) contributions."""
        return contributions @ self.membership

    @functools.cached_property
    def _aggregates(self) -> list[_Aggregate]:
        """The features that add up touches of several kinds, and how much each kind puts in (see `_parts`)."""
        config = getattr(self, "config", None)  # labelers pickled before it existed attribute nothing
        if config is None:
            return []
        windows = config.windows_days
        weights = config.engagement_weights
        engaging = [t for t in ACTIVITY_TYPES if t not in OPT_OUT_TYPES]
        high = list(config.high_intent_types)
        group_window = config.buying_group_window_days if config.buying_group_window_days in windows else windows[-1]
        specs: list[tuple[str, list[str], str, str, float]] = [
            *((f"n_touches_{w}d", engaging, f"{w}", "count", 0.0) for w in windows),
            ("n_touches_total", engaging, f"{windows[-1]}", "count", 0.0),
            (f"n_high_intent_{config.buying_group_window_days}d", high, f"{group_window}", "count", 0.0),
            (f"n_high_intent_{config.recent_days}d", high, f"{windows[0]}", "within", float(config.recent_days)),
            ("engagement_decayed", list(ACTIVITY_TYPES), f"{windows[-1]}", "decay", config.half_life_days),
            ("engagement_recent", list(ACTIVITY_TYPES), f"{windows[0]}", "decay", config.recent_half_life_days),
            ("days_since_last_touch", engaging, f"{windows[0]}", "latest", 0.0),
        ]
        aggregates = []
        for feature, candidates, window, how, scale in specs:
            kinds = [t for t in candidates if t in self.groups and f"n_{t}_{window}d" in self._index]
            if feature not in self._index or not kinds:
                continue
            aggregates.append(
                _Aggregate(
                    column=self._index[feature],
                    home=self.groups.index(reason_group(feature, self.fit_features)[0]),
                    groups=np.array([self.groups.index(t) for t in kinds]),
                    counts=np.array([self._index[f"n_{t}_{window}d"] for t in kinds]),
                    recency=np.array([self._index[f"days_since_last_{t}"] for t in kinds]),
                    weights=np.array([weights.get(t, 0.0) if how == "decay" else 1.0 for t in kinds]),
                    how=how,
                    scale=scale,
                )
            )
        return aggregates

    def behaviour_impacts(self, contributions: np.ndarray, values: np.ndarray) -> np.ndarray:
        """`group_impacts` with each sum of touches handed on to the kinds of touch it adds up.

        "2 touches in the last 30 days" and "recent engagement" are a demo request and a pricing-page view added up:
        their impact goes to those touches, in proportion to what each put into the sum (the touches that helped
        when the impact is positive, the opt-outs when it is negative), so the reason names what the lead did.
        What no touch accounts for (no touches at all, a long silence) stays with the sum's own reason.
        """
        impacts = self.group_impacts(contributions)
        for aggregate in self._aggregates:
            phi = contributions[:, aggregate.column]
            parts = _parts(aggregate, values)
            helping = np.where(phi[:, None] > 0, np.maximum(parts, 0.0), np.maximum(-parts, 0.0))
            if aggregate.how == "latest":
                helping = np.where(phi[:, None] > 0, helping, 0.0)  # a long silence is nobody's doing
            total = helping.sum(axis=1)
            shares = np.divide(helping, total[:, None], out=np.zeros_like(helping), where=total[:, None] > 0)
            impacts[:, aggregate.groups] += phi[:, None] * shares  # each kind once per aggregate
            impacts[:, aggregate.home] -= phi * (total > 0)
        return impacts

    def top_reasons(
        self, impacts: np.ndarray, values: np.ndarray, *, side: Side, k: int, min_impact: float = 0.0
    ) -> list[Reason]:
        """The k groups of one side with the largest |impact| for one row, phrased from that row's values."""
        return self.top_reasons_of_rows(impacts[None, :], values[None, :], side=side, k=k, min_impact=min_impact)[0]

    def top_reasons_of_rows(
        self,
        impacts: np.ndarray,
        values: np.ndarray | Sequence[Row],
        *,
        side: Side,
        k: int,
        min_impact: float = 0.0,
    ) -> list[list[Reason]]:
        """`top_reasons` of every row of (rows x groups) impacts.

        `values` may be given as lists of row values already (describing reads single values, which a list gives
        far cheaper than an array): a caller phrasing both sides converts once.
        """
        columns = self._side_columns[side]
        groups = [self.groups[c] for c in columns]
        first = None
        if side == "behaviour":
            first = self._concrete_first(impacts, np.asarray(values, dtype=np.float64))
        rows = values.tolist() if isinstance(values, np.ndarray) else values
        reasons: list[list[Reason]] = []
        for ranked, ranked_impacts, row_values in zip(*top_k(impacts, columns, k, first), rows, strict=True):
            row_reasons = []
            for position, impact in zip(ranked, ranked_impacts, strict=True):
                if abs(impact) <= min_impact:
                    break
                group = groups[position]
                row_reasons.append(Reason(group, side, round(impact, 4), self.describe(group, row_values)))
            reasons.append(row_reasons)
        return reasons

    def _value(self, values: Row, name: str) -> float:
        j = self._index.get(name)
        return float(values[j]) if j is not None else math.nan

    def _category(self, name: str, code: float) -> str:
        if not _finite(code):
            return "unknown"
        vocab = self.vocabularies.get(name, [])
        return vocab[int(code)] if int(code) < len(vocab) else "other"

    def describe(self, group: str, values: Row) -> str:
        """A short sentence for one reason group of one lead."""
        describer = _DESCRIBERS.get(group)
        if describer is not None:
            return describer(self, values)
        if group in ACTIVITY_PHRASES:
            return self._activity(group, values)
        label = _CATEGORY_LABELS.get(group, group.replace("_", " "))
        if group in self.vocabularies:
            return f"{label}: {self._category(group, self._value(values, group))}"
        value = self._value(values, group)
        return f"{label}: {value:g}" if _finite(value) else f"{label}: unknown"

    def _lead_age(self, values: Row) -> str:
        return f"lead created {_ago(self._value(values, 'days_since_created'))}"

    def _company_size(self, values: Row) -> str:
        log_employees = self._value(values, "employee_count_log")
        if not _finite(log_employees):
            return "company size unknown"
        return f"company of {_count(round(math.expm1(log_employees)), 'employee')}"

    def _revenue(self, values: Row) -> str:
        log_revenue = self._value(values, "annual_revenue_log")
        if not _finite(log_revenue):
            return "annual revenue unknown"
        return f"annual revenue ${math.expm1(log_revenue) / 1e6:,.1f}M"

    def _seniority(self, values: Row) -> str:
        declared = self._category("seniority", self._value(values, "seniority"))
        if declared not in ("unknown", "other"):
            return f"seniority: {declared}"
        rank = self._value(values, "title_rank")
        if _finite(rank):
            names = ("student", "individual contributor", "manager", "director", "vp", "c-level")
            return f"job title reads as {names[int(rank)]}"
        return "seniority unknown"

    def _email_domain(self, values: Row) -> str:
        free = self._value(values, "email_free_domain")
        if not _finite(free):
            return "e-mail domain unknown"
        return "uses a free e-mail address" if free == 1.0 else "uses a business e-mail address"

    @functools.cached_property
    def _window(self) -> int:
        # Repeats are counted over the middle window (30 days by default): a month is how sales ops think.
        return self.windows_days[min(1, len(self.windows_days) - 1)]

    def _activity(self, activity: str, values: Row) -> str:
        phrase = ACTIVITY_PHRASES[activity]
        last = self._value(values, f"days_since_last_{activity}")
        if not _finite(last) or last >= NO_TOUCH_DAYS:
            return f"no {ACTIVITY_NOUNS[activity]} so far"
        window = self._window
        n = self._value(values, f"n_{activity}_{window}d")
        sentence = f"{phrase} {_ago(last)}"
        if _finite(n) and n > 1:
            sentence += f" ({int(n)} times in {window} days)"
        return sentence

    def _activity_level(self, values: Row) -> str:
        window = self._window
        n = self._value(values, f"n_touches_{window}d")
        if not _finite(n) or n == 0:
            last = self._value(values, "days_since_last_touch")
            if _finite(last) and last < NO_TOUCH_DAYS:
                return f"no touch in the last {window} days (the last {_ago(last)})"
            return "no touches so far"
        week = self._value(values, f"n_touches_{self.windows_days[0]}d")
        recent = f", {int(week):,} in the last {self.windows_days[0]} days" if _finite(week) and 0 < week < n else ""
        return f"{_count(n, 'touch', 'touches')} in the last {window} days{recent}"

    def _high_intent(self, values: Row) -> str:
        window = self.buying_group_window_days
        n = self._value(values, f"n_high_intent_{window}d")
        count = _count(n if _finite(n) else 0, "high-intent touch", "high-intent touches")
        return f"{count} (pricing, demo, trial, meeting) in {window} days"

    def _buying_group(self, values: Row) -> str:
        window = self.buying_group_window_days
        engaged = self._value(values, f"account_engaged_colleagues_{window}d")
        sql = self._value(values, "account_sql_colleagues")
        known = self._value(values, "account_known_colleagues")
        opportunities = self._value(values, "account_open_opportunities")
        high = self._value(values, f"account_colleague_high_intent_{window}d")
        if _finite(opportunities) and opportunities > 0:
            return f"{_count(opportunities, 'open opportunity', 'open opportunities')} with colleagues at the account"
        if _finite(sql) and sql > 0:
            return f"{_count(sql, 'colleague')} at the account already sales-qualified"
        if _finite(high) and high > 0:
            return f"colleagues made {_count(high, 'high-intent touch', 'high-intent touches')} in {window} days"
        if _finite(engaged) and engaged > 0:
            return f"{_count(engaged, 'colleague')} at the account active in the last {window} days"
        if _finite(known) and known > 0:
            return f"{_count(known, 'colleague')} known at the account, none active lately"
        return "no colleagues known at the account"

    def _lifecycle(self, values: Row) -> str:
        stage = self._value(values, "stage")
        days = self._value(values, "days_in_stage")
        name = STAGES[int(stage)] if _finite(stage) and 0 <= stage < len(STAGES) else "unknown"
        name = _STAGE_NAMES.get(name, name)
        if not _finite(days):
            return f"stage: {name}"
        return f"{name} {_for(days)}"


# Reason groups phrased by a method of their own (the rest: activity types and plain categories).
_DESCRIBERS: Mapping[str, Callable[[ReasonLabeler, Row], str]] = {
    "company_size": ReasonLabeler._company_size,
    "revenue": ReasonLabeler._revenue,
    "seniority": ReasonLabeler._seniority,
    "email_domain": ReasonLabeler._email_domain,
    "activity_level": ReasonLabeler._activity_level,
    "high_intent": ReasonLabeler._high_intent,
    "buying_group": ReasonLabeler._buying_group,
    "lead_age": ReasonLabeler._lead_age,
    "lifecycle": ReasonLabeler._lifecycle,
}
