"""Unsigned operational endpoints: health, readiness, Prometheus metrics."""

from __future__ import annotations

import orjson

from parley import __version__, speedups
from parley.http_api.routes import Router
from parley.transport.server import Request, Response


def register(router: Router) -> None:
    node = router.node

    async def healthz(request: Request) -> Response:
        return Response(
            200, orjson.dumps({"status": "ok", "version": __version__, "code": speedups.STATUS})
        )

    async def readyz(request: Request) -> Response:
        if node.draining:
            return Response(503, orjson.dumps({"status": "draining"}))
        return Response(
            200,
            orjson.dumps({"status": "ready", "apps": len(node.apps), "checks": {"broker": "ok"}}),
        )

    async def metrics(request: Request) -> Response:
        return Response(200, node.metrics.render(), content_type="text/plain; version=0.0.4")

    router.unsigned[("GET", "/healthz")] = healthz
    router.unsigned[("GET", "/readyz")] = readyz
    router.unsigned[("GET", "/metrics")] = metrics
