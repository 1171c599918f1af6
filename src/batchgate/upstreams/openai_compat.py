"""Any OpenAI-compatible HTTP server: vLLM, SGLang, Ollama, llama.cpp server, OpenAI itself.

aiohttp over httpx, measured (bench/http_clients.py, concurrency 32, 50 ms upstream): aiohttp
used 0.24 ms of CPU per call and reached 588 req/s; httpx 2.5 ms and 290 req/s. The gateway
shares its cores with everything else, so the client's CPU per call matters.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from batchgate.upstreams.base import UpstreamReply, parse_retry_after


class OpenAICompatUpstream:
    def __init__(self, base_url: str, api_key: str | None, upstream_model: str, max_connections: int) -> None:
        self._base_url = base_url.rstrip("/")
        self._model = upstream_model
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._timeout_cache: aiohttp.ClientTimeout | None = None

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
        path = endpoint[len("/v1"):] if endpoint.startswith("/v1/") else endpoint
        return self._base_url + path

    async def send(self, endpoint: str, body: dict[str, Any], timeout_s: float) -> UpstreamReply:
        payload = orjson.dumps({**body, "model": self._model})
        try:
            async with self._client().post(self.url_for(endpoint), data=payload,
                                           timeout=self._timeout(timeout_s)) as response:
                content = await response.read()
                return UpstreamReply(
                    status_code=response.status,
                    body=content,
                    request_id=response.headers.get("x-request-id"),
                    retry_after_s=parse_retry_after(response.headers.get("retry-after")),
                )
        except TimeoutError:
            return UpstreamReply(None, error_code="request_timeout",
                                 error_message=f"the upstream did not answer within {timeout_s:g} s")
        except (aiohttp.ClientError, OSError) as exc:
            return UpstreamReply(None, error_code="upstream_unreachable",
                                 error_message=f"upstream connection failed: {type(exc).__name__}: {exc}")

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
            await asyncio.sleep(0)  # let aiohttp close its transports
