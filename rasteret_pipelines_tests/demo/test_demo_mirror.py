"""free_port_pair: two consecutive free ports for the demo mirror (STAC API, COG server)."""

from __future__ import annotations

import random
import socket

import pytest

from rasteret_pipelines_demo import demo_mirror
from rasteret_pipelines_demo.demo_mirror import NoFreePortPairError, free_port_pair


def test_both_ports_of_the_pair_can_be_bound():
    for _ in range(20):
        port = free_port_pair()
        assert 1024 <= port < 65535
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", port))
            b.bind(("127.0.0.1", port + 1))


def test_the_pair_is_below_the_ephemeral_range(monkeypatch):
    monkeypatch.setattr(demo_mirror, "_ephemeral_range", lambda: (32768, 60999))
    ports = {free_port_pair(rng=random.Random(seed)) for seed in range(10)}
    assert all(12768 <= p and p + 1 < 32768 for p in ports)


class PortsTaken:
    """A stand-in for the ``socket`` module in ``demo_mirror``: ``bind`` fails on the ports in
    ``taken`` and records every port asked for, so which ports are free is the test's choice
    and not the host's (other processes take real ports at any moment)."""

    AF_INET, SOCK_STREAM = socket.AF_INET, socket.SOCK_STREAM

    def __init__(self, taken: set[int]):
        self.taken, self.binds = taken, []
        ports = self

        class Socket:
            def __init__(self, *args):
                self.port = None

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return None

            def bind(self, address):
                ports.binds.append(address[1])
                if address[1] in ports.taken:
                    raise OSError(98, "Address already in use")
                self.port = address[1]

            def getsockname(self):
                return ("127.0.0.1", self.port)

        self.socket = Socket


def test_a_taken_second_port_is_skipped(monkeypatch):
    """The pair's second port is taken: that candidate is rejected, the next one is returned."""
    ports = PortsTaken({20001})
    candidates = iter([20000, 20010])

    class Fixed(random.Random):
        def randrange(self, *args):
            return next(candidates)

    monkeypatch.setattr(demo_mirror, "socket", ports)
    monkeypatch.setattr(demo_mirror, "_ephemeral_range", lambda: (40000, 60999))
    assert free_port_pair(rng=Fixed()) == 20010
    assert ports.binds == [20000, 20001, 20010, 20011]


def test_no_pair_raises_a_typed_error(monkeypatch):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]

        class Always(random.Random):
            def randrange(self, *args):
                return taken  # every candidate's first port is in use

        monkeypatch.setattr(demo_mirror, "_ephemeral_range", lambda: (40000, 60999))
        with pytest.raises(NoFreePortPairError, match="no two consecutive free ports"):
            free_port_pair(attempts=5, rng=Always())
    assert issubclass(NoFreePortPairError, RuntimeError)
