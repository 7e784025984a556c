"""Splitting a flat CRM export into training, validation and holdout leads: out of time when it has an order."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.model_selection import train_test_split

from features.export import ExportError
from training.config import CRM_HOLDOUT_FRACTION as HOLDOUT_FRACTION
from training.crm_load import CrmExport

log = logging.getLogger(__name__)

SplitKind = Literal["time", "random"]

VALID_FRACTION = 0.2
# Training, validation and holdout: an out-of-time split gives each part at least one whole date (or order value).
N_PARTS = 3


@dataclass(frozen=True, slots=True)
class ExportSplit:
    """Row positions of training, validation and holdout leads, and each row's position in time (for calibration).

    An out-of-time split (kind "time") follows the date column, cut at whole days (`holdout_start` is the first
    holdout day, midnight UTC), or the order column, cut at whole values (`holdout_start_order` is the lowest holdout
    value): one day, or one order value, never lands in two parts.
    """

    kind: SplitKind
    train: NDArray[np.intp]
    valid: NDArray[np.intp]
    holdout: NDArray[np.intp]
    times: NDArray[np.int64]
    holdout_start: pd.Timestamp | None
    order_column: str | None = None
    holdout_start_order: int | None = None

    @property
    def note(self) -> str:
        """What the split means for the holdout figures."""
        if self.kind == "time" and self.order_column is not None:
            return (
                f"out-of-time split by order column {self.order_column!r}: the holdout is the latest "
                f"{len(self.holdout):,} leads by that column, from value {self.holdout_start_order}"
            )
        if self.kind == "time":
            start = "" if self.holdout_start is None else f", from {self.holdout_start:%Y-%m-%d} (UTC)"
            return f"out-of-time split at whole days: the holdout is the latest {len(self.holdout):,} leads{start}"
        return (
            f"random stratified split ({len(self.holdout):,} holdout leads): the export has no date column, so the "
            "holdout is drawn from the same period as training; for a business whose leads change over time this is "
            "optimistic. Add a date_column (or an order_column) to the mapping for an out-of-time holdout."
        )


def _ranks(keys: NDArray[np.generic]) -> NDArray[np.int64]:
    """Each row's position in time (ties in file order): the calibrator's earlier and later halves follow it."""
    order = np.argsort(keys, kind="stable")
    times = np.empty(len(keys), dtype=np.int64)
    times[order] = np.arange(len(keys))
    return times


def _cut_whole_values(
    keys: NDArray[np.int64], holdout_fraction: float, valid_fraction: float, *, what: str, key: str, unit: str,
    label: Callable[[int], str],
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]:  # fmt: skip
    """Training, validation and holdout positions, cut between distinct key values (days, order values).

    The holdout is the latest values whose lead count is closest to `holdout_fraction` of the leads; validation, the
    latest remaining values closest to `valid_fraction` of the rest (ties go to the larger part). Each part keeps at
    least one value, so an export needs `N_PARTS` distinct values.
    """
    values, counts = np.unique(keys, return_counts=True)
    if len(values) < N_PARTS:
        seen = ", ".join(f"{label(int(v))} ({c:,} leads)" for v, c in zip(values, counts, strict=True))
        found = f"every lead has the same {unit}" if len(values) == 1 else f"the leads have only {len(values)} {unit}s"
        raise ExportError(
            f"{what}: {found}: {seen}; an out-of-time split needs leads of at least {N_PARTS} different {unit}s "
            f"(training, validation, holdout), as it never puts one {unit} in two parts. Use an export that spans "
            f"more of them, or remove {key} from the mapping for a random split"
        )
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])
    before = np.concatenate(([0], cumulative[:-1]))  # leads before each value
    starts = np.arange(2, len(values))  # the holdout leaves a value at least to training and to validation
    first_holdout = int(starts[np.argmin(np.abs((n - before[starts]) - n * holdout_fraction))])
    rest = int(before[first_holdout])
    starts = np.arange(1, first_holdout)
    first_valid = int(starts[np.argmin(np.abs((rest - before[starts]) - rest * valid_fraction))])
    holdout = np.flatnonzero(keys >= values[first_holdout])
    valid = np.flatnonzero((keys >= values[first_valid]) & (keys < values[first_holdout]))
    train = np.flatnonzero(keys < values[first_valid])
    log.info(
        "%s: cut at whole %ss: %d training, %d validation leads, and %d holdout leads (%.1f%%, asked %.1f%%) from %s",
        what, unit, len(train), len(valid), len(holdout), 100 * len(holdout) / n, 100 * holdout_fraction,
        label(int(values[first_holdout])),
    )  # fmt: skip
    return train, valid, holdout


def _day_label(day: int) -> str:
    return str(np.datetime64(day, "D"))


def split_export(
    export: CrmExport, *, holdout_fraction: float = HOLDOUT_FRACTION, valid_fraction: float = VALID_FRACTION,
    seed: int = 0,
) -> ExportSplit:  # fmt: skip
    """Latest leads as holdout when the export has dates (or an order column), else a seeded stratified random split.

    Validation is the latest `valid_fraction` of the remaining leads in time, or a stratified share of them. In time,
    the cuts fall between whole days (or order values), as close to the fractions as those allow; an ExportError
    when the leads span fewer than three.
    """
    if not 0 < holdout_fraction < 1 or not 0 < valid_fraction < 1:
        raise ValueError(f"holdout_fraction and valid_fraction must lie in (0, 1); got {holdout_fraction}, "
                         f"{valid_fraction}")  # fmt: skip
    n = len(export.y)
    if export.dates is not None:
        dates = export.dates if export.dates.dt.tz is None else export.dates.dt.tz_convert(None)
        stamps = dates.to_numpy()
        days = stamps.astype("datetime64[D]").astype(np.int64)
        train, valid, holdout = _cut_whole_values(
            days, holdout_fraction, valid_fraction, what=f"date column {export.dates.name!r}", key="date_column",
            unit="day", label=_day_label,
        )  # fmt: skip
        start = pd.Timestamp(np.datetime64(int(days[holdout].min()), "D"), tz="UTC")
        return ExportSplit("time", train, valid, holdout, _ranks(stamps), start)
    if export.order is not None:
        values = export.order.to_numpy(dtype=np.int64)
        name = str(export.order.name)
        train, valid, holdout = _cut_whole_values(
            values, holdout_fraction, valid_fraction, what=f"order column {name!r}", key="order_column", unit="value",
            label=str,
        )  # fmt: skip
        first = int(values[holdout].min())
        return ExportSplit("time", train, valid, holdout, _ranks(values), None, order_column=name,
                           holdout_start_order=first)  # fmt: skip
    positions = np.arange(n)
    rest, holdout = train_test_split(positions, test_size=holdout_fraction, stratify=export.y, random_state=seed)
    train, valid = train_test_split(rest, test_size=valid_fraction, stratify=export.y[rest], random_state=seed)
    # Row order stands in for time: with no dates, the calibrator's "earlier" and "later" halves are file order.
    return ExportSplit("random", np.sort(train), np.sort(valid), np.sort(holdout), positions.astype(np.int64), None)
