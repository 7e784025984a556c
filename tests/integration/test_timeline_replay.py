"""The replay: a simulated funnel fed through the ingest API in time order, exported, gives the simulator's tables back.

Lead creations, lifecycle stamps and touches are sent as a CRM would send them as they happen (PUT /v1/leads/{id},
POST /v1/activities); a few leads are erased on the way (DELETE /v1/leads/{id}). `leadscore export` must then write
the simulator's leads and activities tables exactly (same rows, values and dtypes), less the erased leads.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from httpx import Response
from typer.testing import CliRunner

from serving.app import create_app
from serving.settings import Settings
from tests.integration.conftest import ChampionStore
from tests.postgres import fresh_database
from timeline.schema import LIFECYCLE_STAMPS
from training.cli import app as cli
from training.config import SimulationConfig
from training.data import read_table
from training.simulator import SimulatedFunnel, simulate

pytestmark = pytest.mark.integration

INGEST_KEY = "ingest-key-for-the-replay"
ADMIN_KEY = "admin-key-for-the-replay"
# 150 leads: every stage, recycling, requalification and wins occur, and the replay takes seconds per store.
SIMULATION = SimulationConfig(n_leads=150, seed=21, oracle_max_rows=0, p_won_sample=0)
BATCH = 500  # touches per POST /v1/activities (the API takes up to LEADSCORE_MAX_INGEST_BATCH, 1,000 by default)
ERASED = 4  # leads erased during the replay, each after its second touch
MAX_RETRIES = 50  # 429 answers (backpressure) in a row before the replay gives up
PROFILE = (
    "account_id", "industry", "employee_count", "annual_revenue", "country", "region", "job_title", "seniority",
    "department", "email_domain", "source", "channel",
)  # fmt: skip
# Events at the same moment: a lead exists before its touches and stamps.
CREATE, STAMP, TOUCH = 0, 1, 2


@dataclass(frozen=True)
class Replayed:
    """The funnel, the leads erased during its replay, and the tables `leadscore export` wrote afterwards."""

    funnel: SimulatedFunnel
    erased: frozenset[str]
    erased_touches_sent: int  # touches of the erased leads stored before their erasure
    leads: pd.DataFrame
    activities: pd.DataFrame


def _iso(value: pd.Timestamp) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _present(value: Any) -> bool:
    return not (value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value)))


def _events(funnel: SimulatedFunnel) -> list[tuple[pd.Timestamp, int, int, str, dict[str, Any]]]:
    """(time, kind, sequence, lead_id, payload) for every creation, stamp and touch, in the order they happened."""
    events: list[tuple[pd.Timestamp, int, int, str, dict[str, Any]]] = []
    for seq, lead in enumerate(funnel.leads.astype(object).to_dict("records")):
        profile = {name: lead[name] for name in PROFILE if _present(lead[name])}
        if "employee_count" in profile:
            profile["employee_count"] = int(profile["employee_count"])
        events.append(
            (lead["created_at"], CREATE, seq, lead["lead_id"], {"created_at": _iso(lead["created_at"]), **profile})
        )
        for stamp in LIFECYCLE_STAMPS:
            if _present(lead[stamp]):
                events.append((lead[stamp], STAMP, seq, lead["lead_id"], {stamp: _iso(lead[stamp])}))
    for seq, touch in enumerate(funnel.activities.astype(object).to_dict("records")):
        body = {
            "lead_id": touch["lead_id"],
            "occurred_at": _iso(touch["occurred_at"]),
            "activity_type": touch["activity_type"],
            # The contract's properties are a JSON string; the API takes the object.
            "properties": json.loads(touch["properties"]) if _present(touch["properties"]) else None,
            # The CRM's own id of the touch: two identical touches would be two, as in the simulator's table.
            "activity_id": f"sim-{seq}",
        }
        events.append((touch["occurred_at"], TOUCH, seq, touch["lead_id"], body))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    return events


def _send(client: TestClient, method: str, url: str, key: str, body: Any = None) -> Response:
    """One request, again after Retry-After while the service pushes back (429)."""
    for _ in range(MAX_RETRIES):
        answer: Response = client.request(method, url, json=body, headers={"X-API-Key": key})
        if answer.status_code != 429:
            return answer
        time.sleep(float(answer.headers.get("Retry-After", "1")))
    raise AssertionError(f"{method} {url}: still 429 after {MAX_RETRIES} tries")


def _replay(client: TestClient, funnel: SimulatedFunnel) -> tuple[frozenset[str], int]:
    """Feed the funnel through the API in time order; the leads erased on the way and their touches sent."""
    # Leads with at least two touches are erased right after their second one, when some of their history is stored.
    touch_counts = funnel.activities["lead_id"].value_counts()
    to_erase = set(touch_counts[touch_counts >= 2].index[:ERASED])
    seen: dict[str, int] = {}
    erased: set[str] = set()
    erased_touches = 0
    pending: list[dict[str, Any]] = []

    def flush() -> None:
        if pending:
            answer = _send(client, "POST", "/v1/activities", INGEST_KEY, {"activities": pending})
            assert answer.status_code == 200, answer.text
            assert answer.json()["stored"] == len(pending) and answer.json()["duplicates"] == 0, answer.text
            pending.clear()

    for _, kind, _, lead_id, body in _events(funnel):
        if lead_id in erased:
            continue  # an erased lead's later history never reaches the store
        if kind == TOUCH:
            pending.append(body)
            seen[lead_id] = seen.get(lead_id, 0) + 1
            if lead_id in to_erase and seen[lead_id] == 2:
                flush()
                answer = _send(client, "DELETE", f"/v1/leads/{lead_id}", ADMIN_KEY)
                assert answer.status_code == 200, answer.text
                erased.add(lead_id)
                erased_touches += seen[lead_id]
            elif len(pending) == BATCH:
                flush()
            continue
        flush()  # touches up to now go first: the store sees the history in the order it happened
        answer = _send(client, "PUT", f"/v1/leads/{lead_id}", INGEST_KEY, body)
        assert answer.status_code == (201 if kind == CREATE else 200), answer.text
    flush()
    return frozenset(erased), erased_touches


@contextmanager
def _store_url(kind: str, root: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{root / 'store.db'}"
    else:
        with fresh_database() as name:
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


@pytest.fixture(scope="module")
def funnel() -> SimulatedFunnel:
    return simulate(SIMULATION)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def replayed(
    request: pytest.FixtureRequest,
    funnel: SimulatedFunnel,
    champion_store: ChampionStore,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Replayed]:
    root = tmp_path_factory.mktemp(f"replay-{request.param}")
    tracking = champion_store.copy_to(root / "registry")
    with _store_url(request.param, root) as url:
        settings = Settings(
            tracking_uri=tracking,
            store_url=url,
            journal_dir=str(root / "journal"),
            admin_keys=[ADMIN_KEY],
            ingest_keys=[INGEST_KEY],
        )
        with TestClient(create_app(settings)) as client:
            erased, erased_touches = _replay(client, funnel)
        out = root / "export"
        done = CliRunner().invoke(cli, ["export", "--store", url, "--out", str(out)])
        assert done.exit_code == 0, done.output
        yield Replayed(funnel, erased, erased_touches, read_table(out / "leads"), read_table(out / "activities"))


def _by_key(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return frame.sort_values(keys, kind="stable", na_position="first").reset_index(drop=True)


def test_the_export_of_a_replayed_funnel_is_the_simulator_s_leads_table(replayed: Replayed) -> None:
    expected = replayed.funnel.leads[~replayed.funnel.leads["lead_id"].isin(replayed.erased)].copy()
    # The simulator writes some text with stray white space, as CRMs do; the API stores text as the score API reads
    # it, stripped (serving.schemas: str_strip_whitespace), so the export has it stripped too.
    for name in expected.columns[expected.dtypes.map(pd.api.types.is_string_dtype)]:
        expected[name] = expected[name].str.strip()
    assert len(replayed.leads) == len(expected)
    pd.testing.assert_frame_equal(
        _by_key(replayed.leads, ["lead_id"]), _by_key(expected, ["lead_id"]), check_exact=True
    )


def test_the_export_of_a_replayed_funnel_is_the_simulator_s_activities_table(replayed: Replayed) -> None:
    keys = ["lead_id", "occurred_at", "activity_type", "properties"]
    activities = replayed.funnel.activities
    expected = activities[~activities["lead_id"].isin(replayed.erased)]
    assert len(replayed.activities) == len(expected)
    # Properties compare as strings: the ingest keeps each object's key order, and the export writes it back as
    # json.dumps does, as the simulator wrote it (its objects have one key each, so order could not differ anyway).
    pd.testing.assert_frame_equal(_by_key(replayed.activities, keys), _by_key(expected, keys), check_exact=True)


def test_leads_erased_during_the_replay_are_not_exported(replayed: Replayed) -> None:
    assert len(replayed.erased) == ERASED and replayed.erased_touches_sent == 2 * ERASED
    assert not replayed.erased & set(replayed.leads["lead_id"])
    assert not replayed.erased & set(replayed.activities["lead_id"])
