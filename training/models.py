"""LightGBM boosters with early stopping on a time-based validation split, and calibration chosen out of time."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from features.scoring import Calibrator
from training.config import BoosterConfig

log = logging.getLogger(__name__)

# Early stopping gives up after this many rounds without a better validation log loss: long enough to ride out
# noise at a small learning rate, short enough not to waste minutes at 1 M leads.
EARLY_STOPPING_ROUNDS = 50
# Below this many positives an isotonic fit is a staircase of a few steps; sigmoid is the safer choice.
MIN_POSITIVES_FOR_ISOTONIC = 50


@dataclass(frozen=True, slots=True)
class TimeSplit:
    """Row masks of an out-of-time split: train, validation (early stopping, calibration), holdout (evaluation)."""

    train: np.ndarray
    valid: np.ndarray
    holdout: np.ndarray
    valid_start: pd.Timestamp
    holdout_start: pd.Timestamp


def time_split(times: pd.Series, *, holdout_fraction: float, valid_fraction: float, purge: pd.Timedelta) -> TimeSplit:
    """Split rows by time: the latest rows are the holdout, those before them validation, the rest training.

    Rows whose label window (time + purge) reaches into the next period are dropped from the earlier one, so no
    label of a training row was observed during validation or holdout.
    """
    if not 0 < holdout_fraction < 1 or not 0 < valid_fraction < 1 or holdout_fraction + valid_fraction >= 1:
        raise ValueError("holdout_fraction and valid_fraction must be in (0, 1) and sum to less than 1")
    values = pd.to_datetime(times, utc=True).to_numpy(dtype="datetime64[ns]").view(np.int64)
    hold = int(np.quantile(values, 1.0 - holdout_fraction, method="lower"))
    val = int(np.quantile(values, 1.0 - holdout_fraction - valid_fraction, method="lower"))
    gap = purge.value
    holdout_start, valid_start = pd.Timestamp(hold, tz="UTC"), pd.Timestamp(val, tz="UTC")
    holdout = values >= hold
    # `< cut` as well as `+ gap <= cut`: without a purge (fit examples) a row at the cut would be in both periods.
    valid = (values >= val) & (values < hold) & (values + gap <= hold)
    train = (values < val) & (values + gap <= val)
    for name, mask in (("train", train), ("validation", valid), ("holdout", holdout)):
        if not mask.any():
            raise ValueError(f"the {name} period is empty: too little history for an out-of-time split")
    return TimeSplit(train=train, valid=valid, holdout=holdout, valid_start=valid_start, holdout_start=holdout_start)


def train_booster(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    *,
    feature_names: list[str],
    categorical: list[str],
    config: BoosterConfig,
    monotone: Sequence[int] | None = None,
) -> lgb.Booster:
    """A binary LightGBM booster, stopped early on the validation log loss.

    `monotone` holds +1 (the score never falls as the feature grows), -1 (never rises) or 0 per feature, in order:
    users rightly distrust a model in which one more demo request makes a lead look less ready.
    """
    for name, y in (("training", y_train), ("validation", y_valid)):
        if len(np.unique(y)) < 2:
            raise ValueError(f"the {name} labels hold a single class: cannot train a classifier")
    cats = [c for c in categorical if c in feature_names]
    train = lgb.Dataset(
        x_train, label=y_train, feature_name=feature_names, categorical_feature=cats, free_raw_data=True
    )
    valid = lgb.Dataset(x_valid, label=y_valid, reference=train)
    params = config.params()
    if monotone is not None and any(monotone):
        if len(monotone) != len(feature_names):
            raise ValueError(f"{len(monotone)} monotone constraints for {len(feature_names)} features")
        params["monotone_constraints"] = list(monotone)
        params["monotone_constraints_method"] = "intermediate"
    booster = lgb.train(
        params,
        train,
        num_boost_round=config.max_rounds,
        valid_sets=[valid],
        valid_names=["valid"],
        callbacks=[lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)],
    )
    log.info("booster stopped at %d rounds (best validation log loss %.5f)", booster.best_iteration,
             booster.best_score["valid"]["binary_logloss"])  # fmt: skip
    # Keep only the best rounds, so that every later predict (and pred_contrib) uses them without extra arguments.
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))


def _fit_isotonic(raw: np.ndarray, y: np.ndarray) -> Calibrator:
    """Centred isotonic regression (Oron and Flournoy, 2017): the isotonic fit's flat steps joined at their middles.

    A plain isotonic fit is a staircase: every lead on a step gets the same probability, however differently the
    booster ranks them, so a lead whose colleague is already in a sales conversation can tie with the same lead alone.
    Joining the steps' middles keeps the fit monotone and as calibrated (each step's mean is kept at its middle) while
    the booster's order survives between them.
    """
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw, y)
    x = np.asarray(iso.X_thresholds_, dtype=np.float64)
    p = np.asarray(iso.y_thresholds_, dtype=np.float64)
    step = np.r_[0, np.cumsum(p[1:] != p[:-1])]  # which flat step each threshold belongs to
    counts = np.bincount(step)
    middles = np.bincount(step, weights=x) / counts
    levels = np.bincount(step, weights=p) / counts
    # The outermost steps keep their ends: scores beyond the data are clipped to the first and last level, as before.
    xs = np.r_[x[0], middles, x[-1]] if len(middles) > 1 else x
    ps = np.r_[levels[0], levels, levels[-1]] if len(middles) > 1 else p
    keep = np.r_[True, np.diff(xs) > 0]  # a step of one point: its middle is its end
    return Calibrator("isotonic", x_=tuple(float(v) for v in xs[keep]), y_=tuple(float(v) for v in ps[keep]))


def _fit_sigmoid(raw: np.ndarray, y: np.ndarray) -> Calibrator:
    platt = LogisticRegression(C=1e6).fit(raw.reshape(-1, 1), y)
    return Calibrator("sigmoid", a=float(platt.coef_[0, 0]), b=float(platt.intercept_[0]))


def fit_calibrator(raw: np.ndarray, y: np.ndarray, times: np.ndarray) -> tuple[Calibrator, dict[str, float]]:
    """Calibrate raw log-odds on validation rows, choosing isotonic or sigmoid out of time.

    Both are fitted on the earlier half of the validation period and compared by log loss on the later half; the
    winner is refitted on the whole period. Returns it with the two log losses (logged for the record).
    """
    order = np.argsort(times, kind="stable")
    first, second = order[: len(order) // 2], order[len(order) // 2 :]
    losses: dict[str, float] = {}
    if len(np.unique(y[first])) == 2 and len(np.unique(y[second])) == 2:
        for kind, fitter in (("isotonic", _fit_isotonic), ("sigmoid", _fit_sigmoid)):
            calibrator = fitter(raw[first], y[first])
            p = np.clip(calibrator.apply(raw[second]), 1e-6, 1 - 1e-6)
            losses[kind] = float(log_loss(y[second], p, labels=[0, 1]))
    enough = int(y.sum()) >= MIN_POSITIVES_FOR_ISOTONIC
    kind = "isotonic" if losses and enough and losses["isotonic"] < losses["sigmoid"] else "sigmoid"
    calibrator = _fit_isotonic(raw, y) if kind == "isotonic" else _fit_sigmoid(raw, y)
    log.info("calibration: %s (out-of-time log loss %s)", kind, {k: round(v, 5) for k, v in losses.items()})
    return calibrator, losses
