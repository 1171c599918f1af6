"""End to end: outbound limits (RPM, TPM, AIMD, Retry-After), load balancing, the circuit breaker,
fallback models, guardrails and fair share between teams — the real server against fake upstreams.

Deployments are told apart by giving each its own fake upstream process (``/_stats`` per process).
Timing assertions use generous bounds; synchronisation is always polling with a deadline.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
import yaml
from openai.types import Batch

from tests.e2e.helpers import (
    TERMINAL,
    MakeClient,
    assert_echoed,
    gateway_config,
    result_files,
    submit,
    wait_batch,
    wait_terminal,
)
from tests.harness import (
    UPSTREAM_API_KEY,
    FakeUpstreamProcess,
    ServerProcess,
    chat_line,
    openai_client,
    poll_until,
    upstream_model_config,
)

ADMIN_KEY = "limits-admin-key"


# ============================================================================ fixtures and helpers
@pytest.fixture(scope="module")
def upstream_procs() -> Iterator[list[FakeUpstreamProcess]]:
    """Three extra fake upstream processes for the module: one per deployment, so stats tell them apart."""
    procs: list[FakeUpstreamProcess] = []
    try:
        for _ in range(3):
            procs.append(FakeUpstreamProcess(latency_ms=0).start())
        yield procs
    finally:
        for proc in procs:
            proc.stop()


@pytest.fixture
def ups(upstream_procs: list[FakeUpstreamProcess]) -> list[FakeUpstreamProcess]:
    """The module's extra upstreams, reset for the test (stats, attempt counters, controls)."""
    for proc in upstream_procs:
        proc.reset()
    return upstream_procs


def deployment(upstream: FakeUpstreamProcess, **settings: Any) -> dict[str, Any]:
    return {"provider": "openai", "base_url": upstream.url, "api_key": UPSTREAM_API_KEY, **settings}


def multi_model(name: str, *deployments: dict[str, Any], fallbacks: list[str] | None = None) -> dict[str, Any]:
    model: dict[str, Any] = {"name": name, "deployments": list(deployments)}
    if fallbacks is not None:
        model["fallbacks"] = fallbacks
    return model


@dataclass
class Sample:
    t: float  # Unix time (the fakes report their times on the same clock)
    stats: list[dict[str, Any]]


@dataclass
class Watch:
    batch: Batch
    samples: list[Sample] = field(default_factory=list)


def watch(
    client: openai.OpenAI,
    batch_id: str,
    upstreams: list[FakeUpstreamProcess],
    timeout: float = 30.0,
    every: float = 0.02,
) -> Watch:
    """Sample every upstream's /_stats until the batch ends; the samples show arrivals and in-flight over time."""
    samples: list[Sample] = []
    deadline = time.monotonic() + timeout
    last_check = 0.0
    while True:
        samples.append(Sample(time.time(), [u.stats() for u in upstreams]))
        now = time.monotonic()
        if now - last_check >= 0.1:
            last_check = now
            batch = client.batches.retrieve(batch_id)
            if batch.status in TERMINAL:
                samples.append(Sample(time.time(), [u.stats() for u in upstreams]))
                return Watch(batch, samples)
        if now > deadline:
            raise AssertionError(f"batch {batch_id} did not end in {timeout:g}s: {client.batches.retrieve(batch_id)}")
        time.sleep(every)  # the sampling period, not a synchronisation


def count(stats: dict[str, Any], status: str) -> int:
    return int(stats["by_status"].get(status, 0))


def admin(server: ServerProcess, method: str, path: str, **json_body: Any) -> dict[str, Any]:
    response = httpx.request(
        method,
        f"{server.url}{path}",
        json=json_body or None,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()


def output_content(line: dict[str, Any]) -> str:
    return line["response"]["body"]["choices"][0]["message"]["content"]


def assert_all_succeeded(client: openai.OpenAI, batch: Batch, rows: list[dict[str, Any]]) -> dict[str, Any]:
    assert batch.status == "completed", batch
    out, err = result_files(client, batch, rows)
    assert err == {}, list(err.values())[:3]
    for row in rows:
        assert_echoed(out[row["custom_id"]], row)
    return out


class RecordingUpstream:
    """A minimal OpenAI-compatible upstream that keeps every request body it receives.

    The fake upstream echoes only the message text; this one lets a test see fields such as
    ``max_tokens`` exactly as the gateway sent them.
    """

    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw)
                with recorder._lock:
                    recorder.bodies.append((self.path, body))
                if self.path.endswith("/responses"):
                    answer: dict[str, Any] = {
                        "id": "resp_1",
                        "object": "response",
                        "status": "completed",
                        "model": body.get("model"),
                        "output": [
                            {
                                "type": "message",
                                "role": "assistant",
                                "content": [{"type": "output_text", "text": "ok", "annotations": []}],
                            }
                        ],
                        "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2},
                    }
                else:
                    answer = {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body.get("model"),
                        "choices": [
                            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}
                        ],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    }
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("x-request-id", "req_rec")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> RecordingUpstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def recorded(self) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return list(self.bodies)


# ============================================================================ RPM and TPM budgets
def test_rpm_budget_spreads_requests_over_time(ups: list[FakeUpstreamProcess], make_client: MakeClient) -> None:
    """rpm 120 = 2 a second: 10 requests reach the upstream about 0.5 s apart, never in a burst.

    The fake enforces its own limit (at most 5 calls in any 2 s) and would answer 429 to a burst.
    """
    upstream = ups[0]
    upstream.control(rpm=150, rpm_window_s=2.0)  # 5 calls in any 2 s window
    client = make_client(gateway_config(upstream_model_config(upstream.url, rpm=120, max_concurrency=16)))
    rows = [chat_line(f"r{i}", f"rpm line {i}") for i in range(10)]
    seen = watch(client, submit(client, rows).id, [upstream], timeout=30)

    assert_all_succeeded(client, seen.batch, rows)
    stats = upstream.stats()
    assert stats["by_status"] == {"200": 10}, stats  # the upstream never had to refuse one
    first = stats["first_request_at"]
    assert stats["last_answer_at"] - first >= 9 * 0.5 * 0.8  # 9 gaps of 0.5 s, some slack for clocks
    for sample in seen.samples:  # arrivals never ran ahead of 2 a second (one burst unit + slack)
        arrived = sample.stats[0]["requests_total"]
        if arrived:
            assert arrived <= 1 + 2.0 * (sample.t - first) + 1, (sample.t - first, arrived)


def test_tpm_budget_counts_max_tokens(ups: list[FakeUpstreamProcess], make_client: MakeClient) -> None:
    """tpm 6000 = 100 estimated tokens a second; each request is about len(line)/4 + max_tokens(50) ≈ 87 tokens,
    so five of them need about 3.3 s — where the text alone (~37 tokens each) would pass in about 1 s."""
    upstream = ups[0]
    client = make_client(gateway_config(upstream_model_config(upstream.url, tpm=6000, max_concurrency=16)))
    rows = [chat_line(f"t{i}", f"{'x' * 40} tpm {i:02d}", max_tokens=50) for i in range(5)]
    per_request = min(len(json.dumps(r, separators=(",", ":"))) // 4 + 50 for r in rows)
    assert per_request > 80
    rate, burst = 6000 / 60, 6000 / 60
    seen = watch(client, submit(client, rows).id, [upstream], timeout=30)

    assert_all_succeeded(client, seen.batch, rows)
    stats = upstream.stats()
    first = stats["first_request_at"]
    needed = (len(rows) * per_request - burst) / rate  # the bucket's exact schedule, ≈ 3.3 s
    assert stats["last_answer_at"] - first >= needed * 0.8, (stats, needed)
    for sample in seen.samples:
        arrived = sample.stats[0]["requests_total"]
        if arrived:
            allowed = 1 + (burst + rate * (sample.t - first)) / per_request
            assert arrived <= allowed + 1, (sample.t - first, arrived, allowed)


def test_the_rpm_budgets_of_two_deployments_add_up(ups: list[FakeUpstreamProcess], make_client: MakeClient) -> None:
    """Two deployments of one model at rpm 120 each: the model may go 4 a second, using both budgets,
    rather than queueing behind one deployment's budget while the other's sits unused."""
    first, second = ups[0], ups[1]
    client = make_client(
        gateway_config(
            multi_model(
                "fake-model",
                deployment(first, name="first", rpm=120, max_concurrency=16),
                deployment(second, name="second", rpm=120, max_concurrency=16),
            )
        )
    )
    rows = [chat_line(f"two{i}", f"two budgets {i}") for i in range(16)]
    started = time.monotonic()
    batch = wait_terminal(client, submit(client, rows).id, timeout=30)
    elapsed = time.monotonic() - started

    assert_all_succeeded(client, batch, rows)
    served = (first.stats()["requests_total"], second.stats()["requests_total"])
    assert sum(served) == 16
    assert min(served) >= 5, served  # each deployment's budget is used (8 each at equal weights)
    assert elapsed < 7.5 * 0.9, elapsed  # one budget alone needs 7.5 s (15 gaps of 0.5 s); both about 3.5 s


def test_tpm_counts_the_clamped_allowance_not_the_requested_one(
    ups: list[FakeUpstreamProcess], make_client: MakeClient
) -> None:
    """A guardrail clamps max_tokens 100000 to 16 before the request leaves: the TPM budget must be charged
    for what is sent (~50 tokens), not for 100000 tokens that can never be produced."""
    upstream = ups[0]
    config = gateway_config(upstream_model_config(upstream.url, tpm=6000, max_concurrency=16))  # 100 tokens/s
    config["guardrails"] = [{"name": "short", "clamp_max_tokens": 16}]
    client = make_client(config)
    rows = [chat_line(f"c{i}", f"clamped {i}", max_tokens=100_000) for i in range(4)]
    # Each sent request is ~45 tokens: four need about 1 s. Charged 100000 each, the second would wait ~1000 s.
    batch = wait_terminal(client, submit(client, rows).id, timeout=15)
    assert_all_succeeded(client, batch, rows)


# ============================================================================ 429s: Retry-After and AIMD
def test_retry_after_on_429_is_honoured_and_everything_completes(
    ups: list[FakeUpstreamProcess], make_client: MakeClient
) -> None:
    """Every line answers 429 + Retry-After: 1 to its first attempt: all complete, each retried once, and
    the deployment pauses (nothing reaches the upstream for about a second after the first 429s)."""
    upstream = ups[0]
    concurrency = 4
    client = make_client(
        gateway_config(upstream_model_config(upstream.url, max_concurrency=concurrency, max_attempts=3))
    )
    rows = [chat_line(f"ra{i}", f"line {i} @status:429:1 @retry_after:1") for i in range(2 * concurrency)]
    seen = watch(client, submit(client, rows).id, [upstream], timeout=40)

    assert_all_succeeded(client, seen.batch, rows)
    stats = upstream.stats()
    assert stats["by_status"] == {"429": len(rows), "200": len(rows)}  # one 429 per line, never a second
    throttled_at = next(s for s in seen.samples if count(s.stats[0], "429") > 0)
    # For most of the following second nothing new reaches the upstream: only the first wave got there.
    quiet = [s for s in seen.samples if throttled_at.t <= s.t <= throttled_at.t + 0.7]
    assert max(s.stats[0]["requests_total"] for s in quiet) <= concurrency
    assert stats["last_answer_at"] - stats["first_request_at"] >= 1.0  # at least one full pause


def test_a_retry_after_pauses_the_whole_deployment(ups: list[FakeUpstreamProcess], make_client: MakeClient) -> None:
    """One line's 429 carries Retry-After: 2 and is final (max_attempts 1, so no retry is waiting): the other
    lines, which are fine, still wait out the pause before anything more is sent to that deployment."""
    upstream = ups[0]
    client = make_client(gateway_config(upstream_model_config(upstream.url, max_concurrency=1, max_attempts=1)))
    rows = [
        chat_line("throttled", "first @status:429:1 @retry_after:2"),
        *(chat_line(f"after{i}", f"after {i}") for i in range(3)),
    ]
    seen = watch(client, submit(client, rows).id, [upstream], timeout=30)

    out, err = result_files(client, seen.batch, rows)
    assert set(err) == {"throttled"} and err["throttled"]["response"]["status_code"] == 429
    assert len(out) == 3
    throttled_at = next(s.t for s in seen.samples if count(s.stats[0], "429") > 0)
    second_call_at = next(s.t for s in seen.samples if s.stats[0]["requests_total"] >= 2)
    assert second_call_at - throttled_at >= 2.0 * 0.8, second_call_at - throttled_at


def test_a_rate_limited_upstream_is_not_hammered(ups: list[FakeUpstreamProcess], make_client: MakeClient) -> None:
    """The fake allows 10 calls a second and answers 429 with Retry-After beyond; the gateway, with room for
    16 at once and no rpm of its own, pauses on the 429s instead of retrying into the limit."""
    upstream = ups[0]
    upstream.control(rpm=600, rpm_window_s=1.0)  # 10 calls in any second
    concurrency = 16
    client = make_client(
        gateway_config(upstream_model_config(upstream.url, max_concurrency=concurrency, max_attempts=10))
    )
    rows = [chat_line(f"h{i}", f"hammer {i}") for i in range(40)]
    batch = wait_terminal(client, submit(client, rows).id, timeout=40)

    assert_all_succeeded(client, batch, rows)
    stats = upstream.stats()
    assert count(stats, "200") == 40
    # A gateway that ignored the 429s would send every waiting line into the closed window again and
    # again (hundreds of 429s over 10 attempts each). Pausing each time and halving its window, only
    # the calls on the wire when a window closes are refused: 16 - 10 at first, then about 8, 4, 2, …
    assert count(stats, "429") < 2 * concurrency, stats


def test_aimd_halves_concurrency_on_429_and_recovers(ups: list[FakeUpstreamProcess], make_client: MakeClient) -> None:
    """max_concurrency 8, 300 ms calls. The first 8 lines are throttled once (429, Retry-After 1): after the
    pause the upstream sees at most about half as many calls at once, then the window grows back to 8."""
    upstream = ups[0]
    client = make_client(gateway_config(upstream_model_config(upstream.url, max_concurrency=8, max_attempts=3)))
    rows = [
        chat_line(f"a{i}", f"aimd {i} @latency:300" + (" @status:429:1 @retry_after:1" if i < 8 else ""))
        for i in range(56)
    ]
    seen = watch(client, submit(client, rows).id, [upstream], timeout=40)

    assert_all_succeeded(client, seen.batch, rows)
    stats = upstream.stats()
    assert stats["by_status"] == {"429": 8, "200": 56}
    assert stats["max_in_flight"] == 8  # before the 429s: the whole configured concurrency
    throttled = next(s.t for s in seen.samples if count(s.stats[0], "429") > 0)
    after_cut = [s.stats[0]["in_flight"] for s in seen.samples if throttled + 0.2 <= s.t <= throttled + 1.5]
    assert after_cut and max(after_cut) <= 5, after_cut  # window halved to 4 (+1 for additive growth)
    late = [s.stats[0]["in_flight"] for s in seen.samples if s.t > throttled + 1.5]
    assert late and max(late) >= 7, late  # additive recovery back toward max_concurrency


# ============================================================================ load balancing
def test_weights_share_requests_between_deployments(ups: list[FakeUpstreamProcess], make_client: MakeClient) -> None:
    heavy, light = ups[0], ups[1]
    for u in (heavy, light):
        u.control(latency_ms=200)
    client = make_client(
        gateway_config(
            multi_model(
                "fake-model",
                deployment(heavy, name="heavy", weight=3, max_concurrency=256),
                deployment(light, name="light", weight=1, max_concurrency=256),
            )
        )
    )
    rows = [chat_line(f"lb{i}", f"balance {i}") for i in range(200)]
    batch = wait_terminal(client, submit(client, rows).id, timeout=30)

    assert_all_succeeded(client, batch, rows)
    served_heavy, served_light = heavy.stats()["requests_total"], light.stats()["requests_total"]
    assert served_heavy + served_light == 200
    assert served_light > 0 and 2.0 <= served_heavy / served_light <= 4.5, (served_heavy, served_light)


def test_fewest_in_flight_wins_between_a_fast_and_a_slow_deployment(
    ups: list[FakeUpstreamProcess], make_client: MakeClient
) -> None:
    """Equal weights, but one deployment answers 10× slower: it holds its calls longer, so it is picked less."""
    fast, slow = ups[0], ups[1]
    fast.control(latency_ms=20)
    slow.control(latency_ms=200)
    client = make_client(
        gateway_config(
            multi_model(
                "fake-model",
                deployment(fast, name="fast", max_concurrency=8),
                deployment(slow, name="slow", max_concurrency=8),
            )
        )
    )
    rows = [chat_line(f"f{i}", f"fewest {i}") for i in range(160)]
    batch = wait_terminal(client, submit(client, rows).id, timeout=30)

    assert_all_succeeded(client, batch, rows)
    served_fast, served_slow = fast.stats()["requests_total"], slow.stats()["requests_total"]
    assert served_fast + served_slow == 160
    assert served_fast >= 3 * served_slow, (served_fast, served_slow)


# ============================================================================ circuit breaker
def test_a_failing_deployment_is_ejected_under_load(ups: list[FakeUpstreamProcess], make_client: MakeClient) -> None:
    """`bad` answers 500 to everything; `good` is busy (at its concurrency) all along. After `circuit_failures`
    failures `bad` is ejected: it sees a handful of calls, and every request succeeds on `good`."""
    good, bad = ups[0], ups[1]
    good.control(latency_ms=50)
    bad.control(fail_status=500)
    threshold, cooldown, concurrency = 3, 1.0, 4
    client = make_client(
        gateway_config(
            multi_model(
                "fake-model",
                deployment(good, name="good", max_concurrency=concurrency, max_attempts=6),
                deployment(
                    bad,
                    name="bad",
                    max_concurrency=concurrency,
                    max_attempts=6,
                    circuit_failures=threshold,
                    circuit_cooldown_s=cooldown,
                ),
            )
        )
    )
    rows = [chat_line(f"cb{i}", f"circuit {i}") for i in range(60)]
    started = time.monotonic()
    batch = wait_terminal(client, submit(client, rows).id, timeout=30)
    elapsed = time.monotonic() - started

    bad_calls = bad.stats()["requests_total"]
    # The threshold, the calls already on the wire when it opened, and about one probe per cooldown.
    probes = int(elapsed / cooldown) + 1
    assert 1 <= bad_calls <= threshold + concurrency + probes, (bad.stats(), good.stats(), elapsed)
    assert_all_succeeded(client, batch, rows)
    assert count(good.stats(), "200") == 60


def test_an_ejected_deployment_is_skipped_then_probed_back(
    ups: list[FakeUpstreamProcess], make_client: MakeClient
) -> None:
    """Light load (neither deployment ever full). `bad` fails until its circuit opens; while open it gets
    nothing; once it is well again, the probe after the cooldown succeeds and it serves its share again."""
    good, bad = ups[0], ups[1]
    bad.control(fail_status=500)
    threshold, cooldown = 3, 2.5
    client = make_client(
        gateway_config(
            multi_model(
                "fake-model",
                deployment(good, name="good", max_concurrency=64, max_attempts=4),
                deployment(
                    bad,
                    name="bad",
                    max_concurrency=64,
                    max_attempts=4,
                    circuit_failures=threshold,
                    circuit_cooldown_s=cooldown,
                ),
            )
        )
    )
    rows = [chat_line(f"p{i}", f"phase one {i}") for i in range(30)]
    batch = wait_terminal(client, submit(client, rows).id, timeout=30)
    assert_all_succeeded(client, batch, rows)
    opened = bad.stats()["requests_total"]
    assert threshold <= opened <= len(rows) // 2 + threshold, bad.stats()  # its share of the first burst at most

    bad.reset()  # well again, but its circuit is open: nothing goes there until the cooldown has passed
    rows = [chat_line(f"q{i}", f"while open {i}") for i in range(10)]
    batch = wait_terminal(client, submit(client, rows).id, timeout=30)
    assert_all_succeeded(client, batch, rows)
    assert bad.stats()["requests_total"] == 0, bad.stats()

    # Batches keep coming; once the cooldown has passed, a probe succeeds and `bad` is back in rotation.
    round_no = [0]

    def probed_back() -> bool:
        round_no[0] += 1
        rows = [chat_line(f"r{round_no[0]}-{i}", f"round {round_no[0]} {i}") for i in range(10)]
        assert_all_succeeded(client, wait_terminal(client, submit(client, rows).id, timeout=30), rows)
        return count(bad.stats(), "200") > 0

    poll_until(probed_back, timeout=cooldown + 10, interval=0.1, message="the recovered deployment never got a probe")
    before = count(bad.stats(), "200")
    rows = [chat_line(f"s{i}", f"closed again {i}") for i in range(40)]
    assert_all_succeeded(client, wait_terminal(client, submit(client, rows).id, timeout=30), rows)
    assert count(bad.stats(), "200") - before >= 10, bad.stats()  # about half of 40 at equal weights


def test_when_every_deployment_fails_requests_still_go_and_fail_as_usual(
    ups: list[FakeUpstreamProcess], make_client: MakeClient
) -> None:
    only = ups[0]
    only.control(fail_status=500)
    client = make_client(
        gateway_config(upstream_model_config(only.url, max_attempts=2, circuit_failures=2, circuit_cooldown_s=60))
    )
    rows = [chat_line(f"dead{i}", f"dead {i}") for i in range(6)]
    batch = wait_terminal(client, submit(client, rows).id, timeout=30)
    out, err = result_files(client, batch, rows)
    assert out == {} and len(err) == 6
    assert {line["response"]["status_code"] for line in err.values()} == {500}
    assert only.stats()["requests_total"] == 12  # the open circuit did not stop the attempts


# ============================================================================ fallbacks
@pytest.fixture
def fallback_client(ups: list[FakeUpstreamProcess], make_client: MakeClient) -> openai.OpenAI:
    primary, backup = ups[0], ups[1]
    return make_client(
        gateway_config(
            upstream_model_config(
                primary.url,
                name="primary",
                fallbacks=["backup"],
                model="primary-upstream",
                max_attempts=2,
                circuit_failures=100,
            ),
            upstream_model_config(backup.url, name="backup", model="backup-upstream", max_attempts=2),
        )
    )


def test_exhausted_retries_move_to_the_fallback_model(
    ups: list[FakeUpstreamProcess], fallback_client: openai.OpenAI
) -> None:
    primary, backup = ups[0], ups[1]
    primary.control(fail_status=503)
    rows = [chat_line(f"fb{i}", f"fallback {i}", model="primary") for i in range(10)]
    batch = wait_terminal(fallback_client, submit(fallback_client, rows).id, timeout=30)

    out = assert_all_succeeded(fallback_client, batch, rows)
    for line in out.values():
        assert line["response"]["body"]["model"] == "backup-upstream"  # which model answered
    assert primary.stats()["by_status"] == {"503": 20}  # exactly max_attempts (2) per request
    assert primary.stats()["models_seen"] == {"primary-upstream": 20}
    assert backup.stats()["models_seen"] == {"backup-upstream": 10}


def test_a_non_retryable_error_does_not_fall_back(
    ups: list[FakeUpstreamProcess], fallback_client: openai.OpenAI
) -> None:
    primary, backup = ups[0], ups[1]
    rows = [chat_line(f"nr{i}", f"bad request {i} @status:400", model="primary") for i in range(4)]
    rows.append(chat_line("ok", "fine", model="primary"))
    batch = wait_terminal(fallback_client, submit(fallback_client, rows).id, timeout=30)

    out, err = result_files(fallback_client, batch, rows)
    assert set(out) == {"ok"}
    assert out["ok"]["response"]["body"]["model"] == "primary-upstream"
    assert len(err) == 4
    for line in err.values():
        assert line["response"]["status_code"] == 400
        assert line["response"]["body"]["error"]["code"] == "invalid_request"
    assert primary.stats()["by_status"] == {"400": 4, "200": 1}  # one attempt each: no retry either
    assert backup.stats()["requests_total"] == 0


# ============================================================================ guardrails
@pytest.fixture(scope="module")
def recorder() -> Iterator[RecordingUpstream]:
    rec = RecordingUpstream().start()
    try:
        yield rec
    finally:
        rec.stop()


@pytest.fixture(scope="module")
def guarded_server(
    fake_upstream: FakeUpstreamProcess, recorder: RecordingUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    config = gateway_config(
        upstream_model_config(fake_upstream.url, name="deny"),
        upstream_model_config(fake_upstream.url, name="pii-in"),
        upstream_model_config(fake_upstream.url, name="pii-out"),
        upstream_model_config(fake_upstream.url, name="open"),
        upstream_model_config(recorder.url, name="clamped"),
    )
    config["guardrails"] = [
        {
            "name": "no-secrets",
            "models": ["deny"],
            "deny_patterns": [r"(?i)password\s*[:=]", r"\bsk-[A-Za-z0-9]{8,}"],
            "max_input_tokens": 50,
        },
        {"name": "scrub-input", "models": ["pii-in"], "redact_pii": {"input": True}},
        {"name": "scrub-output", "models": ["pii-out"], "redact_pii": {"input": False, "output": True}},
        {"name": "short-answers", "models": ["clamped"], "clamp_max_tokens": 16},
    ]
    server = ServerProcess(config, workdir=tmp_path_factory.mktemp("guarded"))
    try:
        yield server.start().wait_ready()
    finally:
        server.stop()


@pytest.fixture
def guarded(guarded_server: ServerProcess, upstream: FakeUpstreamProcess) -> Iterator[openai.OpenAI]:
    with openai_client(guarded_server) as c:
        yield c


def test_a_denied_request_is_never_sent_and_names_the_rule(
    guarded: openai.OpenAI, upstream: FakeUpstreamProcess
) -> None:
    rows = [
        chat_line("clean-1", "how do I choose a strong password?", model="deny"),
        chat_line("secret-1", "my password: hunter2", model="deny"),
        chat_line("clean-2", "hello", model="deny"),
        chat_line("secret-2", "use key sk-abcdef123456 please", model="deny"),
        chat_line("too-long", "word " * 60, model="deny"),  # ~75 tokens > 50
        chat_line("clean-3", "PASSWORD is a word", model="deny"),
    ]
    batch = wait_terminal(guarded, submit(guarded, rows).id, timeout=30)
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 3)
    out, err = result_files(guarded, batch, rows)
    assert set(out) == {"clean-1", "clean-2", "clean-3"}
    assert set(err) == {"secret-1", "secret-2", "too-long"}
    for line in err.values():
        assert line["response"] is None
        assert line["error"]["code"] == "guardrail_blocked"
        assert "no-secrets" in line["error"]["message"]
    stats = upstream.stats()
    assert stats["requests_total"] == 3  # the blocked lines never left the gateway
    assert stats["bodies_seen"] == 3


def test_pii_is_redacted_before_the_request_leaves(guarded: openai.OpenAI, upstream: FakeUpstreamProcess) -> None:
    rows = [
        chat_line("all", "mail bob@example.com or call +1 415-555-0100, card 4111 1111 1111 1111", model="pii-in"),
        chat_line("parts", "", model="pii-in"),
        chat_line("clean", "order 1234567812345678 shipped in 2024", model="pii-in"),
    ]
    rows[1]["body"]["messages"][0]["content"] = [{"type": "text", "text": "I am alice@example.org"}]
    batch = wait_terminal(guarded, submit(guarded, rows).id, timeout=30)
    out, err = result_files(guarded, batch, rows)
    assert err == {}
    # The fake echoes what it received: the upstream only ever saw the redacted text.
    assert output_content(out["all"]) == "echo: mail [REDACTED_EMAIL] or call [REDACTED_PHONE], card [REDACTED_CARD]"
    assert output_content(out["parts"]) == "echo: I am [REDACTED_EMAIL]"
    assert output_content(out["clean"]) == "echo: order 1234567812345678 shipped in 2024"  # not Luhn-valid


def test_text_with_nul_characters_passes_input_redaction(guarded: openai.OpenAI, upstream: FakeUpstreamProcess) -> None:
    """A NUL (\\u0000) is legal in a JSON string: the line is redacted as usual and the batch completes."""
    rows = [
        chat_line("nul", "a\x000\x00b bob@example.com", model="pii-in"),
        chat_line("plain", "carol@example.net", model="pii-in"),
    ]
    batch_id = submit(guarded, rows).id
    try:
        batch = wait_terminal(guarded, batch_id, timeout=15)
    finally:  # a stuck batch would keep the module's server busy re-claiming it
        with contextlib.suppress(openai.APIError):
            guarded.batches.cancel(batch_id)
    out, err = result_files(guarded, batch, rows)
    assert err == {}
    assert output_content(out["nul"]) == "echo: a\x000\x00b [REDACTED_EMAIL]"
    assert output_content(out["plain"]) == "echo: [REDACTED_EMAIL]"


def test_pii_in_the_answer_is_redacted_in_the_output_file(
    guarded: openai.OpenAI, upstream: FakeUpstreamProcess
) -> None:
    rows = [
        chat_line("out", "reach me at carol@example.net or (415) 555-0100", model="pii-out"),
        chat_line("plain", "nothing personal", model="pii-out"),
        chat_line("other-model", "reach me at carol@example.net", model="open"),
    ]
    batch = wait_terminal(guarded, submit(guarded, rows[:2]).id, timeout=30)
    out, err = result_files(guarded, batch, rows[:2])
    assert err == {}
    assert output_content(out["out"]) == "echo: reach me at [REDACTED_EMAIL] or [REDACTED_PHONE]"
    assert output_content(out["plain"]) == "echo: nothing personal"
    assert out["out"]["response"]["body"]["usage"]["total_tokens"] > 0  # the rest of the body is intact
    # A model without the rule is left alone.
    other = wait_terminal(guarded, submit(guarded, rows[2:]).id, timeout=30)
    out_other, _ = result_files(guarded, other, rows[2:])
    assert output_content(out_other["other-model"]) == "echo: reach me at carol@example.net"


def test_max_tokens_is_clamped_before_the_request_leaves(guarded: openai.OpenAI, recorder: RecordingUpstream) -> None:
    before = len(recorder.recorded())
    rows = [
        chat_line("high", "a", model="clamped", max_tokens=5000),
        chat_line("low", "b", model="clamped", max_tokens=4),
        chat_line("absent", "c", model="clamped"),
        chat_line("completion", "d", model="clamped", max_completion_tokens=900),
    ]
    batch = wait_terminal(guarded, submit(guarded, rows).id, timeout=30)
    out, err = result_files(guarded, batch, rows)
    assert err == {} and len(out) == 4
    sent = {body["messages"][0]["content"]: body for _, body in recorder.recorded()[before:]}
    assert sent["a"]["max_tokens"] == 16
    assert sent["b"]["max_tokens"] == 4
    assert sent["c"]["max_tokens"] == 16
    assert sent["d"]["max_completion_tokens"] == 16

    before = len(recorder.recorded())
    responses = [
        {
            "custom_id": "resp",
            "method": "POST",
            "url": "/v1/responses",
            "body": {"model": "clamped", "input": "e", "max_output_tokens": 999},
        }
    ]
    batch = wait_terminal(guarded, submit(guarded, responses, endpoint="/v1/responses").id, timeout=30)
    assert batch.request_counts is not None and batch.request_counts.completed == 1
    ((path, body),) = recorder.recorded()[before:]
    assert path.endswith("/responses") and body["max_output_tokens"] == 16


# ============================================================================ teams: per-key rules and fair share
@dataclass
class Tenants:
    server: ServerProcess
    keys: dict[str, dict[str, Any]]  # team name -> the created key object (with the full key)

    def client(self, team: str) -> openai.OpenAI:
        return openai_client(self.server, api_key=self.keys[team]["key"])


@pytest.fixture(scope="module")
def tenants(fake_upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    """A keyed server with teams `alpha` and `beta`; restarted once the key ids are known, with a guardrail
    rule scoped to alpha's key (key ids exist only once the server made them)."""
    config = gateway_config(
        upstream_model_config(fake_upstream.url, name="shared", max_concurrency=4),
        upstream_model_config(fake_upstream.url, name="scoped"),
    )
    server = ServerProcess(config, env={"BATCHGATE_ADMIN_KEY": ADMIN_KEY}, workdir=tmp_path_factory.mktemp("tenants"))
    try:
        server.start().wait_ready()
        keys = {}
        for team, weight in (("alpha", 1), ("beta", 1), ("gold", 3), ("bronze", 1)):
            admin(server, "POST", "/admin/teams", name=team, weight=weight)
            keys[team] = admin(server, "POST", "/admin/keys", team=team, name=f"{team}-key")
        config["guardrails"] = [{"name": "alpha-only", "keys": [keys["alpha"]["id"]], "deny_patterns": ["forbidden"]}]
        assert server.config_path is not None
        server.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        server.restart()
        yield Tenants(server, keys)
    finally:
        server.stop()


def test_a_rule_scoped_to_a_key_applies_to_that_key_only(tenants: Tenants, upstream: FakeUpstreamProcess) -> None:
    rows = [chat_line("bad", "a forbidden word", model="scoped"), chat_line("good", "fine", model="scoped")]
    with (
        tenants.client("alpha") as alpha,
        tenants.client("beta") as beta,
        openai_client(tenants.server, api_key=ADMIN_KEY) as root,
    ):
        alpha_batch = wait_terminal(alpha, submit(alpha, rows).id, timeout=30)
        out, err = result_files(alpha, alpha_batch, rows)
        assert set(out) == {"good"} and set(err) == {"bad"}
        assert err["bad"]["error"]["code"] == "guardrail_blocked"
        assert "alpha-only" in err["bad"]["error"]["message"]
        assert upstream.stats()["requests_total"] == 1

        for other in (beta, root):  # another team's key, and the admin key: the rule does not apply
            batch = wait_terminal(other, submit(other, rows).id, timeout=30)
            out, err = result_files(other, batch, rows)
            assert err == {} and output_content(out["bad"]) == "echo: a forbidden word"
    assert upstream.stats()["requests_total"] == 5


def test_a_big_batch_does_not_starve_another_teams_small_one(tenants: Tenants, upstream: FakeUpstreamProcess) -> None:
    big_rows = [chat_line(f"big{i}", f"big {i} @latency:60", model="shared") for i in range(600)]
    small_rows = [chat_line(f"small{i}", f"small {i} @latency:60", model="shared") for i in range(20)]
    with tenants.client("alpha") as alpha, tenants.client("beta") as beta:
        big = submit(alpha, big_rows)
        try:
            # alpha's batch is running and holds every slot before beta arrives.
            wait_batch(
                alpha,
                big.id,
                lambda b: b.request_counts is not None and b.request_counts.completed >= 8,
                timeout=20,
                what="never started",
            )
            poll_until(lambda: upstream.stats()["in_flight"] == 4, 10, message="alpha never filled the slots")
            small = submit(beta, small_rows)
            # Alone, alpha needs ~9 s (600 × 60 ms / 4); with half the slots beta needs well under 2 s.
            done = wait_terminal(beta, small.id, timeout=8)
            big_now = alpha.batches.retrieve(big.id)
            assert done.status == "completed"
            assert done.request_counts is not None and done.request_counts.completed == 20
            assert big_now.status == "in_progress", big_now
            assert big_now.request_counts is not None and big_now.request_counts.completed < 400, big_now
            out, err = result_files(beta, done, small_rows)
            assert err == {}
        finally:
            with contextlib.suppress(openai.APIError):
                alpha.batches.cancel(big.id)
            wait_terminal(alpha, big.id, timeout=20)


def test_teams_share_a_deployment_in_proportion_to_their_weights(
    tenants: Tenants, upstream: FakeUpstreamProcess
) -> None:
    """gold (weight 3) and bronze (weight 1) both have more work than the 4 slots: gold gets about 3 of them."""
    rows = {
        team: [chat_line(f"{team}{i}", f"{team} {i} @latency:60", model="shared") for i in range(300)]
        for team in ("bronze", "gold")
    }
    with tenants.client("bronze") as bronze, tenants.client("gold") as gold:
        clients = {"bronze": bronze, "gold": gold}
        batches = {"bronze": submit(bronze, rows["bronze"])}  # bronze first: it has every slot for a while
        try:
            wait_batch(
                bronze,
                batches["bronze"].id,
                lambda b: b.request_counts is not None and b.request_counts.completed >= 8,
                timeout=20,
            )
            batches["gold"] = submit(gold, rows["gold"])
            wait_batch(
                gold,
                batches["gold"].id,
                lambda b: b.request_counts is not None and b.request_counts.completed >= 10,
                timeout=20,
            )

            def done() -> dict[str, int]:
                counts = {t: clients[t].batches.retrieve(b.id).request_counts for t, b in batches.items()}
                return {t: c.completed if c is not None else 0 for t, c in counts.items()}

            start = done()  # both are running now: measure the shares from here
            wait_batch(
                gold,
                batches["gold"].id,
                lambda b: b.request_counts is not None and b.request_counts.completed >= start["gold"] + 90,
                timeout=20,
            )
            end = done()
            gained = {t: end[t] - start[t] for t in end}
            assert gained["bronze"] > 0, gained
            assert 2.0 <= gained["gold"] / gained["bronze"] <= 4.5, gained
        finally:
            for team, batch in batches.items():
                with contextlib.suppress(openai.APIError):
                    clients[team].batches.cancel(batch.id)
                wait_terminal(clients[team], batch.id, timeout=20)


def test_fair_share_is_per_team_not_per_batch(tenants: Tenants, upstream: FakeUpstreamProcess) -> None:
    """alpha runs two big batches, beta one, equal team weights: beta gets about half the slots, not a third."""

    def rows(tag: str) -> list[dict[str, Any]]:
        return [chat_line(f"{tag}{i}", f"{tag} {i} @latency:60", model="shared") for i in range(250)]

    with tenants.client("alpha") as alpha, tenants.client("beta") as beta:
        runs = [(alpha, submit(alpha, rows("a1"))), (alpha, submit(alpha, rows("a2"))), (beta, submit(beta, rows("b")))]
        try:
            for client, batch in runs:
                wait_batch(
                    client,
                    batch.id,
                    lambda b: b.request_counts is not None and b.request_counts.completed >= 4,
                    timeout=20,
                    what="never started",
                )

            def done() -> list[int]:
                counts = [client.batches.retrieve(batch.id).request_counts for client, batch in runs]
                return [c.completed if c is not None else 0 for c in counts]

            start = done()
            poll_until(
                lambda: sum(done()) >= sum(start) + 120,
                timeout=20,
                interval=0.1,
                message="the batches stopped progressing",
            )
            end = done()
            gained_alpha = end[0] - start[0] + end[1] - start[1]
            gained_beta = end[2] - start[2]
            assert gained_beta > 0, (start, end)
            assert 0.6 <= gained_alpha / gained_beta <= 1.6, (start, end)  # per batch it would be 2:1
        finally:
            for client, batch in runs:
                with contextlib.suppress(openai.APIError):
                    client.batches.cancel(batch.id)
                wait_terminal(client, batch.id, timeout=20)
