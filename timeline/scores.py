"""Each stored lead's current score and its score history."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ScoreState:
    """What a lead's score says, as stored in lead_scores: what webhooks compare before and after a rescore."""

    fit_score: float
    grade: str
    readiness_probability: float | None
    readiness_score: float | None
    stage: str | None
    queue: str
    model_version: str
    thresholds_version: int
    response: dict[str, Any]  # the whole answer, as POST /v1/score gives it
