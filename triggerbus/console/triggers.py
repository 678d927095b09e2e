"""Console pages: every trigger with its state, last error, lag or position; one trigger's lag chart."""

from __future__ import annotations

from aiohttp import web

from schemas.errors import not_found
from triggerbus.api.common import service
from triggerbus.console.charts import Series, has_data, line_chart
from triggerbus.console.functions import trigger_row
from triggerbus.console.lag import SAMPLER_KEY
from triggerbus.console.render import page


async def triggers_page(request: web.Request) -> web.Response:
    svc = service(request)
    stored = await svc.store.list_triggers()
    rows = [trigger_row(svc.triggers.to_api(t), t.function_urn) for t in stored]
    rows.sort(key=lambda r: (r["function_urn"], r["doc"]["trigger_type_code"], r["doc"]["created_time"]))
    return page(request, "triggers.html", title="Triggers", rows=rows)


async def trigger_page(request: web.Request) -> web.Response:
    svc = service(request)
    trigger = await svc.store.get_trigger(request.match_info["trigger_id"])
    if trigger is None:
        raise not_found(f"trigger {request.match_info['trigger_id']} does not exist")
    row = trigger_row(svc.triggers.to_api(trigger), trigger.function_urn)
    samples = request.app[SAMPLER_KEY].series(trigger.trigger_id)
    xs = [s.ts for s in samples]
    by_records = [Series("records behind", "s1", [s.records for s in samples])]
    by_seconds = [Series("seconds behind", "s2", [s.seconds for s in samples])]
    charts = [line_chart("Event lag (records)", xs, by_records), line_chart("Event lag (seconds)", xs, by_seconds, "s")]
    return page(
        request,
        "trigger.html",
        title=f"Trigger {trigger.trigger_id}",
        row=row,
        charts=charts if has_data(by_records + by_seconds) else [],
        samples=len(samples),
    )


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/triggers", triggers_page)
    router.add_get("/triggers/{trigger_id}", trigger_page)
