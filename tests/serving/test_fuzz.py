"""Schemathesis against the app in-process: no generated request, valid or not, gets a server error (5xx)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.app import create_app
from serving.settings import Settings
from tests.serving.conftest import ADMIN, ADMIN_KEY, SCORING, SCORING_KEY, Registry, service_settings

# Examples per operation: enough to reach every field with odd values, few enough to keep the suite fast.
FUZZ_EXAMPLES = 30

# Operations are collected from the app's own OpenAPI document; building it loads no model (that is the lifespan's
# job), so no store is touched. Requests go to the session's running app (the `client` fixture).
# (`schemathesis.pytest.from_fixture` would defer this to a fixture, but fails under pytest 9: no Node._nodeid.)
schema = schemathesis.openapi.from_dict(create_app(Settings(api_keys=[SCORING_KEY], admin_keys=[ADMIN_KEY])).openapi())


class _LifespanRunsElsewhere:
    """The app, for a client that must not start its lifespan again (the session's TestClient runs it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            # ASGI: an app that raises on the lifespan scope does not support it; the server goes on without.
            raise NotImplementedError("the lifespan runs in the session's TestClient")
        await self.app(scope, receive, send)


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples on every run, so CI is reproducible
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_no_server_errors(case: schemathesis.Case[Any], client: TestClient) -> None:
    app = _LifespanRunsElsewhere(client.app)
    case.call_and_validate(headers=SCORING, checks=[not_a_server_error], app=app)


# Admin operations fuzzed with the admin key, on a service of their own: valid policies get saved there.
admin_schema = schema.include(path_regex="^/v1/(thresholds|admin)")


@pytest.fixture(scope="module")
def admin_client(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = create_app(service_settings(registry, tmp_path_factory.mktemp("fuzz-admin")))
    with TestClient(app) as test_client:
        yield test_client


@admin_schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_no_server_errors_with_the_admin_key(case: schemathesis.Case[Any], admin_client: TestClient) -> None:
    app = _LifespanRunsElsewhere(admin_client.app)
    case.call_and_validate(headers=ADMIN, checks=[not_a_server_error], app=app)
