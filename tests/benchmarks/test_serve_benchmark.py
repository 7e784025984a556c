"""The serve benchmark's fairness rule: connections are counted per worker, and an uneven spread is opened afresh."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.serve import connections_per_process, is_balanced

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="counts connections from Linux's /proc")


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield server
    server.close()


def test_connections_are_counted_for_the_process_that_accepted_them(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        # Connected but not yet accepted: they wait in the listener's queue, held by no process.
        assert connections_per_process(os.getpgid(0), port) == ()
        accepted = [listener.accept()[0] for _ in range(2)]
        # This process holds the two accepted ends; its client ends have other local ports and are not counted.
        assert connections_per_process(os.getpgid(0), port) == (2,)
        for conn in accepted:
            conn.close()
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize(
    ("held", "balanced"),
    [((8, 8), True), ((12, 4), True), ((13, 3), False), ((16,), False), ((15, 1), False)],
)
def test_each_worker_must_hold_half_its_share_of_the_connections(held: tuple[int, ...], balanced: bool) -> None:
    assert is_balanced(held, concurrency=16, workers=2) is balanced
