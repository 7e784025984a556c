"""The `leadscore` command starts at once: help, the quickstart's first words, and every service worker it spawns."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

# The console script a user runs (`uv run leadscore ...`), installed beside the interpreter.
CONSOLE_SCRIPT = Path(sys.executable).with_name("leadscore")
# Libraries that take seconds to import: none of them may load before a command needs them.
HEAVY = ("pandas", "numpy", "mlflow", "lightgbm", "sklearn", "numba", "fastapi", "uvicorn", "sqlalchemy", "pydantic")
HELP_SECONDS = 1.0
TRIES = 3  # the best of a few runs: a loaded machine can stall any one process


def test_importing_the_command_line_loads_no_heavy_library() -> None:
    probe = "import sys, leadscore.cli; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    loaded = set(
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    )
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def _seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, check=True, timeout=60)
    return time.perf_counter() - start


def test_help_answers_in_under_a_second() -> None:
    best = min(_seconds([str(CONSOLE_SCRIPT), "--help"]) for _ in range(TRIES))
    assert best < HELP_SECONDS, f"leadscore --help took {best:.2f} s"


def test_the_quickstart_says_what_it_does_within_its_first_second(tmp_path: Path) -> None:
    firsts = []
    for attempt in range(TRIES):
        start = time.perf_counter()
        process = subprocess.Popen(
            [str(CONSOLE_SCRIPT), "quickstart", "--workdir", str(tmp_path / f"demo{attempt}"),
             "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            said = [process.stdout.readline().decode()]
            firsts.append(time.perf_counter() - start)
            while "[1/4]" not in said[-1] and len(said) < 5:
                said.append(process.stdout.readline().decode())
        finally:
            process.kill()
            process.wait(timeout=30)
        assert "quickstart" in said[0] and "[1/4] simulating" in said[-1], said
    assert min(firsts) < HELP_SECONDS, f"the first line came after {min(firsts):.2f} s"
