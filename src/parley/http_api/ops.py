"""Unsigned operational endpoints: health (the process answers), readiness (the node is not
draining and every engine it runs on answers its check: 503 naming the ones that do not), and
Prometheus metrics (behind a bearer token when `metrics_token` is set)."""

from __future__ import annotations

import hmac

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
        ready = await node.readiness()
        body = {"status": "ready", "apps": len(node.apps), "checks": ready.checks}
        if not ready.ready:
            body["status"], body["failing"] = "not ready", ready.failing
            return Response(503, orjson.dumps(body))
        return Response(200, orjson.dumps(body))

    token = node.settings.metrics_token.encode()

    async def metrics(request: Request) -> Response:
        if token:  # Prometheus sends it as `authorization: {credentials: ...}` configures
            given = request.headers.get("authorization", "").removeprefix("Bearer ").encode()
            if not hmac.compare_digest(given, token):
                return Response(
                    401,
                    orjson.dumps(
                        {
                            "error": "/metrics needs 'Authorization: Bearer <metrics_token>'",
                            "status": 401,
                        }
                    ),
                    headers={"WWW-Authenticate": 'Bearer realm="parley metrics"'},
                )
        return Response(200, node.metrics.render(), content_type="text/plain; version=0.0.4")

    router.unsigned[("GET", "/healthz")] = healthz
    router.unsigned[("GET", "/readyz")] = readyz
    router.unsigned[("GET", "/metrics")] = metrics
