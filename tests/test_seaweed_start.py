"""The test object store starts even when a port it picked is taken before weed binds it (a CI flake)."""

from __future__ import annotations

import socket

import pytest

from facelift import testing
from facelift.testing import SeaweedS3


def test_a_port_taken_between_pick_and_bind_costs_a_retry_not_the_session(tmp_path, monkeypatch) -> None:
    """Another process (an xdist neighbour's Ray or Prefect) can bind a port after ``free_port`` released it."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    real = testing.free_port
    picks = iter([taken.getsockname()[1]])
    monkeypatch.setattr(testing, "free_port", lambda: next(picks, None) or real())
    server = SeaweedS3(tmp_path / "weed").start()
    try:
        assert server.proc.poll() is None
        assert str(taken.getsockname()[1]) not in " ".join(server.ports)
        server.make_bucket("facelift")
    finally:
        server.stop()
        taken.close()


def test_fixed_ports_that_are_taken_fail_naming_the_cause(tmp_path) -> None:
    """Ports the caller chose are not changed behind its back; the error carries weed's own last words."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(RuntimeError, match=r"weed exited with \d+.*(bind|address already in use)") as err:
            SeaweedS3(tmp_path / "weed", s3_port=testing.free_port(),
                      ports=[f"-master.port={taken.getsockname()[1]}"]).start()
        assert "weed.log" in str(err.value)
    finally:
        taken.close()
