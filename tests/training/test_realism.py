"""The simulated funnel makes a model work: fit and engagement both carry signal, nobody beats the oracle."""

from __future__ import annotations

import lightgbm as lgb
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from features.validation import validate_activities, validate_leads
from training.config import SimulationConfig
from training.dataset import TrainingSet, build_training_set
from training.evaluation import oracle_auc
from training.simulator import SimulatedFunnel, simulate


@pytest.fixture(scope="module")
def world() -> tuple[SimulatedFunnel, TrainingSet]:
    funnel = simulate(SimulationConfig(n_leads=8000, seed=11, oracle_max_rows=20_000))
    leads = validate_leads(funnel.leads)
    activities = validate_activities(funnel.activities, leads)
    return funnel, build_training_set(leads, activities, data_end=SimulationConfig().end_ts)


def _out_of_time_auc(frame: pd.DataFrame, columns: list[str], categorical: list[str]) -> float:
    cutoff = frame["as_of"].quantile(0.7)
    train, test = frame[frame["as_of"] < cutoff], frame[frame["as_of"] >= cutoff]
    model = lgb.LGBMClassifier(
        n_estimators=150,
        learning_rate=0.05,
        num_leaves=15,
        min_child_samples=50,
        subsample=0.8,
        subsample_freq=1,
        verbose=-1,
        n_jobs=2,
    )
    model.fit(train[columns], train["label"], categorical_feature=[c for c in categorical if c in columns])
    return float(roc_auc_score(test["label"], model.predict_proba(test[columns])[:, 1]))


def test_engagement_adds_clear_signal_to_fit_and_oracle_bounds_both(world: tuple[SimulatedFunnel, TrainingSet]) -> None:
    funnel, training_set = world
    frame = training_set.readiness
    builder = training_set.builder
    fit_only = _out_of_time_auc(frame, builder.fit_feature_names_, builder.categorical_features_)
    full = _out_of_time_auc(frame, builder.feature_names_, builder.categorical_features_)
    cutoff = frame["as_of"].quantile(0.7)
    oracle, covered = oracle_auc(frame[frame["as_of"] >= cutoff], funnel.oracle)
    assert covered > 1000
    assert 0.80 <= oracle <= 0.92, f"oracle AUC {oracle:.3f} outside the realistic band"
    assert fit_only > 0.55, f"fit features carry too little signal ({fit_only:.3f})"
    assert full > fit_only + 0.05, f"engagement adds too little: fit {fit_only:.3f} vs full {full:.3f}"
    assert full < oracle + 0.01, f"a model beat the oracle: {full:.3f} vs {oracle:.3f} (leakage?)"
