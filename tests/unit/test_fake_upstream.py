"""The fake upstream must be right before any end-to-end test can trust it."""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fake_upstream import EMBEDDING_DIM, FakeUpstream, count_tokens, fake_embedding, parse_directives
from tests.harness import (
    FakeUpstreamProcess,
    openai_client,
    poll_until,
    read_jsonl_bytes,
    upstream_model_config,
    write_jsonl,
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as server:
        yield server


@pytest.fixture
async def client(fake: FakeUpstream) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": "Bearer upstream-secret"}
    async with httpx.AsyncClient(base_url=fake.url, headers=headers, timeout=10) as c:
        yield c


def chat(content: str, model: str = "m1") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}]}


async def eventually(fn: Callable[[], bool], timeout: float = 5.0) -> None:
    """Async deadline poll (the event loop must keep running for the server to progress)."""
    deadline = time.monotonic() + timeout
    while not fn():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# -- answers derived from the request ----------------------------------------------------------


async def test_chat_echoes_last_user_message_with_usage(client: httpx.AsyncClient) -> None:
    messages = [
        {"role": "system", "content": "be terse"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "hello world"}]},
    ]
    r = await client.post("/chat/completions", json={"model": "m1", "messages": messages})
    assert r.status_code == 200
    assert r.headers["x-request-id"].startswith("req_")
    body = r.json()
    assert body["model"] == "m1" and body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    answer = "echo: hello world"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": answer, "refusal": None}
    prompt = "be terse\nfirst\nok\nhello world"
    usage = body["usage"]
    assert usage["prompt_tokens"] == count_tokens(prompt) == len(prompt) // 4 + 1
    assert usage["completion_tokens"] == len(answer) // 4 + 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_request_ids_are_distinct(client: httpx.AsyncClient) -> None:
    ids = {(await client.post("/chat/completions", json=chat("x"))).headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3


async def test_completions_echo_prompt(client: httpx.AsyncClient) -> None:
    r = await client.post("/completions", json={"model": "m2", "prompt": "once upon"})
    body = r.json()
    assert r.status_code == 200 and body["model"] == "m2" and body["id"]
    assert body["choices"][0]["text"] == "echo: once upon"
    assert body["usage"] == {
        "prompt_tokens": count_tokens("once upon"),
        "completion_tokens": count_tokens("echo: once upon"),
        "total_tokens": count_tokens("once upon") + count_tokens("echo: once upon"),
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


async def test_embeddings_are_deterministic_per_input(client: httpx.AsyncClient) -> None:
    r = await client.post("/embeddings", json={"model": "e", "input": ["a", "b", "a"]})
    body = r.json()
    vectors = [d["embedding"] for d in body["data"]]
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(len(v) == EMBEDDING_DIM for v in vectors)
    assert vectors[0] == vectors[2] == fake_embedding("a") and vectors[0] != vectors[1]
    assert body["model"] == "e" and body["id"]
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}

    # The openai SDK asks for base64 by default: little-endian float32.
    r = await client.post("/embeddings", json={"model": "e", "input": "a", "encoding_format": "base64"})
    decoded = struct.unpack(f"<{EMBEDDING_DIM}f", base64.b64decode(r.json()["data"][0]["embedding"]))
    assert decoded == pytest.approx(fake_embedding("a"), abs=1e-6)


async def test_responses_shape(client: httpx.AsyncClient) -> None:
    r = await client.post("/responses", json={"model": "m3", "input": "tell me"})
    body = r.json()
    assert body["object"] == "response" and body["model"] == "m3" and body["status"] == "completed"
    content = body["output"][0]["content"][0]
    assert content == {"type": "output_text", "text": "echo: tell me", "annotations": []}
    usage = body["usage"]
    assert usage["input_tokens"] == count_tokens("tell me")
    assert usage["output_tokens"] == count_tokens("echo: tell me")
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


async def test_moderations_results_per_input(client: httpx.AsyncClient) -> None:
    r = await client.post("/moderations", json={"model": "mod", "input": ["fine", "@flagged"]})
    body = r.json()
    assert body["model"] == "mod" and body["id"]
    assert [res["flagged"] for res in body["results"]] == [False, True]


async def test_missing_model_is_an_openai_400(client: httpx.AsyncClient) -> None:
    r = await client.post("/chat/completions", json={"messages": []})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "model"


# -- per-request fault directives --------------------------------------------------------------


def test_parse_directives() -> None:
    assert parse_directives(b'{"x": "no directives"}') is None
    d = parse_directives(b'"@status:429:2 @retry_after:3 @latency:15 @reset:1 @hang:2"')
    assert d is not None
    assert (d.status, d.status_attempts, d.retry_after, d.latency_ms, d.reset, d.hang) == (
        429,
        2,
        "3",
        15.0,
        1,
        2,
    )


async def test_status_for_n_attempts_then_success(client: httpx.AsyncClient) -> None:
    body = chat("please @status:429:2")
    codes = [(await client.post("/chat/completions", json=body)).status_code for _ in range(3)]
    assert codes == [429, 429, 200]
    # A different body has its own attempt counter.
    other = await client.post("/chat/completions", json=chat("other @status:500:1"))
    assert other.status_code == 500
    error = other.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "server_error"


async def test_status_star_fails_always(client: httpx.AsyncClient) -> None:
    body = chat("bad @status:400:*")
    for _ in range(4):
        r = await client.post("/chat/completions", json=body)
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "invalid_request_error"


async def test_retry_after_header_on_fault_answers_only(client: httpx.AsyncClient) -> None:
    body = chat("@status:429:1 @retry_after:2")
    first = await client.post("/chat/completions", json=body)
    assert first.status_code == 429 and first.headers["retry-after"] == "2"
    second = await client.post("/chat/completions", json=body)
    assert second.status_code == 200 and "retry-after" not in second.headers


async def test_reset_aborts_the_connection(client: httpx.AsyncClient, fake: FakeUpstream) -> None:
    body = chat("@reset:1")
    with pytest.raises(httpx.TransportError):
        await client.post("/chat/completions", json=body)
    r = await client.post("/chat/completions", json=body)
    assert r.status_code == 200
    assert fake.stats()["by_status"] == {"reset": 1, "200": 1}


async def test_hang_never_answers(client: httpx.AsyncClient, fake: FakeUpstream) -> None:
    body = chat("@hang:1")
    with pytest.raises(httpx.ReadTimeout):
        await client.post("/chat/completions", json=body, timeout=0.3)
    # The client gave up, so the server-side handler is cancelled and no longer in flight.
    await eventually(lambda: fake.stats()["in_flight"] == 0)
    assert (await client.post("/chat/completions", json=body)).status_code == 200


async def test_hang_ends_when_server_stops() -> None:
    server = FakeUpstream()
    await server.start()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        pending = asyncio.ensure_future(c.post("/chat/completions", json=chat("@hang:1")))
        await eventually(lambda: server.stats()["in_flight"] == 1)
        await asyncio.wait_for(server.stop(), timeout=5)
        with pytest.raises(httpx.TransportError):
            await pending


async def test_latency_directive_delays_the_answer(client: httpx.AsyncClient) -> None:
    start = time.monotonic()
    r = await client.post("/chat/completions", json=chat("slow @latency:200"))
    assert r.status_code == 200
    assert time.monotonic() - start >= 0.2


# -- stats, controls, reset --------------------------------------------------------------------


async def test_stats_count_requests(client: httpx.AsyncClient, fake: FakeUpstream) -> None:
    await client.post("/chat/completions", json=chat("a", model="m1"))
    await client.post("/chat/completions", json=chat("a", model="m1"))
    await client.post("/chat/completions", json=chat("@status:500:1", model="m2"))
    await client.post("/embeddings", json={"model": "e", "input": "x"}, headers={"Authorization": "Bearer k2"})
    stats = (await client.get(fake.root_url + "/_stats")).json()
    assert stats["requests_total"] == 4
    assert stats["by_status"] == {"200": 3, "500": 1}
    assert stats["by_path"] == {"/v1/chat/completions": 3, "/v1/embeddings": 1}
    assert stats["bodies_seen"] == 3 and stats["bodies_repeated"] == 1
    assert stats["models_seen"] == {"m1": 2, "m2": 1, "e": 1}
    assert stats["auth_headers"] == ["Bearer upstream-secret", "Bearer k2"]
    assert stats["in_flight"] == 0 and stats["max_in_flight"] == 1


async def test_max_in_flight(client: httpx.AsyncClient, fake: FakeUpstream) -> None:
    # Hanging requests make the concurrency exact instead of timing-dependent.
    tasks = [
        asyncio.ensure_future(client.post("/chat/completions", json=chat(f"{i} @hang:1"), timeout=30)) for i in range(5)
    ]
    await eventually(lambda: fake.stats()["in_flight"] == 5)
    assert fake.stats()["max_in_flight"] == 5
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await eventually(lambda: fake.stats()["in_flight"] == 0)
    assert fake.stats()["max_in_flight"] == 5


async def test_reset_clears_stats_counters_and_controls(client: httpx.AsyncClient, fake: FakeUpstream) -> None:
    body = chat("@status:503:1")
    assert (await client.post("/chat/completions", json=body)).status_code == 503
    assert (await client.post(fake.root_url + "/_control", json={"latency_ms": 5})).status_code == 200
    assert (await client.post(fake.root_url + "/_reset")).status_code == 200
    stats = fake.stats()
    assert stats["requests_total"] == 0 and stats["by_status"] == {} and stats["bodies_seen"] == 0
    assert fake.controls.latency_ms == 0
    # The attempt counter restarted, so the first attempt fails again.
    assert (await client.post("/chat/completions", json=body)).status_code == 503


async def test_global_fail_rate_is_deterministic(client: httpx.AsyncClient, fake: FakeUpstream) -> None:
    r = await client.post(fake.root_url + "/_control", json={"fail_status": 503, "fail_rate": 0.5, "retry_after": 1})
    assert r.json()["fail_status"] == 503
    answers = [await client.post("/chat/completions", json=chat(str(i))) for i in range(6)]
    assert [a.status_code for a in answers] == [200, 503] * 3
    assert answers[1].headers["retry-after"] == "1"
    await client.post(fake.root_url + "/_control", json={"fail_status": None})
    assert (await client.post("/chat/completions", json=chat("x"))).status_code == 200


async def test_global_latency_control(client: httpx.AsyncClient, fake: FakeUpstream) -> None:
    await client.post(fake.root_url + "/_control", json={"latency_ms": 150})
    start = time.monotonic()
    await client.post("/chat/completions", json=chat("x"))
    assert time.monotonic() - start >= 0.15


async def test_bad_control_is_rejected(client: httpx.AsyncClient, fake: FakeUpstream) -> None:
    bad = ({"nope": 1}, {"fail_rate": 2}, {"latency_ms": "soon"}, {"rpm": 0}, {"rpm_window_s": 0}, {"rpm": "x"})
    for payload in bad:
        r = await client.post(fake.root_url + "/_control", json=payload)
        assert r.status_code == 400, payload
    assert fake.controls.fail_rate == 1.0 and fake.controls.latency_ms == 0 and fake.controls.rpm is None


# -- RPM enforcement ---------------------------------------------------------------------------


async def test_rpm_limit_answers_429_with_retry_after() -> None:
    async with FakeUpstream(rpm=5) as fake, httpx.AsyncClient(base_url=fake.url, timeout=10) as c:
        # The window counts every call, whatever its path, model or body.
        for i in range(4):
            assert (await c.post("/chat/completions", json=chat(str(i), model=f"m{i}"))).status_code == 200
        assert (await c.post("/embeddings", json={"model": "e", "input": "x"})).status_code == 200
        sixth = await c.post("/chat/completions", json=chat("one too many"))
        assert sixth.status_code == 429
        # Seconds until the oldest call leaves the 60 s window, rounded up: all five are just now.
        assert 1 <= int(sixth.headers["retry-after"]) <= 60
        error = sixth.json()["error"]
        assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
        assert "Limit 5" in error["message"]
        assert sixth.headers["x-request-id"].startswith("req_")
        # Refused calls take no place in the window: still refused, still counted.
        assert (await c.post("/chat/completions", json=chat("again"))).status_code == 429
        stats = fake.stats()
        assert stats["by_status"] == {"200": 5, "429": 2} and stats["requests_total"] == 7
        assert stats["first_request_at"] <= stats["last_answer_at"]


async def test_rpm_window_slides_and_control_and_reset(client: httpx.AsyncClient, fake: FakeUpstream) -> None:
    # 300 a minute over a 1 s window: 5 calls in any second.
    r = await client.post(fake.root_url + "/_control", json={"rpm": 300, "rpm_window_s": 1})
    assert r.json()["rpm"] == 300 and r.json()["rpm_window_s"] == 1
    codes = [(await client.post("/chat/completions", json=chat(str(i)))).status_code for i in range(5)]
    body = chat("@status:500:1")
    refused = await client.post("/chat/completions", json=body)
    assert codes == [200] * 5 and refused.status_code == 429 and refused.headers["retry-after"] == "1"
    # Once the oldest calls leave the window, calls pass again; the refused call was no attempt,
    # so the body's directive still sees its first attempt.
    deadline = time.monotonic() + 5
    while (r := await client.post("/chat/completions", json=body)).status_code == 429:
        assert time.monotonic() < deadline, "the window never slid"
        await asyncio.sleep(0.05)
    assert r.status_code == 500
    assert fake.stats()["bodies_seen"] == 6 and fake.stats()["bodies_repeated"] == 0
    await client.post(fake.root_url + "/_control", json={"rpm": None})
    assert all([(await client.post("/chat/completions", json=chat("x"))).status_code == 200 for _ in range(8)])
    await client.post(fake.root_url + "/_control", json={"rpm": 1})
    await client.post(fake.root_url + "/_reset")  # back to the start-up controls: no limit
    assert fake.controls.rpm is None and fake.controls.rpm_window_s == 60
    assert [(await client.post("/chat/completions", json=chat("y"))).status_code for _ in range(3)] == [200] * 3


# -- as a subprocess, through the harness and the official SDK --------------------------------


def test_subprocess_with_openai_sdk(upstream: FakeUpstreamProcess) -> None:
    assert upstream.url.endswith("/v1") and upstream.port > 0
    with openai_client(upstream.url, api_key="upstream-secret") as sdk:
        completion = sdk.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi there"}])
        assert completion.choices[0].message.content == "echo: hi there"
        assert completion.usage is not None and completion.usage.prompt_tokens == count_tokens("hi there")
        embedding = sdk.embeddings.create(model="fake-model", input="abc")  # base64 on the wire
        assert embedding.data[0].embedding == pytest.approx(fake_embedding("abc"), abs=1e-6)
        assert sdk.responses.create(model="fake-model", input="yo").output_text == "echo: yo"

        stats = upstream.stats()
        assert stats["requests_total"] == 3 and stats["auth_headers"] == ["Bearer upstream-secret"]
        upstream.control(fail_status=429, retry_after=1)
        with pytest.raises(openai.RateLimitError):
            sdk.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "x"}])
    upstream.reset()
    assert upstream.stats()["requests_total"] == 0


def test_subprocess_rpm_option() -> None:
    with FakeUpstreamProcess(rpm=5) as proc, openai_client(proc.url) as sdk:
        assert proc.control()["rpm"] == 5
        for i in range(5):
            sdk.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": str(i)}])
        with pytest.raises(openai.RateLimitError) as caught:
            sdk.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "6"}])
        assert 1 <= int(caught.value.response.headers["retry-after"]) <= 60
        assert proc.stats()["by_status"] == {"200": 5, "429": 1}
        proc.reset()  # the window empties, the command-line limit stays
        assert proc.control()["rpm"] == 5
        sdk.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "7"}])


def test_subprocess_reports_its_port_and_stops() -> None:
    with FakeUpstreamProcess(latency_ms=1) as proc:
        assert httpx.get(proc.root_url + "/_stats").status_code == 200
        assert proc.control()["latency_ms"] == 1.0
    assert proc.proc is not None and proc.proc.poll() is not None


# -- small harness helpers -----------------------------------------------------------------------


def test_poll_until() -> None:
    calls: list[int] = []
    assert poll_until(lambda: calls.append(1) or len(calls) >= 3, timeout=5, interval=0.001) is True
    with pytest.raises(AssertionError, match="never true"):
        poll_until(lambda: False, timeout=0.05, interval=0.01, message="never true")


def test_jsonl_round_trip(tmp_path: Path) -> None:
    rows = [{"custom_id": "a", "n": 1}, {"custom_id": "b", "text": "é\n"}]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    assert read_jsonl_bytes(path.read_bytes()) == rows
    assert path.read_bytes().endswith(b"\n") and path.read_bytes().count(b"\n") == 2


def test_upstream_model_config_shape() -> None:
    entry = upstream_model_config("http://u/v1", max_attempts=3, price={"input_per_mtok": 1})
    assert entry == {
        "name": "fake-model",
        "price": {"input_per_mtok": 1},
        "deployments": [
            {"provider": "openai", "base_url": "http://u/v1", "api_key": "upstream-secret", "max_attempts": 3}
        ],
    }
