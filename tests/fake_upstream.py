"""A fake OpenAI-compatible upstream for batchgate's tests and benchmarks.

Answers are derived from the request (``"echo: " + input``) so a test can match every output line
to its input line. Faults are injected per request by directives written anywhere in the request
body, so one batch line can ask for its own failure:

``@status:CODE:N``  the first N attempts of this exact body answer HTTP CODE (``N`` may be ``*``:
                    always; omitted means always) with an OpenAI error envelope.
``@retry_after:S``  add ``Retry-After: S`` to fault answers of this body.
``@reset:N``        the first N attempts: the connection is aborted (TCP RST), no answer.
``@hang:N``         the first N attempts: never answer (until the client gives up or we stop).
``@latency:MS``     answer after MS milliseconds instead of the global latency.
``@big:BYTES``      a 200 answer padded to about BYTES more bytes (the chat content, or a ``padding`` field).
``@endless:1``      a 200 answer whose body never ends (64 KiB chunks until the client hangs up).
``@redirect:PORT``  answer ``307`` to the same path on ``127.0.0.1:PORT`` (another origin).

Every directive counts from the first attempt of its body (attempts are keyed by a hash of the
raw body), so ``@reset:1 @status:500:2`` means: reset, then 500, then success. When several
apply to one attempt the order is reset, hang, status.

RPM enforcement (``--rpm N``, ``rpm`` in ``/_control``, ``FakeUpstream(rpm=N)``): at most N calls
in any sliding 60-second window, counted across all API calls whatever their path, model or body.
A call over the limit is answered at once (no latency) with HTTP 429, an OpenAI
``rate_limit_exceeded`` error and ``Retry-After`` = seconds until the oldest call in the window
leaves it, rounded up; it is counted in ``by_status`` but takes no place in the window and is no
attempt for the directives above (the limiter stands in front of the model).
``--rpm-window-s W`` (``rpm_window_s``) enforces the same rate over a shorter window, at most
N·W/60 calls in any W seconds, as providers that quantise their limits do (OpenAI: "60,000
requests/minute may be enforced as 1,000 requests/second").

Control endpoints (outside ``/v1``): ``POST /_control`` ``{latency_ms, fail_status, fail_rate,
retry_after, rpm, rpm_window_s}``, ``GET /_stats``, ``POST /_reset`` (stats, attempt counters, the
RPM window and controls back to their start-up values). ``/_stats`` also gives
``first_request_at`` and ``last_answer_at`` (Unix time of the first API call and of the last API
answer, null before any) so a benchmark can measure a rate on the upstream's own clock, and
``answers_repeated``: 200 answers given to a body that had had one already (work the upstream did
twice, e.g. because a crashed client lost the first answer).

Run as a process: ``python tests/fake_upstream.py --host 127.0.0.1 --port 0 [--latency-ms 50]
[--rpm N [--rpm-window-s W]]`` prints ``READY <port>`` once listening. In-process: ``FakeUpstream`` (``await start()``,
``await stop()``, ``.url``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import math
import re
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

try:  # orjson is several times faster and this server sits in a throughput benchmark.
    import orjson

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - orjson is a dependency of batchgate
    import json

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    _loads = json.loads


__all__ = [
    "EMBEDDING_DIM",
    "FakeUpstream",
    "count_tokens",
    "fake_embedding",
    "parse_directives",
]

EMBEDDING_DIM = 8
_API_PATHS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/moderations",
)
_DIRECTIVE = re.compile(
    rb"@(status|retry_after|reset|hang|latency|request_id_len|big|endless|redirect):([0-9]+(?:\.[0-9]+)?)(?::([0-9]+|\*))?"
)
_MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
_ERROR_TYPES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
_ALWAYS = -1  # attempt limit meaning "every attempt"
RPM_WINDOW_S = 60.0  # the sliding window of --rpm, unless told otherwise


def count_tokens(text: str) -> int:
    """The fake's token estimate; tests use it to predict ``usage``."""
    return len(text) // 4 + 1


def fake_embedding(text: str) -> list[float]:
    """A deterministic unit-free vector in [-1, 1) derived from ``text``."""
    digest = hashlib.blake2b(text.encode(), digest_size=4 * EMBEDDING_DIM).digest()
    return [round(int.from_bytes(digest[i : i + 4], "little") / 2**31 - 1.0, 6) for i in range(0, len(digest), 4)]


@dataclass(slots=True)
class Directives:
    """Faults one request body asks for; attempt limits use ``_ALWAYS`` for ``*``."""

    status: int | None = None
    status_attempts: int = 0
    retry_after: str | None = None
    reset: int = 0
    hang: int = 0
    latency_ms: float | None = None
    request_id_len: int | None = None  # an x-request-id this long, as some proxies send
    big: int = 0  # pad a 200 answer by about this many bytes
    endless: bool = False  # a body that never ends
    redirect_port: int | None = None  # a 307 to this port on loopback


def parse_directives(raw: bytes) -> Directives | None:
    """Find ``@name:value[:n]`` directives in a raw body; None when there are none."""
    if b"@" not in raw:  # the common case in benchmarks: skip the regex entirely
        return None
    found = None
    for m in _DIRECTIVE.finditer(raw):
        found = found or Directives()
        name, value, extra = m.group(1), m.group(2).decode(), m.group(3)
        if name == b"status":
            found.status = int(float(value))
            found.status_attempts = _ALWAYS if extra in (None, b"*") else int(extra)
        elif name == b"retry_after":
            found.retry_after = value
        elif name == b"reset":
            found.reset = int(float(value))
        elif name == b"hang":
            found.hang = int(float(value))
        elif name == b"request_id_len":
            found.request_id_len = int(float(value))
        elif name == b"big":
            found.big = int(float(value))
        elif name == b"endless":
            found.endless = True
        elif name == b"redirect":
            found.redirect_port = int(float(value))
        else:
            found.latency_ms = float(value)
    return found


@dataclass(slots=True)
class Controls:
    """Global behaviour set over ``POST /_control``."""

    latency_ms: float = 0.0
    fail_status: int | None = None
    fail_rate: float = 1.0
    retry_after: str | None = None
    rpm: int | None = None  # None: no limit
    rpm_window_s: float = RPM_WINDOW_S

    def as_dict(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency_ms,
            "fail_status": self.fail_status,
            "fail_rate": self.fail_rate,
            "retry_after": self.retry_after,
            "rpm": self.rpm,
            "rpm_window_s": self.rpm_window_s,
        }

    def window_limit(self) -> int:
        """Calls allowed in one window: the RPM scaled to the window's length, at least one."""
        assert self.rpm is not None
        return max(1, math.floor(self.rpm * self.rpm_window_s / 60.0 + 1e-9))


_CONTROL_TYPES: dict[str, Callable[[Any], Any]] = {
    "latency_ms": float,
    "fail_status": int,
    "fail_rate": float,
    "retry_after": str,
    "rpm": int,
    "rpm_window_s": float,
}


class _Stats:
    def __init__(self) -> None:
        self.in_flight = 0
        self.clear()

    def clear(self) -> None:
        """Forget history in place; in_flight survives because hung requests are still open."""
        self.requests_total = 0
        self.by_status: dict[str, int] = {}
        self.by_path: dict[str, int] = {}
        self.max_in_flight = self.in_flight
        self.attempts: dict[bytes, int] = {}  # body hash -> attempts seen
        self.answered: dict[bytes, int] = {}  # body hash -> 200 answers given
        self.models_seen: dict[str, int] = {}
        self.fields_seen: dict[str, int] = {}  # top-level body fields received, with counts
        self.auth_headers: dict[str, None] = {}  # an ordered set
        self.fail_counter = 0
        self.admitted: deque[float] = deque()  # monotonic times of calls inside the RPM window
        self.first_request_at: float | None = None  # Unix times, for rates on our own clock
        self.last_answer_at: float | None = None

    def count(self, bucket: str) -> None:
        self.by_status[bucket] = self.by_status.get(bucket, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests_total": self.requests_total,
            "by_status": dict(self.by_status),
            "by_path": dict(self.by_path),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "bodies_seen": len(self.attempts),
            "bodies_repeated": sum(1 for n in self.attempts.values() if n > 1),
            "answers_repeated": sum(n - 1 for n in self.answered.values()),
            "models_seen": dict(self.models_seen),
            "fields_seen": dict(self.fields_seen),
            "auth_headers": list(self.auth_headers),
            "first_request_at": self.first_request_at,
            "last_answer_at": self.last_answer_at,
        }


def _error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    err_type, code = _ERROR_TYPES.get(status, ("server_error", "server_error"))
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def _text_of(content: Any) -> str:
    """Text of a message content: a string, or a list of parts with ``text``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return "" if content is None else str(content)


def _inputs(value: Any) -> list[str]:
    """Normalise an ``input``/``prompt`` field (string, strings, token lists) to strings."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return [" ".join(map(str, value))]  # one prompt given as token ids
        # Strings, token-id lists, or multimodal parts such as {"type": "text", "text": ...}.
        return [_text_of(v.get("text")) if isinstance(v, dict) else (_inputs(v) or [""])[0] for v in value]
    return [] if value is None else [str(value)]


def _chat_usage(prompt: str, answer: str) -> dict[str, Any]:
    p, c = count_tokens(prompt), count_tokens(answer)
    return {
        "prompt_tokens": p,
        "completion_tokens": c,
        "total_tokens": p + c,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _chat(body: dict[str, Any], n: int, model: str) -> dict[str, Any]:
    messages = body.get("messages") or []
    texts = [_text_of(m.get("content")) for m in messages if isinstance(m, dict)]
    last_user = next(
        (_text_of(m.get("content")) for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"),
        "",
    )
    answer = "echo: " + last_user
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": answer, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
        for i in range(int(body.get("n") or 1))
    ]
    return {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": _chat_usage("\n".join(texts), answer * len(choices)),
        "system_fingerprint": "fp_fake",
    }


def _completion(body: dict[str, Any], n: int, model: str) -> dict[str, Any]:
    prompts = _inputs(body.get("prompt")) or [""]
    answers = ["echo: " + p for p in prompts]
    return {
        "id": f"cmpl-{n}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": i, "text": a, "logprobs": None, "finish_reason": "stop"} for i, a in enumerate(answers)],
        "usage": _chat_usage("".join(prompts), "".join(answers)),
    }


def _embedding(body: dict[str, Any], n: int, model: str) -> dict[str, Any]:
    texts = _inputs(body.get("input"))
    as_base64 = body.get("encoding_format") == "base64"  # the openai SDK's default
    data = []
    for i, text in enumerate(texts):
        vec: Any = fake_embedding(text)
        if as_base64:
            vec = base64.b64encode(struct.pack(f"<{EMBEDDING_DIM}f", *vec)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vec})
    tokens = sum(count_tokens(t) for t in texts)
    return {
        "id": f"emb-{n}",
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _response(body: dict[str, Any], n: int, model: str) -> dict[str, Any]:
    raw_input = body.get("input")
    if isinstance(raw_input, list):  # a list of message items: echo the last user one
        items = [i for i in raw_input if isinstance(i, dict)]
        user = [_text_of(i.get("content")) for i in items if i.get("role", "user") == "user"]
        text = user[-1] if user else ""
        prompt = "\n".join(_text_of(i.get("content")) for i in items)
    else:
        text = prompt = _text_of(raw_input)
    if body.get("instructions"):
        prompt = str(body["instructions"]) + "\n" + prompt
    answer = "echo: " + text
    p, c = count_tokens(prompt), count_tokens(answer)
    now = int(time.time())
    return {
        "id": f"resp_{n}",
        "object": "response",
        "created_at": now,
        "completed_at": now,
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "model": model,
        "output": [
            {
                "type": "message",
                "id": f"msg_{n}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": answer, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": p,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": c,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": p + c,
        },
    }


def _moderation(body: dict[str, Any], n: int, model: str) -> dict[str, Any]:
    results = []
    for text in _inputs(body.get("input")):
        flagged = "@flagged" in text  # lets a test ask for a flagged result
        score = 0.99 if flagged else 0.0001
        results.append(
            {
                "flagged": flagged,
                "categories": {c: flagged and c == "violence" for c in _MODERATION_CATEGORIES},
                "category_scores": {c: score if c == "violence" else 0.0001 for c in _MODERATION_CATEGORIES},
                "category_applied_input_types": {c: ["text"] for c in _MODERATION_CATEGORIES},
            }
        )
    return {"id": f"modr-{n}", "model": model, "results": results}


def _pad(answer: dict[str, Any], size: int) -> None:
    """Make an answer about ``size`` bytes larger: the chat content grows, or a ``padding`` field."""
    choices = answer.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0].get("message"), dict):
        choices[0]["message"]["content"] += " " + "x" * size
    else:
        answer["padding"] = "x" * size


_BUILDERS: dict[str, Callable[[dict[str, Any], int, str], dict[str, Any]]] = {
    "/v1/chat/completions": _chat,
    "/v1/completions": _completion,
    "/v1/embeddings": _embedding,
    "/v1/responses": _response,
    "/v1/moderations": _moderation,
}


class FakeUpstream:
    """The fake server, run in the current event loop."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: float = 0.0,
        rpm: int | None = None,
        rpm_window_s: float = RPM_WINDOW_S,
    ) -> None:
        self.host = host
        self.port = port
        self.controls = Controls(latency_ms=latency_ms)
        self.control(rpm=rpm, rpm_window_s=rpm_window_s)  # validated as over /_control
        self._defaults = Controls(**self.controls.as_dict())
        self._stats = _Stats()
        self._request_no = 0  # never reset, so x-request-id stays unique for the process life
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.root_url}/v1"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024**2)
        for path in _API_PATHS:
            app.router.add_post(path, self._handle_api)
        app.router.add_get("/v1/models", self._handle_models)
        app.router.add_post("/_control", self._handle_control)
        app.router.add_get("/_stats", self._handle_stats)
        app.router.add_post("/_reset", self._handle_reset)
        # handler_cancellation: a client that gives up (e.g. on @hang) cancels our handler,
        # so in_flight stays truthful. access_log=None: no per-request logging cost.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        # Bind the socket ourselves to learn the port chosen for port 0 without private API.
        sock = socket.create_server((self.host, self.port), backlog=2048, reuse_port=False)
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock, backlog=2048).start()

    async def stop(self) -> None:
        self._stopping.set()  # wakes hanging handlers so shutdown does not wait on them
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # In-process equivalents of the control endpoints.
    def stats(self) -> dict[str, Any]:
        return self._stats.as_dict()

    def reset(self) -> None:
        self._stats.clear()
        self.controls = Controls(**self._defaults.as_dict())

    def control(self, **settings: Any) -> dict[str, Any]:
        """Change global behaviour; a None or 0 ``fail_status`` turns global failures off."""
        unknown = set(settings) - set(_CONTROL_TYPES)
        if unknown:
            raise ValueError(f"unknown controls: {sorted(unknown)}")
        # Validate everything before changing anything, so a bad call changes nothing.
        parsed = {k: None if v is None else _CONTROL_TYPES[k](v) for k, v in settings.items()}
        if parsed.get("latency_ms") is None and "latency_ms" in parsed:
            parsed["latency_ms"] = 0.0
        rate = parsed.get("fail_rate")
        if rate is not None and not 0.0 <= rate <= 1.0:
            raise ValueError("fail_rate must be within 0..1")
        if "fail_rate" in parsed and rate is None:
            parsed["fail_rate"] = 1.0
        rpm = parsed.get("rpm")
        if rpm is not None and rpm <= 0:  # 0 would refuse everything; say None to turn it off
            raise ValueError("rpm must be a positive whole number (or null: no limit)")
        if "rpm_window_s" in parsed:
            window = parsed["rpm_window_s"]
            if window is None:
                parsed["rpm_window_s"] = RPM_WINDOW_S
            elif not 0 < window <= RPM_WINDOW_S:
                raise ValueError(f"rpm_window_s must be within (0, {RPM_WINDOW_S:g}]")
        for key, value in parsed.items():
            setattr(self.controls, key, value)
        return self.controls.as_dict()

    # -- handlers ---------------------------------------------------------------------------

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        stats = self._stats
        self._request_no += 1
        n = self._request_no
        stats.requests_total += 1
        if stats.first_request_at is None:
            stats.first_request_at = time.time()
        stats.by_path[request.path] = stats.by_path.get(request.path, 0) + 1
        stats.in_flight += 1
        if stats.in_flight > stats.max_in_flight:
            stats.max_in_flight = stats.in_flight
        try:
            throttled = self._throttle(stats, n)
            if throttled is not None:
                return throttled
            return await self._answer(request, stats, n)
        finally:
            stats.in_flight -= 1
            stats.last_answer_at = time.time()

    def _throttle(self, stats: _Stats, n: int) -> web.Response | None:
        """The RPM limiter in front of everything else: a 429 when the sliding window is full."""
        controls = self.controls
        if controls.rpm is None:
            return None
        now = time.monotonic()
        window, admitted = controls.rpm_window_s, stats.admitted
        while admitted and admitted[0] <= now - window:
            admitted.popleft()
        limit = controls.window_limit()
        if len(admitted) < limit:
            admitted.append(now)
            return None
        wait = max(1, math.ceil(admitted[-limit] + window - now))  # the oldest of the `limit` that fill it
        per = "min" if window == RPM_WINDOW_S else f"{window:g}s"
        message = (
            f"Rate limit reached on requests per {per}: Limit {limit}, Used {len(admitted)}, "
            f"Requested 1. Please try again in {wait}s."
        )
        headers = {"x-request-id": f"req_{n}", "Retry-After": str(wait)}
        return self._json(stats, 429, _error_body(429, message), headers)

    async def _answer(self, request: web.Request, stats: _Stats, n: int) -> web.StreamResponse:
        raw = await request.read()
        key = hashlib.blake2b(raw, digest_size=16).digest()
        attempt = stats.attempts.get(key, 0) + 1
        stats.attempts[key] = attempt
        auth = request.headers.get("Authorization")
        if auth is not None:
            stats.auth_headers[auth] = None
        directives = parse_directives(raw)
        controls = self.controls

        if directives is not None:
            if attempt <= directives.reset:
                stats.count("reset")
                return await self._abort(request)
            if attempt <= directives.hang:
                stats.count("hang")
                await self._stopping.wait()  # or cancelled when the client disconnects
                return await self._abort(request)

        latency = controls.latency_ms
        if directives is not None and directives.latency_ms is not None:
            latency = directives.latency_ms
        if latency > 0:
            await asyncio.sleep(latency / 1000)

        headers = {"x-request-id": f"req_{n}"}
        if directives is not None and directives.request_id_len is not None:
            headers["x-request-id"] = f"req_{n}_".ljust(directives.request_id_len, "x")
        try:
            body = _loads(raw)
        except ValueError:
            return self._json(stats, 400, _error_body(400, "body is not valid JSON"), headers)
        if not isinstance(body, dict):
            return self._json(stats, 400, _error_body(400, "body must be a JSON object"), headers)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            error = _error_body(400, "you must provide a model parameter", "model")
            return self._json(stats, 400, error, headers)
        stats.models_seen[model] = stats.models_seen.get(model, 0) + 1
        for field in body:
            stats.fields_seen[field] = stats.fields_seen.get(field, 0) + 1

        if directives is not None and directives.status is not None:
            limit = directives.status_attempts
            if limit == _ALWAYS or attempt <= limit:
                if directives.retry_after is not None:
                    headers["Retry-After"] = directives.retry_after
                message = f"injected status {directives.status} (attempt {attempt})"
                error = _error_body(directives.status, message)
                return self._json(stats, directives.status, error, headers)

        if controls.fail_status:
            # Deterministic rate: request c fails when floor(c*rate) steps up.
            stats.fail_counter += 1
            c, rate = stats.fail_counter, controls.fail_rate
            if int(c * rate) > int((c - 1) * rate):
                if controls.retry_after is not None:
                    headers["Retry-After"] = controls.retry_after
                message = f"injected global status {controls.fail_status}"
                error = _error_body(controls.fail_status, message)
                return self._json(stats, controls.fail_status, error, headers)

        if directives is not None and directives.redirect_port is not None:
            stats.count("307")
            location = f"http://127.0.0.1:{directives.redirect_port}{request.path}"
            return web.Response(status=307, headers={**headers, "Location": location})
        if directives is not None and directives.endless:
            return await self._endless(request, stats, headers)
        if body.get("stream"):
            error = _error_body(400, "streaming is not supported by the fake upstream", "stream")
            return self._json(stats, 400, error, headers)
        answer = _BUILDERS[request.path](body, n, model)
        if directives is not None and directives.big:
            _pad(answer, directives.big)
        stats.answered[key] = stats.answered.get(key, 0) + 1
        return self._json(stats, 200, answer, headers)

    @staticmethod
    def _json(stats: _Stats, status: int, payload: dict[str, Any], headers: dict[str, str]) -> web.Response:
        stats.count(str(status))
        return web.Response(status=status, body=_dumps(payload), content_type="application/json", headers=headers)

    async def _endless(self, request: web.Request, stats: _Stats, headers: dict[str, str]) -> web.StreamResponse:
        """A 200 whose JSON body never closes: chunks until the client hangs up (or we stop)."""
        stats.count("endless")
        response = web.StreamResponse(status=200, headers={**headers, "Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"padding":"')
        chunk = b"x" * 65536
        while not self._stopping.is_set():
            await response.write(chunk)  # raises once the client is gone
            await asyncio.sleep(0.001)
        return response

    async def _abort(self, request: web.Request) -> web.StreamResponse:
        """Drop the connection with a TCP RST, as a crashed or overloaded upstream would."""
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # Linger 0 turns close into RST: the client sees ECONNRESET, not a clean EOF.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        # Nothing can be sent any more; end the handler the way a client disconnect would.
        raise asyncio.CancelledError

    async def _handle_models(self, request: web.Request) -> web.Response:
        names = ["fake-model", *(m for m in self._stats.models_seen if m != "fake-model")]
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in names]
        return web.Response(body=_dumps({"object": "list", "data": data}), content_type="application/json")

    async def _handle_control(self, request: web.Request) -> web.Response:
        try:
            settings = _loads(await request.read() or b"{}")
            current = self.control(**settings)
        except (ValueError, TypeError) as exc:
            return web.Response(status=400, body=_dumps(_error_body(400, str(exc))), content_type="application/json")
        return web.Response(body=_dumps(current), content_type="application/json")

    async def _handle_stats(self, request: web.Request) -> web.Response:
        return web.Response(body=_dumps(self.stats()), content_type="application/json")

    async def _handle_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.Response(body=_dumps({"ok": True}), content_type="application/json")


async def _serve(host: str, port: int, latency_ms: float, rpm: int | None, rpm_window_s: float) -> None:
    server = FakeUpstream(host, port, latency_ms, rpm, rpm_window_s)
    await server.start()
    print(f"READY {server.port}", flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    await server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--rpm", type=int, default=None, help="answer 429 above N calls a minute (sliding window)")
    parser.add_argument(
        "--rpm-window-s", type=float, default=RPM_WINDOW_S, help="enforce --rpm over this window instead (N*W/60 calls)"
    )
    args = parser.parse_args(argv)
    runner: Callable[[Awaitable[None]], None] = asyncio.run
    try:  # uvloop roughly halves the fake's CPU per request; it matters on 2 cores
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        pass
    runner(_serve(args.host, args.port, args.latency_ms, args.rpm, args.rpm_window_s))


if __name__ == "__main__":
    sys.exit(main())
