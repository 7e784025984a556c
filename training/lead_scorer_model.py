"""MLflow pyfunc wrapper of the LeadScorer, logged as code so that loading it never imports the training package."""

# MLflow "models from code": this file is copied into the logged model and executed when the model is loaded, so it
# may import only what scoring needs (features, mlflow, pandas). `set_model` at the bottom is MLflow's required hook.

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Hashable, Mapping
from typing import Any

import joblib
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc.model import PythonModel, PythonModelContext

from features.builder import RequestLead
from features.engine import READINESS_STAGES
from features.scoring import LeadScore, LeadScorer

# Pyfunc input columns besides the lead's own contract columns.
AS_OF = "as_of"
ACTIVITIES = "activities"
COLLEAGUES = "colleagues"
OUTPUT_COLUMNS = [
    "lead_id", "fit_probability", "fit_score", "fit_grade",
    "readiness_probability", "readiness_score", "readiness_stage", "lifecycle_stage", "reasons",
]  # fmt: skip


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


def _request_lead(record: Mapping[Hashable, Any]) -> RequestLead:
    """One input row as the feature builder reads it: the lead's columns, its colleagues, its touches as columns."""
    lead = {str(k): _clean(v) for k, v in record.items() if k not in (AS_OF, ACTIVITIES, COLLEAGUES)}
    lead_id = str(lead.get("lead_id"))
    activities = _json_list(record.get(ACTIVITIES), ACTIVITIES, lead_id)
    colleagues = _json_list(record.get(COLLEAGUES), COLLEAGUES, lead_id)
    for i, colleague in enumerate(colleagues):
        if colleague.get("lead_id") is None:
            raise ValueError(f"lead {lead_id!r}: {COLLEAGUES}[{i}] has no lead_id")
    for i, activity in enumerate(activities):
        missing = [name for name in ("occurred_at", "activity_type") if activity.get(name) is None]
        if missing:
            raise ValueError(f"lead {lead_id!r}: {ACTIVITIES}[{i}] has no {' and no '.join(missing)}")
    return RequestLead(
        lead=lead,
        colleagues=colleagues,
        # No lead_id: the lead's own touch, as the service reads it. The builder refuses a stranger's touch.
        touch_lead_ids=[str(a.get("lead_id") or lead_id) for a in activities],
        touch_times=[a["occurred_at"] for a in activities],
        touch_types=[a["activity_type"] for a in activities],
        as_of=_as_of(record.get(AS_OF)),
        touch_properties=[a.get("properties") for a in activities],
    )


def _row(score: LeadScore) -> dict[str, Any]:
    # Readiness is the question of open leads, as in the service: for an opportunity, a won or a lost lead it is
    # left empty (NaN, null), and only the fit reasons are given.
    open_lead = score.lifecycle_stage in READINESS_STAGES
    reasons = (*score.fit_reasons, *score.behaviour_reasons, *score.context_reasons) if open_lead else score.fit_reasons
    return {
        "lead_id": score.lead_id,
        "fit_probability": score.fit_probability,
        "fit_score": score.fit_score,
        "fit_grade": score.fit_grade,
        "readiness_probability": score.readiness_probability if open_lead else math.nan,
        "readiness_score": score.readiness_score if open_lead else math.nan,
        "readiness_stage": score.readiness_stage if open_lead else None,
        "lifecycle_stage": score.lifecycle_stage,
        "reasons": json.dumps(
            [{"side": r.side, "group": r.group, "impact": r.impact, "label": r.label} for r in reasons]
        ),
    }


class LeadScorerModel(PythonModel):
    """Scores leads given as rows: contract columns, optional as_of, and JSON lists of activities and colleagues."""

    scorer: LeadScorer

    def load_context(self, context: PythonModelContext) -> None:
        """Load the pickled LeadScorer artifact."""
        self.scorer = joblib.load(context.artifacts["scorer"])

    def predict(self, context: PythonModelContext, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        """One output row per input lead, in order: probabilities, 0-100 scores, grade, stage and reasons (JSON)."""
        requests = [_request_lead(record) for record in model_input.to_dict(orient="records")]
        # All rows in one pass, as the service scores a batch: one engine pass and one call per booster, where a
        # lead at a time costs the engine's and LightGBM's fixed costs once per lead.
        return pd.DataFrame([_row(score) for score in self.scorer.score_requests(requests)], columns=OUTPUT_COLUMNS)


set_model(LeadScorerModel())
