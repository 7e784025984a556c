"""Benchmark tests share the integration tests' registered model (tests/integration/conftest.py)."""

from tests.integration.conftest import champion_store

__all__ = ["champion_store"]
