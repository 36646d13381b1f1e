"""python-socketio (ASGI) on uvicorn: a tiny room-broadcast app (benchmark peer).

Socket.IO events (namespace "/"):
  ``join``  (room)            -> enter the room; acknowledged with "ok"
  ``pub``   ([room, payload]) -> emit ``m`` with payload to the room, skipping the sender
This mirrors a Pusher client event: the sender is in the room and is not echoed.

    python bench/peers/socketio_server.py --host 127.0.0.1 --port 6401
"""

from __future__ import annotations

import argparse

import socketio
import uvicorn

sio = socketio.AsyncServer(
    async_mode="asgi",
    cors_allowed_origins="*",
    logger=False,
    engineio_logger=False,
    ping_interval=25,
    ping_timeout=60,
)
app = socketio.ASGIApp(sio)


@sio.event
async def join(sid, room):
    await sio.enter_room(sid, room)
    return "ok"


@sio.event
async def pub(sid, msg):
    room, payload = msg
    await sio.emit("m", payload, room=room, skip_sid=sid)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=6401)
    a = ap.parse_args()
    # uvicorn prints "Uvicorn running on http://HOST:PORT" at info level; the runner
    # waits for the port instead, so keep logging quiet.
    uvicorn.run(
        app,
        host=a.host,
        port=a.port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_ping_interval=None,
        backlog=4096,
        log_level="warning",
        access_log=False,
    )
