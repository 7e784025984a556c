"""Benchmark: sales judgement of a freshly trained model (closed leads, directions, bots, reasons, buying group)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, cast

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from features.scoring import LeadScorer
from serving.model import LoadedModel
from serving.policy import RoutingPolicy
from serving.schemas import ScoreRequest
from serving.service import request_lead, to_response
from serving.store import PolicyVersion
from training.config import SimulationConfig, TrainConfig
from training.data import load_tables, read_table
from training.dataset import build_training_set
from training.evaluation import join_oracle
from training.pipeline import BASELINES, TrainResult, train_models
from training.simulator import write_simulation

log = logging.getLogger("benchmarks.judgement")
app = typer.Typer(add_completion=False)
DEFAULT_OUT = Path("benchmarks/out")
# A first behaviour reason that names one of these touches tells a rep what to open the call with.
CONCRETE_GROUPS: tuple[str, ...] = ("demo_request", "free_trial_signup", "pricing_page_view", "meeting_booked")
AS_OF = "2025-06-03T09:00:00Z"
# README's example lead: an MQL director at a software company with a demo request two days before as_of.
README_LEAD: dict[str, Any] = {
    "lead": {"lead_id": "L-1042", "account_id": "ACME", "created_at": "2025-05-02T09:15:00Z", "industry": "Software",
             "employee_count": 850, "seniority": "director", "department": "it", "email_domain": "acme.com",
             "mql_at": "2025-05-20T10:00:00Z"},
    "activities": [{"occurred_at": "2025-06-01T08:30:00Z", "activity_type": "demo_request"},
                   {"occurred_at": "2025-05-28T14:02:00Z", "activity_type": "pricing_page_view"},
                   {"occurred_at": "2025-05-30T16:45:00Z", "activity_type": "webinar_attended", "lead_id": "L-1043"}],
    "colleagues": [{"lead_id": "L-1043", "account_id": "ACME", "created_at": "2025-05-25T11:00:00Z"}],
    "as_of": AS_OF,
}  # fmt: skip
COLD_LEAD: dict[str, Any] = {
    "lead": {"lead_id": "L-7", "created_at": "2025-03-02T09:15:00Z", "industry": "retail", "employee_count": 40,
             "seniority": "manager", "email_domain": "shop.example"},
    "activities": [{"occurred_at": "2025-04-01T08:30:00Z", "activity_type": "email_open"}],
    "as_of": AS_OF,
}  # fmt: skip


def _variant(base: dict[str, Any], *, lead: dict[str, Any] | None = None, add: list[dict[str, Any]] | None = None,
             drop: str | None = None) -> dict[str, Any]:  # fmt: skip
    """A copy of a request with lead fields changed, touches added, or touches of one type removed."""
    out = {**base, "lead": {**base["lead"], **(lead or {})}}
    touches = [a for a in base.get("activities", []) if a["activity_type"] != drop]
    out["activities"] = touches + (add or [])
    return out


def _bot(base: dict[str, Any]) -> dict[str, Any]:
    """2,000 page views: 1,350 in bursts months before as_of, 650 in the last 30 days, dozens a minute."""
    at = dt.datetime.fromisoformat(AS_OF.replace("Z", "+00:00"))
    times = [at - dt.timedelta(days=120, seconds=2 * i) for i in range(1350)]
    times += [at - dt.timedelta(days=3, seconds=3 * i) for i in range(650)]
    touches = [{"occurred_at": t.isoformat(), "activity_type": "page_view"} for t in times]
    return _variant(base, add=touches)


def _answer(scorer: LeadScorer, policy: RoutingPolicy, body: dict[str, Any]) -> dict[str, Any]:
    """The service's answer to one request, through the service's own scoring and routing code."""
    request = ScoreRequest.model_validate(body)
    now = dt.datetime.now(dt.UTC)
    [score] = scorer.score_requests([request_lead(request, now)], top_k=3)
    version = PolicyVersion(version=1, created_at=now, author="benchmark", reason="", policy=policy)
    model = cast(LoadedModel, SimpleNamespace(version="benchmark", scorer=scorer))
    scored = to_response(score, request.lead, version, model, "r", now)
    return cast(dict[str, Any], json.loads(scored.response))


def _summary(answer: dict[str, Any]) -> str:
    readiness = answer.get("readiness")
    ready = "null" if readiness is None else f"{readiness['probability']:.4f} {readiness['stage']}"
    route = answer["route"]
    first = answer["reasons"]["behaviour"][:1]
    reason = f'"{first[0]["label"]}"' if first else "-"
    return f"readiness {ready}; {route['queue']} p{route['priority']}; first reason {reason}"


def _readiness(answer: dict[str, Any]) -> float:
    readiness = answer.get("readiness")
    return math.nan if readiness is None else float(readiness["probability"])


def cases(scorer: LeadScorer) -> list[tuple[str, str]]:
    """The issue's hand-checked leads, each answered as the service answers it."""
    policy = RoutingPolicy.from_cutoffs(scorer.cutoffs)
    rows: list[tuple[str, str]] = []
    won = _variant(README_LEAD, lead={"sql_at": "2025-05-22T10:00:00Z", "won_at": "2025-06-01T10:00:00Z"})
    rows.append(("won customer (README lead + sql_at, won_at)", _summary(_answer(scorer, policy, won))))
    lost = _variant(README_LEAD, lead={"sql_at": "2025-05-22T10:00:00Z", "lost_at": "2025-06-01T10:00:00Z"})
    rows.append(("lost opportunity", _summary(_answer(scorer, policy, lost))))
    unsub = {"occurred_at": "2025-06-02T09:00:00Z", "activity_type": "unsubscribe"}
    cold, cold_unsub = (_answer(scorer, policy, b) for b in (COLD_LEAD, _variant(COLD_LEAD, add=[unsub])))
    rows.append(("cold lead: without / with an unsubscribe yesterday",
                 f"{_readiness(cold):.4f} -> {_readiness(cold_unsub):.4f}"))  # fmt: skip
    hot, hot_unsub = (_answer(scorer, policy, b) for b in (README_LEAD, _variant(README_LEAD, add=[unsub])))
    rows.append(("README lead: without / with an unsubscribe yesterday",
                 f"{_readiness(hot):.4f} -> {_readiness(hot_unsub):.4f}"))  # fmt: skip
    rows.append(("bot: 2,000 page views, 650 in 30 days", _summary(_answer(scorer, policy, _bot(COLD_LEAD)))))
    rows.append(("README lead (demo request 2 days ago)", _summary(hot)))
    no_demo = _answer(scorer, policy, _variant(README_LEAD, drop="demo_request"))
    rows.append(("README lead: readiness with / without its demo request",
                 f"{_readiness(hot):.4f} / {_readiness(no_demo):.4f}"))  # fmt: skip
    tiny = _variant(README_LEAD, lead={"employee_count": 1, "created_at": "2025-06-02T08:00:00Z", "mql_at": None})
    labels = [r["label"] for side in ("fit", "behaviour") for r in _answer(scorer, policy, tiny)["reasons"][side]]
    rows.append(("1 employee, created yesterday: reasons", "; ".join(labels)))
    return rows


def concrete_share(result: TrainResult, features: pd.DataFrame) -> tuple[float, int, float]:
    """Among holdout snapshots routed to sales: the share whose first behaviour reason names a high-intent touch.

    Also how many were routed to sales (by the model's default policy), and the share of them with a high-intent touch
    in the last 30 days (about the most the first share can be).
    """
    scorer = result.scorer
    policy = RoutingPolicy.from_cutoffs(scorer.cutoffs)
    holdout = result.readiness.holdout
    sales = [
        i for i, (fs, rp) in enumerate(zip(holdout["fit_score"], holdout["readiness_probability"], strict=True))
        if policy.route(policy.grade(fs), policy.stage(rp))[0].queue == "sales"
    ]  # fmt: skip
    if not sales:
        return math.nan, 0, math.nan
    matrix = features.to_numpy(dtype=np.float64)[sales]
    scores = scorer.score_features([str(i) for i in sales], matrix, top_k=3)
    concrete = sum(1 for s in scores if s.behaviour_reasons and s.behaviour_reasons[0].group in CONCRETE_GROUPS)
    with_touch = float((features["n_high_intent_30d"].to_numpy()[sales] > 0).mean())
    return concrete / len(sales), len(sales), with_touch


def colleague_ratio(result: TrainResult, features: pd.DataFrame, oracle: pd.DataFrame) -> dict[str, float]:
    """Mean readiness of open snapshots with a colleague already SQL over those without: model and simulator truth.

    Also the model's own counterfactual: rows with a known colleague and none qualified, scored again as if one of
    those colleagues had become SQL (features that can tell: SQL colleagues, open opportunities; where present).
    """
    holdout = result.readiness.holdout.reset_index(drop=True)
    sql = features["account_sql_colleagues"].to_numpy() > 0
    joined = join_oracle(holdout.assign(sql=sql, row=np.arange(len(holdout))), oracle)
    with_sql, without = joined[joined["sql"]], joined[~joined["sql"]]
    out = {
        "rows with a SQL colleague (oracle-covered)": float(len(with_sql)),
        "truth (oracle) ratio": with_sql["p_ready"].mean() / without["p_ready"].mean(),
        "model ratio": with_sql["readiness_probability"].mean() / without["readiness_probability"].mean(),
        "observed label ratio": with_sql["label"].mean() / without["label"].mean(),
    }
    alone = (~sql) & (features["account_known_colleagues"].to_numpy() > 0)
    matrix = features.to_numpy(dtype=np.float64)[alone]
    before = result.scorer.probabilities(matrix)[1]
    for name in ("account_sql_colleagues", "account_open_opportunities"):
        if name in features.columns:
            matrix[:, list(features.columns).index(name)] += 1
    after = result.scorer.probabilities(matrix)[1]
    out["model counterfactual: a known colleague becomes SQL"] = float(after.mean() / before.mean())
    return out


@app.command()
def main(
    leads: Annotated[int, typer.Option(help="Leads to simulate.")] = 30_000,
    out: Annotated[Path, typer.Option(help="Cache folder for the simulated data.")] = DEFAULT_OUT,
) -> None:
    """Train on a simulated funnel and print the judgement table."""
    logging.basicConfig(level=logging.WARNING)
    data = out / f"sim-{leads}-oracle"
    if not (data / "leads").is_dir():
        write_simulation(SimulationConfig(n_leads=leads), data)
    leads_df, activities = load_tables(data)
    training_set = build_training_set(leads_df, activities)
    result = train_models(training_set, leads_df, TrainConfig())
    names = training_set.builder.feature_names_
    features = training_set.readiness.loc[result.readiness.split.holdout, names].reset_index(drop=True)
    console = Console(width=180)
    table = Table(title=f"judgement, {leads:,} simulated leads")
    table.add_column("case")
    table.add_column("answer")
    for case, answer in cases(result.scorer):
        table.add_row(case, answer)
    share, n_sales, bound = concrete_share(result, features)
    table.add_row("first behaviour reason names a demo/trial/pricing/meeting (holdout routed to sales)",
                  f"{share:.1%} of {n_sales:,} ({bound:.1%} made such a touch in the last 30 days)")  # fmt: skip
    for name, value in colleague_ratio(result, features, read_table(data / "oracle")).items():
        table.add_row(f"colleague already SQL: {name}", f"{value:,.3f}")
    for task in ("readiness", "fit"):
        metrics = getattr(result, task).metrics
        aucs = ", ".join(f"{b} {metrics[b]['roc_auc']:.3f}" for b in BASELINES)
        table.add_row(f"{task} holdout AUC (baselines)", f"{metrics['model']['roc_auc']:.4f} ({aucs})")
    console.print(table)


if __name__ == "__main__":
    app()
