"""The ``triggerbus`` command: run the service, manage functions/triggers, invoke, read records."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import sys
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from triggerbus.client import ApiError, Client
from triggerbus.config import Settings
from triggerbus.trigger_view import UNKNOWN, lag_text, position_parts, trigger_detail, trigger_state

console = Console()
err_console = Console(stderr=True)


def _client(ctx: click.Context) -> Client:
    obj = ctx.obj
    token = obj["token"] or os.environ.get("TRIGGERBUS_TOKEN", "")
    if not token:
        path = Path(obj["data_dir"]) / "token"
        if path.exists():
            token = path.read_text().strip()
    if not token:
        raise click.UsageError("no API token: pass --token, set TRIGGERBUS_TOKEN, or point --data-dir at the service's")
    return Client(obj["endpoint"], token, obj["project"])


def _fail(exc: ApiError) -> None:
    err_console.print(f"[bold red]error[/] {exc.code or exc.status}: {exc.message}")
    sys.exit(1)


def _json_arg(value: str | None, default: Any = None) -> Any:
    if value is None:
        return default
    if value.startswith("@"):
        value = Path(value[1:]).read_text()
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc.msg}") from None


class ApiGroup(click.Group):
    """Turns an API error anywhere below into one red line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ApiError as exc:
            _fail(exc)


@click.group(cls=ApiGroup)
@click.option("--endpoint", envvar="TRIGGERBUS_ENDPOINT", default="http://127.0.0.1:8080", show_default=True)
@click.option("--token", envvar="TRIGGERBUS_TOKEN", default="", help="API token (default: read <data-dir>/token)")
@click.option("--project", envvar="TRIGGERBUS_PROJECT", default="default", show_default=True)
@click.option("--data-dir", envvar="TRIGGERBUS_DATA_DIR", default="./data", show_default=True)
@click.pass_context
def main(ctx: click.Context, endpoint: str, token: str, project: str, data_dir: str) -> None:
    """Triggerbus: FunctionGraph-compatible triggers and async invocation, self-hosted."""
    ctx.ensure_object(dict)
    ctx.obj.update(endpoint=endpoint, token=token, project=project, data_dir=data_dir)


# -- serve ------------------------------------------------------------------------------------------


@main.command()
@click.option("--data-dir", "data_dir", default=None, help="where the embedded store lives [default: ./data]")
@click.option("--host", default=None, help="listen address [default: 127.0.0.1]")
@click.option("--port", type=int, default=None, help="listen port [default: 8080]")
@click.option("--region", default=None, help="region name used in URNs and events [default: local]")
@click.option("--timezone", default=None, help="default time zone for cron schedules [default: UTC]")
@click.option("--obs-endpoint", default=None, help="S3 endpoint for OBS destinations (keys from TRIGGERBUS_OBS_*)")
@click.option("--bus", "bus_url", default=None, help="sqlite (default) or kafka://host:9092[,host2:9092]")
@click.option("--store", "store_url", default=None, help="sqlite (default) or mongodb://... (with a Kafka bus)")
@click.option("--log-level", default="INFO", show_default=True)
@click.pass_context
def serve(
    ctx: click.Context,
    data_dir: str | None,
    host: str | None,
    port: int | None,
    region: str | None,
    timezone: str | None,
    obs_endpoint: str | None,
    bus_url: str | None,
    store_url: str | None,
    log_level: str,
) -> None:
    """Run the service on the embedded store (no external servers)."""
    from triggerbus.logs import configure_logging

    try:
        configure_logging(log_level)  # JSON lines on stderr; TRIGGERBUS_LOG_FORMAT=text for classic lines
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    settings = Settings()
    settings.data_dir = Path(data_dir or ctx.obj["data_dir"])
    for name, value in (("host", host), ("port", port), ("region", region), ("timezone", timezone)):
        if value is not None:
            setattr(settings, name, value)
    if obs_endpoint:
        settings.obs_endpoint = obs_endpoint
    if bus_url:
        settings.bus_url = bus_url
    if store_url:
        settings.store_url = store_url
    from triggerbus.server import serve as run
    from triggerbus.service import DataDirLocked

    try:
        asyncio.run(run(settings, announce=lambda line: console.print(line, highlight=False)))
    except (DataDirLocked, ValueError) as exc:
        err_console.print(f"[bold red]error[/] {exc}")
        sys.exit(2)
    except OSError as exc:
        err_console.print(f"[bold red]error[/] cannot listen on {settings.host}:{settings.port}: {exc.strerror}")
        sys.exit(2)


# -- cron preview -----------------------------------------------------------------------------------


@main.group()
def cron() -> None:
    """Work with timer schedules offline."""


@cron.command("next")
@click.argument("expression")
@click.option("--count", "-n", default=5, show_default=True, type=click.IntRange(1, 10000))
@click.option("--from", "start", default=None, help="ISO-8601 start (default: now)")
@click.option("--type", "schedule_type", default=None, help="Cron or Rate (default: guessed)")
@click.option("--timezone", default="UTC", show_default=True, help="zone when there is no CRON_TZ=")
@click.option("--notes", is_flag=True, help="mark fires moved or doubled by DST")
def cron_next(
    expression: str, count: int, start: str | None, schedule_type: str | None, timezone: str, notes: bool
) -> None:
    """Print the next COUNT fire times of EXPRESSION, one ISO-8601 time per line."""
    from connectors.schedule import ScheduleError, format_fire_time, parse_schedule

    if schedule_type is None:
        stripped = expression.strip()
        schedule_type = "Rate" if stripped[:-1].isdigit() and stripped[-1:] in "mhd" and stripped[:-1] else "Cron"
    try:
        begin = datetime.fromisoformat(start.replace("Z", "+00:00")) if start else datetime.now(UTC)
    except ValueError:
        raise click.BadParameter(f"--from {start!r} is not an ISO-8601 time") from None
    if begin.tzinfo is None:
        begin = begin.replace(tzinfo=UTC)
    try:
        schedule = parse_schedule(schedule_type, expression, default_tz=timezone, anchor=begin)
    except ScheduleError as exc:
        err_console.print(f"[bold red]invalid schedule[/] {exc}")
        sys.exit(2)
    for fire, note in schedule.preview(count, begin):
        line = format_fire_time(fire)
        click.echo(f"{line}  # {note}" if notes and note else line)


# -- functions ---------------------------------------------------------------------------------------


@main.group()
def functions() -> None:
    """Create, list, show and delete functions."""


def _zip_path(path: Path) -> bytes:
    if path.is_dir():
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for file in sorted(path.rglob("*")):
                if file.is_file() and "__pycache__" not in file.parts:
                    zf.write(file, file.relative_to(path).as_posix())
        return buffer.getvalue()
    return path.read_bytes()


@functions.command("create")
@click.argument("name")
@click.option("--code", "code", type=click.Path(exists=True, path_type=Path), help="zip file or directory")
@click.option("--code-url", help="base URL of an HTTP function (runtime http)")
@click.option("--handler", default="index.handler", show_default=True)
@click.option("--runtime", default=None, help="Python3.9 (default with --code) or http")
@click.option("--timeout", default=3, show_default=True, type=int)
@click.option("--memory", default=128, show_default=True, type=int)
@click.option("--package", default="default", show_default=True)
@click.option("--max-instances", default=400, show_default=True, type=int)
@click.option("--user-data", "user_data", multiple=True, help="KEY=VALUE, repeatable")
@click.pass_context
def functions_create(
    ctx: click.Context,
    name: str,
    code: Path | None,
    code_url: str | None,
    handler: str,
    runtime: str | None,
    timeout: int,
    memory: int,
    package: str,
    max_instances: int,
    user_data: tuple[str, ...],
) -> None:
    """Register function NAME from a zip/directory (or an HTTP function with --code-url)."""
    body: dict[str, Any] = {
        "func_name": name,
        "package": package,
        "handler": handler,
        "timeout": timeout,
        "memory_size": memory,
        "max_instance_num": max_instances,
        "user_data": dict(item.split("=", 1) for item in user_data if "=" in item),
    }
    if code_url:
        body.update(runtime=runtime or "http", code_url=code_url)
    elif code is not None:
        body.update(
            runtime=runtime or "Python3.9",
            code_type="zip",
            func_code={"file": base64.b64encode(_zip_path(code)).decode()},
        )
    else:
        raise click.UsageError("give --code PATH or --code-url URL")
    fn = _client(ctx).request("POST", _client(ctx).fgs("/functions"), body=body).json()
    console.print(f"[green]created[/] {fn['func_urn']}")


@functions.command("list")
@click.pass_context
def functions_list(ctx: click.Context) -> None:
    client = _client(ctx)
    data = client.request("GET", client.fgs("/functions")).json()
    table = Table("name", "runtime", "handler", "timeout", "memory", "max inst.", "urn")
    for fn in data["functions"]:
        table.add_row(
            fn["func_name"],
            fn["runtime"],
            fn["handler"],
            f"{fn['timeout']}s",
            f"{fn['memory_size']}MB",
            str(fn["max_instance_num"]),
            fn["func_urn"],
        )
    console.print(table)


@functions.command("show")
@click.argument("function")
@click.pass_context
def functions_show(ctx: click.Context, function: str) -> None:
    client = _client(ctx)
    data = client.request("GET", client.fgs(f"/functions/{client.urn(function)}/config")).json()
    console.print_json(data=data)


@functions.command("delete")
@click.argument("function")
@click.pass_context
def functions_delete(ctx: click.Context, function: str) -> None:
    client = _client(ctx)
    client.request("DELETE", client.fgs(f"/functions/{client.urn(function)}"))
    console.print(f"[green]deleted[/] {function}")


# -- triggers ------------------------------------------------------------------------------------------


@main.group()
def triggers() -> None:
    """Create, list, enable/disable and delete triggers."""


def _create_trigger(ctx: click.Context, function: str, body: dict[str, Any]) -> None:
    client = _client(ctx)
    trigger = client.request("POST", client.fgs(f"/triggers/{client.urn(function)}"), body=body).json()
    kind, trigger_id, status = trigger["trigger_type_code"], trigger["trigger_id"], trigger["trigger_status"]
    console.print(f"[green]created[/] {kind} trigger {trigger_id} ({status})")
    if trigger["event_data"].get("invoke_url"):
        console.print(f"  invoke URL: {trigger['event_data']['invoke_url']}")


@triggers.command("create")
@click.argument("function")
@click.option("--type", "trigger_type", required=True, help="TIMER, APIG, ...")
@click.option("--data", "data", required=True, help="event_data as JSON (or @file)")
@click.option("--status", default=None, help="ACTIVE or DISABLED")
@click.pass_context
def triggers_create(ctx: click.Context, function: str, trigger_type: str, data: str, status: str | None) -> None:
    """Create a trigger of any type from its FunctionGraph event_data."""
    body = {
        "trigger_type_code": trigger_type.upper(),
        "event_data": _json_arg(data),
        "trigger_status": status,
    }
    _create_trigger(ctx, function, body)


@triggers.command("add-timer")
@click.argument("function")
@click.option("--name", default="timer", show_default=True)
@click.option("--rate", help="fixed rate such as 3m, 2h, 1d")
@click.option("--cron", "cron_expr", help='cron such as "0 */5 * * * *" or "@every 30s"')
@click.option("--user-event", default="", help="text delivered as the event's user_event")
@click.pass_context
def triggers_add_timer(
    ctx: click.Context, function: str, name: str, rate: str | None, cron_expr: str | None, user_event: str
) -> None:
    if bool(rate) == bool(cron_expr):
        raise click.UsageError("give exactly one of --rate and --cron")
    data = {
        "name": name,
        "schedule_type": "Rate" if rate else "Cron",
        "schedule": rate or cron_expr,
        "user_event": user_event,
    }
    _create_trigger(ctx, function, {"trigger_type_code": "TIMER", "event_data": data})


@triggers.command("add-apig")
@click.argument("function")
@click.option("--path", required=True, help="API path, e.g. /hello")
@click.option("--method", default="ANY", show_default=True)
@click.option("--auth", default="NONE", show_default=True, type=click.Choice(["NONE", "IAM", "APP"]))
@click.option("--app-code", default=None, help="for --auth APP: the code callers send in X-Apig-AppCode")
@click.option("--async", "asynchronous", is_flag=True, help="answer 202 and invoke asynchronously")
@click.option("--timeout-ms", default=5000, show_default=True, type=int)
@click.option("--match", default="NORMAL", show_default=True, type=click.Choice(["NORMAL", "SWA"]))
@click.pass_context
def triggers_add_apig(
    ctx: click.Context,
    function: str,
    path: str,
    method: str,
    auth: str,
    app_code: str | None,
    asynchronous: bool,
    timeout_ms: int,
    match: str,
) -> None:
    data: dict[str, Any] = {
        "name": "API_" + "".join(c if c.isalnum() else "_" for c in function.split(":")[-2 if ":" in function else 0]),
        "path": path,
        "req_method": method.upper(),
        "auth": auth,
        "protocol": "HTTP",
        "match_mode": match,
        "env_name": "RELEASE",
        "type": 1,
        "func_info": {"timeout": timeout_ms, "invocation_type": "async" if asynchronous else "sync"},
    }
    if app_code:
        data["app_code"] = app_code
    _create_trigger(ctx, function, {"trigger_type_code": "APIG", "event_data": data})


def _all_function_urns(client: Client) -> list[str]:
    urns: list[str] = []
    marker = 0
    while True:
        page = client.request("GET", client.fgs("/functions"), query={"marker": marker, "maxitems": 400}).json()
        urns += [f["func_urn"] for f in page["functions"]]
        if not page["functions"] or page["next_marker"] >= page["count"]:
            return urns
        marker = page["next_marker"]


@triggers.command("list")
@click.argument("function", required=False)
@click.pass_context
def triggers_list(ctx: click.Context, function: str | None) -> None:
    """FUNCTION's triggers (every function's without it): state, last error, lag or position."""
    client = _client(ctx)
    urns = [client.urn(function)] if function else _all_function_urns(client)
    colors = {"ACTIVE": "green", "DISABLED": "yellow", "ERROR": "red"}
    table = Table("function", "id", "type", "status", "state", "last error", "lag", "position / detail")
    for urn in urns:
        for t in client.request("GET", client.fgs(f"/triggers/{urn}")).json():
            view = trigger_state(t)
            state = t.get("state") or {}
            error = f"{view.last_error[:80]} (since {view.since})" if view.last_error else ""
            position = ", ".join(position_parts(state)) or trigger_detail(t)
            table.add_row(
                escape(urn.split(":")[-2] if urn.endswith(":latest") else urn.split(":")[-1]),
                t["trigger_id"],
                t["trigger_type_code"],
                t["trigger_status"],
                f"[{colors[view.state]}]{view.state}[/]",
                escape(error),
                lag_text(state) or UNKNOWN,
                escape(position),
            )
    console.print(table)


def _set_status(ctx: click.Context, function: str, trigger_type: str, trigger_id: str, status: str) -> None:
    client = _client(ctx)
    path = client.fgs(f"/triggers/{client.urn(function)}/{trigger_type.upper()}/{trigger_id}")
    client.request("PUT", path, body={"trigger_status": status})
    console.print(f"[green]{status.lower()}[/] {trigger_id}")


@triggers.command("enable")
@click.argument("function")
@click.argument("trigger_type")
@click.argument("trigger_id")
@click.pass_context
def triggers_enable(ctx: click.Context, function: str, trigger_type: str, trigger_id: str) -> None:
    _set_status(ctx, function, trigger_type, trigger_id, "ACTIVE")


@triggers.command("disable")
@click.argument("function")
@click.argument("trigger_type")
@click.argument("trigger_id")
@click.pass_context
def triggers_disable(ctx: click.Context, function: str, trigger_type: str, trigger_id: str) -> None:
    _set_status(ctx, function, trigger_type, trigger_id, "DISABLED")


@triggers.command("delete")
@click.argument("function")
@click.argument("trigger_type")
@click.argument("trigger_id")
@click.pass_context
def triggers_delete(ctx: click.Context, function: str, trigger_type: str, trigger_id: str) -> None:
    client = _client(ctx)
    client.request("DELETE", client.fgs(f"/triggers/{client.urn(function)}/{trigger_type.upper()}/{trigger_id}"))
    console.print(f"[green]deleted[/] {trigger_id}")


# -- invoke ------------------------------------------------------------------------------------------------


@main.command()
@click.argument("function")
@click.option("--data", "data", default="{}", show_default=True, help="event JSON (or @file)")
@click.option("--async", "asynchronous", is_flag=True, help="invoke asynchronously (202 + request id)")
@click.option("--log", "show_log", is_flag=True, help="print the last 4 KB of the function log")
@click.pass_context
def invoke(ctx: click.Context, function: str, data: str, asynchronous: bool, show_log: bool) -> None:
    """Invoke FUNCTION (name or URN) with an event."""
    client = _client(ctx)
    event = _json_arg(data, {})
    urn = client.urn(function)
    if asynchronous:
        resp = client.request("POST", client.fgs(f"/functions/{urn}/invocations-async"), body=event)
        console.print(f"[green]accepted[/] request_id {resp.json()['request_id']}")
        return
    resp = client.request(
        "POST",
        client.fgs(f"/functions/{urn}/invocations"),
        body=event,
        headers={"X-Cff-Log-Type": "tail"} if show_log else None,
    )
    failed = resp.headers.get("X-Is-Func-Err") == "true"
    summary = json.loads(resp.headers.get("X-Cff-Invoke-Summary", "{}"))
    click.echo(resp.body.decode("utf-8", errors="replace"))
    err_console.print(
        f"[{'red' if failed else 'green'}]{'function error' if failed else 'ok'}[/] "
        f"request {resp.headers.get('X-Cff-Request-Id')}  duration {summary.get('duration', '?')} ms  "
        f"memory {summary.get('memoryUsed', '?')} MB"
    )
    if show_log and resp.headers.get("X-Cff-Function-Log"):
        log_text = base64.b64decode(resp.headers["X-Cff-Function-Log"]).decode(errors="replace")
        err_console.print(log_text, highlight=False, markup=False, soft_wrap=True)
    if failed:
        sys.exit(1)


# -- async config --------------------------------------------------------------------------------------------


@main.command("async-config")
@click.argument("function")
@click.option("--retries", type=click.IntRange(0, 3), default=1, show_default=True)
@click.option("--max-age", type=click.IntRange(1, 86400), default=3600, show_default=True, help="seconds")
@click.option("--on-success-function", default=None, help="function name/URN to receive success events")
@click.option("--on-failure-function", default=None, help="function name/URN to receive failure events")
@click.option("--on-success-obs", default=None, help="bucket[/prefix] for success events")
@click.option("--on-failure-obs", default=None, help="bucket[/prefix] for failure events")
@click.pass_context
def async_config(
    ctx: click.Context,
    function: str,
    retries: int,
    max_age: int,
    on_success_function: str | None,
    on_failure_function: str | None,
    on_success_obs: str | None,
    on_failure_obs: str | None,
) -> None:
    """Set FUNCTION's async retry/age policy and destinations."""
    client = _client(ctx)

    def dest(fn: str | None, obs: str | None) -> dict[str, Any] | None:
        if fn:
            return {"destination": "FunctionGraph", "param": json.dumps({"func_urn": client.urn(fn)})}
        if obs:
            bucket, _, prefix = obs.partition("/")
            return {"destination": "OBS", "param": json.dumps({"bucket": bucket, "prefix": prefix})}
        return None

    body = {
        "max_async_retry_attempts": retries,
        "max_async_event_age_in_seconds": max_age,
        "destination_config": {
            "on_success": dest(on_success_function, on_success_obs),
            "on_failure": dest(on_failure_function, on_failure_obs),
        },
    }
    config = client.request("PUT", client.fgs(f"/functions/{client.urn(function)}/async-invoke-config"), body=body)
    console.print_json(data=config.json())


# -- records -------------------------------------------------------------------------------------------------


@main.group()
def records() -> None:
    """Query async invocation records."""


def _since(value: str) -> str:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[-1:] in units and value[:-1].isdigit():
        moment = time.time() - int(value[:-1]) * units[value[-1]]
        return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return value


@records.command("list")
@click.argument("function")
@click.option("--status", type=click.Choice(["WAIT", "RUNNING", "SUCCESS", "FAIL", "DISCARD"]), default=None)
@click.option("--since", default="1h", show_default=True, help="e.g. 30m, 6h, 7d or an ISO time (UTC)")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500))
@click.option("--trigger", "trigger_id", default=None)
@click.pass_context
def records_list(
    ctx: click.Context, function: str, status: str | None, since: str, limit: int, trigger_id: str | None
) -> None:
    client = _client(ctx)
    query = {"status": status, "limit": limit, "query_begin_time": _since(since), "trigger_id": trigger_id}
    data = client.request("GET", client.fgs(f"/functions/{client.urn(function)}/async-invocations"), query=query).json()
    colors = {"SUCCESS": "green", "FAIL": "red", "DISCARD": "yellow", "RUNNING": "cyan", "WAIT": "white"}
    table = Table(
        "request id",
        "status",
        "attempts",
        "start (UTC)",
        "end (UTC)",
        "error",
        title=f"{data['count']} records",
    )
    for r in data["invocations"]:
        color = colors.get(r["status"], "white")
        error = f"{r['error_code']} {r['error_message']}" if r["error_code"] else ""
        table.add_row(
            r["request_id"],
            f"[{color}]{r['status']}[/]",
            str(r.get("attempts", "")),
            r["start_time"],
            r["end_time"],
            error[:80],
        )
    console.print(table)


def _redrive_candidates(client: Client, urn: str, statuses: tuple[str, ...], since: str) -> list[str]:
    """Request ids of the function's records with one of ``statuses`` created since ``since``."""
    found: list[str] = []
    for status in statuses:
        marker = 0
        while True:
            query = {"status": status, "limit": 500, "marker": marker, "query_begin_time": _since(since)}
            page = client.request("GET", client.fgs(f"/functions/{urn}/async-invocations"), query=query).json()
            found += [r["request_id"] for r in page["invocations"]]
            marker = page["next_marker"]
            if not marker:
                break
    return found


@records.command("redrive")
@click.argument("function")
@click.argument("request_ids", nargs=-1)
@click.option("--status", "statuses", type=click.Choice(["FAIL", "DISCARD"]), multiple=True,
              help="redrive every record with this status (repeatable) created since --since")  # fmt: skip
@click.option("--since", default="1h", show_default=True, help="with --status: e.g. 30m, 6h, 7d or an ISO time (UTC)")
@click.pass_context
def records_redrive(ctx: click.Context, function: str, request_ids: tuple[str, ...], statuses: tuple[str, ...],
                    since: str) -> None:  # fmt: skip
    """Run FAIL/DISCARD invocations again under new request ids (linked by redrive_of)."""
    if not request_ids and not statuses:
        raise click.UsageError("give REQUEST_ID ... or --status FAIL|DISCARD [--since 1h]")
    client = _client(ctx)
    urn = client.urn(function)
    ids = list(dict.fromkeys(request_ids)) + (_redrive_candidates(client, urn, statuses, since) if statuses else [])
    results: list[tuple[str, str, str]] = []
    with Progress(
        TextColumn("redriving"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err_console
    ) as progress:
        task = progress.add_task("redrive", total=len(ids))
        for old in ids:
            try:
                answer = client.request("POST", client.fgs(f"/functions/{urn}/async-invocations/{old}/redrive"))
                results.append((old, answer.json()["request_id"], "[green]accepted[/]"))
            except ApiError as exc:
                results.append((old, "", f"[red]{escape(exc.code or str(exc.status))}[/] {escape(exc.message)}"))
            progress.advance(task)
    failed = sum(1 for _, new, _ in results if not new)
    table = Table("old request id", "", "new request id", "result",
                  title=f"{len(results) - failed} redriven, {failed} refused")  # fmt: skip
    for old, new, result in results:
        table.add_row(old, "->", new, result)
    console.print(table)
    if failed:
        sys.exit(1)


@records.command("show")
@click.argument("function")
@click.argument("request_id")
@click.pass_context
def records_show(ctx: click.Context, function: str, request_id: str) -> None:
    client = _client(ctx)
    data = client.request("GET", client.fgs(f"/functions/{client.urn(function)}/async-invocations/{request_id}")).json()
    attempts = data.pop("attempt_details", [])
    logs = [a.pop("logs", "") for a in attempts]
    console.print_json(data=data)
    for attempt, log_text in zip(attempts, logs, strict=True):
        console.rule(f"attempt {attempt['n']}: {attempt['status']} {attempt['error_message']}")
        console.print(log_text, highlight=False, markup=False, soft_wrap=True)


@records.command("logs")
@click.argument("function")
@click.argument("request_id")
@click.option("--attempt", type=click.IntRange(1), default=None, help="only this attempt [default: all]")
@click.option("--json", "as_json", is_flag=True, help="print the JSON answer (attempts with their logs)")
@click.pass_context
def records_logs(ctx: click.Context, function: str, request_id: str, attempt: int | None, as_json: bool) -> None:
    """Print what an async invocation's function wrote (stdout/stderr, framed by Start/Finish lines)."""
    client = _client(ctx)
    path = client.fgs(f"/functions/{client.urn(function)}/async-invocations/{request_id}/logs")
    body = client.request("GET", path, query={"attempt": attempt, "format": "json" if as_json else "text"}).body
    if as_json:
        console.print_json(body.decode())
    else:  # plain, so it can be piped and grepped
        click.echo(body.decode("utf-8", errors="replace"), nl=False)


# -- traces (audit) ----------------------------------------------------------------------------------------


@main.group()
def traces() -> None:
    """Query the audit log: CTS traces of management operations (last 7 days)."""


def _since_ms(value: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[-1:] in units and value[:-1].isdigit():
        return int((time.time() - int(value[:-1]) * units[value[-1]]) * 1000)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not like 30m, 6h, 7d or an ISO time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@traces.command("list")
@click.option("--since", default="1d", show_default=True, help="e.g. 30m, 6h, 7d or an ISO time (UTC)")
@click.option("--name", "trace_name", default=None, help="operation, e.g. createTrigger")
@click.option("--resource-type", default=None, help="e.g. Functions, Trigger")
@click.option("--resource-id", default=None, help="function URN or trigger id")
@click.option("--status", type=click.Choice(["normal", "warning", "incident"]), default=None)
@click.option("--user", default=None)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 5000))
@click.option("--json", "as_json", is_flag=True, help="print the traces as JSON")
@click.pass_context
def traces_list(
    ctx: click.Context,
    since: str,
    trace_name: str | None,
    resource_type: str | None,
    resource_id: str | None,
    status: str | None,
    user: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Newest traces first, following the pages up to --limit."""
    client = _client(ctx)
    query: dict[str, Any] = {
        "from": _since_ms(since),
        "trace_name": trace_name,
        "resource_type": resource_type,
        "resource_id": resource_id,
        "trace_status": status,
        "user": user,
    }
    found: list[dict[str, Any]] = []
    while len(found) < limit:
        page = client.request(
            "GET", f"/v3/{client.project}/traces", query={**query, "limit": min(200, limit - len(found))}
        ).json()
        found += page["traces"]
        query["next"] = page["meta_data"]["marker"]
        if not query["next"]:
            break
    if as_json:
        click.echo(json.dumps(found, indent=2, ensure_ascii=False))
        return
    colors = {"normal": "green", "warning": "yellow", "incident": "red"}
    table = Table("time (UTC)", "operation", "resource type", "resource", "user", "status", "code", "source ip",
                  "trace id", title=f"{len(found)} traces")  # fmt: skip
    for t in found:
        level = str(t.get("trace_status", ""))
        table.add_row(
            datetime.fromtimestamp(int(t.get("time", 0)) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S"),
            str(t.get("trace_name", "")),
            str(t.get("resource_type", "")),
            str(t.get("resource_name") or t.get("resource_id", "")),
            str((t.get("user") or {}).get("name", "")),
            f"[{colors.get(level, 'white')}]{level}[/]",
            str(t.get("code", "")),
            str(t.get("source_ip", "")),
            str(t.get("trace_id", "")),
        )
    console.print(table)


if __name__ == "__main__":
    main()
