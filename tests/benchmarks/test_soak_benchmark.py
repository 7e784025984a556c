"""The soak: its mix, how it judges answers and reads the score log back, and a few seconds of it on a real service."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from benchmarks.soak import BATCH, BATCH_SIZE, MALFORMED, SINGLE, Columns, Store, Tally, build_mix, read_back
from serving.store import make_engine, score_log
from tests.conftest import Trained
from tests.integration.conftest import ChampionStore

REPO = Path(__file__).resolve().parents[2]
ROWS = 2
# One worker: uvicorn then serves in its own process, which starts in half the time of two (the soak's whole cost
# here is the service's start-up; the load lasts ROWS x 2 s). The benchmark's real runs use two.
WORKERS = 1
SOAK_TIMEOUT_S = 300


def _bodies(n: int) -> list[dict[str, Any]]:
    return [{"lead": {"lead_id": f"L{i}", "employee_count": 10}, "activities": [], "colleagues": []} for i in range(n)]


def test_the_mix_is_mostly_single_leads_with_a_few_batches_and_malformed_requests() -> None:
    mix = build_mix(_bodies(2 * BATCH_SIZE))
    kinds = Counter(mix.request(i).kind for i in range(1000))
    assert kinds == {SINGLE: 930, BATCH: 20, MALFORMED: 50}
    assert {r.records for r in mix.batch} == {BATCH_SIZE}
    assert {r.records for r in mix.malformed} == {0}  # a 422 acknowledges nothing
    assert len(set(r.wire for r in mix.malformed)) == len(mix.malformed)


def test_answers_are_judged_by_what_was_asked() -> None:
    tally = Tally()
    tally.answers.update({(SINGLE, 200): 9, (MALFORMED, 422): 3, (BATCH, 200): 1})  # as expected
    assert tally.unexpected() == Counter()
    tally.answers.update({(MALFORMED, 200): 1, (MALFORMED, 500): 1, (SINGLE, 422): 2, (BATCH, 503): 1, (SINGLE, 0): 4})
    assert tally.unexpected() == Counter({200: 1, 500: 1, 422: 2, 503: 1})
    assert tally.no_answer() == 4


def test_the_readback_finds_lost_and_duplicated_records_by_request_id(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'service.db'}"
    engine = make_engine(url)
    earlier = {"request_id": "before", "lead_id": "L0"}  # a record from before the run is not the run's
    row = {"scored_at": dt.datetime.now(dt.UTC), "model_version": "1", "thresholds_version": 1, "inputs": "{}",
           "outputs": "{}"}  # fmt: skip
    with engine.begin() as conn:
        conn.execute(insert(score_log), [earlier | row])
    store = Store(url)
    logged = [("once", "L1"), ("twice", "L1"), ("twice", "L1"), ("half", "L1"), ("unasked", "L9")]
    with engine.begin() as conn:
        conn.execute(insert(score_log), [{"request_id": r, "lead_id": lead} | row for r, lead in logged])
    acknowledged = {"once": 1, "twice": 1, "half": 2, "missing": 1}

    found = read_back(store, None, acknowledged, (True, 0.0))

    assert (found.lost, found.duplicated, found.unacknowledged_records) == (2, 1, 1)
    assert (found.acknowledged_records, found.stored_records) == (5, 4)
    store.engine.dispose()
    engine.dispose()


@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="reads the service's memory and files from /proc")
def test_a_short_soak_prints_a_row_per_period_and_finds_every_acknowledged_score(
    trained: Trained, champion_store: ChampionStore, tmp_path: Path
) -> None:
    uri = champion_store.copy_to(tmp_path / "registry")
    data = tmp_path / "data"
    data.mkdir()
    trained.leads.to_parquet(data / "leads.parquet", index=False)
    trained.activities.to_parquet(data / "activities.parquet", index=False)
    command = [
        sys.executable, "-m", "benchmarks.soak", "--minutes", str(ROWS), "--seconds-per-row", "2",
        "--workers", str(WORKERS), "--rate", "25", "--tracking-uri", uri, "--data-dir", str(data),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=SOAK_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-5000:]
    lines = done.stdout.splitlines()

    # The header, then row 0 (before the load) and one row per period, each with a value in every column.
    rows = [line.split() for line in lines if re.match(r"\s*\d+\s", line)]
    assert [int(row[0]) for row in rows] == list(range(ROWS + 1))
    assert all(len(row) == len(Columns(archive=False, workers=WORKERS).names) for row in rows)
    for row in rows[1:]:
        single, batch, malformed, errors, no_answer = row[1:6]
        assert int(single) > 0 and int(malformed) > 0 and batch.isdigit()
        assert (errors, no_answer) == ("0", "0")
        rss, fds = row[10].split("/"), row[11].split("/")
        assert len(rss) == len(fds) == WORKERS and all(float(v) > 0 for v in rss)

    summary = {m.group(1).strip(): m.group(0) for m in re.finditer(r"│ ([^│]+?)\s+│.*", done.stdout)}
    assert "lost 0, duplicated 0" in summary["acknowledged score records in the score log once"]
    for label in ("worker 1", "store bytes per score record, whole run", "journal MB at the end"):
        assert any(key.startswith(label) for key in summary), label
    assert "soak gate passed" in done.stderr
