"""The directions the domain fixes for readiness features, declared once: training enforces them, tests prove them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from features.engine import OPT_OUT_TYPES, FeatureConfig
from features.spec import ACTIVITY_TYPES

RAISES = 1
LOWERS = -1


@dataclass(frozen=True, slots=True)
class Direction:
    """How readiness may move as a feature grows (RAISES: never falls; LOWERS: never rises), and the domain's why."""

    sign: int
    why: str


def readiness_directions(config: FeatureConfig) -> Mapping[str, Direction]:
    """Every readiness feature whose direction the domain fixes, by name.

    Together they make two promises a salesperson relies on: one more engaging touch (a demo request, a pricing-page
    view, a webinar) by the lead or a colleague never lowers readiness, and an unsubscribe never raises it. Every
    feature a touch moves is listed here, so the promise holds for the model as a whole, not feature by feature:
    "days since" features of a touch that never happened hold NO_TOUCH_DAYS (long ago), and touch counts leave
    opt-outs out.
    """
    engaging = [t for t in ACTIVITY_TYPES if t not in OPT_OUT_TYPES]
    group = config.buying_group_window_days
    out: dict[str, Direction] = {}
    for w in config.windows_days:
        for t in engaging:
            out[f"n_{t}_{w}d"] = Direction(RAISES, "one more engaging touch never makes a lead less ready")
        out[f"n_touches_{w}d"] = Direction(RAISES, "one more engaging touch never makes a lead less ready")
        for t in OPT_OUT_TYPES:
            out[f"n_{t}_{w}d"] = Direction(LOWERS, "opting out never makes a lead more ready")
    for t in engaging:
        out[f"days_since_last_{t}"] = Direction(LOWERS, "the longer ago the touch, the colder the lead")
    for t in OPT_OUT_TYPES:
        out[f"days_since_last_{t}"] = Direction(RAISES, "an opt-out long ago weighs less than one yesterday")
    out["days_since_last_touch"] = Direction(LOWERS, "a lead gone quiet is colder")
    out["n_touches_total"] = Direction(RAISES, "one more engaging touch never makes a lead less ready")
    out["engagement_decayed"] = Direction(RAISES, "weighted recent engagement (opt-outs weigh negative)")
    out["engagement_recent"] = Direction(RAISES, "weighted engagement of the last few days (opt-outs negative)")
    out[f"n_high_intent_{config.recent_days}d"] = Direction(RAISES, "a demo, trial, pricing view or meeting")
    out[f"n_high_intent_{group}d"] = Direction(RAISES, "a demo, trial, pricing view or meeting")
    out["unsubscribed"] = Direction(LOWERS, "a person who opted out is less likely to buy now")
    out[f"account_engaged_colleagues_{group}d"] = Direction(RAISES, "buying groups buy together")
    out[f"account_colleague_touches_{group}d"] = Direction(RAISES, "buying groups buy together")
    out[f"account_colleague_high_intent_{group}d"] = Direction(RAISES, "a colleague's demo request is the account's")
    out[f"account_touches_per_colleague_{group}d"] = Direction(RAISES, "buying groups buy together")
    out[f"account_colleague_touches_{config.windows_days[0]}d"] = Direction(RAISES, "buying groups buy together")
    out["days_since_colleague_touch"] = Direction(LOWERS, "an account gone quiet is colder")
    out["account_sql_colleagues"] = Direction(RAISES, "a colleague already qualified means a live project")
    out["account_open_opportunities"] = Direction(RAISES, "an open opportunity at the account means a live project")
    return out


def monotone_constraints(feature_names: list[str], config: FeatureConfig) -> list[int]:
    """LightGBM's monotone_constraints for a feature list: +1, -1 or 0 (free) per feature, in order."""
    directions = readiness_directions(config)
    return [directions[name].sign if name in directions else 0 for name in feature_names]
