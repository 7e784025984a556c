"""MLflow pyfunc wrapper of the LeadScorer, logged as code so that loading it never imports the training package."""

# MLflow "models from code": this file is copied into the logged model and executed when the model is loaded, so it
# may import only what scoring needs (features, mlflow, pandas). `set_model` at the bottom is MLflow's required hook.

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import joblib
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc.model import PythonModel, PythonModelContext

from features.scoring import LeadScore, LeadScorer

# Pyfunc input columns besides the lead's own contract columns.
AS_OF = "as_of"
ACTIVITIES = "activities"
COLLEAGUES = "colleagues"


def _clean(value: Any) -> Any:
    """None for the NaN/NaT that a DataFrame puts in empty cells."""
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _json_list(value: Any, column: str, lead_id: str) -> list[dict[str, Any]]:
    value = _clean(value)
    if value is None or value == "":
        return []
    parsed = json.loads(value) if isinstance(value, str) else value
    if not isinstance(parsed, list) or not all(isinstance(item, dict) for item in parsed):
        raise ValueError(f"lead {lead_id!r}: column {column!r} must be a JSON list of objects")
    return parsed


def _as_of(value: Any) -> dt.datetime:
    value = _clean(value)
    if value is None:
        return dt.datetime.now(dt.UTC)
    stamp = pd.Timestamp(value)
    return (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")).to_pydatetime()


def _row(score: LeadScore) -> dict[str, Any]:
    return {
        "lead_id": score.lead_id,
        "fit_probability": score.fit_probability,
        "fit_score": score.fit_score,
        "fit_grade": score.fit_grade,
        "readiness_probability": score.readiness_probability,
        "readiness_score": score.readiness_score,
        "readiness_stage": score.readiness_stage,
        "reasons": json.dumps(
            [
                {"side": r.side, "group": r.group, "impact": r.impact, "label": r.label}
                for r in (*score.fit_reasons, *score.behaviour_reasons)
            ]
        ),
    }


class LeadScorerModel(PythonModel):
    """Scores leads given as rows: contract columns, optional as_of, and JSON lists of activities and colleagues."""

    scorer: LeadScorer

    def load_context(self, context: PythonModelContext) -> None:
        """Load the pickled LeadScorer artifact."""
        self.scorer = joblib.load(context.artifacts["scorer"])

    def predict(self, context: PythonModelContext, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        """One output row per input lead: probabilities, 0-100 scores, grade, stage and reasons (JSON)."""
        rows = []
        for record in model_input.to_dict(orient="records"):
            lead = {str(k): _clean(v) for k, v in record.items() if k not in (AS_OF, ACTIVITIES, COLLEAGUES)}
            lead_id = str(lead.get("lead_id"))
            activities = [
                {"lead_id": a.get("lead_id", lead_id), **a}
                for a in _json_list(record.get(ACTIVITIES), ACTIVITIES, lead_id)
            ]
            colleagues = _json_list(record.get(COLLEAGUES), COLLEAGUES, lead_id)
            score = self.scorer.score_record(lead, activities, _as_of(record.get(AS_OF)), colleagues)
            rows.append(_row(score))
        return pd.DataFrame(rows)


set_model(LeadScorerModel())
