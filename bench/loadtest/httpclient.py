"""A minimal HTTP/1.1 keep-alive client on asyncio streams, for ``snapshot-read`` and
``hostile-member``.

The project has no async HTTP client dependency, and the benchmark needs only GET and a
JSON POST with a bearer token over a persistent loopback connection: request line and
headers out, status, headers and a Content-Length or chunked body back.
"""

from __future__ import annotations

import asyncio


class HttpError(Exception):
    """The connection failed or the response could not be read."""


class KeepAliveClient:
    """One persistent HTTP/1.1 connection; one request at a time."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host, self.port = host, port
        self.headers = headers or {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def get(self, path: str) -> tuple[int, bytes]:
        """GET ``path``; returns (status, body). Reconnects once if the server closed."""
        return await self.request("GET", path)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """POST a JSON ``body`` to ``path``; returns (status, body)."""
        return await self.request("POST", path, body)

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """One request; returns (status, body). Reconnects once if the server closed."""
        for attempt in range(2):
            if self._writer is None:
                await self._connect()
            try:
                return await self._exchange(method, path, body)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                await self.close()
                if attempt:
                    raise HttpError(f"{type(exc).__name__}: {exc}") from None
        raise AssertionError("unreachable")

    async def _exchange(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        if body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self._writer.write(request + body if body is not None else request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = {}
        for line in header_lines:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        if "content-length" in headers:
            content = await self._reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            content = await self._chunked()
        else:
            content = b""
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, content

    async def _chunked(self) -> bytes:
        parts = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self._reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await self._reader.readexactly(size))
            await self._reader.readexactly(2)

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
