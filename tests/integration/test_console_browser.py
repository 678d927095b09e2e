"""The web console in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

Log in, filter the records, open a failed one, redrive it and watch the redrive succeed; an
attacker-controlled payload shown on a record page must not run; without a session every page
sends the browser to the login form, which refuses a wrong token. Screenshots go to
``test-artifacts/console/``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import PROJECT, ROOT, TOKEN, Harness
from tests.support.redrive import create_marker_function

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = ROOT / "test-artifacts" / "console"
XSS_EVENT = {
    "img": '<img src=x onerror="window.__xss=1;alert(1)">',
    "script": "<script>window.__xss=2;alert(2)</script>",
}


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            "Chromium is missing at /usr/bin/chromium: install it with `sudo apt-get install -y chromium` "
            "(./scripts/services installs it on CI)"
        )
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: .venv/bin/pip install -e '.[test]'")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def page(browser: Any) -> AsyncIterator[Any]:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = await context.new_page()
    tab.set_default_timeout(15_000)
    try:
        yield tab
    finally:
        await context.close()


async def shot(page: Any, name: str) -> None:
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def log_in(page: Any, base_url: str, path: str) -> None:
    await page.goto(base_url + path)
    assert "/console/login" in page.url
    await page.fill("#token", TOKEN)
    await page.click("#login")
    await page.wait_for_load_state()
    assert "/console/login" not in page.url


async def test_filter_open_redrive_and_see_it_succeed(harness: Harness, page: Any, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    urn = await create_marker_function(harness, "flaky", marker)
    failed = await harness.invoke_async(urn, {"order": 7})
    assert (await harness.wait_terminal(urn, failed))["status"] == "FAIL"

    await log_in(page, harness.base_url, f"/console/records?project={PROJECT}")
    await page.select_option("#f-function", urn)
    await page.select_option("#f-status", "FAIL")
    await page.click("#apply-filters")
    await page.wait_for_load_state()
    assert "status=FAIL" in page.url
    rows = page.locator("table.records tbody tr")
    assert await page.locator("a.record-link", has_text=failed).count() == 1
    for status in await rows.locator(".status").all_inner_texts():
        assert status == "FAIL"
    await shot(page, "01-records-filtered-fail")

    await page.click(f"a.record-link:has-text('{failed}')")
    await page.wait_for_load_state()
    assert await page.inner_text("#record-status") == "FAIL"
    assert "marker present" in await page.inner_text("#record-error")
    await shot(page, "02-failed-record")

    marker.unlink()
    await page.click("#redrive")
    await page.wait_for_load_state()
    assert await page.inner_text("#redrive-of") == failed
    new_id = await page.inner_text("#request-id")
    assert new_id != failed
    deadline = time.monotonic() + 20
    while await page.inner_text("#record-status") != "SUCCESS":
        assert time.monotonic() < deadline, "the redrive did not succeed within 20 s"
        await asyncio.sleep(0.3)
        await page.reload()
    assert '"order": 7' in await page.inner_text("#payload")
    await shot(page, "03-redrive-succeeded")

    await page.click("#redrive-of")  # back to the original: it links to its redrive
    await page.wait_for_load_state()
    assert await page.inner_text("#record-status") == "FAIL"
    assert await page.locator("a.redrive-link", has_text=new_id).count() == 1
    await shot(page, "04-original-links-its-redrive")


async def test_attacker_controlled_payload_renders_as_text(harness: Harness, page: Any, tmp_path: Path) -> None:
    urn = await create_marker_function(harness, "xss", tmp_path / "marker")
    request_id = await harness.invoke_async(urn, XSS_EVENT)
    assert (await harness.wait_terminal(urn, request_id))["status"] == "FAIL"
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), asyncio.ensure_future(dialog.dismiss())))

    await log_in(page, harness.base_url, f"/console/functions/{urn}/records/{request_id}")
    assert json.loads(await page.inner_text("#payload")) == XSS_EVENT
    assert "<img src=x" in await page.inner_text("#record-error")  # the error message quotes the event
    assert await page.locator("main img").count() == 0 and await page.locator("main script").count() == 0
    await page.goto(f"{harness.base_url}/console/records?project={PROJECT}&function={urn}")
    await page.wait_for_timeout(300)
    assert await page.evaluate("window.__xss") is None
    assert dialogs == []
    await page.goto(f"{harness.base_url}/console/functions/{urn}/records/{request_id}")
    await shot(page, "05-xss-payload-as-text")
    assert await page.evaluate("window.__xss") is None
    assert dialogs == []


async def test_without_a_session_pages_go_to_the_login_which_refuses_a_bad_token(harness: Harness, page: Any) -> None:
    await page.goto(f"{harness.base_url}/console/records?status=FAIL")
    assert page.url.endswith("/console/login?next=%2Fconsole%2Frecords%3Fstatus%3DFAIL")
    await page.fill("#token", "not-the-token")
    await page.click("#login")
    await page.wait_for_load_state()
    assert "/console/login" in page.url
    assert await page.inner_text("#login-error") == "Invalid token."
    await shot(page, "06-login-refused")
    assert not [c for c in await page.context.cookies() if c["name"] == "tb_console"]
    response = await page.goto(f"{harness.base_url}/console/triggers")
    assert response is not None and "/console/login" in page.url
