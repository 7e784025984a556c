"""The promotion gate: which challengers it lets through, what it prints, and that only a pass moves @champion."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from features.builder import IncompatibleModelError
from training import promotion
from training.config import CHALLENGER, CHAMPION, MODEL_NAME
from training.promotion import GateRule, Holdout, _compare, default_gate, logged_warnings, promote
from training.quality import QUALITY_TAG, QualityWarning

Metrics = dict[str, dict[str, float]]

# Tolerances and figures that are sums of powers of two, so that "worse by exactly the tolerance" is exact in binary
# floating point too (0.800 - 0.795 is 0.0050000000000000044, which is more than 0.005).
AUC_TOL = 2**-7  # 0.0078125
ECE_TOL = 2**-6  # 0.015625
EXACT_GATE = default_gate(auc_tolerance=AUC_TOL, ece_tolerance=ECE_TOL)


def metrics(readiness_auc: float = 0.75, fit_auc: float = 0.625, ece: float = 0.03125) -> Metrics:
    """Holdout metrics as evaluate_scorer reports them (only what the gate reads)."""
    return {"readiness": {"roc_auc": readiness_auc, "ece": ece}, "fit": {"roc_auc": fit_auc}}


CHAMPION_METRICS = metrics()


def test_the_default_gate_guards_both_rankings_and_readiness_calibration() -> None:
    assert default_gate() == (
        GateRule("readiness", "roc_auc", higher_is_better=True, tolerance=0.005),
        GateRule("fit", "roc_auc", higher_is_better=True, tolerance=0.005),
        GateRule("readiness", "ece", higher_is_better=False, tolerance=0.01),
    )
    assert default_gate(0.02, 0.03) == (
        GateRule("readiness", "roc_auc", True, 0.02),
        GateRule("fit", "roc_auc", True, 0.02),
        GateRule("readiness", "ece", False, 0.03),
    )


@pytest.mark.parametrize(
    "challenger",
    [
        metrics(readiness_auc=0.875, fit_auc=0.75, ece=0.015625),  # better on every rule
        metrics(readiness_auc=0.875),  # better ranking, the rest equal
        metrics(ece=0.0),  # better calibrated (lower ECE), the rest equal
        metrics(),  # equal on every rule
    ],
    ids=["better everywhere", "better readiness ranking", "lower ece", "equal"],
)
def test_a_challenger_no_worse_than_the_champion_passes(challenger: Metrics) -> None:
    passed, lines = _compare(EXACT_GATE, challenger, CHAMPION_METRICS)
    assert passed
    assert [line.rsplit(" ", 1)[1] for line in lines] == ["ok", "ok", "ok"]


@pytest.mark.parametrize(
    ("challenger", "worse_rule"),
    [
        (metrics(readiness_auc=0.75 - 2 * AUC_TOL), 0),
        (metrics(fit_auc=0.625 - 2 * AUC_TOL), 1),
        (metrics(ece=0.03125 + 2 * ECE_TOL), 2),
        # A far better ranking does not buy a worse calibration, nor the reverse: every rule must hold.
        (metrics(readiness_auc=0.9375, fit_auc=0.875, ece=0.25), 2),
        (metrics(readiness_auc=0.5, ece=0.0), 0),
    ],
    ids=["readiness auc", "fit auc", "ece", "better auc but worse ece", "better ece but worse auc"],
)
def test_a_challenger_worse_than_a_tolerance_on_any_rule_is_refused(challenger: Metrics, worse_rule: int) -> None:
    passed, lines = _compare(EXACT_GATE, challenger, CHAMPION_METRICS)
    assert not passed
    verdicts = [line.rsplit(" ", 1)[1] for line in lines]
    assert verdicts == ["WORSE" if i == worse_rule else "ok" for i in range(3)]


@pytest.mark.parametrize(
    ("challenger", "passes"),
    [
        (metrics(readiness_auc=0.75 - AUC_TOL), True),  # worse by exactly the tolerance: allowed
        (metrics(readiness_auc=0.75 - AUC_TOL - 2**-20), False),  # a hair beyond it: refused
        (metrics(fit_auc=0.625 - AUC_TOL), True),
        (metrics(fit_auc=0.625 - AUC_TOL - 2**-20), False),
        (metrics(ece=0.03125 + ECE_TOL), True),
        (metrics(ece=0.03125 + ECE_TOL + 2**-20), False),
    ],
)
def test_worse_by_exactly_the_tolerance_still_passes(challenger: Metrics, passes: bool) -> None:
    assert _compare(EXACT_GATE, challenger, CHAMPION_METRICS)[0] is passes


def test_the_default_tolerances_allow_noise_and_refuse_real_drops() -> None:
    champion = metrics(readiness_auc=0.80, fit_auc=0.70, ece=0.010)
    assert _compare(default_gate(), metrics(readiness_auc=0.796, fit_auc=0.696, ece=0.019), champion)[0]
    assert not _compare(default_gate(), metrics(readiness_auc=0.794, fit_auc=0.70, ece=0.010), champion)[0]
    assert not _compare(default_gate(), metrics(readiness_auc=0.80, fit_auc=0.694, ece=0.010), champion)[0]
    assert not _compare(default_gate(), metrics(readiness_auc=0.80, fit_auc=0.70, ece=0.021), champion)[0]


def test_each_decision_line_names_the_rule_both_figures_the_tolerance_and_the_verdict() -> None:
    challenger = metrics(readiness_auc=0.8125, fit_auc=0.5, ece=0.046875)
    passed, lines = _compare(EXACT_GATE, challenger, metrics(readiness_auc=0.75, fit_auc=0.625, ece=0.03125))
    assert not passed
    assert lines == [
        "readiness roc_auc: challenger 0.8125 vs champion 0.7500 (tolerance 0.0078125) ok",
        "fit roc_auc: challenger 0.5000 vs champion 0.6250 (tolerance 0.0078125) WORSE",
        "readiness ece: challenger 0.0469 vs champion 0.0312 (tolerance 0.015625) ok",
    ]


# ---- promote: the alias moves only when the gate passes ---------------------------------------------------------


@dataclass
class _Version:
    version: str
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeRegistry:
    """The part of MlflowClient that promote uses: aliases and version tags of one registered model."""

    aliases: dict[str, str]
    tags: dict[str, dict[str, str]] = field(default_factory=dict)

    def get_model_version_by_alias(self, name: str, alias: str) -> _Version:
        assert name == MODEL_NAME
        if alias not in self.aliases:
            raise MlflowException(f"no alias {alias}")
        version = self.aliases[alias]
        return _Version(version, dict(self.tags.get(version, {})))

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        assert name == MODEL_NAME
        self.aliases[alias] = version

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        assert name == MODEL_NAME
        self.tags.setdefault(version, {})[key] = value


def _promote(
    registry: FakeRegistry, by_version: dict[str, Metrics], monkeypatch: pytest.MonkeyPatch, *, accept: bool = False
) -> promotion.Decision:
    """promote() on the fake registry, each version's holdout metrics given (no model is loaded or scored)."""
    monkeypatch.setattr(promotion, "load_scorer", lambda uri: uri.rsplit("/", 1)[1])
    monkeypatch.setattr(Holdout, "of_scorer", classmethod(lambda cls, scorer: None))

    def evaluate(scorer: Any, leads: Any, activities: Any, holdout: Any) -> Metrics:
        return by_version[scorer]

    monkeypatch.setattr(promotion, "evaluate_scorer", evaluate)
    no_data: Any = object()  # the fake evaluation reads no data; promote only checks that some was given
    return promote(cast(MlflowClient, registry), no_data, no_data, rules=EXACT_GATE, accept_warnings=accept)


def test_a_better_challenger_becomes_champion(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = FakeRegistry({CHAMPION: "3", CHALLENGER: "4"})
    decision = _promote(registry, {"3": CHAMPION_METRICS, "4": metrics(readiness_auc=0.875)}, monkeypatch)
    assert (decision.promoted, decision.challenger, decision.champion_before) == (True, "4", "3")
    assert registry.aliases == {CHAMPION: "4", CHALLENGER: "4"}
    assert registry.tags["4"]["leadscore.promotion"].startswith("promoted: readiness roc_auc: challenger 0.8750")
    assert len(decision.lines) == 3


def test_an_equal_challenger_becomes_champion(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = FakeRegistry({CHAMPION: "3", CHALLENGER: "4"})
    decision = _promote(registry, {"3": CHAMPION_METRICS, "4": metrics()}, monkeypatch)
    assert decision.promoted and registry.aliases[CHAMPION] == "4"


def test_a_worse_challenger_is_refused_and_the_champion_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = FakeRegistry({CHAMPION: "3", CHALLENGER: "4"})
    decision = _promote(registry, {"3": CHAMPION_METRICS, "4": metrics(ece=0.125)}, monkeypatch)
    assert (decision.promoted, decision.challenger, decision.champion_before) == (False, "4", "3")
    assert registry.aliases == {CHAMPION: "3", CHALLENGER: "4"}
    tag = registry.tags["4"]["leadscore.promotion"]
    assert tag.startswith("refused: ") and "readiness ece: challenger 0.1250 vs champion 0.0312" in tag
    assert "3" not in registry.tags  # the champion is left as it was


def test_the_first_challenger_becomes_champion_without_a_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = FakeRegistry({CHALLENGER: "1"})
    decision = _promote(registry, {}, monkeypatch)  # no metrics: nothing may be evaluated
    assert (decision.promoted, decision.challenger, decision.champion_before) == (True, "1", None)
    assert registry.aliases[CHAMPION] == "1"
    assert registry.tags["1"]["leadscore.promotion"] == "first model: promoted"


def test_nothing_happens_without_a_challenger_or_when_it_already_is_champion(monkeypatch: pytest.MonkeyPatch) -> None:
    empty = FakeRegistry({})
    decision = _promote(empty, {}, monkeypatch)
    assert not decision.promoted and decision.challenger is None and empty.aliases == {}
    assert decision.lines == ["no model has the alias @challenger: train one first"]
    same = FakeRegistry({CHAMPION: "2", CHALLENGER: "2"})
    decision = _promote(same, {}, monkeypatch)
    assert not decision.promoted and decision.lines == ["the challenger already is the champion"]
    assert same.tags == {}


# ---- quality warnings: a warned challenger needs --accept-warnings ---------------------------------------------

FEW_WINS = QualityWarning("fit", "too_few_positives", "fit model: 20 positives in the holdout, fewer than 50")
RULES_WIN = QualityWarning("fit", "baseline_beats_model", "fit model: the point rules baseline ranks better")


def _warned(*warnings: QualityWarning) -> dict[str, str]:
    """The model-version tags training writes for a model with these warnings."""
    return {QUALITY_TAG: json.dumps([w.as_dict() for w in warnings])}


def test_a_warned_first_model_is_refused_with_its_warnings_and_nothing_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = FakeRegistry({CHALLENGER: "1"}, tags={"1": _warned(FEW_WINS, RULES_WIN)})
    decision = _promote(registry, {}, monkeypatch)
    assert (decision.promoted, decision.refused_for_warnings, decision.champion_before) == (False, True, None)
    assert decision.quality_warnings == [FEW_WINS.message, RULES_WIN.message]
    assert decision.lines[:2] == [f"quality warning: {FEW_WINS.message}", f"quality warning: {RULES_WIN.message}"]
    assert "--accept-warnings" in decision.lines[-1]
    assert CHAMPION not in registry.aliases
    assert registry.tags["1"]["leadscore.promotion"] == "refused: 2 quality warning(s) not accepted"


def test_a_warned_challenger_is_refused_before_any_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = FakeRegistry({CHAMPION: "3", CHALLENGER: "4"}, tags={"4": _warned(RULES_WIN)})
    decision = _promote(registry, {}, monkeypatch)  # no metrics: nothing may be evaluated
    assert decision.refused_for_warnings and registry.aliases[CHAMPION] == "3"


def test_accepted_warnings_promote_the_first_model_and_are_kept_on_record(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = FakeRegistry({CHALLENGER: "1"}, tags={"1": _warned(FEW_WINS)})
    decision = _promote(registry, {}, monkeypatch, accept=True)
    assert (decision.promoted, decision.refused_for_warnings) == (True, False)
    assert registry.aliases[CHAMPION] == "1"
    assert decision.lines[0] == f"quality warning: {FEW_WINS.message}"
    assert registry.tags["1"]["leadscore.promotion"] == "first model: promoted (1 quality warning(s) accepted)"


def test_accepted_warnings_still_leave_the_gate_to_decide(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = FakeRegistry({CHAMPION: "3", CHALLENGER: "4"}, tags={"4": _warned(FEW_WINS)})
    decision = _promote(registry, {"3": CHAMPION_METRICS, "4": metrics(ece=0.125)}, monkeypatch, accept=True)
    assert not decision.promoted and not decision.refused_for_warnings and registry.aliases[CHAMPION] == "3"
    better = FakeRegistry({CHAMPION: "3", CHALLENGER: "4"}, tags={"4": _warned(FEW_WINS)})
    decision = _promote(better, {"3": CHAMPION_METRICS, "4": metrics(readiness_auc=0.875)}, monkeypatch, accept=True)
    assert decision.promoted and better.aliases[CHAMPION] == "4"
    assert better.tags["4"]["leadscore.promotion"].startswith("promoted (1 quality warning(s) accepted): readiness")


def test_a_version_logged_without_the_tag_has_no_warnings() -> None:
    assert logged_warnings(_Version("1")) == []
    assert logged_warnings(_Version("1", _warned())) == []
    assert logged_warnings(_Version("1", _warned(FEW_WINS))) == [FEW_WINS.message]


def test_a_champion_this_version_cannot_score_is_replaced_and_the_decision_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = FakeRegistry({CHAMPION: "3", CHALLENGER: "4"})

    def load(uri: str) -> str:
        version = uri.rsplit("/", 1)[1]
        if version == "3":  # trained before the feature engine changed
            raise IncompatibleModelError(["engagement_velocity", "n_touches_7d"], ["n_touches_7d", "engagement_recent"])
        return version

    monkeypatch.setattr(promotion, "load_scorer", load)
    no_data: Any = object()
    decision = promote(cast(MlflowClient, registry), no_data, no_data, rules=EXACT_GATE)
    assert (decision.promoted, decision.challenger, decision.champion_before) == (True, "4", "3")
    assert registry.aliases[CHAMPION] == "4"
    assert "champion version 3 cannot be scored by this version" in decision.lines[0]
    assert "engagement_velocity" in decision.lines[0] and "engagement_recent" in decision.lines[0]
    assert registry.tags["4"]["leadscore.promotion"].startswith("promoted: champion version 3 cannot be scored")
