"""Raw picows broadcast server (benchmark peer).

Every client that connects gets a ``hello`` text frame once it is registered,
and then receives every text frame that any *other* client sends. No protocol,
no channels: this is the floor for "Python + picows + uvloop" fan-out.

    python bench/peers/picows_server.py --host 127.0.0.1 --port 6201
"""

from __future__ import annotations

import argparse

import uvloop
from picows import WSListener, WSMsgType, WSTransport, ws_create_server

CLIENTS: set[WSTransport] = set()
TEXT = WSMsgType.TEXT


class Broadcast(WSListener):
    def on_ws_connected(self, transport: WSTransport) -> None:
        CLIENTS.add(transport)
        transport.send(TEXT, b"hello")

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        CLIENTS.discard(transport)

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        mt = frame.msg_type
        if mt is TEXT:
            data = frame.get_payload_as_bytes()
            for t in CLIENTS:
                if t is not transport:
                    t.send(TEXT, data)
        elif mt is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif mt is WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())


async def main(host: str, port: int) -> None:
    server = await ws_create_server(lambda request: Broadcast(), host, port, backlog=4096)
    print(f"listening on {host}:{port}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=6201)
    a = ap.parse_args()
    uvloop.run(main(a.host, a.port))
