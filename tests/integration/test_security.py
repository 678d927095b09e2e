"""Security guarantees of a running service (docs/reliability.md, "Security").

* every route of the app (walked from ``app.router.resources()``) refuses a request without the
  token (401 ``FSS.0401``) and with a wrong one (403 ``FSS.0403``), except the documented public
  ones: ``/health``, the connectors' public prefixes (each applies its own auth) and the console
  (its own session login);
* secrets given in trigger configs and function credentials never appear in the service log, in
  any API answer, in ``/metrics``, on console pages or anywhere in the SQLite file;
* the console escapes what it shows (payloads, names, descriptions);
* HTTP functions cannot target the service's own listener, at create/update time and at call
  time (DNS rebinding, redirects);
* a body over the limit is refused with 413 before it is read.
"""

from __future__ import annotations

import asyncio
import io
import socket
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from tests.integration.conftest import PROJECT, TOKEN, Harness
from tests.integration.test_console_http import login
from tests.integration.test_observability import service_log  # noqa: F401  (fixture)
from tests.support.routes import Route, app_routes, assert_fss_error, send
from tests.support.waiting import wait_for
from triggerbus.api.app import PUBLIC_PATHS, PUBLIC_PREFIXES

pytestmark = pytest.mark.integration

FN = (
    "def handler(event, context):\n"
    "    return {'statusCode': 200, 'headers': {}, 'body': 'ok', 'isBase64Encoded': False}\n"
)
XSS = "<script>alert('x')</script><img src=x onerror=alert(1)>"


def all_routes(h: Harness) -> list[Route]:
    return app_routes(h.server._runner.app)  # type: ignore[union-attr]


def fill(h: Harness) -> dict[str, str]:
    """Plausible values for every path parameter (the token check comes before any lookup)."""
    urn = h.urn("f")
    return {
        "project_id": PROJECT, "function_urn": urn, "urn": urn, "request_id": "r1", "trigger_type_code": "TIMER",
        "type": "TIMER", "trigger_id": "t1", "topic_urn": f"urn:smn:local:{PROJECT}:t", "stream_name": "s",
        "log_group_id": "g", "log_stream_id": "l", "channel": "c", "token": "x", "tail": "/x",
    }  # fmt: skip


# -- the token -----------------------------------------------------------------------------------------


async def test_every_route_refuses_a_missing_or_wrong_token(harness: Harness) -> None:
    h = harness
    app = h.server._runner.app  # type: ignore[union-attr]
    public_prefixes = app[PUBLIC_PREFIXES]
    assert set(public_prefixes) == {"/apig", "/obs/notifications", "/obs/events", "/console"}, public_prefixes
    values = fill(h)
    checked = public = 0
    async with aiohttp.ClientSession(base_url=h.base_url) as anonymous:
        for route in all_routes(h):
            path = route.path(values)
            if path in PUBLIC_PATHS or any(path == p or path.startswith(p + "/") for p in public_prefixes):
                public += 1
                continue
            missing = await send(anonymous, route.method, path, data=b"{}")
            assert missing.status == 401, (route, missing)
            assert_fss_error(missing, f"{route} without a token")
            assert missing.json()["error_code"] == "FSS.0401"
            for wrong in (
                {"X-Auth-Token": TOKEN + "x"},
                {"Authorization": "Bearer nope"},
                {"X-Auth-Token": TOKEN[:-1]},
            ):
                answer = await send(anonymous, route.method, path, data=b"{}", headers=wrong)
                assert answer.status == 403, (route, wrong, answer)
                assert answer.json()["error_code"] == "FSS.0403"
            checked += 1
        # The public ones: /health; the console (its own session); OBS webhooks (their own token).
        assert (await send(anonymous, "GET", "/health")).status == 200
        for route in (r for r in all_routes(h) if r.console and r.template not in ("/console/login",)):
            answer = await send(anonymous, route.method, route.path(values), data=b"")
            if route.template == "/console/static/console.css":
                assert answer.status == 200
            elif route.method == "GET":
                assert answer.status in (302, 303) and "/console/login" in answer.headers["Location"], (route, answer)
            else:
                assert answer.status == 401, (route, answer)
        wrong_login = await send(anonymous, "POST", "/console/login", data=b"token=nope")
        assert wrong_login.status == 403 and "Set-Cookie" not in wrong_login.headers
        for path in ("/obs/notifications/t1", "/obs/events/x"):
            answer = await send(anonymous, "POST", path, data=b"{}")
            assert answer.status in (401, 403, 404), (path, answer)
            assert_fss_error(answer, path)
    assert checked > 45 and public > 10, (checked, public)
    print(f"\ntoken: {checked} routes refuse a missing and 3 wrong tokens; {public} public (documented)")


# -- secrets -------------------------------------------------------------------------------------------

SECRETS = {
    "rabbit": "S3cr3t-rabbit-7f1e0a",
    "kafka": "S3cr3t-kafka-8a2d1b",
    "dds": "S3cr3t-dds-9b3c2c",
    "dds_uri": "S3cr3t-uri-0c4d3d",
    "iotda": "S3cr3t-iot-1d5e4e",
    "rocket": "S3cr3t-rocket-3f705f",
    "obs": "S3cr3t-obs-4a8160",
    "fn_secret": "S3cr3t-fn-5b9271",
    "fn_token": "S3cr3t-tok-6ca382",
    "app_code": "S3cr3t-appcode-2e6f93abcdef",
}


async def trigger_with_secrets(h: Harness, urn: str) -> list[tuple[str, str]]:
    """Triggers of every kind whose config holds a secret; (code, trigger id) of those created."""
    configs: list[tuple[str, dict[str, Any]]] = [
        ("RABBITMQ", {"instance_id": "r-1", "exchange_name": "ex", "access_user": "u",
                      "access_password": SECRETS["rabbit"], "connect_address": "127.0.0.1:1"}),
        ("OPENSOURCEKAFKA", {"topic_ids": ["t"], "kafka_connect_address": "127.0.0.1:1", "kafka_user": "u",
                             "kafka_password": SECRETS["kafka"]}),
        ("DDS", {"instance_id": "i-1", "db_name": "db", "collection_name": "c", "db_user": "u",
                 "db_password": SECRETS["dds"], "connection_uri": "mongodb://127.0.0.1:1/?replicaSet=rs0"}),
        ("GAUSSMONGO", {"instance_id": "i-2", "db_name": "db", "collection_name": "c",
                        "connection_uri": f"mongodb://u:{SECRETS['dds_uri']}@127.0.0.1:1/?replicaSet=rs0"}),
        ("IOTDA", {"topics": ["$oc/devices/+/sys/messages/up"], "broker_address": "127.0.0.1:1",
                   "username": "u", "password": SECRETS["iotda"]}),
        ("ROCKETMQ", {"instance_id": "m-1", "topic": "t", "consumer_group": "g", "enable_acl": True,
                      "access_key": "ak", "secret_key": SECRETS["rocket"]}),
        ("OBS", {"bucket": "sec-bucket", "events": ["s3:ObjectCreated:*"], "endpoint": "http://127.0.0.1:1",
                 "access_key": "ak", "secret_key": SECRETS["obs"]}),
        ("APIG", {"name": "sec_api", "path": "/sec", "auth": "APP", "app_code": SECRETS["app_code"],
                  "func_info": {"timeout": 5000}}),
    ]  # fmt: skip
    created = []
    for code, data in configs:
        status, body = await h.create_trigger(urn, code, data)
        assert all(secret not in str(body) for secret in SECRETS.values()), (code, body)
        if status == 201:
            created.append((code, str(body["trigger_id"])))
            if body["trigger_status"] == "DISABLED":
                await h.update_trigger(urn, code, str(body["trigger_id"]), {"trigger_status": "ACTIVE"})
    # RABBITMQ, DDS and GAUSSMONGO check their source at create time (refused here, with the secret
    # kept out of the refusal); ROCKETMQ is not served yet. The rest are created and keep failing to connect.
    assert {code for code, _ in created} == {"OPENSOURCEKAFKA", "IOTDA", "OBS", "APIG"}, created
    return created


def database_text(path: Path) -> str:
    """Every row of every table of the SQLite file, as SQL text."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
        return "\n".join(db.iterdump())


async def test_secrets_never_leave_the_service(harness: Harness, service_log: io.StringIO) -> None:  # noqa: F811
    h = harness
    creds = {"access_key": "AK-visible", "secret_key": SECRETS["fn_secret"], "security_token": SECRETS["fn_token"]}
    urn = await h.create_function("holder", FN, credentials=creds)
    triggers = await trigger_with_secrets(h, urn)

    # Work: async and sync invocations, an APIG call with the app code, connectors failing to connect.
    request_id = await h.invoke_async(urn, {"hello": 1})
    await h.wait_terminal(urn, request_id)
    async with h.http.post(h.fgs(f"/functions/{urn}/invocations"), json={}) as resp:
        assert resp.status == 200
    async with aiohttp.ClientSession() as public:
        async with public.get(h.base_url + "/apig/sec", headers={"X-Apig-AppCode": SECRETS["app_code"]}) as resp:
            assert resp.status == 200, await resp.text()
        async with public.get(h.base_url + "/apig/sec", headers={"X-Apig-AppCode": "wrong-code-0123456789"}) as resp:
            assert resp.status == 401

    async def errors_reported() -> bool | None:
        states = [
            await h.trigger_state(urn, code, tid) for code, tid in triggers if code in ("OPENSOURCEKAFKA", "IOTDA")
        ]
        return all(any("error" in key and value for key, value in s.items()) for s in states) or None

    await wait_for(errors_reported, "the Kafka and IoTDA triggers report their connection errors", timeout=20)

    answers: list[str] = []
    paths = [
        h.fgs("/functions"), h.fgs(f"/functions/{urn}/config"), h.fgs(f"/triggers/{urn}"),
        h.fgs(f"/functions/{urn}/async-invocations"), h.fgs(f"/functions/{urn}/async-invocations/{request_id}"),
        h.fgs(f"/functions/{urn}/async-invocations/{request_id}/logs"), h.fgs(f"/functions/{urn}/async-invoke-config"),
        f"/v3/{PROJECT}/traces?limit=200", "/metrics", "/health",
    ]  # fmt: skip
    paths += [h.trigger_path(urn, code, tid) for code, tid in triggers]
    paths += [h.trigger_path(urn, code, tid, "/checkpoint") for code, tid in triggers]
    for path in paths:
        async with h.http.get(path) as resp:
            # 400/404: no checkpoint for this kind; 503: a source it cannot reach
            assert resp.status in (200, 400, 404, 503), (path, resp.status)
            answers.append(f"{path}: {await resp.text()}")
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(base_url=h.base_url, cookie_jar=jar) as console:
        await login(console)
        for page in ("/console/functions", f"/console/functions/{urn}", "/console/triggers", "/console/records"):
            async with console.get(page) as resp:
                assert resp.status == 200, page
                answers.append(await resp.text())
    stored = await asyncio.to_thread(database_text, h.server.settings.data_dir / "triggerbus.db")
    log_text = service_log.getvalue()
    assert "sec_api" in stored and "holder" in log_text + stored  # the places searched do hold the objects
    for name, secret in SECRETS.items():
        assert secret not in log_text, f"{name} in the service log"
        assert secret not in stored, f"{name} in the store"
        for answer in answers:
            assert secret not in answer, f"{name} in {answer[:200]}"
    assert TOKEN not in log_text and TOKEN not in stored and not any(TOKEN in a for a in answers)


# -- console escaping ----------------------------------------------------------------------------------


async def test_console_pages_escape_what_they_show(harness: Harness) -> None:
    h = harness
    urn = await h.create_function("xssfn", FN, description=XSS, user_data={"k": XSS})
    timer = await h.add_trigger(
        urn, "TIMER", {"name": "xss-timer", "schedule_type": "Rate", "schedule": "1d", "user_event": XSS}
    )
    request_id = await h.invoke_async(urn, {"html": XSS, XSS: [XSS]})
    await h.wait_terminal(urn, request_id)
    values = {"urn": urn, "type": "TIMER", "trigger_id": str(timer["trigger_id"]), "request_id": request_id}
    pages = 0
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(base_url=h.base_url, cookie_jar=jar) as console:
        await login(console)
        for route in (r for r in all_routes(h) if r.console and r.method == "GET"):
            for query in ({}, {"function": urn, "project": PROJECT, "status": XSS, "source": f"a={XSS}"}):
                answer = await send(console, "GET", route.path(values), params=query)
                assert answer.status < 500, (route, answer)
                html = answer.body.decode()
                assert "<script>alert" not in html and "<img src=x" not in html, (route, query)
                pages += 1
                if route.template.endswith("/records/{request_id}") and not query:
                    assert "&lt;script&gt;alert(" in html, (route.path(values), html[-600:])  # shown, escaped
    assert pages >= 16


# -- HTTP function targets (SSRF) ----------------------------------------------------------------------


async def create_http(h: Harness, name: str, url: str) -> tuple[int, dict[str, Any]]:
    async with h.http.post(h.fgs("/functions"), json={"func_name": name, "runtime": "http", "code_url": url}) as resp:
        return resp.status, await resp.json()


async def test_http_functions_cannot_target_the_service_itself(harness: Harness) -> None:
    h = harness
    port = h.server.settings.port
    own = [
        f"http://127.0.0.1:{port}", f"http://localhost:{port}/v2/{PROJECT}/fgs", f"http://[::1]:{port}",
        f"http://0.0.0.0:{port}", f"http://{socket.gethostname()}:{port}", f"http://127.0.0.2:{port}",
        f"http://[::ffff:127.0.0.1]:{port}/", f"http://2130706433:{port}", f"http://0x7f.1:{port}",
        f"http://user:pw@127.0.0.1:{port}/v2", f"https://LOCALHOST:{port}", f"http://127.1:{port}",
    ]  # fmt: skip
    for index, url in enumerate(own):
        status, body = await create_http(h, f"self{index}", url)
        assert status == 400, (url, body)
        assert "this service's own API" in body["error_msg"], (url, body)
    # Loopback on another port is a local function server: allowed here (TRIGGERBUS_HTTP_ALLOW_LOOPBACK=1).
    status, body = await create_http(h, "neighbour", "http://127.0.0.1:9")
    assert status == 200, body
    urn = str(body["func_urn"])
    async with h.http.put(h.fgs(f"/functions/{urn}/config"), json={"code_url": f"http://localhost:{port}"}) as resp:
        assert resp.status == 400 and "own API" in (await resp.json())["error_msg"]

    # Call time: a name that resolved elsewhere when the function was created now resolves to the service.
    status, body = await create_http(h, "rebind", f"http://rebind.invalid:{port}")
    assert status == 200, body
    runtime = h.service.dispatcher.runtimes["http"]
    resolver = runtime._session.connector._resolver
    resolver.inner = StaticResolver({"rebind.invalid": "127.0.0.1"})
    async with h.http.post(h.fgs(f"/functions/{body['func_urn']}/invocations"), json={}) as resp:
        result = await resp.text()  # a system error (5000): 500 FSS.0500 naming the cause, as any unreachable target
    assert resp.status == 500 and "this service's own API" in result, result


async def test_loopback_targets_need_the_setting(tmp_path: Path) -> None:
    from tests.integration.conftest import make_settings, running

    async with running(make_settings(tmp_path / "data", http_allow_loopback=False)) as h:
        status, body = await create_http(h, "local", "http://127.0.0.1:9")
        assert status == 400 and "TRIGGERBUS_HTTP_ALLOW_LOOPBACK=1" in body["error_msg"], body
        status, body = await create_http(h, "remote", "http://192.0.2.10:8080")  # TEST-NET: not local
        assert status == 200, body


class StaticResolver(AbstractResolver):
    """Resolves the names it is given to fixed addresses (a DNS answer that changed after create time)."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names

    async def resolve(self, host: str, port: int = 0, family: Any = socket.AF_INET) -> list[ResolveResult]:
        ip = self.names[host]
        return [{"hostname": host, "host": ip, "port": port, "family": family, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        return None


@pytest.fixture
async def redirector(harness: Harness) -> AsyncIterator[str]:
    """A function server on loopback that answers every call with a redirect into the management API."""

    async def invoke(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"{harness.base_url}/v2/{PROJECT}/fgs/functions")

    app = web.Application()
    app.router.add_post("/invoke", invoke)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_redirects_into_the_management_api_are_not_followed(harness: Harness, redirector: str) -> None:
    status, body = await create_http(harness, "redirecting", redirector)
    assert status == 200, body
    async with harness.http.post(harness.fgs(f"/functions/{body['func_urn']}/invocations"), json={}) as resp:
        text = await resp.text()
        assert resp.headers.get("X-Is-Func-Err") == "true" and "answered 307" in text, text
    async with harness.http.get(harness.fgs("/functions")) as resp:
        names = [f["func_name"] for f in (await resp.json())["functions"]]
    assert names == ["redirecting"]


# -- request sizes -------------------------------------------------------------------------------------


async def test_an_announced_oversized_body_is_refused_before_it_is_sent(harness: Harness) -> None:
    """Content-Length of 100 MB, 1 KB actually sent: 413 FSS.0413 comes back without the rest."""
    h = harness
    port = h.server.settings.port
    urn = await h.create_function("big", FN)
    for path in (
        h.fgs(f"/functions/{urn}/invocations-async"),
        h.fgs(f"/functions/{urn}/invocations"),
        h.fgs("/functions"),
        f"/v2/{PROJECT}/notifications/topics",
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Auth-Token: {TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
        )
        writer.write(head.encode() + b"{" * 1024)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        assert b" 413 " in status_line, (path, status_line)
        rest = await asyncio.wait_for(reader.read(4096), 5)
        assert b"FSS.0413" in rest, rest
        writer.close()
