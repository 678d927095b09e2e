"""OBS destination: the destination event becomes an object, written through the S3 API.

The minio client is blocking, so each write runs in a worker thread. The object
is ``<prefix>/<request_id>.json``; ``expires`` (days, 0 = never) is recorded as the
object's ``Expires`` header and metadata — deleting old objects is the bucket
lifecycle's job, as with OBS.
"""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime, timedelta
from urllib.parse import urlparse

from minio import Minio

from invoker.envelope import DestinationTask


class OBSSink:
    def __init__(self, endpoint: str, access_key: str, secret_key: str, *, region: str | None = None) -> None:
        parsed = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
        if not parsed.hostname:
            raise ValueError(f"invalid S3 endpoint {endpoint!r}")
        self.endpoint = endpoint
        self._client = Minio(
            parsed.netloc,
            access_key=access_key,
            secret_key=secret_key,
            secure=parsed.scheme == "https",
            region=region,
        )

    @staticmethod
    def object_name(prefix: str, request_id: str) -> str:
        prefix = prefix.strip("/")
        return f"{prefix}/{request_id}.json" if prefix else f"{request_id}.json"

    async def deliver(self, task: DestinationTask) -> str:
        bucket = str(task.param["bucket"])
        name = self.object_name(str(task.param.get("prefix", "")), task.request_id)
        data = task.event.encode("utf-8")
        expires_days = int(task.param.get("expires", 0) or 0)
        metadata: dict[str, str] = {"x-triggerbus-function": task.function_urn}
        if expires_days:
            expires_at = datetime.now(UTC) + timedelta(days=expires_days)
            metadata["Expires"] = expires_at.strftime("%a, %d %b %Y %H:%M:%S GMT")
            metadata["x-triggerbus-expires-days"] = str(expires_days)

        def put() -> None:
            self._client.put_object(
                bucket,
                name,
                io.BytesIO(data),
                length=len(data),
                content_type="application/json",
                metadata=metadata,  # type: ignore[arg-type]
            )

        await asyncio.to_thread(put)
        return f"obs://{bucket}/{name}"
