"""The port reservation of the test harness (tests/conftest.py `reserved_port`): a port is held from the moment it
is handed out until its block ends, so no other reservation (in this or another test session) gets it before the
child that listens on it has bound it. The old `free_port()` released the port before torchrun bound it."""

import conftest


class Draws:
    """Stands in for the harness's random.Random: hands out the given ports in order."""

    def __init__(self, ports):
        self.ports = iter(ports)

    def __call__(self, seed):
        return self

    def randint(self, low, high):
        port = next(self.ports)
        assert low <= port <= high
        return port


def test_a_reserved_port_is_not_handed_out_again_until_its_block_ends(monkeypatch):
    with conftest.reserved_port() as first, conftest.reserved_port() as second:
        pass  # two ports the harness itself finds free
    monkeypatch.setattr(conftest.random, "Random", Draws([first, first, second, first]))
    with conftest.reserved_port() as held:
        assert held == first
        with conftest.reserved_port() as other:  # draws `first` again: it is still held, so it is skipped
            assert other == second
    with conftest.reserved_port() as again:  # the block ended: the port is free again
        assert again == first
