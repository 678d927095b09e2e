"""Build FunctionGraph-layout code zips in tests."""

from __future__ import annotations

import base64
import io
import textwrap
import zipfile


def make_zip(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, source in files.items():
            zf.writestr(name, textwrap.dedent(source))
    return buffer.getvalue()


def zip_b64(files: dict[str, str]) -> str:
    return base64.b64encode(make_zip(files)).decode()


def python_function(name: str, source: str, **extra: object) -> dict[str, object]:
    """A CreateFunction body for an ``index.handler`` Python function."""
    body: dict[str, object] = {
        "func_name": name,
        "runtime": "Python3.9",
        "handler": "index.handler",
        "code_type": "zip",
        "func_code": {"file": zip_b64({"index.py": source})},
        "timeout": 10,
        "memory_size": 256,
    }
    body.update(extra)
    return body
