"""The out-of-time split: which rows train, validate and hold out, and which are purged because their label is late."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.models import TimeSplit, time_split

DAY = pd.Timedelta(days=1)
START = pd.Timestamp("2024-01-01", tz="UTC")


def days(*offsets: int) -> pd.Series:
    """Snapshot times `offsets` days after START, in the order given (masks follow row order)."""
    return pd.Series([START + offset * DAY for offset in offsets])


def rows(split: TimeSplit, times: pd.Series) -> dict[str, list[int]]:
    """The day offsets of the rows in each period, and of the rows in none (purged)."""
    offsets = [int((t - START) / DAY) for t in times]
    purged = ~(split.train | split.valid | split.holdout)
    return {
        name: [o for o, keep in zip(offsets, mask, strict=True) if keep]
        for name, mask in (("train", split.train), ("valid", split.valid), ("holdout", split.holdout),
                           ("purged", purged))
    }  # fmt: skip


# Ten daily snapshots, days 1-10. With a 20 % holdout and 30 % validation the cuts fall on rows: the holdout starts at
# the 80 % quantile (day 8), validation at the 50 % one (day 5), each taken as the lower of the two nearest rows.
TEN_DAYS = days(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)


def test_without_purge_the_rows_split_at_the_quantiles() -> None:
    split = time_split(TEN_DAYS, holdout_fraction=0.2, valid_fraction=0.3, purge=pd.Timedelta(0))
    assert (split.valid_start, split.holdout_start) == (START + 5 * DAY, START + 8 * DAY)
    assert rows(split, TEN_DAYS) == {"train": [1, 2, 3, 4], "valid": [5, 6, 7], "holdout": [8, 9, 10], "purged": []}


def test_rows_whose_label_window_reaches_the_next_period_are_purged() -> None:
    # A 2-day label window: day 4's label is observed until day 6, inside validation (from day 5), so day 4 cannot
    # train; day 7's until day 9, inside the holdout (from day 8), so day 7 cannot validate. Day 3's window ends
    # exactly at day 5 and day 6's exactly at day 8: a window is [as_of, as_of + purge), so neither reaches the next
    # period, and both are kept.
    split = time_split(TEN_DAYS, holdout_fraction=0.2, valid_fraction=0.3, purge=2 * DAY)
    assert rows(split, TEN_DAYS) == {"train": [1, 2, 3], "valid": [5, 6], "holdout": [8, 9, 10], "purged": [4, 7]}
    # The cuts stay where the times put them: purging drops rows, it does not move a period.
    assert (split.valid_start, split.holdout_start) == (START + 5 * DAY, START + 8 * DAY)


def test_a_label_window_ending_one_second_past_the_cut_is_purged() -> None:
    times = pd.Series([*TEN_DAYS[:2], START + 3 * DAY + pd.Timedelta(seconds=1), *TEN_DAYS[3:]])
    split = time_split(times, holdout_fraction=0.2, valid_fraction=0.3, purge=2 * DAY - pd.Timedelta(seconds=1))
    # Day 3 + 1 s plus a window of 2 days - 1 s ends exactly at day 5: kept. Day 4's ends 1 s before day 6, still
    # past day 5: purged. Day 6's ends 1 s before day 8: kept.
    assert rows(split, times)["purged"] == [4, 7]
    assert 3 in rows(split, times)["train"]
    split = time_split(times, holdout_fraction=0.2, valid_fraction=0.3, purge=2 * DAY)
    assert rows(split, times)["purged"] == [3, 4, 7]  # day 3 + 1 s: its window now ends 1 s into validation


def test_a_long_label_window_purges_more_and_the_holdout_keeps_every_row() -> None:
    split = time_split(TEN_DAYS, holdout_fraction=0.2, valid_fraction=0.3, purge=3 * DAY)
    assert rows(split, TEN_DAYS) == {"train": [1, 2], "valid": [5], "holdout": [8, 9, 10], "purged": [3, 4, 6, 7]}


def test_masks_follow_the_row_order_not_the_time_order() -> None:
    shuffled = days(9, 2, 7, 5, 10, 1, 4, 8, 3, 6)
    split = time_split(shuffled, holdout_fraction=0.2, valid_fraction=0.3, purge=2 * DAY)
    assert rows(split, shuffled) == {"train": [2, 1, 3], "valid": [5, 6], "holdout": [9, 10, 8], "purged": [7, 4]}


def test_rows_at_the_same_time_as_a_cut_all_go_to_the_later_period() -> None:
    # Many snapshots share a date (one grid date for every lead): the cut never splits a date between periods.
    # The 80 % quantile (the lower of rows 7 and 8 of 10, counting from 0) is day 4, the 50 % one (row 4) day 3.
    times = days(1, 1, 2, 2, 3, 3, 4, 4, 5, 5)
    split = time_split(times, holdout_fraction=0.2, valid_fraction=0.3, purge=pd.Timedelta(0))
    assert rows(split, times) == {"train": [1, 1, 2, 2], "valid": [3, 3], "holdout": [4, 4, 5, 5], "purged": []}


@pytest.mark.parametrize("purge", [pd.Timedelta(0), pd.Timedelta(seconds=1), DAY, 2 * DAY])
def test_no_row_is_in_two_periods(purge: pd.Timedelta) -> None:
    rng = np.random.default_rng(7)
    times = pd.Series(START + pd.to_timedelta(rng.integers(0, 30, size=200), unit="D"))
    split = time_split(times, holdout_fraction=0.2, valid_fraction=0.2, purge=purge)
    in_periods = split.train.astype(int) + split.valid.astype(int) + split.holdout.astype(int)
    assert in_periods.max() == 1
    # And every period lies on its side of the cuts.
    assert (times[split.train] < split.valid_start).all()
    assert (times[split.valid] >= split.valid_start).all() and (times[split.valid] < split.holdout_start).all()
    assert (times[split.holdout] >= split.holdout_start).all()


def test_a_period_left_empty_is_refused() -> None:
    with pytest.raises(ValueError, match="the train period is empty: too little history"):
        time_split(TEN_DAYS, holdout_fraction=0.2, valid_fraction=0.3, purge=5 * DAY)
    with pytest.raises(ValueError, match="the validation period is empty"):
        time_split(days(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), holdout_fraction=0.2, valid_fraction=0.1, purge=2 * DAY)


@pytest.mark.parametrize(("holdout", "valid"), [(0.0, 0.2), (0.2, 0.0), (0.6, 0.4), (1.0, 0.1)])
def test_fractions_must_leave_room_for_training(holdout: float, valid: float) -> None:
    with pytest.raises(ValueError, match="must be in \\(0, 1\\) and sum to less than 1"):
        time_split(TEN_DAYS, holdout_fraction=holdout, valid_fraction=valid, purge=DAY)
