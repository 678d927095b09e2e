"""``GET /metrics``: the Prometheus exposition of :mod:`triggerbus.metrics` (docs/operations.md).

It needs the API token like every management path (``X-Auth-Token`` or
``Authorization: Bearer <token>``, which Prometheus's ``authorization`` scrape setting sends),
unless the service runs with ``TRIGGERBUS_METRICS_PUBLIC=1``. Labels never carry secrets: only
project, package and function names, trigger types and ids, and fixed reason slugs.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from triggerbus.api.common import service

PATH = "/metrics"


async def scrape(request: web.Request) -> web.Response:
    body = service(request).metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get(PATH, scrape)
