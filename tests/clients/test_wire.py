"""The client's copy of the wire constants matches the server's, name by name."""

import pytest
import wedsync_client.wire as client_wire

from realtime import protocol

NAMES = [name for name in vars(client_wire) if name.isupper()]


def test_wire__the_client_keeps_every_constant_it_uses():
    assert set(NAMES) >= {"MAX_FRAME_BYTES", "CLOSE_UNAUTHENTICATED", "CLOSE_OVERLOADED"}


@pytest.mark.parametrize("name", NAMES)
def test_wire__each_constant_matches_the_server(name):
    assert getattr(client_wire, name) == getattr(protocol, name)
