"""Raw ``websockets`` broadcast server (benchmark peer).

Every client that connects gets a ``hello`` text frame once it is registered,
and then receives every text frame that any *other* client sends, via
``websockets.broadcast``. Runs on uvloop.

    python bench/peers/websockets_server.py --host 127.0.0.1 --port 6301
"""

from __future__ import annotations

import argparse

import uvloop
from websockets.asyncio.server import broadcast, serve

CLIENTS: set = set()


async def handler(ws) -> None:
    CLIENTS.add(ws)
    try:
        await ws.send("hello")
        while True:
            message = await ws.recv(decode=False)  # raw bytes, no UTF-8 round trip
            broadcast([c for c in CLIENTS if c is not ws], message, text=True)
    except Exception:
        pass
    finally:
        CLIENTS.discard(ws)


async def main(host: str, port: int) -> None:
    async with serve(
        handler, host, port, backlog=4096, compression=None, max_queue=None, ping_interval=None
    ) as server:
        print(f"listening on {host}:{port}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=6301)
    a = ap.parse_args()
    uvloop.run(main(a.host, a.port))
