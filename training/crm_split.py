"""Splitting a flat CRM export into training, validation and holdout leads: out of time when it has an order."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.model_selection import train_test_split

from training.config import CRM_HOLDOUT_FRACTION as HOLDOUT_FRACTION
from training.crm_load import CrmExport

SplitKind = Literal["time", "random"]

VALID_FRACTION = 0.2


@dataclass(frozen=True, slots=True)
class ExportSplit:
    """Row positions of training, validation and holdout leads, and each row's position in time (for calibration)."""

    kind: SplitKind
    train: NDArray[np.intp]
    valid: NDArray[np.intp]
    holdout: NDArray[np.intp]
    times: NDArray[np.int64]
    holdout_start: pd.Timestamp | None

    @property
    def note(self) -> str:
        """What the split means for the holdout figures."""
        if self.kind == "time":
            return (
                f"out-of-time split: the holdout is the latest {len(self.holdout):,} leads, from {self.holdout_start}"
            )
        return (
            f"random stratified split ({len(self.holdout):,} holdout leads): the export has no date column, so the "
            "holdout is drawn from the same period as training; for a business whose leads change over time this is "
            "optimistic. Add a date_column to the mapping for an out-of-time holdout."
        )


def split_export(
    export: CrmExport, *, holdout_fraction: float = HOLDOUT_FRACTION, valid_fraction: float = VALID_FRACTION,
    seed: int = 0,
) -> ExportSplit:  # fmt: skip
    """Latest leads as holdout when the export has dates, else a seeded stratified random split.

    Validation is the latest `valid_fraction` of the remaining leads in time, or a stratified share of them.
    """
    if not 0 < holdout_fraction < 1 or not 0 < valid_fraction < 1:
        raise ValueError(f"holdout_fraction and valid_fraction must lie in (0, 1); got {holdout_fraction}, "
                         f"{valid_fraction}")  # fmt: skip
    n = len(export.y)
    if export.dates is not None:
        order = np.argsort(export.dates.to_numpy(dtype="datetime64[ns]"), kind="stable")
        times = np.empty(n, dtype=np.int64)
        times[order] = np.arange(n)
        n_holdout = math.ceil(n * holdout_fraction)
        rest, holdout = order[: n - n_holdout], order[n - n_holdout :]
        n_valid = math.ceil(len(rest) * valid_fraction)
        train, valid = rest[: len(rest) - n_valid], rest[len(rest) - n_valid :]
        start = pd.Timestamp(export.dates.iloc[int(holdout[0])])
        return ExportSplit("time", np.sort(train), np.sort(valid), np.sort(holdout), times, start)
    positions = np.arange(n)
    rest, holdout = train_test_split(positions, test_size=holdout_fraction, stratify=export.y, random_state=seed)
    train, valid = train_test_split(rest, test_size=valid_fraction, stratify=export.y[rest], random_state=seed)
    # Row order stands in for time: with no dates, the calibrator's "earlier" and "later" halves are file order.
    return ExportSplit("random", np.sort(train), np.sort(valid), np.sort(holdout), positions.astype(np.int64), None)
