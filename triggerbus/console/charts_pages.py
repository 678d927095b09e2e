"""Console page: a function's invocations, errors, throttles and duration percentiles over time."""

from __future__ import annotations

import time

from aiohttp import web

from triggerbus.api.common import service
from triggerbus.console.charts import Series, has_data, line_chart
from triggerbus.console.functions import current_project, remember_project
from triggerbus.console.render import page

# window -> (seconds, bucket seconds)
WINDOWS = {"1h": (3600, 60), "6h": (6 * 3600, 300), "24h": (86400, 1800), "7d": (7 * 86400, 6 * 3600)}


async def charts_page(request: web.Request) -> web.Response:
    svc = service(request)
    project = current_project(request)
    functions, _ = await svc.store.list_functions(project, 0, 400)
    window = request.query.get("window", "1h")
    if window not in WINDOWS:
        window = "1h"
    chosen = request.query.get("function") or (functions[0].qualified_urn if functions else "")
    fn = await svc.registry.require(chosen) if chosen else None
    charts = []
    totals = {"invocations": 0, "errors": 0, "throttles": 0}
    if fn is not None:
        span, bucket_s = WINDOWS[window]
        end = (time.time() // bucket_s + 1) * bucket_s  # whole buckets, the current one last
        buckets = await svc.store.attempt_stats(fn.qualified_urn, end - span, end, bucket_s)
        xs = [b.start for b in buckets]
        counts = [
            Series("invocations", "s1", [float(b.invocations) for b in buckets]),
            Series("errors", "s3", [float(b.errors) for b in buckets]),
            Series("throttles", "s2", [float(b.throttles) for b in buckets]),
        ]
        durations = [
            Series("p50", "s1", [b.p50_ms for b in buckets]),
            Series("p95", "s2", [b.p95_ms for b in buckets]),
            Series("p99", "s3", [b.p99_ms for b in buckets]),
        ]
        totals = {name: sum(getattr(b, name) for b in buckets) for name in totals}
        every = f"{bucket_s // 3600} h" if bucket_s >= 3600 else f"{bucket_s // 60} min"
        charts.append(line_chart(f"Attempts per {every}", xs, counts))
        if has_data(durations):
            charts.append(line_chart("Duration percentiles", xs, durations, " ms"))
    response = page(
        request,
        "charts.html",
        title="Charts",
        project=project,
        functions=functions,
        fn=fn,
        window=window,
        windows=list(WINDOWS),
        charts=charts,
        totals=totals,
    )
    return remember_project(request, response)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/charts", charts_page)
