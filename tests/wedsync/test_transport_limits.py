"""Transport limits of ``python -m wedsync.serve`` (docs/operations.md, transport limits),
against real server processes and raw sockets: the frame size is enforced by the server
before it buffers a frame, clients that never complete their headers are cut off, the
concurrency cap covers WebSocket handshakes, and no token reaches a log line.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import http.client
import os
import socket
import struct
import time
from pathlib import Path

import orjson
import pytest
from channels.db import database_sync_to_async
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import tests.servers
from realtime.protocol import MAX_FRAME_BYTES
from realtime.tokens import token_issue
from tests.factories import make_user
from tests.servers import Server
from wedsync.server.asgi_server import asgi_server_command

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

HEADER_TIMEOUT = 2  # SERVER_HEADER_TIMEOUT of the servers here, seconds
# How long past the timeout the tests wait for the server to act: a bound on a test
# that would otherwise hang, not a measure of the server's speed.
SLACK = 15


@database_sync_to_async
def a_token() -> str:
    return token_issue(user=make_user())


@pytest.fixture
def server(monkeypatch):
    """A server with a short header timeout, logging at info (its access log on)."""
    monkeypatch.setattr(
        tests.servers,
        "asgi_server_command",
        functools.partial(asgi_server_command, log_level="info"),
    )
    # Plain log lines: the access-log assertions read uvicorn's text (JSON is tested in
    # tests/core/test_logging.py).
    server = Server(
        "uvicorn", SERVER_HEADER_TIMEOUT=str(HEADER_TIMEOUT), LOG_LEVEL="INFO", LOG_FORMAT="plain"
    )
    try:
        yield server
    finally:
        server.stop()


# --- raw sockets -------------------------------------------------------------------------


def raw_connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def closed_by_server(sock: socket.socket, deadline: float) -> bool:
    """Read (and drop) what the server sends until it closes the connection (EOF or
    reset): True, or False when it is still open at ``deadline``."""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before {marker!r}: {data!r}"
        data += chunk
    return data


def ws_handshake(server: Server, token: str) -> socket.socket:
    """A raw socket that has completed a WebSocket handshake at /ws/realtime/."""
    sock = raw_connect(server)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws/realtime/?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = read_until(sock, b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def text_frame_header(length: int, mask: bytes) -> bytes:
    """The header of a masked, final text frame of ``length`` payload bytes."""
    if length < 126:
        return bytes([0x81, 0x80 | length]) + mask
    if length < 1 << 16:
        return bytes([0x81, 0x80 | 126]) + struct.pack("!H", length) + mask
    return bytes([0x81, 0x80 | 127]) + struct.pack("!Q", length) + mask


def read_close_code(sock: socket.socket, deadline: float) -> int | None:
    """Read the server's frames until its close frame: its code (None if the connection
    ended without one)."""
    buf = b""
    while time.monotonic() < deadline:
        while len(buf) >= 2:
            opcode, length, offset = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    break
                length, offset = struct.unpack("!H", buf[2:4])[0], 4
            elif length == 127:
                if len(buf) < 10:
                    break
                length, offset = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < offset + length:
                break
            payload, buf = buf[offset : offset + length], buf[offset + length :]
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return None
        if not chunk:
            return None
        buf += chunk
    return None


# --- 1. frame size -------------------------------------------------------------------------


def padded_ping(size: int) -> str:
    """A ping frame of ``size`` bytes with an unknown field: ``invalid_payload`` once read."""
    head, tail = '{"type":"ping","ref":"1","pad":"', '"}'
    return head + "a" * (size - len(head) - len(tail)) + tail


async def test_frame_at_the_limit__read_and_answered(server):
    # given a connected client
    async with connect(f"{server.ws_url}?token={await a_token()}", max_size=None) as ws:
        # when it sends a frame of exactly MAX_FRAME_BYTES
        await ws.send(padded_ping(MAX_FRAME_BYTES))

        # then the application reads it and answers (the unknown field), and the
        # connection stays usable
        while (reply := orjson.loads(await asyncio.wait_for(ws.recv(), 15))).get("ref") != "1":
            pass
        assert reply["code"] == "invalid_payload", reply
        await ws.send('{"type":"ping","ref":"2"}')
        while (pong := orjson.loads(await asyncio.wait_for(ws.recv(), 15))).get("ref") != "2":
            pass
        assert pong["type"] == "pong"


@pytest.mark.parametrize("length", [MAX_FRAME_BYTES + 1, 1 << 20])
async def test_frame_over_the_limit__closed_1009_before_it_is_read(server, length):
    # given a raw WebSocket client
    sock = ws_handshake(server, await a_token())
    try:
        # when it announces a text frame over the limit and sends only its first 1 KiB
        mask = os.urandom(4)
        sock.sendall(text_frame_header(length, mask) + bytes(1024))

        # then the server closes the connection with 1009 without waiting for the rest
        deadline = time.monotonic() + SLACK
        assert await asyncio.to_thread(read_close_code, sock, deadline) == 1009
        assert await asyncio.to_thread(closed_by_server, sock, deadline)
    finally:
        sock.close()


async def test_one_mib_frame__connection_closed(server):
    # given a connected client
    async with connect(f"{server.ws_url}?token={await a_token()}") as ws:
        # when it sends a whole 1 MiB frame
        with pytest.raises(ConnectionClosed) as closed:
            await ws.send("x" * (1 << 20))
            while True:
                await asyncio.wait_for(ws.recv(), SLACK)

    # then the server has closed the connection: with 1009 when its close frame arrived
    # before the reset of the rest of the frame
    assert closed.value.rcvd is None or closed.value.rcvd.code == 1009, closed.value


# --- 2. header timeout ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET / HTTP/1.1\r\nHost: x\r\n", b"GET /healthz HT"],
    ids=["nothing", "partial-headers", "partial-request-line"],
)
def test_incomplete_headers__connection_closed_after_the_timeout(server, sent):
    # given a client that connects and sends nothing, or an incomplete request
    with raw_connect(server) as sock:
        sock.sendall(sent)

        # then the server closes the connection
        assert closed_by_server(sock, time.monotonic() + HEADER_TIMEOUT + SLACK)

    # and a normal request still works
    assert healthz(server.port) == 200


def test_kept_alive_connection__partial_next_request__closed(server):
    # given a client whose first request was answered on a kept-alive connection
    with raw_connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_until(sock, b"\r\n\r\n").startswith(b"HTTP/1.1 200")
        # when it starts a second request and never finishes its headers
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")

        # then the server closes the connection
        assert closed_by_server(sock, time.monotonic() + HEADER_TIMEOUT + SLACK)


async def test_open_websocket__not_cut_by_the_header_timeout(server):
    # given a connected WebSocket and, opened with it, an idle raw socket
    async with connect(f"{server.ws_url}?token={await a_token()}") as ws:
        with raw_connect(server) as idle:
            # when the idle socket has been cut off by the header timeout
            deadline = time.monotonic() + HEADER_TIMEOUT + SLACK
            assert await asyncio.to_thread(closed_by_server, idle, deadline)

        # then the WebSocket, open for longer than that, still answers
        await ws.send('{"type":"ping","ref":"p"}')
        while (pong := orjson.loads(await asyncio.wait_for(ws.recv(), 15))).get("ref") != "p":
            pass
        assert pong["type"] == "pong"


# --- 2. concurrency cap ---------------------------------------------------------------------


def healthz(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    finally:
        conn.close()


async def test_concurrency_cap__handshakes_and_requests_refused_503_until_one_closes():
    limit = 3
    server = await asyncio.to_thread(Server, "uvicorn", SERVER_LIMIT_CONCURRENCY=str(limit))
    clients = []
    try:
        url = f"{server.ws_url}?token={await a_token()}"
        # given WebSockets opened until the server refuses one
        with pytest.raises(InvalidStatus) as refused:
            for _ in range(limit + 1):
                clients.append(await connect(url))
        # then the handshake over the cap was answered 503, and at most the cap were open
        assert refused.value.response.status_code == 503
        assert 1 <= len(clients) < limit
        # and plain requests are refused as well
        assert await asyncio.to_thread(healthz, server.port) == 503

        # when the open ones close, a new handshake is accepted again
        await asyncio.gather(*(ws.close() for ws in clients))
        clients = []
        deadline = time.monotonic() + SLACK
        while True:
            try:
                clients.append(await connect(url))
                break
            except InvalidStatus as exc:
                assert exc.response.status_code == 503
                assert time.monotonic() < deadline, "never accepted again"
                await asyncio.sleep(0.05)
    finally:
        await asyncio.gather(*(ws.close() for ws in clients))
        await asyncio.to_thread(server.stop)


# --- 3. no token in the logs ---------------------------------------------------------------


async def test_token_in_query__redacted_in_the_access_log(server):
    # given a token
    token = await a_token()

    # when it is used in ?token= on a WebSocket and on an HTTP request
    async with connect(f"{server.ws_url}?token={token}") as ws:
        await ws.send('{"type":"ping","ref":"p"}')
        while orjson.loads(await asyncio.wait_for(ws.recv(), 15)).get("ref") != "p":
            pass
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", f"/healthz?token={token}")
    assert conn.getresponse().status == 200
    conn.close()

    # then the log holds both request lines with the value redacted, and never the token
    log = Path(server.log.name)
    deadline = time.monotonic() + SLACK
    while True:
        text = await asyncio.to_thread(log.read_text, errors="replace")
        if '"GET /healthz?token=[redacted] HTTP/1.1" 200' in text:
            break
        assert time.monotonic() < deadline, text[-3000:]
        await asyncio.sleep(0.05)
    assert "/ws/realtime/?token=[redacted]" in text, text[-3000:]
    assert token not in text
    assert token.split(".")[0] not in text  # not even its payload part
