"""Scale-out on a real two-worker Dask cluster: score-batch and training, as in process, a killed worker, bad input."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster
from typer.testing import CliRunner

from features.validation import validate_activities, validate_leads
from leadscore.cli import app
from leadscore.client import build_requests
from scaleout.cluster import ClusterSpec
from scaleout.tables import source_of
from serving.batch import BatchJob, flat_row, score_in_process, score_on_cluster
from serving.model import load_model
from serving.policy import RoutingPolicy
from serving.store import PolicyVersion
from tests.conftest import Trained
from tests.integration.conftest import ChampionStore, Server
from training.cluster_dataset import build_on_cluster
from training.dataset import build_training_set

pytestmark = pytest.mark.integration

# Compared to the API's answers: all of a row but the job's own id and time.
COMPARED = [
    "lead_id", "fit_probability", "fit_score", "grade", "readiness_probability", "readiness_score", "readiness_stage",
    "lifecycle_stage", "lifecycle_since", "queue", "priority", "sla_hours", "segment", "fit_reasons",
    "behaviour_reasons", "context_reasons", "notes", "model_version", "thresholds_version",
]  # fmt: skip


@dataclass(frozen=True)
class Data:
    """The session funnel's raw tables on disk, the moment they are scored as of, and the registry with the model."""

    folder: Path
    leads: pd.DataFrame
    activities: pd.DataFrame
    as_of: dt.datetime
    tracking_uri: str


@pytest.fixture(scope="module")
def data(trained: Trained, champion_store: ChampionStore, tmp_path_factory: pytest.TempPathFactory) -> Data:
    root = tmp_path_factory.mktemp("score-batch")
    folder = root / "data"
    folder.mkdir()
    leads = trained.funnel.leads
    as_of = pd.Timestamp(trained.training_set.data_end).to_pydatetime().replace(microsecond=0)
    # A link scanner's burst on a few leads the day before: 30 page views in 30 seconds, left out and noted.
    scanned = leads.loc[leads["created_at"] < as_of - dt.timedelta(days=30), "lead_id"].iloc[:5]
    start = pd.Timestamp(as_of - dt.timedelta(days=1))
    burst = pd.DataFrame(
        [{"lead_id": lead_id, "occurred_at": start + pd.Timedelta(seconds=s), "activity_type": "page_view"}
         for lead_id in scanned for s in range(30)]
    )  # fmt: skip
    activities = pd.concat(
        [trained.funnel.activities, burst.astype({"occurred_at": trained.funnel.activities["occurred_at"].dtype})],
        ignore_index=True,
    )
    # Two files each: a folder of parts, as exports come.
    (folder / "leads").mkdir()
    (folder / "activities").mkdir()
    half, touches = len(leads) // 2, len(activities) // 2
    leads.iloc[:half].to_parquet(folder / "leads" / "part-0.parquet", index=False)
    leads.iloc[half:].to_parquet(folder / "leads" / "part-1.parquet", index=False)
    activities.iloc[:touches].to_parquet(folder / "activities" / "part-0.parquet", index=False)
    activities.iloc[touches:].to_parquet(folder / "activities" / "part-1.parquet", index=False)
    return Data(folder, leads, activities, as_of, champion_store.copy_to(root / "registry"))


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A real local cluster of two worker processes, one thread each."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local:
        yield local


def _job(data: Data, policy: PolicyVersion | None = None) -> BatchJob:
    loaded = load_model(data.tracking_uri, "lead-scorer", "champion")
    default = PolicyVersion(0, data.as_of, "model", "defaults", RoutingPolicy.from_cutoffs(loaded.scorer.cutoffs))
    return BatchJob(loaded.scorer, "lead-scorer", loaded.version, policy or default, data.as_of)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("lead_id").reset_index(drop=True)


def _text(column: pd.Series) -> pd.Series:
    return column.astype(object).map(lambda v: None if v is None or v == "" or pd.isna(v) else str(v))


def _env(uri: str) -> dict[str, str]:
    """This environment with the registry at `uri`: not MLflow's exported registry URI, nor a service store."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_REGISTRY_URI", "LEADSCORE_STORE_URL")}
    return {**inherited, "MLFLOW_TRACKING_URI": uri, "COLUMNS": "200"}


def _cli(*args: str, uri: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = _env(uri)
    return subprocess.run(
        [sys.executable, "-m", "leadscore", "score-batch", *args], env=env, cwd=cwd, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip


def test_the_cluster_scores_every_lead_once_as_the_in_process_path_does(
    data: Data, cluster: LocalCluster, tmp_path: Path
) -> None:
    job = _job(data)
    leads, activities = (
        source_of(str(data.folder / "leads"), "leads"),
        source_of(str(data.folder / "activities"), "activities"),
    )
    on_cluster = tmp_path / "cluster.parquet"
    in_process = tmp_path / "local.parquet"
    result = score_on_cluster(job, leads, activities, str(on_cluster), ClusterSpec(cluster.scheduler_address),
                              partitions=6)  # fmt: skip
    score_in_process(job, leads, activities, str(in_process), partitions=3)
    distributed, local = _sorted(pd.read_parquet(on_cluster)), _sorted(pd.read_parquet(in_process))
    assert result.rows == len(data.leads) == len(distributed)
    assert distributed["lead_id"].is_unique
    assert set(distributed["lead_id"]) == set(data.leads["lead_id"])
    assert result.workers == 2
    pd.testing.assert_frame_equal(distributed, local)
    # Every route a salesperson expects shows up, and closed leads keep their lifecycle route.
    assert {"sales", "nurture"} <= set(distributed["queue"])
    won = distributed[distributed["lifecycle_stage"] == "won"]
    assert len(won) and won["readiness_stage"].isna().all()


def test_score_batch_gives_what_the_score_api_gives_for_the_same_leads(
    data: Data, cluster: LocalCluster, server: Server, tmp_path: Path
) -> None:
    out = tmp_path / "scores.csv"
    done = _cli(
        "--data", str(data.folder), "--out", str(out), "--as-of", data.as_of.isoformat(),
        "--scheduler", cluster.scheduler_address, "--policy-store", server.store_url,
        uri=data.tracking_uri, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"scored {len(data.leads):,} leads" in done.stdout
    batch = pd.read_csv(out, keep_default_na=False, na_values=[""]).set_index("lead_id")
    # A sample of accounts, with every lead of each (so colleagues count), and the leads with automated touches.
    rng = np.random.default_rng(3)
    accounts = rng.choice(data.leads["account_id"].unique(), 60, replace=False)
    chosen = data.leads.loc[data.leads["account_id"].isin(accounts), "lead_id"].tolist()
    noted = batch.index[batch["notes"].notna()].tolist()[:20]
    wanted = list(dict.fromkeys([*chosen, *noted]))[:600]
    requests = build_requests(data.leads, data.activities, as_of=data.as_of, lead_ids=wanted)
    answer = server.send("POST", "/v1/score/batch", server.key, {"leads": requests})
    assert answer.status_code == 200, answer.text
    api = pd.DataFrame([flat_row(a) for a in answer.json()["scores"]]).set_index("lead_id")
    assert noted and api.loc[noted, "notes"].str.contains("automated").all()
    mine = batch.loc[api.index]
    for column in COMPARED[1:]:
        theirs, ours = api[column], mine[column]
        if column == "lifecycle_since":
            theirs, ours = pd.to_datetime(theirs, utc=True), pd.to_datetime(ours, utc=True)
        elif column in ("fit_probability", "fit_score", "readiness_probability", "readiness_score", "sla_hours"):
            theirs, ours = theirs.astype(float), ours.astype(float)
        else:
            # CSV has no null text: an empty cell is both "no reasons" and "no value".
            theirs, ours = _text(theirs), _text(ours)
        mismatched = (theirs != ours) & ~(theirs.isna() & ours.isna())
        assert not mismatched.any(), f"{column}: {pd.DataFrame({'api': theirs, 'batch': ours})[mismatched].head()}"
    assert (mine["thresholds_version"] == 1).all()  # the service stored the model's defaults as version 1


def _kill_every_worker(client: Client) -> list[int]:
    """SIGKILL every worker process at once, as a host's OOM killer or a nanny past the memory limit would."""
    pids: dict[str, int] = client.run(os.getpid)
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    return sorted(pids.values())


def test_workers_killed_mid_job_cost_time_not_leads(data: Data, cluster: LocalCluster, tmp_path: Path) -> None:
    job = _job(data)
    leads, activities = (
        source_of(str(data.folder / "leads"), "leads"),
        source_of(str(data.folder / "activities"), "activities"),
    )
    reference = tmp_path / "reference.parquet"
    score_in_process(job, leads, activities, str(reference), partitions=4)
    killed: list[int] = []
    client: dict[str, Any] = {}

    def kill_once(done: int, total: int, rows: int) -> None:
        if not killed and done >= 1:
            # Every worker: the job (model and policy) they all held must come back from the graph, not be lost.
            killed.extend(_kill_every_worker(client["client"]))

    out = tmp_path / "scores.parquet"
    result = score_on_cluster(
        job, leads, activities, str(out), ClusterSpec(cluster.scheduler_address), partitions=16,
        progress=kill_once, on_start=lambda c: client.update(client=c),
    )  # fmt: skip
    assert len(killed) == 2, "the workers were not killed"
    scores = _sorted(pd.read_parquet(out))
    assert result.rows == len(scores) == len(data.leads)
    assert scores["lead_id"].is_unique
    pd.testing.assert_frame_equal(scores, _sorted(pd.read_parquet(reference)))
    with Client(cluster.scheduler_address) as after:
        after.wait_for_workers(2, timeout=60)  # the nannies brought them back


def test_bad_input_is_refused_before_any_work_is_scheduled(data: Data, tmp_path: Path) -> None:
    # In this process, not a new one: a refusal starts nothing, and six interpreters importing the stack cost a minute.
    def refused(*args: str) -> tuple[int, str]:
        env = {"MLFLOW_TRACKING_URI": data.tracking_uri, "MLFLOW_REGISTRY_URI": None, "LEADSCORE_STORE_URL": None,
               "COLUMNS": "200"}  # fmt: skip
        done = CliRunner().invoke(app, ["score-batch", *args], env=env)
        return done.exit_code, done.output

    broken = tmp_path / "broken"
    broken.mkdir()
    data.leads.to_parquet(broken / "leads.parquet", index=False)
    data.activities.drop(columns=["activity_type"]).to_parquet(broken / "activities.parquet", index=False)
    out = tmp_path / "scores.parquet"
    # Nothing listens at that scheduler: had the job got as far as connecting, it would say so instead.
    nowhere = "tcp://127.0.0.1:9"
    code, output = refused("--data", str(broken), "--out", str(out), "--scheduler", nowhere)
    assert code == 2, output
    assert "activities.activity_type: missing column" in output
    assert not out.exists()

    typed = tmp_path / "typed"
    typed.mkdir()
    data.leads.assign(created_at=1.5).to_parquet(typed / "leads.parquet", index=False)
    data.activities.to_parquet(typed / "activities.parquet", index=False)
    code, output = refused("--data", str(typed), "--out", str(out), "--scheduler", nowhere)
    assert code == 2, output
    assert "leads.created_at: wrong type double, expected timestamps" in output

    code, output = refused("--data", str(tmp_path / "missing"), "--out", str(out), "--scheduler", nowhere)
    assert code == 3, output
    assert "no such folder" in output
    code, output = refused("--data", str(data.folder), "--out", str(tmp_path / "scores.xlsx"))
    assert code == 2, output
    assert "name a .parquet or .csv file" in output
    code, output = refused("--store", f"sqlite:///{tmp_path / 'service.db'}", "--out", str(out), "--scheduler", nowhere)
    assert code == 2, output
    assert "a remote cluster's workers cannot read" in output


def test_a_bad_value_deep_in_the_data_fails_the_job_by_name_and_keeps_the_last_output(
    data: Data, cluster: LocalCluster, tmp_path: Path
) -> None:
    csv = tmp_path / "csv"
    csv.mkdir()
    leads = data.leads.astype({"employee_count": object})
    leads.loc[leads.index[-3], "employee_count"] = "many"
    leads.to_csv(csv / "leads.csv", index=False)
    data.activities.to_csv(csv / "activities.csv", index=False)
    out = tmp_path / "scores.csv"
    out.write_text("yesterday's scores\n")
    done = _cli("--data", str(csv), "--out", str(out), "--scheduler", cluster.scheduler_address,
                uri=data.tracking_uri, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "leads.employee_count: values are not numbers (1 rows" in done.stdout
    assert out.read_text() == "yesterday's scores\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_csv_tables_on_a_local_cluster_of_the_command_itself(data: Data, tmp_path: Path) -> None:
    csv = tmp_path / "csv"
    csv.mkdir()
    some = data.leads[data.leads["account_id"].isin(data.leads["account_id"].unique()[:200])]
    some.to_csv(csv / "leads.csv", index=False)
    data.activities[data.activities["lead_id"].isin(some["lead_id"])].to_csv(csv / "activities.csv", index=False)
    out = tmp_path / "scores.parquet"
    done = _cli("--leads", str(csv / "leads.csv"), "--activities", str(csv / "activities.csv"), "--out", str(out),
                "--as-of", data.as_of.isoformat(), "--workers", "1", "--worker-memory", "2GB", "--open-only",
                uri=data.tracking_uri, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "on 1 worker(s)" in done.stdout
    scores = pd.read_parquet(out)
    assert len(scores) and scores["lead_id"].is_unique
    assert set(scores["lifecycle_stage"]) <= {"lead", "mql", "sal", "recycled"}
    assert scores["readiness_stage"].notna().all()


def test_the_cluster_builds_the_in_process_training_set_row_for_row_though_its_workers_die(
    data: Data, trained: Trained, cluster: LocalCluster
) -> None:
    leads = source_of(str(data.folder / "leads"), "leads")
    activities = source_of(str(data.folder / "activities"), "activities")
    local_leads = validate_leads(data.leads)
    local = build_training_set(local_leads, validate_activities(data.activities, local_leads))
    killed: list[int] = []
    with Client(cluster.scheduler_address) as client:

        def kill_once(done: int, total: int) -> None:
            if not killed:  # after the first partition's features: the rest, and the builder, are lost with them
                killed.extend(_kill_every_worker(client))

        built = build_on_cluster(client, leads, activities, partitions=5, progress=kill_once)
        client.wait_for_workers(2, timeout=60)
    assert len(killed) == 2
    assert built.n_activities == len(data.activities)
    assert built.training_set.data_end == local.data_end
    assert built.training_set.builder.fit_encoder_.vocabularies_ == local.builder.fit_encoder_.vocabularies_
    pd.testing.assert_frame_equal(built.training_set.readiness, local.readiness)
    pd.testing.assert_frame_equal(built.training_set.fit, local.fit)
    assert len(built.example_activities) and built.example_activities["lead_id"].isin(data.leads["lead_id"]).all()


def test_train_on_a_cluster_registers_a_challenger_that_scores(
    data: Data, cluster: LocalCluster, tmp_path: Path
) -> None:
    registry = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = _env(registry)
    done = subprocess.run(
        [sys.executable, "-m", "leadscore", "train", "--data", str(data.folder), "--scheduler",
         cluster.scheduler_address],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    loaded = load_model(registry, "lead-scorer", "challenger")
    run = mlflow.MlflowClient(registry).get_run(str(loaded.run_id))
    assert int(run.data.params["n_activities"]) == len(data.activities)
    assert int(run.data.params["n_leads"]) == len(data.leads)
    lead = data.leads.iloc[0].to_dict()
    score = loaded.scorer.score_record(lead, [], data.as_of)
    assert 0 < score.fit_probability < 1

    refused = CliRunner().invoke(app, ["train", "--data", str(data.folder), "--workers", "2"],
                                 env={"MLFLOW_TRACKING_URI": registry, "COLUMNS": "200"})  # fmt: skip
    assert refused.exit_code == 2, refused.output
    assert "add --scheduler local" in refused.output


def test_score_batch_scores_the_open_leads_of_the_service_store_as_score_by_id_does(
    data: Data, server: Server, tmp_path: Path
) -> None:
    from tests.integration.test_serving import ADMIN_KEY  # noqa: PLC0415 -- imported where needed, as conftest does

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    profile = {"account_id": "NORTHWIND", "industry": "software", "employee_count": 850, "seniority": "director",
               "department": "it", "email_domain": "northwind.com"}  # fmt: skip
    created = (now - dt.timedelta(days=40)).isoformat()
    won = {stamp: (now - dt.timedelta(days=days)).isoformat()
           for stamp, days in (("mql_at", 30), ("sal_at", 29), ("sql_at", 20), ("won_at", 3))}  # fmt: skip
    for lead_id, extra in (("W-1", {}), ("W-2", won), ("W-3", {"seniority": "manager"})):
        put = server.send("PUT", f"/v1/leads/{lead_id}", ADMIN_KEY, {**profile, "created_at": created, **extra})
        assert put.status_code == 201, put.text
    touches = [{"lead_id": "W-1", "occurred_at": (now - dt.timedelta(days=d)).isoformat(), "activity_type": kind}
               for d, kind in ((9, "pricing_page_view"), (4, "webinar_attended"), (1, "demo_request"))]  # fmt: skip
    assert server.send("POST", "/v1/activities", ADMIN_KEY, {"activities": touches}).status_code == 200
    as_of = now + dt.timedelta(seconds=1)
    out = tmp_path / "open.parquet"
    done = _cli("--store", server.store_url, "--out", str(out), "--as-of", as_of.isoformat(), "--in-process",
                uri=data.tracking_uri, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    scores = pd.read_parquet(out).set_index("lead_id")
    assert sorted(scores.index) == ["W-1", "W-3"]  # the won colleague counts for them, but is not rescored
    by_id = server.get(f"/v1/leads/W-1/score?as_of={as_of.isoformat().replace('+00:00', 'Z')}")
    assert by_id.status_code == 200, by_id.text
    api = flat_row(by_id.json())
    row = scores.loc["W-1"]
    for column in ("fit_score", "grade", "readiness_probability", "readiness_stage", "queue", "behaviour_reasons"):
        assert row[column] == api[column], column
    assert "requested a demo" in row["behaviour_reasons"]
    assert row["thresholds_version"] == api["thresholds_version"] == 1
