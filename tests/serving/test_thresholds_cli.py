"""`leadscore thresholds`: sales ops tune, apply and roll back thresholds from a terminal, with clear refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from serving.store import PolicyStore, make_engine
from serving.thresholds_cli import EXIT_INVALID, app
from tests.serving.conftest import Registry

runner = CliRunner()


@pytest.fixture
def stores(registry: Registry, tmp_path: Path) -> list[str]:
    return ["--store-url", f"sqlite:///{tmp_path / 'svc.db'}", "--tracking", registry.tracking_uri]


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_show_stores_the_models_default_as_version_1(stores: list[str]) -> None:
    code, out = run("show", *stores)
    assert code == 0, out
    assert "version 1 (in force)" in out and "default policy shipped with the model" in out
    code, out = run("show", "--json", *stores)
    assert json.loads(out)["version"] == 1


def test_solve_apply_rollback_round_trip(stores: list[str], tmp_path: Path) -> None:
    proposal = tmp_path / "proposal.json"
    code, out = run("solve", "--sales-reps", "1", "--sales-leads-per-rep", "10", "--data", "holdout",
                    "--out", str(proposal), *stores)  # fmt: skip
    assert code == 0, out
    assert "proposed: MQL >=" in out and "Replayed: holdout data" in out
    proposed = json.loads(proposal.read_text())
    assert proposed["capacities"]["queues"]["sales"] == {"reps": 1, "leads_per_rep_per_week": 10.0}

    code, out = run("apply", str(proposal), "--reason", "one AE this week", "--author", "ops", *stores)
    assert code == 0, out
    store = PolicyStore(make_engine(stores[1]))
    latest = store.latest()
    assert latest is not None and (latest.version, latest.author, latest.reason) == (2, "ops", "one AE this week")
    assert latest.policy.model_dump(mode="json") == proposed

    code, out = run("rollback", "1", "--reason", "team back", *stores)
    assert code == 0, out
    restored = store.latest()
    first = store.get(1)
    assert restored is not None and first is not None
    assert restored.version == 3 and restored.policy == first.policy
    code, out = run("show", "--history", *stores)
    assert "rollback to version 1: team back" in out and "one AE this week" in out


def test_simulate_prints_every_queue_and_which_data_it_replayed(stores: list[str]) -> None:
    code, out = run("simulate", "--sdr-reps", "2", "--data", "holdout", *stores)
    assert code == 0, out
    for queue in ("sales", "sdr", "nurture", "disqualify"):
        assert queue in out
    assert "worked (sales + SDR)" in out
    assert "the champion's out-of-time holdout, as asked" in out


def test_cut_offs_are_shown_and_typed_in_percent(stores: list[str]) -> None:
    code, out = run("show", *stores)
    assert code == 0, out
    assert re.search(r"MQL >= \d+\.\d+ %, SQL >= \d+\.\d+ %", out), out
    assert not re.search(r"MQL >= 0\.\d{3}", out)  # no raw probabilities
    code, out = run("simulate", "--mql", "1.7%", "--sql", "30 %", "--data", "holdout", *stores)
    assert code == 0, out
    assert "cut-offs replayed: MQL >= 1.7 %, SQL >= 30.0 %" in out
    code, out = run("simulate", "--mql", "0.5", "--data", "holdout", *stores)
    assert code == 0 and "MQL >= 0.50 %" in out, out
    code, out = run("simulate", "--mql", "40", "--sql", "30", "--data", "holdout", *stores)
    assert code == EXIT_INVALID and "SQL cut-off must be above the MQL cut-off" in out, out
    code, out = run("simulate", "--mql", "one percent", *stores)
    assert code == EXIT_INVALID and "--mql must be a percentage" in out, out


def test_invalid_policies_and_unknown_versions_are_refused(stores: list[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("grades: {A: 10, B: 50, C: 20}\nstages: {MQL: 0.1, SQL: 0.3}\nsla_hours: {sales: -4}\n")
    code, out = run("apply", str(bad), "--reason", "x", *stores)
    assert code == EXIT_INVALID
    assert "grades" in out and "decrease strictly" in out
    code, out = run("rollback", "42", "--reason", "x", *stores)
    assert code == EXIT_INVALID and "no thresholds version 42" in out
    code, out = run("rollback", str(2**64), "--reason", "x", *stores)  # once a crash: past SQLite's 64-bit integers
    assert code == EXIT_INVALID and f"no thresholds version {2**64}" in out
    code, out = run("simulate", "--data", "yesterday", *stores)
    assert code == EXIT_INVALID and "--data must be" in out
    code, out = run("show", "--json", *stores)
    assert json.loads(out)["version"] == 1  # nothing was stored by the refusals
