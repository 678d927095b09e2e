"""Functions API: create/get/list/update/delete, auth, error bodies, body limits."""

from __future__ import annotations

import base64

import pytest

from tests.integration.conftest import PROJECT, Harness
from tests.support.zips import python_function, zip_b64

pytestmark = pytest.mark.integration

HELLO = """
def handler(event, context):
    return {"hello": event.get("name", "world")}
"""


async def test_create_get_list_delete(harness: Harness) -> None:
    urn = await harness.create_function("hello", HELLO, user_data={"k": "v"}, description="demo")
    assert urn == harness.urn("hello")
    async with harness.http.get(harness.fgs(f"/functions/{urn}/config")) as resp:
        config = await resp.json()
    assert resp.status == 200
    assert config["func_name"] == "hello"
    assert config["runtime"] == "Python3.9"
    assert config["handler"] == "index.handler"
    assert config["timeout"] == 10
    assert config["memory_size"] == 256
    assert config["user_data"] == '{"k": "v"}'
    assert config["namespace"] == PROJECT
    assert len(config["digest"]) == 64

    async with harness.http.get(harness.fgs("/functions")) as resp:
        listing = await resp.json()
    assert [f["func_name"] for f in listing["functions"]] == ["hello"]
    assert listing["count"] == 1

    async with harness.http.delete(harness.fgs(f"/functions/{urn}")) as resp:
        assert resp.status == 204
    async with harness.http.get(harness.fgs(f"/functions/{urn}/config")) as resp:
        body = await resp.json()
    assert resp.status == 404
    assert body["error_code"] == "FSS.0404"
    assert "hello" in body["error_msg"]


async def test_unqualified_urn_means_latest(harness: Harness) -> None:
    urn = await harness.create_function("plain", HELLO)
    unqualified = urn.rsplit(":", 1)[0]
    async with harness.http.get(harness.fgs(f"/functions/{unqualified}/config")) as resp:
        assert resp.status == 200


async def test_duplicate_function_is_a_conflict(harness: Harness) -> None:
    await harness.create_function("twice", HELLO)
    async with harness.http.post(harness.fgs("/functions"), json=python_function("twice", HELLO)) as resp:
        body = await resp.json()
    assert resp.status == 409
    assert body == {"error_code": "FSS.0409", "error_msg": "function 'twice' already exists in package default"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"func_name": "1bad"}, "func_name: must be 1-60 characters"),
        ({"timeout": 2}, "timeout: Input should be greater than or equal to 3 (got 2)"),
        ({"timeout": 259201}, "timeout: Input should be less than or equal to 259200 (got 259201)"),
        ({"memory_size": 100}, "memory_size: must be one of 128, 256"),
        ({"runtime": "Cobol"}, "runtime: unsupported runtime"),
        ({"handler": "index"}, "handler: 'index' must look like 'index.handler'"),
        ({"func_code": {"file": "%%%"}}, "func_code.file: not valid base64"),
        ({"func_code": {"file": base64.b64encode(b"not a zip").decode()}}, "func_code: "),
        ({"handler": "main.handler"}, "func_code: "),
        ({"user_data": "{not json"}, "user_data: must be a JSON object string"),
        ({"user_data": {"1x": "v"}}, "user_data: key '1x' must start with a letter"),
    ],
)
async def test_invalid_create_requests_get_precise_errors(harness: Harness, change: dict, message: str) -> None:
    body = python_function("good", HELLO)
    body.update(change)
    async with harness.http.post(harness.fgs("/functions"), json=body) as resp:
        payload = await resp.json()
    assert resp.status == 400, payload
    assert payload["error_code"] == "FSS.0400"
    assert message in payload["error_msg"]


async def test_zip_with_path_traversal_is_refused(harness: Harness) -> None:
    body = python_function("evil", HELLO)
    body["func_code"] = {"file": zip_b64({"index.py": HELLO, "../escape.py": "x = 1"})}
    async with harness.http.post(harness.fgs("/functions"), json=body) as resp:
        payload = await resp.json()
    assert resp.status == 400
    assert "func_code" in payload["error_msg"]


async def test_inline_code(harness: Harness) -> None:
    body = {
        "func_name": "inline",
        "runtime": "Python3.9",
        "handler": "index.handler",
        "code_type": "inline",
        "func_code": {"file": base64.b64encode(HELLO.encode()).decode()},
    }
    async with harness.http.post(harness.fgs("/functions"), json=body) as resp:
        assert resp.status == 200, await resp.text()
    async with harness.http.post(harness.fgs(f"/functions/{harness.urn('inline')}/invocations"), json={}) as resp:
        assert await resp.json() == {"hello": "world"}


async def test_update_config(harness: Harness) -> None:
    urn = await harness.create_function("upd", HELLO)
    async with harness.http.put(
        harness.fgs(f"/functions/{urn}/config"), json={"timeout": 30, "memory_size": 512, "max_instance_num": 7}
    ) as resp:
        config = await resp.json()
    assert resp.status == 200
    assert (config["timeout"], config["memory_size"], config["max_instance_num"]) == (30, 512, 7)
    async with harness.http.put(harness.fgs(f"/functions/{urn}/config"), json={"memory_size": 3}) as resp:
        assert resp.status == 400


async def test_credentials_are_never_returned(harness: Harness) -> None:
    secret = "SK-very-secret-value"
    urn = await harness.create_function(
        "creds",
        "def handler(event, context):\n    return context.getSecretKey()[:3]\n",
        credentials={"access_key": "AK1", "secret_key": secret},
    )
    async with harness.http.get(harness.fgs(f"/functions/{urn}/config")) as resp:
        text = await resp.text()
    assert secret not in text
    assert '"credentials_configured": true' in text
    async with harness.http.post(harness.fgs(f"/functions/{urn}/invocations"), json={}) as resp:
        assert await resp.json() == "SK-"
    raw = (harness.server.settings.data_dir / "triggerbus.db").read_bytes()
    assert secret.encode() not in raw


async def test_auth_is_required(harness: Harness) -> None:
    url = harness.base_url + harness.fgs("/functions")
    async with harness.http.get(url, headers={"X-Auth-Token": ""}) as resp:
        assert resp.status == 401
        assert (await resp.json())["error_code"] == "FSS.0401"
    async with harness.http.get(url, headers={"X-Auth-Token": "wrong"}) as resp:
        assert resp.status == 403
        assert await resp.json() == {"error_code": "FSS.0403", "error_msg": "invalid token"}
    async with harness.http.get(harness.base_url + "/health", headers={"X-Auth-Token": ""}) as resp:
        assert resp.status == 200


async def test_unknown_routes_and_methods_get_fss_bodies(harness: Harness) -> None:
    async with harness.http.get(harness.fgs("/nothing-here")) as resp:
        assert resp.status == 404
        assert (await resp.json())["error_code"] == "FSS.0404"
    async with harness.http.patch(harness.fgs("/functions")) as resp:
        assert resp.status == 405
        assert (await resp.json())["error_code"] == "FSS.0405"


async def test_malformed_bodies_are_400_not_500(harness: Harness) -> None:
    for data in (b"{not json", b"\xff\xfe", b"[1, 2]", b""):
        async with harness.http.post(harness.fgs("/functions"), data=data) as resp:
            body = await resp.json()
        assert resp.status == 400, (data, body)
        assert body["error_code"] == "FSS.0400"


async def test_bad_urn_and_project(harness: Harness) -> None:
    async with harness.http.get(harness.fgs("/functions/not-a-urn/config")) as resp:
        assert resp.status == 400
        assert "invalid function urn" in (await resp.json())["error_msg"]
    other = "urn:fss:local:otherproj:function:default:x:latest"
    async with harness.http.get(harness.fgs(f"/functions/{other}/config")) as resp:
        assert resp.status == 400
        assert "does not belong to project" in (await resp.json())["error_msg"]
    async with harness.http.get(harness.fgs(f"/functions/{harness.urn('x').replace(':latest', ':v9')}/config")) as resp:
        assert resp.status == 404


async def test_create_body_size_is_bounded(harness: Harness) -> None:
    harness.server.settings.max_api_body = 1024
    body = python_function("big", HELLO, description="x" * 100)
    body["func_code"] = {"file": "A" * 4096}
    async with harness.http.post(harness.fgs("/functions"), json=body) as resp:
        payload = await resp.json()
    assert resp.status == 413
    assert payload["error_code"] == "FSS.0413"


async def test_a_relative_data_dir_works(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from pathlib import Path

    from tests.integration.conftest import make_settings, running

    monkeypatch.chdir(tmp_path)
    async with running(make_settings(Path("relative-data"))) as h:
        urn = await h.create_function("rel", HELLO)
        async with h.http.post(h.fgs(f"/functions/{urn}/invocations"), json={"name": "x"}) as resp:
            assert await resp.json() == {"hello": "x"}
