"""PythonRuntime with real worker processes, plus code-package safety.

No mocks: the worker process *is* the thing under test. Functions are zipped here with
``zipfile``, unpacked with :func:`extract_zip` and run through :class:`PythonRuntime`.
No assertion depends on wall-clock thresholds; only categories, messages and ordering.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import os
import re
import stat
import struct
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from invoker.runtime.base import ErrorCategory, FunctionSpec, InvocationRequest, InvocationResult
from invoker.runtime.codepkg import CodePackageError, check_handler, extract_zip, inline_to_zip
from invoker.runtime.python_runtime import PythonRuntime

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


# -- helpers --------------------------------------------------------------------------


def build_zip(files: dict[str, str | bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return buf.getvalue()


MakeFn = Callable[..., FunctionSpec]


@pytest.fixture
def make_fn(tmp_path: Path) -> MakeFn:
    """Zip ``files`` (or one ``index.py`` source), extract it, return a FunctionSpec."""
    counter = [0]

    def make(
        source: str | None = None,
        *,
        files: dict[str, str | bytes] | None = None,
        name: str | None = None,
        **overrides: object,
    ) -> FunctionSpec:
        counter[0] += 1
        data = build_zip(files if files is not None else {"index.py": source or ""})
        code_dir = tmp_path / f"code-{counter[0]}"
        extract_zip(data, code_dir)
        fname = name or f"fn{counter[0]}"
        fields: dict[str, object] = {
            "urn": f"urn:fss:local:proj0001:function:default:{fname}:latest",
            "name": fname,
            "package": "default",
            "version": "latest",
            "project_id": "proj0001",
            "region": "local",
            "runtime": "Python3.9",
            "handler": "index.handler",
            "memory_mb": 128,
            "timeout_s": 10,
            "code_dir": code_dir,
            "code_digest": hashlib.sha256(data).hexdigest(),
        }
        fields.update(overrides)
        return FunctionSpec(**fields)  # type: ignore[arg-type]

    return make


@pytest.fixture
async def runtime() -> AsyncIterator[PythonRuntime]:
    rt = PythonRuntime(max_workers=6, idle_ttl_s=60)
    await rt.start()
    yield rt
    await assert_closes_cleanly(rt)


async def assert_closes_cleanly(rt: PythonRuntime) -> None:
    pids = rt.worker_pids()
    await rt.close()
    assert rt.worker_pids() == []
    leftovers = [pid for pid in pids if _process_exists(pid)]
    assert leftovers == [], f"workers {leftovers} still exist after close()"


def _process_exists(pid: int) -> bool:
    """True while /proc has the pid, zombies included (a reaped process has no entry)."""
    return os.path.exists(f"/proc/{pid}")


def req(request_id: str, event: object = None, *, timeout_s: float | None = None) -> InvocationRequest:
    payload = json.dumps({} if event is None else event).encode()
    return InvocationRequest(request_id=request_id, payload=payload, timeout_s=timeout_s)


def body(result: InvocationResult) -> object:
    return json.loads(result.body)


def log_lines(result: InvocationResult) -> list[str]:
    return result.logs.splitlines()


# -- success, event, context, logs ----------------------------------------------------


async def test_success_returns_handler_result_and_event(runtime: PythonRuntime, make_fn: MakeFn) -> None:
    spec = make_fn("def handler(event, context):\n    return {'echo': event, 'n': 42}\n")
    event = {"Records": [{"s3": {"object": {"key": "a.png"}}}], "text": "中文"}
    result = await runtime.invoke(spec, req("r-ok", event))
    assert result.ok, result.error
    assert result.request_id == "r-ok"
    assert body(result) == {"echo": event, "n": 42}
    assert result.duration_ms > 0
    assert result.memory_used_mb > 0


async def test_event_can_be_any_json_value(runtime: PythonRuntime, make_fn: MakeFn) -> None:
    spec = make_fn("def handler(event, context):\n    return [type(event).__name__, event]\n")
    for event, type_name in ((["a", 1], "list"), ("plain", "str"), (7, "int")):
        result = await runtime.invoke(spec, req("r", event))
        assert body(result) == [type_name, event]


async def test_nested_package_handler(runtime: PythonRuntime, make_fn: MakeFn) -> None:
    files: dict[str, str | bytes] = {
        "pkg/__init__.py": "",
        "pkg/sub/__init__.py": "",
        "pkg/sub/mod.py": "from pkg import helper\ndef fn(event, context):\n    return helper.VALUE\n",
        "pkg/helper.py": "VALUE = 'nested ok'\n",
    }
    spec = make_fn(files=files, handler="pkg.sub.mod.fn")
    result = await runtime.invoke(spec, req("r-nested"))
    assert result.ok, result.error
    assert body(result) == "nested ok"


CONTEXT_SRC = """
import time
def handler(event, context):
    first = context.getRemainingTimeInMilliSeconds()
    time.sleep(0.05)
    second = context.getRemainingTimeInMilliSeconds()
    return {
        "request_id": context.getRequestID(),
        "first": first,
        "second": second,
        "running": context.getRunningTimeInSeconds(),
        "ud": context.getUserData("obs_endpoint"),
        "ud_missing": context.getUserData("nope"),
        "ud_default": context.getUserData("nope", "dflt"),
        "name": context.getFunctionName(),
        "version": context.getVersion(),
        "memory": context.getMemorySize(),
        "cpu": context.getCPUNumber(),
        "project": context.getProjectID(),
        "package": context.getPackage(),
        "alias": context.getAlias(),
        "ak": context.getAccessKey(),
        "sk": context.getSecretKey(),
        "sak": context.getSecurityAccessKey(),
        "ssk": context.getSecuritySecretKey(),
        "st": context.getSecurityToken(),
        "token": context.getToken(),
    }
"""


async def test_context_methods(runtime: PythonRuntime, make_fn: MakeFn) -> None:
    spec = make_fn(
        CONTEXT_SRC,
        name="ctxfn",
        urn="urn:fss:local:proj0001:function:default:ctxfn:prod",
        version="3",
        memory_mb=256,
        timeout_s=5,
        user_data={"obs_endpoint": "obs.local:9000"},
        credentials={"access_key": "AK1", "secret_key": "SK1", "security_token": "ST1", "token": "TOK"},
    )
    result = await runtime.invoke(spec, req("req-ctx"))
    assert result.ok, result.error
    got = body(result)
    assert isinstance(got, dict)
    assert 0 < got["second"] < got["first"] <= 5000
    assert got == {
        **got,
        "request_id": "req-ctx",
        "running": 5,
        "ud": "obs.local:9000",
        "ud_missing": None,
        "ud_default": "dflt",
        "name": "ctxfn",
        "version": "3",
        "memory": 256,
        "project": "proj0001",
        "package": "default",
        "alias": "prod",
        "ak": "AK1",
        "sk": "SK1",
        "sak": "",
        "ssk": "",
        "st": "ST1",
        "token": "TOK",
    }
    assert isinstance(got["cpu"], int) and got["cpu"] > 0


LOG_SRC = """
import os, subprocess, sys
def handler(event, context):
    print("hello from print")
    sys.stderr.write("to stderr\\n")
    log = context.getLogger()
    log.info("info line")
    log.warning("warn %s", "formatted")
    log.error("error line")
    os.write(1, b"raw fd write\\n")
    subprocess.run(["echo", "from a subprocess"], check=True)
    print("last line")
    return "ok"
"""


async def test_logs_framed_like_functiongraph(runtime: PythonRuntime, make_fn: MakeFn) -> None:
    spec = make_fn(LOG_SRC)
    result = await runtime.invoke(spec, req("req-log"))
    assert result.ok, result.error
    lines = log_lines(result)
    assert re.fullmatch(rf"{TS} Start invoke request 'req-log', version: latest", lines[0]), lines[0]
    finish = re.fullmatch(
        rf"{TS} Finish invoke request 'req-log'\(invoke Success\), duration: (\d+\.\d{{3}})ms, "
        rf"billing duration: (\d+)ms, memory used: (\d+\.\d{{3}})MB",
        lines[-1],
    )
    assert finish, lines[-1]
    assert int(finish.group(2)) == result.billing_duration_ms
    middle = lines[1:-1]
    # stdout keeps exact order; stderr is a separate pipe, so only its presence is checked.
    stdout_lines = [line for line in middle if line != "to stderr"]
    assert stdout_lines[0] == "hello from print"
    assert re.fullmatch(rf"{TS} req-log INFO info line", stdout_lines[1])
    assert re.fullmatch(rf"{TS} req-log WARN warn formatted", stdout_lines[2])
    assert re.fullmatch(rf"{TS} req-log ERROR error line", stdout_lines[3])
    assert stdout_lines[4:] == ["raw fd write", "from a subprocess", "last line"]
    assert "to stderr" in middle
    assert "\x00" not in result.logs  # end-of-request markers are stripped


async def test_cold_start_output_goes_to_the_first_request(runtime: PythonRuntime, make_fn: MakeFn) -> None:
    spec = make_fn("print('module loaded')\ndef handler(event, context):\n    print('handled')\n")
    result = await runtime.invoke(spec, req("req-cold"))
    assert log_lines(result)[1:3] == ["module loaded", "handled"]


async def test_logs_do_not_leak_between_requests(runtime: PythonRuntime, make_fn: MakeFn) -> None:
    spec = make_fn("def handler(event, context):\n    print('line for', context.getRequestID())\n")
    first = await runtime.invoke(spec, req("req-a"))
    second = await runtime.invoke(spec, req("req-b"))
    assert "line for req-a" in first.logs and "req-b" not in first.logs.replace("'req-b'", "")
    assert "line for req-b" in second.logs and "line for req-a" not in second.logs


async def test_huge_output_keeps_logs_bounded(runtime: PythonRuntime, make_fn: MakeFn) -> None:
    src = (
        "def handler(event, context):\n"
        "    line = 'x' * 99\n"
        "    for _ in range(100_000):\n"
        "        print(line)\n"
        "    print('THE END')\n"
        "    return 'done'\n"
    )
    spec = make_fn(src)
    result = await runtime.invoke(spec, req("req-big-log"))
    assert result.ok, result.error
    assert len(result.logs) < 64 * 1024 + 1024
    assert "bytes of earlier output truncated" in result.logs
    assert log_lines(result)[-2] == "THE END"


# -- failures -------------------------------------------------------------------------


async def test_code_exception(runtime: PythonRuntime, make_fn: MakeFn) -> None:
    src = "def helper(x):\n    raise ValueError(f'bad value {x}')\n\ndef handler(event, context):\n    helper(3)\n"
    spec = make_fn(src)
    result = await runtime.invoke(spec, req("req-exc"))
    assert result.error is not None
    assert result.error.category is ErrorCategory.CODE_EXCEPTION
    assert result.error.error_type == "ValueError"
    assert result.error.message == "bad value 3"
    stack = result.error.stack
    assert len(stack) == 2
    assert "index.py" in stack[0] and "in handler" in stack[0]
    assert "in helper" in stack[1] and "raise ValueError" in stack[1]
    assert not any("python_worker" in frame for frame in stack)
    assert body(result) == {"errorMessage": "bad value 3", "errorType": "ValueError", "stackTrace": stack}
    assert "ValueError: bad value 3" in result.logs
    # A code exception does not cost the warm worker.
    again = await runtime.invoke(spec, req("req-exc-2"))
    assert again.error is not None and again.error.category is ErrorCategory.CODE_EXCEPTION
    assert len(runtime.worker_pids(spec.urn)) == 1


@pytest.mark.parametrize(
    ("files", "handler", "expected"),
    [
        ({"index.py": "def handler(event, context)\n    return 1\n"}, "index.handler", "SyntaxError"),
        ({"index.py": "import not_a_real_module_xyz\n"}, "index.handler", "No module named 'not_a_real_module_xyz'"),
        ({"index.py": "def handler(e, c):\n    return 1\n"}, "missing.handler", "No module named 'missing'"),
        ({"index.py": "def other(e, c):\n    return 1\n"}, "index.handler", "handler 'index.handler' not found"),
        ({"index.py": "handler = 5\n"}, "index.handler", "handler 'index.handler' is not callable"),
    ],
    ids=["syntax-error", "missing-import", "missing-module", "missing-function", "not-callable"],
)
async def test_load_failed(
    runtime: PythonRuntime, make_fn: MakeFn, files: dict[str, str | bytes], handler: str, expected: str
) -> None:
    spec = make_fn(files=files, handler=handler)
    result = await runtime.invoke(spec, req("req-load"))
    assert result.error is not None
    assert result.error.category is ErrorCategory.LOAD_FAILED
    assert expected in result.error.message
    assert runtime.worker_pids(spec.urn) == []  # a worker that failed to load is not kept


async def test_timeout_kills_worker_and_parent_stays_responsive(runtime: PythonRuntime, make_fn: MakeFn) -> None:
    spinner = make_fn("def handler(event, context):\n    print('spinning')\n    while True:\n        pass\n")
    quick = make_fn("def handler(event, context):\n    return 'quick'\n")
    spin_task = asyncio.create_task(runtime.invoke(spinner, req("req-spin", timeout_s=3)))
    await asyncio.sleep(0.3)
    other = await runtime.invoke(quick, req("req-quick"))
    assert other.ok and body(other) == "quick"
    assert not spin_task.done()  # the hung function blocks nothing else
    result = await spin_task
    assert result.error is not None
    assert result.error.category is ErrorCategory.TIMEOUT
    assert result.error.message == "function invocation timed out after 3 s"
    assert "spinning" in result.logs  # partial logs survive the kill
    assert runtime.worker_pids(spinner.urn) == []


async def test_timeout_from_spec_counts_cold_start(runtime: PythonRuntime, make_fn: MakeFn) -> None:
    # Module-level code runs during the cold start; it is bound by the same timeout.
    spec = make_fn("import time\ntime.sleep(60)\ndef handler(e, c):\n    return 1\n", timeout_s=3)
    result = await runtime.invoke(spec, req("req-cold-timeout"))
    assert result.error is not None and result.error.category is ErrorCategory.TIMEOUT


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import os\ndef handler(e, c):\n    os._exit(3)\n", "worker process exited with exit code 3"),
        (
            "import os, signal\ndef handler(e, c):\n    os.kill(os.getpid(), signal.SIGSEGV)\n",
            "worker process exited with signal SIGSEGV",
        ),
    ],
    ids=["os-exit", "segfault"],
)
async def test_crash(runtime: PythonRuntime, make_fn: MakeFn, source: str, expected: str) -> None:
    spec = make_fn(source)
    result = await runtime.invoke(spec, req("req-crash"))
    assert result.error is not None
    assert result.error.category is ErrorCategory.CRASHED
    assert result.error.message.startswith(expected)
    if "SIGSEGV" in expected:  # faulthandler's dump reaches us through raw stderr
        assert "Segmentation fault" in result.error.message
    assert runtime.worker_pids(spec.urn) == []


MEMORY_SRC = """
import os
def handler(event, context):
    if event.get("alloc_mb"):
        blob = bytearray(event["alloc_mb"] * 1024 * 1024)
        return len(blob)
    return os.getpid()
"""


async def test_memory_limit_then_fresh_worker(runtime: PythonRuntime, make_fn: MakeFn) -> None:
    spec = make_fn(MEMORY_SRC, memory_mb=128)
    result = await runtime.invoke(spec, req("req-mem", {"alloc_mb": 400}))
    assert result.error is not None
    assert result.error.category is ErrorCategory.MEMORY_EXCEEDED
    assert re.fullmatch(r"runtime memory limit exceeded: used \d+ MB of 128 MB", result.error.message)
    assert result.memory_used_mb > 128
    assert runtime.worker_pids(spec.urn) == []
    after = await runtime.invoke(spec, req("req-mem-after"))
    assert after.ok, after.error
    assert runtime.worker_pids(spec.urn) == [body(after)]


async def test_memory_error_in_child_is_memory_exceeded(runtime: PythonRuntime, make_fn: MakeFn) -> None:
    # 8 GB is far beyond the RLIMIT_AS backstop: malloc fails at once -> MemoryError.
    spec = make_fn(MEMORY_SRC, memory_mb=128)
    result = await runtime.invoke(spec, req("req-memerr", {"alloc_mb": 8192}))
    assert result.error is not None
    assert result.error.category is ErrorCategory.MEMORY_EXCEEDED
    assert result.error.message.startswith("runtime memory limit exceeded")


async def test_common_imports_fit_in_128_mb(runtime: PythonRuntime, make_fn: MakeFn) -> None:
    src = (
        "import json, os, re, urllib.request, urllib.parse\n"
        "def handler(event, context):\n"
        "    return json.loads(json.dumps({'ok': bool(re.match('a', 'a'))}))\n"
    )
    result = await runtime.invoke(make_fn(src, memory_mb=128), req("req-imports"))
    assert result.ok, result.error
    assert body(result) == {"ok": True}
    assert result.memory_used_mb < 128


async def test_invalid_results(runtime: PythonRuntime, make_fn: MakeFn) -> None:
    not_json = make_fn("def handler(event, context):\n    return {1, 2}\n")
    result = await runtime.invoke(not_json, req("req-set"))
    assert result.error is not None and result.error.category is ErrorCategory.INVALID_RESULT
    assert "set" in result.error.message

    too_big = make_fn("def handler(event, context):\n    return 'x' * (7 * 1024 * 1024)\n")
    result = await runtime.invoke(too_big, req("req-7mb"))
    assert result.error is not None and result.error.category is ErrorCategory.INVALID_RESULT
    assert "over the limit of 6291456 bytes" in result.error.message

    nan = make_fn("def handler(event, context):\n    return float('nan')\n")
    result = await runtime.invoke(nan, req("req-nan"))
    assert result.error is not None and result.error.category is ErrorCategory.INVALID_RESULT


# -- pool behaviour -------------------------------------------------------------------

PID_SRC = "import os\ndef handler(event, context):\n    return os.getpid()\n"


async def test_warm_reuse_and_new_digest(runtime: PythonRuntime, make_fn: MakeFn) -> None:
    spec = make_fn(PID_SRC)
    first = await runtime.invoke(spec, req("req-1"))
    second = await runtime.invoke(spec, req("req-2"))
    assert body(first) == body(second)
    assert runtime.worker_pids(spec.urn) == [body(first)]

    updated = dataclasses.replace(spec, code_digest="new-digest")
    third = await runtime.invoke(updated, req("req-3"))
    assert third.ok
    assert body(third) != body(first)
    assert runtime.worker_pids(spec.urn) == [body(third)]  # the old worker was retired


async def test_retire_kills_workers(runtime: PythonRuntime, make_fn: MakeFn) -> None:
    spec = make_fn(PID_SRC)
    first = await runtime.invoke(spec, req("req-1"))
    await runtime.retire(spec.urn)
    assert runtime.worker_pids(spec.urn) == []
    second = await runtime.invoke(spec, req("req-2"))
    assert body(second) != body(first)


async def test_global_cap_evicts_and_waits(make_fn: MakeFn) -> None:
    rt = PythonRuntime(max_workers=2)
    try:
        slow = "import time\ndef handler(event, context):\n    time.sleep(0.3)\n    return event\n"
        specs = [make_fn(slow) for _ in range(3)]
        # Three functions at once: the third waits for a worker to free up.
        results = await asyncio.gather(*(rt.invoke(s, req(f"req-c{i}", i)) for i, s in enumerate(specs)))
        assert [body(r) for r in results] == [0, 1, 2]
        assert len(rt.worker_pids()) <= 2
        # One after another: each cold start evicts an idle worker of another function.
        for i, spec in enumerate(specs):
            result = await rt.invoke(spec, req(f"req-s{i}", i))
            assert result.ok and body(result) == i
            assert len(rt.worker_pids()) <= 2
    finally:
        await assert_closes_cleanly(rt)


async def test_idle_workers_expire(make_fn: MakeFn) -> None:
    rt = PythonRuntime(idle_ttl_s=0.2)
    try:
        spec = make_fn(PID_SRC)
        await rt.invoke(spec, req("req-idle"))
        for _ in range(100):
            if not rt.worker_pids():
                break
            await asyncio.sleep(0.05)
        assert rt.worker_pids() == []
    finally:
        await assert_closes_cleanly(rt)


async def test_cancel(runtime: PythonRuntime, make_fn: MakeFn) -> None:
    spec = make_fn("import time\ndef handler(event, context):\n    print('sleeping')\n    time.sleep(30)\n")
    task = asyncio.create_task(runtime.invoke(spec, req("req-cancel", timeout_s=60)))
    await asyncio.sleep(0.5)
    assert await runtime.cancel("req-cancel") is True
    result = await task
    assert result.error is not None
    assert result.error.category is ErrorCategory.CANCELED
    assert result.error.message == "function invocation canceled"
    assert "sleeping" in result.logs
    assert await runtime.cancel("req-cancel") is False
    assert await runtime.cancel("no-such-request") is False


async def test_worker_env_is_clean(runtime: PythonRuntime, make_fn: MakeFn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIGGERBUS_TOKEN", "parent-secret")
    src = "import os, sys\ndef handler(event, context):\n    return {'env': dict(os.environ), 'path': sys.path}\n"
    spec = make_fn(src, user_data={"k": "v"}, memory_mb=256, timeout_s=7)
    result = await runtime.invoke(spec, req("req-env"))
    assert result.ok, result.error
    got = body(result)
    assert isinstance(got, dict)
    env = got["env"]
    assert "TRIGGERBUS_TOKEN" not in env
    assert "parent-secret" not in json.dumps(env)
    assert "PYTHONPATH" not in env  # used to start the worker, dropped before user code
    assert env["HOME"] != os.environ.get("HOME")
    assert env["RUNTIME_CODE_ROOT"] == str(spec.code_dir)
    assert env["RUNTIME_FUNC_NAME"] == spec.name
    assert env["RUNTIME_FUNC_VERSION"] == "latest"
    assert env["RUNTIME_PROJECT_ID"] == "proj0001"
    assert env["RUNTIME_HANDLER"] == "index.handler"
    assert env["RUNTIME_MEMORY"] == "256"
    assert env["RUNTIME_TIMEOUT"] == "7"
    assert env["RUNTIME_MAX_RESP_BODY_SIZE"] == "6291456"
    assert json.loads(env["RUNTIME_USERDATA"]) == {"k": "v"}
    assert got["path"][0] == str(spec.code_dir)


# -- code packages --------------------------------------------------------------------


def _patch_first_entry(data: bytes, *, local_offset: int, central_offset: int, fmt: str, value: int) -> bytes:
    """Overwrite a field of the first entry in both its local and central header."""
    out = bytearray(data)
    local = out.find(b"PK\x03\x04")
    central = out.find(b"PK\x01\x02")
    struct.pack_into(fmt, out, local + local_offset, value)
    struct.pack_into(fmt, out, central + central_offset, value)
    return bytes(out)


def test_extract_zip_ok(tmp_path: Path) -> None:
    files: dict[str, str | bytes] = {
        "./": "",  # some zip tools emit an entry for the root itself
        "index.py": "def handler(e, c):\n    return 1\n",
        "lib/util.py": "X = 1\n",
    }
    data = build_zip(files)
    extract_zip(data, tmp_path / "code")
    assert (tmp_path / "code" / "index.py").read_text().startswith("def handler")
    assert (tmp_path / "code" / "lib" / "util.py").read_text() == "X = 1\n"
    check_handler(tmp_path / "code", "index.handler")
    check_handler(tmp_path / "code", "lib.util.X")


def test_extract_zip_rejects_not_a_zip(tmp_path: Path) -> None:
    with pytest.raises(CodePackageError, match="not a valid zip"):
        extract_zip(b"definitely not a zip", tmp_path / "code")


@pytest.mark.parametrize("name", ["../evil.py", "a/../../evil.py", "..\\evil.py", "/tmp/evil.py", "C:/evil.py"])
def test_extract_zip_rejects_path_traversal(tmp_path: Path, name: str) -> None:
    data = build_zip({"index.py": "x = 1\n", name: "pwned = True\n"})
    with pytest.raises(CodePackageError, match="traversal"):
        extract_zip(data, tmp_path / "code")
    assert not (tmp_path / "evil.py").exists()
    assert not (tmp_path / "code").exists()  # nothing written: metadata is checked first


def test_extract_zip_rejects_symlink(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(CodePackageError, match="symbolic link"):
        extract_zip(buf.getvalue(), tmp_path / "code")


def test_extract_zip_rejects_bomb_lying_about_its_size(tmp_path: Path) -> None:
    data = build_zip({"bomb.bin": b"\x00" * (4 * 1024 * 1024)})
    # Claim 1000 bytes uncompressed (local header +22, central header +24).
    lying = _patch_first_entry(data, local_offset=22, central_offset=24, fmt="<I", value=1000)
    with pytest.raises(CodePackageError, match="inflates past its declared size"):
        extract_zip(lying, tmp_path / "code", max_uncompressed=1024 * 1024)
    assert not (tmp_path / "code").exists()


def test_extract_zip_rejects_declared_size_over_cap(tmp_path: Path) -> None:
    data = build_zip({"big.bin": b"\x00" * (2 * 1024 * 1024)})
    with pytest.raises(CodePackageError, match="declares 2097152 bytes"):
        extract_zip(data, tmp_path / "code", max_uncompressed=1024 * 1024)


def test_extract_zip_rejects_too_many_files(tmp_path: Path) -> None:
    data = build_zip({f"f{i}.py": "" for i in range(11)})
    with pytest.raises(CodePackageError, match="11 entries, more than the limit of 10"):
        extract_zip(data, tmp_path / "code", max_files=10)


def test_extract_zip_rejects_encrypted_entries(tmp_path: Path) -> None:
    data = build_zip({"index.py": "x = 1\n"})
    encrypted = _patch_first_entry(data, local_offset=6, central_offset=8, fmt="<H", value=0x1)
    with pytest.raises(CodePackageError, match="encrypted"):
        extract_zip(encrypted, tmp_path / "code")


def test_extract_zip_rejects_unbounded_compression(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_LZMA) as zf:
        zf.writestr("index.py", "x = 1\n")
    with pytest.raises(CodePackageError, match="unsupported compression method"):
        extract_zip(buf.getvalue(), tmp_path / "code")


def test_inline_to_zip_is_deterministic_and_loadable(tmp_path: Path) -> None:
    source = b"def handler(event, context):\n    return 'inline'\n"
    data = inline_to_zip("index.py", source)
    assert data == inline_to_zip("index.py", source)
    extract_zip(data, tmp_path / "code")
    assert (tmp_path / "code" / "index.py").read_bytes() == source
    with pytest.raises(CodePackageError):
        inline_to_zip("../index.py", source)


def test_check_handler_errors(tmp_path: Path) -> None:
    extract_zip(build_zip({"index.py": "", "pkg/__init__.py": ""}), tmp_path / "code")
    check_handler(tmp_path / "code", "pkg.handler")
    with pytest.raises(CodePackageError, match=r"not of the form module\.function"):
        check_handler(tmp_path / "code", "handler")
    with pytest.raises(CodePackageError, match=r"not of the form module\.function"):
        check_handler(tmp_path / "code", "index.handler-1")
    with pytest.raises(CodePackageError, match=r"main\.py .* not found"):
        check_handler(tmp_path / "code", "main.handler")


async def test_caller_cancellation_does_not_leak_the_worker(runtime: PythonRuntime, make_fn: MakeFn) -> None:
    spec = make_fn("import os, time\ndef handler(event, context):\n    time.sleep(event)\n    return os.getpid()\n")
    task = asyncio.create_task(runtime.invoke(spec, req("req-abandoned", 30, timeout_s=60)))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runtime.worker_pids(spec.urn) == []
    result = await runtime.invoke(spec, req("req-after-abandon", 0))
    assert result.ok, result.error


async def test_cancel_while_waiting_for_a_worker(make_fn: MakeFn) -> None:
    rt = PythonRuntime(max_workers=1)
    try:
        busy = make_fn("import time\ndef handler(event, context):\n    time.sleep(1)\n    return 'busy'\n")
        queued = make_fn(PID_SRC)
        running = asyncio.create_task(rt.invoke(busy, req("req-busy")))
        await asyncio.sleep(0.3)
        waiting = asyncio.create_task(rt.invoke(queued, req("req-queued")))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        assert await rt.cancel("req-queued") is True
        result = await waiting
        assert result.error is not None and result.error.category is ErrorCategory.CANCELED
        assert not running.done()
        assert body(await running) == "busy"
    finally:
        await assert_closes_cleanly(rt)


async def test_large_event_and_result_pass_through(runtime: PythonRuntime, make_fn: MakeFn) -> None:
    spec = make_fn("def handler(event, context):\n    return {'len': len(event['blob']), 'back': event['blob']}\n")
    blob = "y" * (5 * 1024 * 1024)
    result = await runtime.invoke(spec, req("req-large", {"blob": blob}))
    assert result.ok, result.error
    got = body(result)
    assert isinstance(got, dict)
    assert got["len"] == len(blob) and got["back"] == blob


async def test_close_fails_running_invocations_cleanly(make_fn: MakeFn) -> None:
    rt = PythonRuntime()
    spec = make_fn("import time\ndef handler(event, context):\n    time.sleep(30)\n")
    task = asyncio.create_task(rt.invoke(spec, req("req-closing", timeout_s=60)))
    await asyncio.sleep(0.5)
    await assert_closes_cleanly(rt)
    result = await task
    assert result.error is not None and result.error.category is ErrorCategory.SYSTEM_ERROR
    after = await rt.invoke(spec, req("req-after-close"))
    assert after.error is not None and after.error.category is ErrorCategory.SYSTEM_ERROR


async def test_a_busy_caller_cannot_starve_queued_ones(make_fn: MakeFn) -> None:
    """One worker; a caller invoking back to back must not keep taking it from those queued."""
    rt = PythonRuntime(max_workers=1)
    try:
        spec = make_fn("import time\ndef handler(event, context):\n    time.sleep(0.02)\n    return event\n")
        assert (await rt.invoke(spec, req("warm", 0))).ok
        finished: list[str] = []

        async def greedy() -> None:
            for i in range(15):
                assert (await rt.invoke(spec, req(f"g{i}", i))).ok
                finished.append(f"g{i}")

        async def polite(name: str) -> None:
            await asyncio.sleep(0.01)  # queue up while greedy holds the worker
            assert (await rt.invoke(spec, req(name, name))).ok
            finished.append(name)

        await asyncio.gather(greedy(), polite("p1"), polite("p2"))
        # Served in turn: both queued callers finish long before greedy's 15th call.
        assert finished.index("p1") < 5 and finished.index("p2") < 5, finished
    finally:
        await assert_closes_cleanly(rt)
