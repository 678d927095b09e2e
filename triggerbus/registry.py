"""Functions and their async configs: create/update/delete, code packages, and lookup.

Implements :class:`invoker.registry.FunctionDirectory` for the invoker, with an
in-memory cache invalidated on every change (one process owns the embedded store).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from invoker.destinations import check_no_cycle, check_supported
from invoker.registry import ResolvedFunction
from invoker.runtime.base import FunctionSpec
from invoker.runtime.codepkg import CodePackageError, check_handler, extract_zip, inline_to_zip
from invoker.runtime.target_guard import TargetGuard, TargetRefused
from schemas.async_config import (
    AsyncInvokeConfig,
    AsyncInvokeConfigRequest,
    DestinationKind,
    FuncAsyncDestinationConfig,
)
from schemas.errors import bad_request, conflict, not_found
from schemas.functions import (
    HTTP_RUNTIME,
    CreateFunctionRequest,
    FunctionConfig,
    UpdateFunctionConfigRequest,
    cpu_for_memory,
)
from schemas.urn import FunctionUrn
from triggerbus.secrets import SecretBox
from triggerbus.store.base import Store
from triggerbus.store.models import StoredFunction


def iso_local(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def fg_modified(ts: float) -> str:
    """FunctionGraph's ``last_modified`` style: ``2021-03-04 14:50:02`` (UTC here)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


class FunctionRegistry:
    def __init__(
        self,
        store: Store,
        secrets: SecretBox,
        code_root: Path,
        region: str,
        *,
        destination_kinds: set[DestinationKind] | None = None,
        forbidden_code_urls: tuple[str, ...] = (),
        target_guard: TargetGuard | None = None,
        cache_ttl_s: float | None = None,
    ) -> None:
        self.store = store
        self.secrets = secrets
        self.code_root = code_root
        self.region = region
        self.destination_kinds = destination_kinds or {DestinationKind.FUNCTIONGRAPH}
        self.forbidden_code_urls = forbidden_code_urls
        self.target_guard = target_guard  # HTTP functions never target this service (invoker/runtime/target_guard.py)
        # Caches: the accept path reads a function per request. With a shared store (several
        # processes) entries expire after cache_ttl_s, so changes made elsewhere show up.
        self._cache: dict[str, tuple[ResolvedFunction | None, float]] = {}
        self._stored: dict[str, tuple[StoredFunction, float]] = {}
        self.cache_ttl_s = cache_ttl_s
        self._lock = asyncio.Lock()

    # -- naming -----------------------------------------------------------------------------------

    def parse_urn(self, text: str, project_id: str | None = None) -> FunctionUrn:
        urn = FunctionUrn.parse(text)
        if project_id is not None and urn.project_id != project_id:
            raise bad_request(f"function urn {text!r} does not belong to project {project_id}")
        if urn.qualifier != "latest":
            raise not_found(f"version or alias {urn.qualifier!r} of {urn.name} does not exist (only 'latest')")
        return urn

    async def require(self, text: str, project_id: str | None = None) -> StoredFunction:
        urn = self.parse_urn(text, project_id)
        cached = self._fresh(self._stored.get(urn.unqualified))
        fn = cached[0] if cached else None
        if fn is None:
            fn = await self.store.get_function(urn.unqualified)
            if fn is not None:
                self._stored[urn.unqualified] = (fn, time.monotonic())
        if fn is None:
            raise not_found(f"function '{urn.name}' (package {urn.package}) does not exist")
        return fn

    # -- code ----------------------------------------------------------------------------------------

    def code_dir(self, digest: str) -> Path:
        return self.code_root / digest

    async def _store_code(self, req: CreateFunctionRequest) -> tuple[str, int]:
        assert req.func_code is not None and req.func_code.file
        try:
            raw = base64.b64decode(req.func_code.file, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request("func_code.file: not valid base64") from None
        try:
            if req.code_type == "inline":
                module = req.handler.rsplit(".", 1)[0].replace(".", "/") + ".py"
                raw = inline_to_zip(req.code_filename or module, raw)
            digest = hashlib.sha256(raw).hexdigest()
            target = self.code_dir(digest)
            if not target.exists():
                await asyncio.to_thread(self._extract, raw, target)
            check_handler(target, req.handler)
        except CodePackageError as exc:
            raise bad_request(f"func_code: {exc}") from None
        await self.store.put_code(digest, raw)  # other processes extract it from there
        return digest, len(raw)

    async def _ensure_code(self, fn: StoredFunction) -> None:
        """Extract a function's package here if another process stored it (or the dir was wiped)."""
        if fn.runtime == HTTP_RUNTIME or self.code_dir(fn.digest).exists():
            return
        raw = await self.store.get_code(fn.digest)
        if raw is None:
            raise FileNotFoundError(f"code package {fn.digest} of {fn.name} is missing from the store")
        await asyncio.to_thread(self._extract_once, raw, self.code_dir(fn.digest))

    def _extract_once(self, raw: bytes, target: Path) -> None:
        if not target.exists():
            self._extract(raw, target)

    def _extract(self, raw: bytes, target: Path) -> None:
        staging = target.with_name(f".{target.name}.{os.getpid()}.{time.monotonic_ns()}")
        try:
            extract_zip(raw, staging)
            (staging / ".code.zip.sha256").write_text(target.name)
            try:
                staging.rename(target)
            except OSError:
                if not target.exists():  # a concurrent extraction won the rename: fine
                    raise
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    async def _check_code_url(self, url: str) -> None:
        for forbidden in self.forbidden_code_urls:
            if url.rstrip("/").startswith(forbidden.rstrip("/")):
                raise bad_request(f"code_url: {url} points at this service's own API, which is not allowed")
        if self.target_guard is not None:
            try:
                await self.target_guard.check(url)
            except TargetRefused as exc:
                raise bad_request(f"code_url: {exc}") from None

    # -- CRUD -----------------------------------------------------------------------------------------

    async def create(self, project_id: str, req: CreateFunctionRequest) -> StoredFunction:
        urn = FunctionUrn(self.region, project_id, req.package, req.func_name)
        if req.runtime == HTTP_RUNTIME:
            assert req.code_url is not None
            await self._check_code_url(req.code_url)
            digest, size = hashlib.sha256(req.code_url.encode()).hexdigest(), 0
        else:
            digest, size = await self._store_code(req)
        credentials = req.credentials.model_dump() if req.credentials else {}
        fn = StoredFunction(
            urn=urn.unqualified,
            project_id=project_id,
            package=req.package,
            name=req.func_name,
            runtime=req.runtime,
            handler=req.handler,
            timeout=req.timeout,
            memory_size=req.memory_size,
            code_type=req.code_type or "",
            code_filename=req.code_filename or "",
            code_url=req.code_url or "",
            code_size=size,
            digest=digest,
            user_data=req.user_data,
            description=req.description,
            max_instance_num=req.max_instance_num,
            credentials={k: self.secrets.encrypt(v) for k, v in credentials.items() if v},
        )
        async with self._lock:
            if not await self.store.put_function(fn, create=True):
                raise conflict(f"function '{req.func_name}' already exists in package {req.package}")
            self.invalidate(fn.urn)
        await self.store.audit("createFunction", fn.urn, {"runtime": fn.runtime, "digest": fn.digest})
        return fn

    async def update_config(self, fn: StoredFunction, req: UpdateFunctionConfigRequest) -> StoredFunction:
        changes = req.model_dump(exclude_none=True)
        credentials = changes.pop("credentials", None)
        if "code_url" in changes:
            if fn.runtime != HTTP_RUNTIME:
                raise bad_request("code_url: only http functions have a code_url")
            await self._check_code_url(changes["code_url"])
        if "handler" in changes and fn.runtime != HTTP_RUNTIME:
            try:
                check_handler(self.code_dir(fn.digest), changes["handler"])
            except CodePackageError as exc:
                raise bad_request(f"handler: {exc}") from None
        updated = fn.model_copy(update={**changes, "updated": time.time()})
        if credentials is not None:
            updated.credentials = {k: self.secrets.encrypt(v) for k, v in credentials.items() if v}
        await self.store.put_function(updated, create=False)
        self.invalidate(fn.urn)
        await self.store.audit("updateFunctionConfig", fn.urn, {"fields": sorted(changes)})
        return updated

    async def delete(self, fn: StoredFunction) -> None:
        await self.store.delete_function(fn.urn)
        self.invalidate(fn.urn)
        await self.store.audit("deleteFunction", fn.urn, {})

    # -- async config ---------------------------------------------------------------------------------

    async def put_async_config(self, fn: StoredFunction, req: AsyncInvokeConfigRequest) -> AsyncInvokeConfig:
        existing = await self.store.get_async_config(fn.urn)
        now = time.time()
        config = AsyncInvokeConfig(
            func_urn=fn.qualified_urn,
            max_async_event_age_in_seconds=req.max_async_event_age_in_seconds,
            max_async_retry_attempts=req.max_async_retry_attempts,
            destination_config=req.destination_config or FuncAsyncDestinationConfig(),
            enable_async_status_log=req.enable_async_status_log,
            created_time=existing.created_time if existing else iso_local(now),
            last_modified=fg_modified(now),
        )
        check_supported(config, self.destination_kinds)
        for condition, dest in (
            ("on_success", config.destination_config.on_success),
            ("on_failure", config.destination_config.on_failure),
        ):
            if dest is not None and dest.destination is DestinationKind.FUNCTIONGRAPH:
                target = FunctionUrn.parse(dest.parsed_param().func_urn)
                if target.region != self.region or await self.store.get_function(target.unqualified) is None:
                    raise bad_request(
                        f"destination_config.{condition}.param: destination function {target} does not exist"
                    )
        async with self._lock:
            others = await self.store.all_async_configs()
            others.pop(fn.urn, None)
            check_no_cycle(fn.urn, config, others)
            await self.store.put_async_config(config, fn.urn)
            self.invalidate(fn.urn)
        await self.store.audit("updateAsyncInvokeConfig", fn.urn, config.model_dump(mode="json"))
        return config

    async def get_async_config(self, fn: StoredFunction) -> AsyncInvokeConfig | None:
        return await self.store.get_async_config(fn.urn)

    async def delete_async_config(self, fn: StoredFunction) -> bool:
        deleted = await self.store.delete_async_config(fn.urn)
        self.invalidate(fn.urn)
        if deleted:
            await self.store.audit("deleteAsyncInvokeConfig", fn.urn, {})
        return deleted

    # -- views ---------------------------------------------------------------------------------------

    def to_config(self, fn: StoredFunction) -> FunctionConfig:
        return FunctionConfig(
            func_urn=fn.qualified_urn,
            func_name=fn.name,
            namespace=fn.project_id,
            project_name=self.region,
            package=fn.package,
            runtime=fn.runtime,
            timeout=fn.timeout,
            handler=fn.handler,
            memory_size=fn.memory_size,
            cpu=cpu_for_memory(fn.memory_size),
            code_type=fn.code_type,
            code_url=fn.code_url,
            code_filename=fn.code_filename,
            code_size=fn.code_size,
            digest=fn.digest,
            user_data=json.dumps(fn.user_data, ensure_ascii=False) if fn.user_data else "",
            description=fn.description,
            max_instance_num=fn.max_instance_num,
            strategy_config={"concurrency": fn.max_instance_num, "concurrent_num": 1},
            credentials_configured=bool(fn.credentials),
            last_modified=iso_local(fn.updated),
            created_time=iso_local(fn.created),
        )

    # -- FunctionDirectory ----------------------------------------------------------------------------

    async def resolve(self, urn: str) -> ResolvedFunction | None:
        parsed = FunctionUrn.try_parse(urn)
        if parsed is None or parsed.qualifier != "latest":
            return None
        key = parsed.unqualified
        cached = self._fresh(self._cache.get(key))
        if cached is not None:
            return cached[0]
        fn = await self.store.get_function(key)
        resolved = None
        if fn is not None:
            await self._ensure_code(fn)
            config = await self.store.get_async_config(key) or AsyncInvokeConfig(func_urn=fn.qualified_urn)
            resolved = ResolvedFunction(self.spec_of(fn), config)
        self._cache[key] = (resolved, time.monotonic())
        return resolved

    def _fresh(self, entry: tuple[Any, float] | None) -> tuple[Any, float] | None:
        if entry is None:
            return None
        if self.cache_ttl_s is not None and time.monotonic() - entry[1] > self.cache_ttl_s:
            return None
        return entry

    def spec_of(self, fn: StoredFunction) -> FunctionSpec:
        code_dir = None if fn.runtime == HTTP_RUNTIME else self.code_dir(fn.digest)
        return FunctionSpec(
            urn=fn.qualified_urn,
            name=fn.name,
            package=fn.package,
            version="latest",
            project_id=fn.project_id,
            region=self.region,
            runtime=fn.runtime,
            handler=fn.handler,
            memory_mb=fn.memory_size,
            timeout_s=fn.timeout,
            code_dir=code_dir,
            code_digest=hashlib.sha256(f"{fn.digest}:{fn.updated}".encode()).hexdigest()[:16],
            code_url=fn.code_url or None,
            user_data=dict(fn.user_data),
            credentials={k: self.secrets.decrypt(v) for k, v in fn.credentials.items()},
            max_instances=fn.max_instance_num,
        )

    def invalidate(self, unqualified_urn: str) -> None:
        """Forget cached views of a function that changed."""
        self._cache.pop(unqualified_urn, None)
        self._stored.pop(unqualified_urn, None)
