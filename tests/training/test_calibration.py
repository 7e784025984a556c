"""Calibration: probabilities that mean what they say, and keep the booster's order of the leads."""

from __future__ import annotations

import numpy as np

from features.scoring import PROBABILITY_FLOOR
from training.models import _fit_isotonic


def _data(n: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(1.5 * raw - 4)))).astype(np.int64)  # rare positives, as readiness has
    return raw, y


def test_isotonic_calibration_keeps_the_boosters_order_between_its_steps() -> None:
    raw, y = _data()
    calibrator = _fit_isotonic(raw, y)
    p = calibrator.apply(raw)
    # Between the outermost steps' middles, and above the floor that keeps a probability from claiming certainty.
    inside = (raw > calibrator.x_[1]) & (raw < calibrator.x_[-2]) & (p > PROBABILITY_FLOOR)
    # A plain isotonic fit is a staircase of a few dozen levels; joined at the steps' middles, leads the booster
    # ranks apart stay apart, and none is ranked backwards.
    assert len(np.unique(p[inside])) == len(np.unique(raw[inside]))
    order = np.argsort(raw)
    assert (np.diff(p[order]) >= 0).all()


def test_isotonic_calibration_stays_calibrated() -> None:
    raw, y = _data()
    p = _fit_isotonic(raw, y).apply(raw)
    assert abs(p.mean() - y.mean()) < 0.002
    deciles = np.quantile(p, np.linspace(0, 1, 11))[1:-1]
    bins = np.digitize(p, deciles)
    gaps = [abs(p[bins == b].mean() - y[bins == b].mean()) for b in range(10)]
    assert max(gaps) < 0.01, gaps
