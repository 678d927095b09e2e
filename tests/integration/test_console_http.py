"""The web console over plain HTTP against the real service: auth, cookies, CSRF, CSP, escaping,
charts and the lag sampler. (tests/integration/test_console_browser.py drives it in Chromium.)"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.integration.conftest import PROJECT, TOKEN, Harness
from tests.support.redrive import create_marker_function
from triggerbus.console.auth import COOKIE
from triggerbus.console.lag import LagSampler

pytestmark = pytest.mark.integration

XSS = "<img src=x onerror=alert(1)><script>alert(2)</script>"


@pytest.fixture
async def browser_session(harness: Harness) -> AsyncIterator[aiohttp.ClientSession]:
    """A cookie-keeping session without the API token header (as a browser)."""
    jar = aiohttp.CookieJar(unsafe=True)  # keep cookies of 127.0.0.1
    async with aiohttp.ClientSession(base_url=harness.base_url, cookie_jar=jar) as http:
        yield http


async def login(http: aiohttp.ClientSession, token: str = TOKEN) -> aiohttp.ClientResponse:
    async with http.post(
        "/console/login", data={"token": token, "next": "/console/records"}, allow_redirects=False
    ) as resp:
        await resp.read()
        return resp


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


async def test_pages_need_a_session_and_the_login_takes_only_the_token(
    harness: Harness, browser_session: aiohttp.ClientSession
) -> None:
    http = browser_session
    async with http.get("/console/records?status=FAIL", allow_redirects=False) as resp:
        assert resp.status == 303
        assert resp.headers["Location"] == "/console/login?next=%2Fconsole%2Frecords%3Fstatus%3DFAIL"
    async with http.get("/console/login") as resp:
        assert resp.status == 200
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    # The API token header does not open the console; the console cookie does not open the API.
    async with http.get("/console/functions", headers={"X-Auth-Token": TOKEN}, allow_redirects=False) as resp:
        assert resp.status == 303
    refused = await login(http, "wrong-token")
    assert refused.status == 403 and COOKIE not in refused.cookies

    accepted = await login(http)
    assert accepted.status == 303 and accepted.headers["Location"] == "/console/records"
    cookie = accepted.cookies[COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/console"
    assert TOKEN not in cookie.value
    async with http.get("/console/functions") as resp:
        assert resp.status == 200
        assert "Functions" in await resp.text()
    async with http.get(f"/v2/{PROJECT}/fgs/functions") as resp:
        assert resp.status == 401

    # An open redirect through ?next= is refused.
    async with http.post(
        "/console/login", data={"token": TOKEN, "next": "//evil.example/x"}, allow_redirects=False
    ) as resp:
        assert resp.headers["Location"] == "/console/functions"

    async with http.get("/console/functions") as resp:
        csrf = csrf_of(await resp.text())
    current = next(c.value for c in http.cookie_jar if c.key == COOKIE)
    async with http.post("/console/logout", data={"csrf": csrf}, allow_redirects=False) as resp:
        assert resp.status == 303
    http.cookie_jar.update_cookies({COOKIE: current})  # a logged-out session stays dead
    async with http.get("/console/functions", allow_redirects=False) as resp:
        assert resp.status == 303


async def test_posts_need_the_csrf_token_and_payloads_are_escaped(
    harness: Harness, browser_session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    http = browser_session
    urn = await create_marker_function(harness, "xss", tmp_path / "marker")
    old = await harness.invoke_async(urn, {"html": XSS})
    assert (await harness.wait_terminal(urn, old))["status"] == "FAIL"
    await login(http)
    record_url = f"/console/functions/{urn}/records/{old}"
    async with http.get(record_url) as resp:
        html = await resp.text()
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in html
    csrf = csrf_of(html)

    async with http.post(record_url + "/redrive", data={}, allow_redirects=False) as resp:
        assert resp.status == 403
    async with http.post(record_url + "/redrive", data={"csrf": "0" * 40}, allow_redirects=False) as resp:
        assert resp.status == 403
    (tmp_path / "marker").unlink()
    async with http.post(record_url + "/redrive", data={"csrf": csrf}, allow_redirects=False) as resp:
        assert resp.status == 303
        new = resp.headers["Location"].rsplit("/", 1)[-1]
    assert (await harness.wait_terminal(urn, new))["redrive_of"] == old

    # Refused redrive (the new record succeeded): an HTML error page, not JSON.
    async with http.post(
        f"/console/functions/{urn}/records/{new}/redrive", data={"csrf": csrf}, allow_redirects=False
    ) as resp:
        assert resp.status == 400 and resp.content_type == "text/html"
        assert "only FAIL or DISCARD" in await resp.text()
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]

    async with http.get("/console/records", params={"function": urn, "source": "bad"}) as resp:
        assert resp.status == 400 and "key=value" in await resp.text()
    async with http.get("/console/records", params={"project": PROJECT, "function": urn, "status": "FAIL"}) as resp:
        listing = await resp.text()
    assert old in listing and new not in listing


async def test_trigger_pages_enable_disable_and_lag(harness: Harness, browser_session: aiohttp.ClientSession) -> None:
    http = browser_session
    urn = await harness.create_function("ticker", "def handler(event, context):\n    return 1\n")
    async with harness.http.post(
        harness.fgs(f"/triggers/{urn}"),
        json={"trigger_type_code": "TIMER", "event_data": {"name": "t", "schedule_type": "Rate", "schedule": "3m"}},
    ) as resp:
        trigger_id = (await resp.json())["trigger_id"]
    await login(http)
    async with http.get("/console/triggers") as resp:
        html = await resp.text()
    assert trigger_id in html and "next fire" in html and "state-active" in html
    csrf = csrf_of(html)
    async with http.post(
        f"/console/functions/{urn}/triggers/TIMER/{trigger_id}/status",
        data={"csrf": csrf, "status": "DISABLED", "back": "/console/triggers"},
        allow_redirects=False,
    ) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/console/triggers"
    stored = await harness.service.store.get_trigger(trigger_id)
    assert stored.status == "DISABLED"
    async with http.get(f"/console/triggers/{trigger_id}") as resp:
        html = await resp.text()
    assert "state-disabled" in html and "no lag data" in html

    sampler = LagSampler(harness.service)
    await sampler.sample_once()
    assert [s.records for s in sampler.series(trigger_id)] == [None]
    now = time.time()
    for i in range(3):
        sampler.add(trigger_id, {"records": 10 * i, "seconds": 1.5 * i, "oldest_age_s": None}, now + 15 * i)
    assert [s.records for s in sampler.series(trigger_id)] == [None, 0.0, 10.0, 20.0]


async def test_charts_render_svg_from_the_attempts(harness: Harness, browser_session: aiohttp.ClientSession) -> None:
    http = browser_session
    urn = await harness.create_function(
        "charted",
        "def handler(event, context):\n    if event.get('fail'):\n        raise ValueError('no')\n    return 1\n",
    )
    async with harness.http.put(
        harness.fgs(f"/functions/{urn}/async-invoke-config"), json={"max_async_retry_attempts": 0}
    ) as resp:
        assert resp.status == 200
    ids = [await harness.invoke_async(urn, {"fail": i % 3 == 0}) for i in range(6)]
    for request_id in ids:
        await harness.wait_terminal(urn, request_id)
    await login(http)
    async with http.get("/console/charts", params={"project": PROJECT, "function": urn, "window": "1h"}) as resp:
        html = await resp.text()
    assert resp.status == 200
    assert "6 attempts, 2 errors, 0 throttles" in html
    assert html.count("<svg") == 2 and "Duration percentiles" in html
    assert "<polyline" in html or "<circle" in html
