"""A WebSocket over a bare TCP socket, for tests that must send what no client library
sends: frames written bit by bit as RFC 6455 5.2 lays them out (fin, reserved bits, opcode,
mask, length), fragments split inside a UTF-8 character, control frames a client may not
send. The server's answer is read unparsed. Every read is bounded by the socket's timeout
(`TIMEOUT`).
"""

from __future__ import annotations

import base64
import json
import os
import socket
from dataclasses import dataclass
from typing import Any

from tests.support.server import TIMEOUT

TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def frame_bytes(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
) -> bytes:
    """One client frame as it goes on the wire; `rsv` is the three reserved bits (0-7)."""
    head = bytes(((0x80 if fin else 0) | (rsv << 4) | opcode,))
    mask_bit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        head += bytes((mask_bit | n,))
    elif n < 65536:
        head += bytes((mask_bit | 126,)) + n.to_bytes(2, "big")
    else:
        head += bytes((mask_bit | 127,)) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    key = os.urandom(4)
    repeated = (key * (n // 4 + 1))[:n]
    return (
        head
        + key
        + (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")
    )


def close_payload(code: int, reason: str = "") -> bytes:
    return code.to_bytes(2, "big") + reason.encode()


@dataclass(frozen=True)
class ServerFrame:
    opcode: int
    fin: bool
    payload: bytes

    @property
    def close_code(self) -> int | None:
        """The code of a close frame; None when it carries none."""
        assert self.opcode == CLOSE, f"not a close frame: {self}"
        return int.from_bytes(self.payload[:2], "big") if len(self.payload) >= 2 else None


class RawWebSocket:
    """A client connection that sends the upgrade request with `headers` (added to or
    replacing the usual ones; an empty value leaves a header out) and reads the answer's
    head into `head`. Nothing is sent that the test did not ask for."""

    def __init__(self, host: str, port: int, path: str, **headers: str) -> None:
        fields = {
            "Host": f"{host}:{port}",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
            "Sec-WebSocket-Version": "13",
        }
        fields.update({k.replace("_", "-"): v for k, v in headers.items()})
        head = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v)
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.sock.sendall(head.encode() + b"\r\n")
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self._more()
        self.head, _, self.buf = self.buf.partition(b"\r\n\r\n")

    # -- sending -------------------------------------------------------------------------------

    def send_frame(
        self,
        opcode: int,
        payload: bytes = b"",
        *,
        fin: bool = True,
        rsv: int = 0,
        masked: bool = True,
    ) -> None:
        self.sock.sendall(frame_bytes(opcode, payload, fin=fin, rsv=rsv, masked=masked))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_text(self, message: Any) -> None:
        """A dict as one JSON text frame."""
        self.send_frame(TEXT, json.dumps(message).encode())

    # -- receiving -----------------------------------------------------------------------------

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, f"connection closed early; unread: {self.buf!r}"
        self.buf += chunk

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self) -> ServerFrame:
        """The next server frame, which must not be masked (RFC 6455 5.1)."""
        b0, b1 = self.read_exact(2)
        assert b1 & 0x80 == 0, "a server frame must not be masked"
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(self.read_exact(2), "big")
        elif n == 127:
            n = int.from_bytes(self.read_exact(8), "big")
        return ServerFrame(b0 & 0x0F, bool(b0 & 0x80), self.read_exact(n))

    def read_message(self) -> dict[str, Any]:
        """The next text frame as a Pusher frame (a dict)."""
        frame = self.read_frame()
        assert frame.opcode == TEXT and frame.fin, f"expected a whole text frame: {frame}"
        message = json.loads(frame.payload)
        assert isinstance(message, dict), message
        return message

    def expect(self, event: str) -> dict[str, Any]:
        """Read text frames until one with this event; any other frame fails."""
        while True:
            message = self.read_message()
            if message.get("event") == event:
                return message

    def read_close(self) -> ServerFrame:
        """Skip text frames up to the server's close frame; then the server must hang up."""
        while True:
            frame = self.read_frame()
            if frame.opcode == CLOSE:
                rest = self.read_to_eof()
                assert rest == b"", f"bytes after the close frame: {rest!r}"
                return frame
            assert frame.opcode == TEXT, f"expected text or close, got {frame}"

    def read_to_eof(self) -> bytes:
        """Everything the server sends until it hangs up (bounded by the socket timeout)."""
        while chunk := self.sock.recv(65536):
            self.buf += chunk
        out, self.buf = self.buf, b""
        return out

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawWebSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
