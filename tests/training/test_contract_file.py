"""A contract file in training: readiness labelled by the declared stamp, custom attributes as features, no leakage.

The data are a small simulated funnel whose CRM stamps no sales qualification (MQL -> won): its SQL stamps are
dropped, and two custom CRM fields are added to the leads table.
"""

from __future__ import annotations

import datetime as dt
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

import training.cli
import training.tracking
from features.contract_file import contract_from_yaml
from features.spec import LeadContract, ReadinessLabel
from features.validation import validate_activities, validate_leads
from tests.factories import lead, leads_frame, ts
from training.cli import app
from training.config import SimulationConfig, SnapshotConfig
from training.dataset import TrainingSet, build_training_set, snapshot_config_for
from training.exits import EXIT_BAD_DATA, EXIT_MISSING_INPUT
from training.pipeline import TrainResult, train_models
from training.promotion import Holdout
from training.simulator import simulate
from training.snapshots import LabelError, build_readiness_snapshots, fit_label_problem, readiness_label_problem
from training.tracking import LoggedModel

ROOT = Path(__file__).parents[2]
# Wins likelier than the simulator's default (win_offset -3.4), so that 2,000 leads hold ~90 of them: enough for both
# classes in every period of a won-readiness split, in a few seconds of simulation.
SIMULATION = SimulationConfig(n_leads=2000, days=540, seed=3, win_offset=-1.0, oracle_max_rows=0, p_won_sample=0)
HORIZON = 45
CONTRACT_YAML = f"""
custom_attributes:
  - name: crm_tier
    dtype: category
    description: Account tier set by sales ops.
    allowed: [gold, silver, bronze]
  - name: seats
    dtype: int
    description: Seats asked for.
    min_value: 1
readiness:
  stamp: won_at
  horizon_days: {HORIZON}
"""
WON = ReadinessLabel("won_at", HORIZON)
runner = CliRunner()


def _flat(text: str) -> str:
    return " ".join(text.split())


# ---- the funnel ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WonOnly:
    """A funnel without SQL stamps, as exported (`data`, with the contract file beside it) and validated."""

    data: Path
    contract_file: Path
    contract: LeadContract
    leads: pd.DataFrame
    activities: pd.DataFrame


@pytest.fixture(scope="module")
def won_only(tmp_path_factory: pytest.TempPathFactory) -> WonOnly:
    funnel = simulate(SIMULATION)
    raw = funnel.leads.copy()
    raw[["sql_at", "requalified_at"]] = pd.NaT  # the CRM stamps no sales qualification
    rng = np.random.default_rng(0)
    raw["crm_tier"] = rng.choice(["gold", "silver", "bronze"], len(raw))
    raw["seats"] = rng.integers(1, 50, len(raw))
    root = tmp_path_factory.mktemp("won_only")
    data = root / "data"
    data.mkdir()
    raw.to_parquet(data / "leads.parquet")
    funnel.activities.to_parquet(data / "activities.parquet")
    contract_file = root / "contract.yaml"
    contract_file.write_text(CONTRACT_YAML)
    contract = contract_from_yaml(CONTRACT_YAML)
    leads = validate_leads(raw, contract)
    return WonOnly(data, contract_file, contract, leads, validate_activities(funnel.activities, leads, contract))


# ---- MLflow left out: what `leadscore train` would log is kept instead -----------------------------------------------


@dataclass
class Logged:
    """What the train command handed to MLflow."""

    trainings: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[tuple[str, str | None]] = field(default_factory=list)


@contextmanager
def _without_mlflow() -> Iterator[Logged]:
    """Run the train command with its MLflow calls replaced by a recorder (the tracking store is tested elsewhere)."""
    logged = Logged()

    @contextmanager
    def run(experiment: str = "") -> Iterator[str]:
        yield "run-1"

    def log_training(result: TrainResult, training_set: TrainingSet, *args: Any, **kwargs: Any) -> LoggedModel:
        logged.trainings.append({"result": result, "training_set": training_set})
        return LoggedModel(run_id="run-1", version="1", model_uri="models:/lead-scorer/1", experiment_id="0")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training.tracking, "configure_tracking", lambda uri=None: "stub")
        patch.setattr(training.tracking, "training_run", run)
        patch.setattr(training.tracking, "log_training", log_training)
        patch.setattr(
            "mlflow.log_artifact", lambda path, artifact_path=None: logged.artifacts.append((path, artifact_path))
        )
        yield logged


@dataclass(frozen=True)
class CliTrained:
    """`leadscore train --contract` on the won-only funnel: its output, and what it logged."""

    output: str
    exit_code: int
    result: TrainResult
    training_set: TrainingSet
    artifacts: list[tuple[str, str | None]]


@pytest.fixture(scope="module")
def cli_trained(won_only: WonOnly) -> CliTrained:
    args = ["train", "--data", str(won_only.data), "--contract", str(won_only.contract_file), "--max-rounds", "30"]
    with _without_mlflow() as logged:
        done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    (training_run,) = logged.trainings
    return CliTrained(
        done.output, done.exit_code, training_run["result"], training_run["training_set"], logged.artifacts
    )


# ---- labels --------------------------------------------------------------------------------------------------------


def _labels(*rows: dict[str, object], config: SnapshotConfig) -> dict[tuple[str, str], int]:
    frame = build_readiness_snapshots(validate_leads(leads_frame(*rows)), ts("2024-06-03"), config)
    return {
        (i, d.strftime("%m-%d")): int(v)
        for i, d, v in zip(frame["lead_id"], frame["as_of"], frame["label"], strict=True)
    }


def test_won_readiness_labels_the_same_open_leads_by_their_win() -> None:
    rows = (
        lead("L1", created_at="2024-01-03", mql_at="2024-01-20", won_at="2024-02-20"),  # MQL -> won
        lead("L2", created_at="2024-01-03", sql_at="2024-02-01", won_at="2024-03-10"),  # SQL first: not open after
    )
    won = _labels(*rows, config=SnapshotConfig(readiness_stamp="won_at", horizon_days=30, max_per_lead=None))
    sql = _labels(*rows, config=SnapshotConfig(max_per_lead=None))
    assert won.keys() == sql.keys()  # only the label changes, never which leads are asked the question
    # Feb 20 lies within 30 days of Jan 22 .. Feb 19; from Feb 26 on L1 is won, and no example.
    assert {d: v for (i, d), v in won.items() if i == "L1"} == {
        "01-08": 0, "01-15": 0, "01-22": 1, "01-29": 1, "02-05": 1, "02-12": 1, "02-19": 1,
    }  # fmt: skip
    # L2 is open until its SQL (Feb 1) and won more than 30 days after: SQL-ready but not won-ready.
    assert {d: (v, sql[("L2", d)]) for (i, d), v in won.items() if i == "L2"} == {
        "01-08": (0, 1), "01-15": (0, 1), "01-22": (0, 1), "01-29": (0, 1),
    }  # fmt: skip


def test_the_snapshot_config_labels_readiness_as_the_contract_declares() -> None:
    declared = LeadContract(readiness=WON)
    assert snapshot_config_for(declared).readiness == WON
    assert (
        snapshot_config_for(declared, SnapshotConfig(readiness_stamp="won_at", horizon_days=HORIZON, seed=3)).seed == 3
    )
    with pytest.raises(ValueError, match="the contract declares readiness as: an open lead is won") as caught:
        snapshot_config_for(declared, SnapshotConfig(horizon_days=HORIZON))
    assert "readiness_stamp='won_at' and horizon_days=45" in str(caught.value)
    # Not declared: the given config (or the default, SQL within 30 days) stands.
    assert snapshot_config_for(LeadContract(), SnapshotConfig(horizon_days=14)).readiness == ReadinessLabel(
        "sql_at", 14
    )
    assert snapshot_config_for(LeadContract()).readiness == ReadinessLabel()


def test_label_errors_say_which_stamp_how_many_leads_have_it_and_what_to_declare() -> None:
    leads = validate_leads(
        leads_frame(lead("L1", mql_at="2024-01-10", won_at="2024-05-01"), lead("L2", mql_at="2024-01-12"))
    )
    none = readiness_label_problem(leads, np.zeros(10, dtype=np.int8), ReadinessLabel())
    assert none is not None
    assert "none of the 2 leads has sql_at or requalified_at" in none
    assert (
        "1 of the 2 leads have won_at: declare `readiness: {stamp: won_at, horizon_days: 30}` in a contract file"
        in none
    )
    late = readiness_label_problem(leads, np.zeros(10, dtype=np.int8), ReadinessLabel("won_at", 7))
    assert late is not None
    assert "its labels are all 0 over 10 snapshots: 1 of 2 leads have won_at, but none reaches it within 7 days" in late
    assert "Declare a longer horizon_days" in late
    bare = validate_leads(leads_frame(lead("L1", mql_at="2024-01-10"), lead("L2")))
    nothing = readiness_label_problem(bare, np.zeros(4, dtype=np.int8), WON)
    assert nothing is not None and "stamps present: mql_at (1)" in nothing and "export sql_at" in nothing
    assert readiness_label_problem(leads, np.array([0, 1], dtype=np.int8), WON) is None
    fit = fit_label_problem(bare, np.zeros(2, dtype=np.int8), SnapshotConfig())
    assert fit is not None and "0 of 2 leads have won_at" in fit and "export the CRM's closed-won dates" in fit


def test_a_won_only_funnel_refuses_sql_readiness_naming_the_stamp_and_what_to_declare(won_only: WonOnly) -> None:
    undeclared = LeadContract(custom_attributes=won_only.contract.custom_attributes)
    training_set = build_training_set(
        won_only.leads, won_only.activities, contract=undeclared, data_end=SIMULATION.end_ts
    )
    with pytest.raises(LabelError) as caught:
        train_models(training_set, won_only.leads)
    message = str(caught.value)
    won = int(won_only.leads["won_at"].notna().sum())
    assert "none of the 2,000 leads has sql_at or requalified_at" in message
    assert f"{won} of the 2,000 leads have won_at: declare `readiness: {{stamp: won_at, horizon_days: 30}}`" in message


def test_a_declared_attribute_no_lead_holds_is_refused(won_only: WonOnly) -> None:
    with pytest.raises(
        ValueError, match=r"custom attribute\(s\) seats: declared in the contract but empty in all 2,000"
    ):
        build_training_set(won_only.leads.assign(seats=pd.NA), won_only.activities, contract=won_only.contract)


# ---- leakage -------------------------------------------------------------------------------------------------------


def _features(training_set: TrainingSet) -> list[str]:
    return training_set.builder.feature_names_


def test_wins_at_or_after_as_of_change_won_labels_but_never_features(won_only: WonOnly) -> None:
    config = SnapshotConfig(readiness_stamp="won_at", horizon_days=HORIZON, max_per_lead=None)

    def build(leads: pd.DataFrame) -> TrainingSet:
        return build_training_set(
            leads, won_only.activities, contract=won_only.contract, snapshot_config=config, data_end=SIMULATION.end_ts
        )

    reference = build(won_only.leads)
    cut = reference.readiness["as_of"].median()
    later = won_only.leads["won_at"] >= cut
    assert later.sum() > 10
    moved = won_only.leads.assign(
        won_at=won_only.leads["won_at"].mask(later, won_only.leads["won_at"] + pd.Timedelta(days=200))
    )
    removed = won_only.leads.assign(won_at=won_only.leads["won_at"].mask(later))
    before = reference.readiness[reference.readiness["as_of"] <= cut]
    for variant in (moved, removed):
        other = build(variant)
        same = before[["lead_id", "as_of", "label"]].merge(
            other.readiness, on=["lead_id", "as_of"], how="left", suffixes=("", "_after"), validate="one_to_one"
        )
        # Every snapshot up to the cut is still an example, with the very same features...
        assert same["label_after"].notna().all()
        pd.testing.assert_frame_equal(
            same[_features(other)].reset_index(drop=True), before[_features(reference)].reset_index(drop=True)
        )
        # ... while the labels of those whose win moved out of their window changed.
        assert (same["label"] != same["label_after"]).sum() > 10
        fit_features = other.builder.fit_feature_names_
        pd.testing.assert_frame_equal(other.fit[fit_features], reference.fit[fit_features])


# ---- training ------------------------------------------------------------------------------------------------------


def test_a_won_only_funnel_trains_a_model_whose_readiness_means_won_within_the_horizon(
    won_only: WonOnly, cli_trained: CliTrained
) -> None:
    scorer, training_set = cli_trained.result.scorer, cli_trained.training_set
    assert scorer.builder.contract.readiness == WON
    assert scorer.metadata["readiness"] == {
        "stamp": "won_at", "stamps": ["won_at"], "horizon_days": HORIZON,
        "meaning": f"an open lead is won (won_at) within {HORIZON} days",
    }  # fmt: skip
    assert training_set.snapshot_config.readiness == WON
    # Promotion and evaluation rebuild the holdout from the metadata: they label it the same way.
    assert Holdout.of_scorer(scorer).snapshot_config.readiness == WON
    # Every label is a win within the horizon of its snapshot, and the model learnt to rank them.
    rows = training_set.readiness[["lead_id", "as_of", "label"]].merge(won_only.leads[["lead_id", "won_at"]])
    expected = (rows["won_at"] >= rows["as_of"]) & (rows["won_at"] < rows["as_of"] + pd.Timedelta(days=HORIZON))
    assert rows["label"].astype(bool).equals(expected) and expected.sum() > 50
    assert cli_trained.result.readiness.metrics["model"]["roc_auc"] > 0.7


def test_custom_attributes_in_the_file_reach_the_features_and_the_served_scorer(
    won_only: WonOnly, cli_trained: CliTrained, tmp_path: Path
) -> None:
    builder = cli_trained.training_set.builder
    assert builder.fit_feature_names_[-1:] == ["seats"] and "crm_tier" in builder.categorical_features_
    assert builder.fit_encoder_.vocabularies_["crm_tier"] == ("bronze", "gold", "silver")
    seats = won_only.leads.set_index("lead_id").loc[cli_trained.training_set.fit["lead_id"], "seats"]
    assert cli_trained.training_set.fit["seats"].tolist() == seats.astype(float).tolist()
    # The logged model holds the scorer as a joblib file; the service validates `custom` against its contract.
    joblib.dump(cli_trained.result.scorer, tmp_path / "scorer.joblib")
    served = joblib.load(tmp_path / "scorer.joblib")
    assert served.builder.contract.custom_attributes == won_only.contract.custom_attributes
    assert served.builder.contract.readiness == WON
    profile = won_only.leads.iloc[0].to_dict() | {"crm_tier": "gold", "seats": 12}
    row = served.builder.record_features(profile, [], dt.datetime(2025, 6, 2, tzinfo=dt.UTC)).rows[0]
    names = served.builder.feature_names_
    assert row[names.index("seats")] == 12.0
    assert row[names.index("crm_tier")] == served.builder.fit_encoder_.vocabularies_["crm_tier"].index("gold")
    assert 0.0 < served.score_record(profile, [], dt.datetime(2025, 6, 2, tzinfo=dt.UTC)).readiness_probability < 1.0


# ---- the command line ----------------------------------------------------------------------------------------------


def test_train_with_a_contract_file_end_to_end(won_only: WonOnly, cli_trained: CliTrained) -> None:
    assert cli_trained.exit_code == 0
    assert "run run-1; model models:/lead-scorer/1" in _flat(cli_trained.output)
    # The run keeps the file it was trained with; the model, the labels and the features it declared.
    assert cli_trained.artifacts == [(str(won_only.contract_file), "contract")]
    assert cli_trained.result.scorer.builder.contract == LeadContract(
        custom_attributes=won_only.contract.custom_attributes, readiness=WON
    )


def test_train_exits_3_when_the_contract_file_is_missing(won_only: WonOnly, tmp_path: Path) -> None:
    with _without_mlflow() as logged:
        done = runner.invoke(app, ["train", "--data", str(won_only.data), "--contract", str(tmp_path / "nowhere.yaml")])
    assert done.exit_code == EXIT_MISSING_INPUT, done.output
    assert "no contract file" in _flat(done.output) and "nowhere.yaml" in done.output
    assert not logged.trainings


def test_train_exits_2_on_an_invalid_contract_file_naming_the_key(won_only: WonOnly, tmp_path: Path) -> None:
    bad = tmp_path / "contract.yaml"
    bad.write_text("custom_attributes: [{name: notes, dtype: text, description: Notes.}]\nreadiness: {stamp: sql_at}\n")
    with _without_mlflow():
        done = runner.invoke(app, ["train", "--data", str(won_only.data), "--contract", str(bad)])
    assert done.exit_code == EXIT_BAD_DATA, done.output
    said = _flat(done.output)
    assert "the contract file is not valid" in said and "custom_attributes[0] (notes).dtype" in said
    assert "readiness.horizon_days: required" in said


def test_train_exits_2_when_horizon_days_contradicts_the_contract(won_only: WonOnly) -> None:
    args = ["train", "--data", str(won_only.data), "--contract", str(won_only.contract_file), "--horizon-days", "30"]
    with _without_mlflow() as logged:
        done = runner.invoke(app, args)
    assert done.exit_code == EXIT_BAD_DATA, done.output
    assert f"--horizon-days 30 contradicts the contract: {won_only.contract_file} declares" in _flat(done.output)
    assert not logged.trainings


def test_train_on_a_won_only_funnel_without_a_contract_exits_2_saying_what_to_declare(won_only: WonOnly) -> None:
    with _without_mlflow() as logged:
        done = runner.invoke(app, ["train", "--data", str(won_only.data)])
    assert done.exit_code == EXIT_BAD_DATA, done.output
    said = _flat(done.output)
    assert "cannot train on these data" in said and "none of the 2,000 leads has sql_at or requalified_at" in said
    assert "declare `readiness: {stamp: won_at, horizon_days: 30}` in a contract file" in said
    assert not logged.trainings


@pytest.mark.parametrize(
    ("parameters", "contract", "readiness"),
    [
        ({}, None, ReadinessLabel()),
        ({"horizon_days": "14"}, None, ReadinessLabel("sql_at", 14)),
        ({"contract": "examples/contract.yaml"}, "examples/contract.yaml", ReadinessLabel("won_at", 90)),
    ],
)
def test_mlprojects_train_entry_point_passes_the_contract_and_leaves_out_what_is_not_given(
    monkeypatch: pytest.MonkeyPatch, parameters: dict[str, str], contract: str | None, readiness: ReadinessLabel
) -> None:
    entry = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]["train"]
    values = {name: spec["default"] for name, spec in entry["parameters"].items()} | parameters
    # What `mlflow run -e train` executes: every parameter substituted, shell-quoted (an empty one as '').
    command = shlex.split(entry["command"].format(**{k: shlex.quote(str(v)) for k, v in values.items()}))
    assert command[0] == "leadscore"
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(training.cli, "_train", lambda *args, **kwargs: calls.append({"args": args, **kwargs}))
    monkeypatch.chdir(ROOT)
    done = runner.invoke(app, command[1:])
    assert done.exit_code == 0, done.output
    (call,) = calls
    snapshots: SnapshotConfig = call["args"][1]
    assert snapshots.readiness == readiness
    assert call["contract_file"] == (Path(contract) if contract else None)
