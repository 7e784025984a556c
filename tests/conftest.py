"""Shared fixtures: one small simulated funnel and one model trained on it (no MLflow), reused by many tests."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pytest

from features.validation import validate_activities, validate_leads
from training.config import SimulationConfig, TrainConfig
from training.dataset import TrainingSet, build_training_set
from training.pipeline import TrainResult, train_models
from training.simulator import SimulatedFunnel, simulate

# Big enough that the fit model sees a few dozen wins, small enough to train in seconds.
SMALL_FUNNEL_LEADS = 6000


@dataclass(frozen=True)
class Trained:
    """A simulated funnel, its validated tables, the training set and the trained result."""

    funnel: SimulatedFunnel
    leads: pd.DataFrame
    activities: pd.DataFrame
    training_set: TrainingSet
    result: TrainResult


@pytest.fixture(scope="session")
def trained() -> Trained:
    config = SimulationConfig(n_leads=SMALL_FUNNEL_LEADS, seed=5, oracle_max_rows=20_000)
    funnel = simulate(config)
    leads = validate_leads(funnel.leads)
    activities = validate_activities(funnel.activities, leads)
    training_set = build_training_set(leads, activities, data_end=config.end_ts)
    result = train_models(training_set, leads, TrainConfig(), shap_rows=500)
    return Trained(funnel, leads, activities, training_set, result)
