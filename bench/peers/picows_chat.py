"""Raw picows Pusher relay (benchmark peer): the floor for the chat scenario.

Just enough of the Pusher protocol for the load generator: connection_established, signin
and subscribe are answered without checking any signature, and a client event is parsed
(to find its channel) and its frame forwarded as received to the channel's other
subscribers. No auth, no history, no sender stamp, no validation: what Python + picows +
uvloop cost for one message in, one message out.

    python bench/peers/picows_chat.py --host 127.0.0.1 --port 6231
"""

from __future__ import annotations

import argparse
import itertools

import orjson
import uvloop
from picows import WSListener, WSMsgType, WSTransport, ws_create_server

TEXT = WSMsgType.TEXT
CHANNELS: dict[str, dict[WSTransport, None]] = {}
IDS = itertools.count(1)


class Relay(WSListener):
    def __init__(self) -> None:
        self.channels: list[str] = []

    def on_ws_connected(self, transport: WSTransport) -> None:
        data = orjson.dumps({"socket_id": "%d.%d" % (next(IDS), 1), "activity_timeout": 120})
        transport.send(
            TEXT, orjson.dumps({"event": "pusher:connection_established", "data": data.decode()})
        )

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        for name in self.channels:
            CHANNELS.get(name, {}).pop(transport, None)

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        mt = frame.msg_type
        if mt is TEXT:
            raw = frame.get_payload_as_bytes()
            msg = orjson.loads(raw)
            event = msg["event"]
            if event.startswith("client-"):
                for t in CHANNELS.get(msg["channel"], ()):
                    if t is not transport:
                        t.send(TEXT, raw)
            elif event == "pusher:subscribe":
                name = msg["data"]["channel"]
                CHANNELS.setdefault(name, {})[transport] = None
                self.channels.append(name)
                transport.send(
                    TEXT,
                    orjson.dumps(
                        {
                            "event": "pusher_internal:subscription_succeeded",
                            "channel": name,
                            "data": "{}",
                        }
                    ),
                )
            elif event == "pusher:signin":
                transport.send(
                    TEXT, orjson.dumps({"event": "pusher:signin_success", "data": msg["data"]})
                )
            elif event == "pusher:ping":
                transport.send(TEXT, b'{"event":"pusher:pong","data":{}}')
        elif mt is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif mt is WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())


async def main(host: str, port: int) -> None:
    server = await ws_create_server(lambda request: Relay(), host, port, backlog=4096)
    print(f"listening on {host}:{port}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=6231)
    a = ap.parse_args()
    uvloop.run(main(a.host, a.port))
