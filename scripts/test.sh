#!/usr/bin/env bash
# Set up the locked environment on a fresh machine and run every check CI runs: lint, types, imports, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check "uv==0.13.9"
python3 -m uv sync --frozen
python3 -m uv run ruff check .
python3 -m uv run ruff format --check .
python3 -m uv run mypy
python3 -m uv run lint-imports
python3 -m uv run pytest "$@"
