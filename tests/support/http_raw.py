"""HTTP/1.1 over a bare asyncio stream, for tests that send what no HTTP client library would
(any path, query or header bytes): one kept-alive connection that reopens when the server
closes it, and `exchange`, which sends raw bytes on a connection of their own and reads every
answer until the server closes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from tests.support.server import TIMEOUT


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


async def read_answer(reader: asyncio.StreamReader, *, head_only: bool = False) -> Answer | None:
    """One answer (Parley always sends Content-Length; no body to a HEAD request), or None at
    a clean end of stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        assert not exc.partial, f"the server closed mid-answer: {exc.partial[:300]!r}"
        return None
    status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    assert version == "HTTP/1.1", status_line
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if status == "101" or head_only:
        return Answer(int(status), headers, b"")
    length = int(headers["content-length"])
    return Answer(int(status), headers, await reader.readexactly(length))


class KeptAlive:
    """One client connection to `host:port`, reopened after the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(self, head: bytes, body: bytes = b"") -> Answer:
        """Send one request (`head` ends with its blank line) and read its answer."""
        head_only = head.startswith(b"HEAD ")
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port, limit=1 << 22)
        reader, writer = self._streams
        writer.write(head + body)
        async with asyncio.timeout(TIMEOUT):
            answer = await read_answer(reader, head_only=head_only)
        assert answer is not None, f"no answer to {head[:300]!r}"
        if answer.headers.get("connection", "").lower() == "close":
            await self.close()
        return answer

    async def close(self) -> None:
        if self._streams is not None:
            writer = self._streams[1]
            self._streams = None
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


async def exchange(host: str, port: int, data: bytes, timeout: float = TIMEOUT) -> list[Answer]:
    """Send `data` on a new connection, end the sending side, and read every answer until
    the server closes; the server must do so within `timeout` (no hang)."""
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
    answers: list[Answer] = []
    try:
        writer.write(data)
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(timeout):
            while (answer := await read_answer(reader)) is not None:
                answers.append(answer)
                if answer.status == 101:  # a WebSocket now: not HTTP any more
                    break
    except (ConnectionResetError, BrokenPipeError):
        pass  # the server may close with requests unread
    finally:
        writer.close()
    return answers
