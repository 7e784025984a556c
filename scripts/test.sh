#!/usr/bin/env bash
# Set up the locked environment on a fresh machine and run every check CI runs: lint, types, imports, tests (the
# documentation site's strict build among them: tests/docs).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check "uv==0.13.9"
# Compiled once here: this machine sets PYTHONDONTWRITEBYTECODE, so without it every process the tests start (servers,
# command lines, Dask workers) would compile MLflow, pandas and LightGBM from source again.
python3 -m uv sync --frozen --compile-bytecode
python3 -m uv run ruff check .
python3 -m uv run ruff format --check .
python3 -m uv run mypy
python3 -m uv run mypy docs/hooks  # the docs' build hook is no package: checked on its own, with the same settings
python3 -m uv run lint-imports
# The store tests need PostgreSQL 15 at 127.0.0.1:5432 (trust authentication): start the cluster where it is down.
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
    if command -v pg_ctlcluster >/dev/null; then
        pg_ctlcluster --skip-systemctl-redirect 15 main start || true
    fi
fi
# The browser test drives Debian's Chromium: Playwright cannot download its own browser builds here.
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
    else
        echo "scripts/test.sh: /usr/bin/chromium is missing and only root can install it:" \
            "run 'apt-get install chromium' as root (the thresholds page's browser test needs it)" >&2
        exit 1
    fi
fi
python3 -m uv run pytest "$@"
