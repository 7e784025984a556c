"""Touches that look automated (bots, link scanners, runaway integrations), left out before any feature is built."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

SECONDS_PER_DAY = 86_400
# Property keys a CRM or tracker uses to mark a touch as a bot's, compared without case, spaces, '_' or '-':
# `bot`, `is_bot` / `isBot` / `IS_BOT`, and Marketo's "Is Bot Activity" (on e-mail opens and clicks it logs when bot
# activity is kept rather than filtered).
BOT_PROPERTY_KEYS: frozenset[str] = frozenset({"bot", "isbot", "isbotactivity"})
# Values of such a key that mean "yes, a bot": JSON true, 1, or the text true/yes/1 (exports often stringify booleans).
_TRUE_TEXT = frozenset({"true", "yes", "1"})
_KEY_NOISE = re.compile(r"[\s_\-]+")


@dataclass(frozen=True, slots=True)
class BotLimits:
    """Where a lead's own touches stop looking human; what lies beyond is left out of its features.

    Every rule looks only at the lead's touches at or before the touch it judges, never at later ones, so a feature
    as of any moment reads the same touches whether or not later history is known (point in time).
    """

    # A burst: more than `burst_touches` touches of one type by one lead within `burst_seconds`. A person clicking
    # through a site or re-sending a form does a handful a minute (simulated people: at most 3); link scanners that
    # follow every link of an e-mail, crawlers and retrying integrations do dozens. The first `burst_touches` of a
    # burst are kept (when they happened nothing told them from a person's), every touch beyond the limit is left out.
    burst_touches: int = 10
    burst_seconds: int = 60
    # After a burst, the lead's touches of that type are not trusted for `burst_memory_seconds` (a week): bots come
    # back on a schedule (crawlers, uptime monitors, the link scanner that opens every newsletter), and the first
    # `burst_touches` of every return would otherwise add up to what reads as a very engaged lead. Touches of other
    # types still count: a scanner's clicks do not silence the person's own demo request.
    burst_memory_seconds: int = 7 * SECONDS_PER_DAY
    # A day: more than `daily_touches` touches by one lead in one calendar day (UTC), counting those the burst rule
    # kept. No person visits 150 pages and opens 150 e-mails a day; a bot that paces itself below the burst limit does.
    # Touches past the limit that day are left out (earlier ones are kept).
    daily_touches: int = 150

    def __post_init__(self) -> None:
        for name in ("burst_touches", "burst_seconds", "burst_memory_seconds", "daily_touches"):
            if getattr(self, name) < 1:
                raise ValueError(f"BotLimits.{name} must be at least 1, got {getattr(self, name)}")


DEFAULT_BOT_LIMITS = BotLimits()


def _true(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value == 1
    return isinstance(value, str) and value.strip().lower() in _TRUE_TEXT


def is_bot_marked(properties: Mapping[str, object] | None) -> bool:
    """Whether a touch's properties mark it as a bot's (a key of BOT_PROPERTY_KEYS set to a true value)."""
    if not properties:
        return False
    return any(_KEY_NOISE.sub("", str(key)).lower() in BOT_PROPERTY_KEYS and _true(v) for key, v in properties.items())


def touch_is_bot(properties: object) -> bool:
    """`is_bot_marked` of one touch's properties, given as a mapping, as JSON text, or null."""
    if isinstance(properties, str):
        return "bot" in properties.lower() and _json_marked(properties)
    return isinstance(properties, Mapping) and is_bot_marked(properties)


def touches_are_bots(properties: Sequence[object]) -> np.ndarray:
    """`touch_is_bot` of many touches' properties, one bool each (all False when none has properties)."""
    out = np.zeros(len(properties), dtype=np.bool_)
    for i, value in enumerate(properties):
        if value is not None and touch_is_bot(value):
            out[i] = True
    return out


def bot_marked_column(properties: pd.Series) -> np.ndarray:
    """`touch_is_bot` of a `properties` column of JSON text (or null), one bool per row.

    Each distinct text is read once, and parsed only if it mentions "bot" at all: exports repeat a few property
    sets (pages, campaigns) millions of times, and almost none of them speak of bots.
    """
    codes, uniques = pd.factorize(properties, use_na_sentinel=True)
    verdicts = np.array([touch_is_bot(v) for v in uniques] + [False], dtype=np.bool_)
    return verdicts[codes]  # code -1 (null) reads the trailing False


def _json_marked(text: str) -> bool:
    try:
        parsed = json.loads(text)
    except ValueError:
        return False  # not JSON: details we cannot read say nothing about bots
    return isinstance(parsed, dict) and is_bot_marked(parsed)


def _rank_in_group(group: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of a sorted array."""
    n = group.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    return np.arange(n, dtype=np.int64) - np.repeat(starts, np.diff(np.r_[starts, n]))


def keep_touches(
    lead: np.ndarray,
    seconds: np.ndarray,
    types: np.ndarray,
    flagged: np.ndarray,
    limits: BotLimits = DEFAULT_BOT_LIMITS,
) -> np.ndarray:
    """Which touches to keep (bool, in input order): not marked as a bot's, not beyond a burst or a day's limit.

    `lead` holds a code per person (touches of different codes never count together), `seconds` epoch seconds,
    `types` activity type codes and `flagged` the bot marks of the touches' properties. A marked touch is left out
    and counts towards no limit. The decision for a touch depends only on the same person's touches at or before
    its second, and not on the order the touches are given in.
    """
    lead = np.asarray(lead, dtype=np.int64)
    seconds = np.asarray(seconds, dtype=np.int64)
    types = np.asarray(types, dtype=np.int64)
    keep = ~np.asarray(flagged, dtype=np.bool_)
    candidates = np.flatnonzero(keep)
    if candidates.size == 0:
        return keep
    c_lead, c_sec, c_type = lead[candidates], seconds[candidates], types[candidates]

    # Bursts: per (person, type), in time order, count the touches in (t - burst_seconds, t]: beyond the limit, the
    # touch trips the rule. Out: every touch with a trip of its person and type in [t - burst_memory_seconds, t].
    order = np.lexsort((c_sec, c_type, c_lead))
    s_lead, s_type, s_sec = c_lead[order], c_type[order], c_sec[order]
    new_group = np.r_[True, (s_lead[1:] != s_lead[:-1]) | (s_type[1:] != s_type[:-1])]
    group = np.cumsum(new_group) - 1  # dense: fewer groups than touches, so (group << 32) | seconds fits int64
    key = (group << 32) | s_sec
    window_start = (group << 32) | np.maximum(s_sec - (limits.burst_seconds - 1), 0)
    # Touches of the same second all count for each other: none of them is later than another.
    last = np.searchsorted(key, key, side="right") - 1  # the last touch of the same second
    in_window = last + 1 - np.searchsorted(key, window_start, side="left")
    trip_key = np.maximum.accumulate(np.where(in_window > limits.burst_touches, key, -1))[last]
    memory_start = (group << 32) | np.maximum(s_sec - limits.burst_memory_seconds, 0)
    burst_ok = np.empty(candidates.size, dtype=np.bool_)
    burst_ok[order] = trip_key < memory_start

    # Days: per (person, UTC day), in time order, what the burst rule kept; past the day's limit, out. Touches of one
    # second are ranked by type code, so the result does not depend on the order they were given in.
    kept = np.flatnonzero(burst_ok)
    k_lead, k_sec, k_type = c_lead[kept], c_sec[kept], c_type[kept]
    k_day = k_sec // SECONDS_PER_DAY
    day_order = np.lexsort((k_type, k_sec, k_day, k_lead))
    d_lead, d_day = k_lead[day_order], k_day[day_order]
    day_group = np.cumsum(np.r_[True, (d_lead[1:] != d_lead[:-1]) | (d_day[1:] != d_day[:-1])])
    day_ok = np.empty(kept.size, dtype=np.bool_)
    day_ok[day_order] = _rank_in_group(day_group) < limits.daily_touches

    keep[candidates] = False
    keep[candidates[kept[day_ok]]] = True
    return keep
