"""The judgement suite's judge: the session's trained model behind the service's real scoring path."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import pytest

from serving.model import LoadedModel
from serving.policy import RoutingPolicy
from serving.schemas import ScoreRequest
from serving.service import score_requests
from serving.store import PolicyVersion
from tests.conftest import Trained


@dataclass(frozen=True)
class Judge:
    """Scores request bodies as POST /v1/score does and hands back the answers as the CRM reads them."""

    model: LoadedModel
    policy: PolicyVersion

    def answers(self, *bodies: dict[str, Any]) -> list[dict[str, Any]]:
        """The parsed JSON answer for each body (sent through JSON first, as a CRM would)."""
        requests = [ScoreRequest.model_validate(json.loads(json.dumps(body))) for body in bodies]
        ids = [f"judgement-{i}" for i in range(len(requests))]
        scored = score_requests(self.model, self.policy, requests, top_k=3, request_ids=ids)
        return [json.loads(s.response) for s in scored]

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        """The parsed answer for one body."""
        [only] = self.answers(body)
        return only


@pytest.fixture(scope="session")
def judge(trained: Trained) -> Judge:
    """The session's model with its own default routing policy, as a freshly promoted model would serve."""
    scorer = trained.result.scorer
    now = dt.datetime.now(dt.UTC)
    model = LoadedModel(scorer, name="lead-scorer", alias="champion", version="judgement", run_id=None, trained_at=now)
    policy = PolicyVersion(
        version=1,
        created_at=now,
        author="judgement suite",
        reason="the model's own cut-offs",
        policy=RoutingPolicy.from_cutoffs(scorer.cutoffs),
    )
    return Judge(model, policy)
