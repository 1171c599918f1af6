"""Any OpenAI-compatible HTTP server: vLLM, SGLang, Ollama, llama.cpp server, OpenAI itself.

aiohttp over httpx, measured (bench/http_clients.py, concurrency 32, 50 ms upstream): aiohttp
used 0.24 ms of CPU per call and reached 588 req/s; httpx 2.5 ms and 290 req/s. The gateway
shares its cores with everything else, so the client's CPU per call matters.

What a tenant sees of a failed call names the deployment, never the upstream's host: connection
details go to the log. Redirects are never followed (a 307 would re-post the tenant's body to
another origin), and an answer is read up to `max_response_bytes`, so a huge or never-ending
body ends the request early instead of filling memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import orjson

from batchgate.upstreams.base import UpstreamReply, parse_retry_after
from batchgate.upstreams.steering import without_steering

log = logging.getLogger(__name__)
READ_CHUNK = 256 * 1024
UNREACHABLE_LOG_EVERY_S = 30.0  # per deployment: an unreachable upstream fails every call


class ResponseTooLarge(Exception):
    pass


class OpenAICompatUpstream:
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        upstream_model: str,
        max_connections: int,
        name: str = "upstream",
        max_response_bytes: int = 33_554_432,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._model = upstream_model
        self._name = name
        self._max_response_bytes = max_response_bytes
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._timeout_cache: aiohttp.ClientTimeout | None = None
        self._logged_unreachable_at = -UNREACHABLE_LOG_EVERY_S

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=30)
            # Headers on the session, not on each call: merging them per request showed in profiles.
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers)
        return self._session

    def _timeout(self, timeout_s: float) -> aiohttp.ClientTimeout:
        if self._timeout_cache is None or self._timeout_cache.total != timeout_s:
            self._timeout_cache = aiohttp.ClientTimeout(total=timeout_s)
        return self._timeout_cache

    def url_for(self, endpoint: str) -> str:
        # The endpoint is one of a fixed set (validated), so the host always comes from config.
        path = endpoint[len("/v1") :] if endpoint.startswith("/v1/") else endpoint
        return self._base_url + path

    async def send(self, endpoint: str, body: dict[str, Any], timeout_s: float) -> UpstreamReply:
        payload = orjson.dumps({**without_steering(body), "model": self._model})
        try:
            async with self._client().post(
                self.url_for(endpoint), data=payload, allow_redirects=False, timeout=self._timeout(timeout_s)
            ) as response:
                if 300 <= response.status < 400:
                    return UpstreamReply(
                        None,
                        error_code="upstream_redirect",
                        error_message=(
                            f"deployment {self._name!r} answered {response.status} (a redirect); batchgate never "
                            "follows redirects to an upstream"
                        ),
                    )
                content = await self._read_capped(response)
                return UpstreamReply(
                    status_code=response.status,
                    body=content,
                    request_id=response.headers.get("x-request-id"),
                    retry_after_s=parse_retry_after(response.headers.get("retry-after")),
                )
        except ResponseTooLarge:
            return UpstreamReply(
                None,
                error_code="response_too_large",
                error_message=(
                    f"deployment {self._name!r} answered with more than {self._max_response_bytes} bytes "
                    "(max_response_bytes); the answer was discarded"
                ),
            )
        except TimeoutError:
            return UpstreamReply(
                None, error_code="request_timeout", error_message=f"the upstream did not answer within {timeout_s:g} s"
            )
        except (aiohttp.ClientError, OSError) as exc:
            self._log_unreachable(exc)
            return UpstreamReply(
                None,
                error_code="upstream_unreachable",
                error_message=f"upstream unreachable (deployment {self._name!r})",
            )

    async def _read_capped(self, response: aiohttp.ClientResponse) -> bytes:
        limit = self._max_response_bytes
        if response.content_length is not None and response.content_length > limit:
            raise ResponseTooLarge
        buffer = bytearray()
        while chunk := await response.content.read(READ_CHUNK):
            buffer += chunk
            if len(buffer) > limit:
                raise ResponseTooLarge
        return bytes(buffer)

    def _log_unreachable(self, exc: BaseException) -> None:
        """The detail (host, errno) for the operator, at most every 30 s per deployment."""
        now = time.monotonic()
        if now - self._logged_unreachable_at >= UNREACHABLE_LOG_EVERY_S:
            self._logged_unreachable_at = now
            log.warning("deployment %s: upstream connection failed: %s: %s", self._name, type(exc).__name__, exc)

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
            await asyncio.sleep(0)  # let aiohttp close its transports
