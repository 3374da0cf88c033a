"""permessage-deflate through real servers (``REALTIME_WS_COMPRESSION``,
docs/adr/0034-bytes-on-the-wire.md): negotiated with a client that offers it when the
setting is on, never when it is off, frames flow either way, and the frame limit holds
for what a compressed frame inflates to."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import PerMessageDeflate

from realtime.protocol import MAX_FRAME_BYTES
from realtime.tokens import token_issue
from tests.factories import make_user
from tests.servers import Server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


@pytest.fixture(scope="module")
def servers(django_db_setup: Any, django_db_blocker: Any) -> Iterator[dict[bool, Server]]:
    """One server with compression on, one with it off, started side by side, for the
    module."""
    with ThreadPoolExecutor(2) as pool:
        on = pool.submit(Server, "uvicorn", REALTIME_WS_COMPRESSION="true")
        off = pool.submit(Server, "uvicorn", REALTIME_WS_COMPRESSION="false")
        running = {True: on.result(), False: off.result()}
    yield running
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(Server.stop, running.values()))


@pytest.fixture(scope="module")
def token(django_db_setup: Any, django_db_blocker: Any) -> str:
    """A user's token, committed for the module (the servers read the user)."""
    with django_db_blocker.unblock():
        return token_issue(user=make_user())


async def _negotiated_and_pong(server: Server, token: str, compression: str | None):
    """The extension header of the handshake's answer, the client's extensions, and
    the pong of a ping (a data frame from the server: compressed when negotiated)."""
    async with connect(f"{server.ws_url}?token={token}", compression=compression) as ws:
        await ws.send(orjson.dumps({"type": "ping", "ref": "p1"}).decode())
        pong: dict[str, Any] = {}
        while pong.get("ref") != "p1":
            pong = orjson.loads(await asyncio.wait_for(ws.recv(), 15))
        header = ws.response.headers.get("Sec-WebSocket-Extensions")
        return header, [type(e) for e in ws.protocol.extensions], pong


async def test_compression_on__a_client_offering_deflate_gets_it(servers, token):
    # when a client offering permessage-deflate (as browsers do) connects
    header, extensions, pong = await _negotiated_and_pong(servers[True], token, "deflate")

    # then the server accepts it, and compressed frames arrive intact
    assert header is not None and header.startswith("permessage-deflate"), header
    assert extensions == [PerMessageDeflate]
    assert pong == {"type": "pong", "ref": "p1"}


async def test_compression_on__a_client_offering_nothing_gets_plain_frames(servers, token):
    header, extensions, pong = await _negotiated_and_pong(servers[True], token, None)

    assert header is None
    assert extensions == []
    assert pong["type"] == "pong"


async def test_compression_off__an_offer_of_deflate_is_declined(servers, token):
    header, extensions, pong = await _negotiated_and_pong(servers[False], token, "deflate")

    assert header is None
    assert extensions == []
    assert pong["type"] == "pong"


async def test_compression_on__a_frame_over_the_limit_once_inflated_closes_1009(servers, token):
    # given a frame that deflates to a few hundred bytes but inflates past the protocol's
    # 64 KiB (PROTOCOL §1): a small frame on the wire must not buy a large one in memory
    frame = orjson.dumps({"type": "ping", "ref": "p2", "pad": "a" * (MAX_FRAME_BYTES + 1)})
    async with connect(f"{servers[True].ws_url}?token={token}", compression="deflate") as ws:
        # when it is sent
        await ws.send(frame.decode())

        # then the connection is closed with 1009, as for an uncompressed one
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 15)
    assert ws.close_code == 1009
