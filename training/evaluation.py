"""Evaluation helpers: how close a scorer comes to the best achievable ranking."""

from __future__ import annotations

import pandas as pd
from sklearn.metrics import roc_auc_score

ORACLE_KEYS = ["lead_id", "as_of"]


def join_oracle(examples: pd.DataFrame, oracle: pd.DataFrame) -> pd.DataFrame:
    """The labelled examples the simulator's oracle covers, with its true probability `p_ready`."""
    return examples.merge(oracle[[*ORACLE_KEYS, "p_ready"]], on=ORACLE_KEYS, how="inner")


def oracle_auc(examples: pd.DataFrame, oracle: pd.DataFrame) -> tuple[float, int]:
    """ROC AUC of the simulator's true probabilities on the labelled examples it covers, and how many it covers.

    This is the best AUC any scorer can reach on those examples: it knows the latent state a scorer can only infer.
    """
    joined = join_oracle(examples[[*ORACLE_KEYS, "label"]], oracle)
    if joined["label"].nunique() < 2:
        return float("nan"), len(joined)
    return float(roc_auc_score(joined["label"], joined["p_ready"])), len(joined)
