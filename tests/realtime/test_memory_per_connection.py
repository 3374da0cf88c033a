"""What an idle connection holds (docs/adr/0035-memory-per-connection.md).

A real uvicorn server, configured by ``wedsync.server.serve.config``, runs in the test's
own event loop, so that the test can look at the server's objects of a connection:
uvicorn's protocol keeps no ``asyncio.Queue``, ``asyncio.Event`` or handshake, the scope
keeps no headers or token, the consumer has no ``__dict__``. Sizes and RSS are measured
by the benchmark (``bench/memtrace.py``), not asserted here.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from realtime.node import get_node
from realtime.tokens import token_issue
from tests.factories import make_user
from tests.servers import free_port
from wedsync.server import serve
from wedsync.server.websocket import Inbox, LeanWebSocketProtocol, Writable, restart_parser

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]


@pytest.fixture
def token() -> str:
    return token_issue(user=make_user())


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[uvicorn.Server]:
    """The production configuration, served in this loop (its logging left as it is)."""
    monkeypatch.setattr(serve, "log_config", lambda: None)
    running = uvicorn.Server(serve.config("127.0.0.1", free_port()))
    task = asyncio.ensure_future(running.serve())
    while not running.started:
        assert not task.done(), task
        await asyncio.sleep(0.01)
    yield running
    running.should_exit = True
    await task


def _url(server: uvicorn.Server, token: str) -> str:
    return f"ws://127.0.0.1:{server.config.port}/ws/realtime/?token={token}"


async def _pong(ws: Any, ref: str) -> None:
    await ws.send(orjson.dumps({"type": "ping", "ref": ref}).decode())
    frame: dict[str, Any] = {}
    while frame.get("ref") != ref:
        frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
    assert frame == {"type": "pong", "ref": ref}


def _parser_locals_hold_a_request(conn: Any) -> bool:
    generator = conn.parser
    while generator is not None:
        if any(isinstance(v, Request) for v in generator.gi_frame.f_locals.values()):
            return True
        generator = generator.gi_yieldfrom
    return False


def _connection(server: uvicorn.Server) -> LeanWebSocketProtocol:
    (protocol,) = server.server_state.connections
    return protocol


async def test_idle_connection__server_keeps_no_queue_event_or_handshake(server, token):
    # given an accepted connection that has exchanged a frame
    async with connect(_url(server, token), compression=None) as ws:
        await _pong(ws, "p1")
        protocol = _connection(server)

        # then uvicorn's protocol holds the lean queue and flag, and not the handshake
        assert isinstance(protocol, LeanWebSocketProtocol)
        assert type(protocol.queue) is Inbox and type(protocol.writable) is Writable
        assert protocol.request is None and protocol.response is None
        assert not _parser_locals_hold_a_request(protocol.conn)
        # and the scope it shares with the application keeps no headers, no token, no user
        assert "headers" not in protocol.scope
        assert "query_string" not in protocol.scope
        assert "user" not in protocol.scope
        # nor the ASGI versions, the state copy or the paths: four keys are left
        assert sorted(protocol.scope) == ["client", "path", "scheme", "type"]


async def test_idle_connection__the_hub_holds_a_users_connections_in_a_tuple(server, token):
    async with connect(_url(server, token), compression=None) as one:
        await _pong(one, "p1")
        (consumer,) = get_node().consumers.consumers()
        user_id = consumer.user.pk
        hub = get_node().hub
        assert hub.users[user_id] == (consumer,)

        # a second connection of the same user joins the tuple; its close leaves the first
        async with connect(_url(server, token), compression=None) as two:
            await _pong(two, "p2")
            assert len(hub.users[user_id]) == 2
        for _ in range(200):
            if len(hub.users.get(user_id, ())) == 1:
                break
            await asyncio.sleep(0.02)
        assert hub.users[user_id] == (consumer,)


async def test_idle_connection__the_consumer_has_no_dict_and_no_strikes_deque(server, token):
    async with connect(_url(server, token), compression=None) as ws:
        await _pong(ws, "p1")
        (consumer,) = get_node().consumers.consumers()

        assert not hasattr(consumer, "__dict__")
        # the limiter every frame goes through keeps its strikes only once there is one
        assert consumer.limiter is not None
        assert consumer.limiter._strikes is None


def _awaiting(task: asyncio.Task) -> list[str]:
    """The coroutines a task is suspended in, outermost first, by name."""
    names, awaited = [], task.get_coro()
    while asyncio.iscoroutine(awaited):
        names.append(awaited.cr_code.co_qualname)
        awaited = awaited.cr_await
    return names


async def test_idle_connection__three_coroutines_wait_for_the_next_frame(server, token):
    # given an idle connection
    async with connect(_url(server, token), compression=None) as ws:
        await _pong(ws, "p1")
        (task,) = server.server_state.tasks

        # then its task waits in uvicorn's run_asgi, the consumer and the protocol's
        # receive: no proxy-headers, router or authentication layer, no inbox coroutine
        assert _awaiting(task) == [
            "WebSocketsSansIOProtocol.run_asgi",
            "RealtimeConsumer.__call__",
            "LeanWebSocketProtocol.receive",
        ]


async def test_idle_connection__uvicorns_protocol_has_no_instance_dict(server, token):
    async with connect(_url(server, token), compression=None) as one:
        await _pong(one, "p1")
        async with connect(_url(server, token)) as two:  # this one compresses
            await _pong(two, "p2")
            first, second = server.server_state.connections

            # every attribute uvicorn sets is a slot
            assert vars(first) == {} and vars(second) == {}
            # and the compression settings are one factory for both, not one each
            shared = first.conn.available_extensions
            assert shared is second.conn.available_extensions
            assert [type(f) for f in shared] == [ServerPerMessageDeflateFactory]


async def test_access_recheck__the_user_it_connected_as_is_freed(server, token):
    # given a connection, and the user object it was authenticated as
    async with connect(_url(server, token), compression=None) as ws:
        await _pong(ws, "p1")
        (consumer,) = get_node().consumers.consumers()
        connected_as = weakref.ref(consumer.user)

        # when the periodic access re-check takes the user as the database has it now
        await get_node().consumers.recheck_access()
        gc.collect()

        # then the connection holds that one only: the first is gone (the scope kept it)
        assert consumer.user.is_authenticated
        assert connected_as() is None
        await _pong(ws, "p2")


async def test_lean_protocol__frames_in_order_and_the_close_reaches_the_consumer(server, token):
    # given a client that sends several frames in one burst
    async with connect(_url(server, token), compression=None) as ws:
        await ws.send(orjson.dumps({"type": "ping", "ref": "a"}).decode())
        await ws.send(orjson.dumps({"type": "ping", "ref": "b"}).decode())
        await ws.send(orjson.dumps({"type": "ping", "ref": "c"}).decode())
        refs = [orjson.loads(await asyncio.wait_for(ws.recv(), 10))["ref"] for _ in range(3)]
        assert refs == ["a", "b", "c"]
        assert len(get_node().consumers) == 1

    # when it closes, then the consumer hears of it and is gone
    for _ in range(200):
        if not get_node().consumers:
            break
        await asyncio.sleep(0.02)
    assert len(get_node().consumers) == 0


async def test_inbox__in_order_and_a_cancelled_wait_leaves_it_usable():
    inbox = Inbox()
    waiting = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting

    reader = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert await reader == 1
    assert not inbox.empty()
    assert await inbox.get() == 2
    assert inbox.empty()


async def test_writable__waits_until_set_and_one_cancelled_sender_leaves_the_other():
    writable = Writable()
    assert await writable.wait() is True  # set: no wait

    # given the socket's buffer full, and two senders waiting
    writable.clear()
    first = asyncio.ensure_future(writable.wait())
    second = asyncio.ensure_future(writable.wait())
    await asyncio.sleep(0)
    assert not first.done() and not second.done()

    # when one is cancelled, then the other still waits, and goes on once it drains
    first.cancel()
    await asyncio.sleep(0)
    assert not second.done()
    writable.set()
    assert await asyncio.wait_for(second, 1) is True
    assert first.cancelled()


def _opened() -> tuple[ServerProtocol, ClientProtocol]:
    """A server and a client protocol after the opening handshake, sans I/O."""
    server, client = ServerProtocol(max_size=1024), ClientProtocol(parse_uri("ws://h/ws"))
    client.send_request(client.connect())
    server.receive_data(b"".join(client.data_to_send()))
    (request,) = server.events_received()
    server.send_response(server.accept(request))
    client.receive_data(b"".join(server.data_to_send()))
    client.events_received()
    return server, client


def test_restart_parser__at_a_frame_boundary_drops_the_request_and_frames_still_parse():
    server, client = _opened()
    assert _parser_locals_hold_a_request(server)

    assert restart_parser(server) is True

    assert not _parser_locals_hold_a_request(server)
    client.send_text(b"hello")
    server.receive_data(b"".join(client.data_to_send()))
    assert server.events_received() == [Frame(Opcode.TEXT, b"hello")]


def test_restart_parser__mid_frame_leaves_the_parser_alone():
    # given half a frame received (its header, not its payload)
    server, client = _opened()
    client.send_text(b"x" * 200)
    data = b"".join(client.data_to_send())
    server.receive_data(data[:8])

    # then the parser is not replaced, and the frame completes intact
    assert restart_parser(server) is False
    server.receive_data(data[8:])
    assert server.events_received() == [Frame(Opcode.TEXT, b"x" * 200)]


def test_restart_parser__the_frame_limit_still_holds():
    server, client = _opened()
    restart_parser(server)

    client.send_text(b"x" * 2048)  # over max_size=1024
    server.receive_data(b"".join(client.data_to_send()))

    assert server.close_sent is not None and server.close_sent.code == 1009
