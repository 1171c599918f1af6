"""Outbound limits, deployment choice and guardrails, as pure state machines on explicit clocks.

TokenBucket, CircuitBreaker and DeploymentLimits take `now` as an argument, so these tests never
sleep: time is whatever number the test passes in.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson
import pytest

from batchgate.config import DeploymentConfig, GuardrailConfig, ModelConfig, PiiRedactionConfig
from batchgate.engine.deployments import Deployment, ModelPool
from batchgate.engine.guardrails import Blocked, Guardrails, luhn_valid, redact_pii
from batchgate.engine.limits import CircuitBreaker, DeploymentLimits, TokenBucket, estimate_tokens

T0 = 1000.0  # an arbitrary start of time for the explicit clocks


def deployment_config(name: str = "d", **overrides: Any) -> DeploymentConfig:
    return DeploymentConfig(provider="openai", base_url="http://127.0.0.1:9/v1", name=name, model="m", **overrides)


# ============================================================================ TokenBucket
def test_bucket_starts_full_and_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, capacity=4.0, updated=T0)
    assert bucket.wait_for(4, T0) == 0.0  # full at the start: a whole burst may go
    bucket.take(4, T0)
    assert bucket.wait_for(1, T0) == pytest.approx(0.5)  # 1 unit at 2 a second
    assert bucket.wait_for(3, T0) == pytest.approx(1.5)
    assert bucket.wait_for(1, T0 + 0.25) == pytest.approx(0.25)  # half of the unit is back
    assert bucket.wait_for(1, T0 + 0.5) == 0.0
    assert bucket.wait_for(4, T0 + 2.0) == 0.0


def test_bucket_never_holds_more_than_its_capacity() -> None:
    bucket = TokenBucket(rate=2.0, capacity=4.0, updated=T0)
    bucket.take(4, T0)
    bucket.wait_for(1, T0 + 3600)  # an hour idle refills to the capacity, not to 7200
    assert bucket.tokens == pytest.approx(4.0)
    bucket.take(4, T0 + 3600)
    assert bucket.wait_for(1, T0 + 3600) == pytest.approx(0.5)


def test_bucket_takes_are_spaced_at_the_rate() -> None:
    """A caller that waits what wait_for says, then takes, goes exactly `rate` times a second."""
    bucket = TokenBucket(rate=2.0, capacity=1.0, updated=T0)
    now, starts = T0, []
    for _ in range(10):
        now += bucket.wait_for(1, now)
        bucket.take(1, now)
        starts.append(now)
    assert starts[0] == T0
    assert starts[-1] - starts[0] == pytest.approx(4.5)  # 9 gaps of 0.5 s


def test_an_oversized_take_goes_when_full_and_leaves_a_debt() -> None:
    bucket = TokenBucket(rate=10.0, capacity=10.0, updated=T0)
    assert bucket.wait_for(25, T0) == 0.0  # bigger than the bucket: allowed once it is full
    bucket.take(25, T0)
    assert bucket.tokens == pytest.approx(-15.0)
    assert bucket.wait_for(1, T0) == pytest.approx(1.6)  # pay back 15, then 1 more
    assert bucket.wait_for(25, T0) == pytest.approx(2.5)  # waits until full again (10), not for 25
    assert bucket.wait_for(25, T0 + 2.5) == 0.0


def test_an_oversized_take_is_slowed_never_stuck() -> None:
    bucket = TokenBucket(rate=1.0, capacity=5.0, updated=T0)
    wait = bucket.wait_for(1_000_000, T0)
    assert wait == 0.0
    bucket.take(1_000_000, T0)
    assert bucket.wait_for(1_000_000, T0) < 1_000_010  # finite: debt plus one bucket


# ============================================================================ CircuitBreaker
def test_circuit_opens_after_threshold_failures_in_a_row() -> None:
    circuit = CircuitBreaker(threshold=3, cooldown_s=10.0)
    for n in range(2):
        circuit.on_failure(T0 + n)
        assert circuit.allows(T0 + n) and circuit.state == "closed"
    circuit.on_failure(T0 + 2)
    assert circuit.state == "open"
    assert not circuit.allows(T0 + 2)
    assert not circuit.allows(T0 + 11.99)  # the cooldown runs from the failure that opened it


def test_a_success_resets_the_run_of_failures() -> None:
    circuit = CircuitBreaker(threshold=3, cooldown_s=10.0)
    circuit.on_failure(T0)
    circuit.on_failure(T0)
    circuit.on_success()
    circuit.on_failure(T0)
    circuit.on_failure(T0)
    assert circuit.state == "closed" and circuit.allows(T0)


def _opened(threshold: int = 3, cooldown: float = 10.0) -> CircuitBreaker:
    circuit = CircuitBreaker(threshold, cooldown)
    for _ in range(threshold):
        circuit.on_failure(T0)
    assert circuit.state == "open"
    return circuit


def test_half_open_after_the_cooldown_allows_exactly_one_probe() -> None:
    circuit = _opened()
    assert circuit.allows(T0 + 10.0)  # the cooldown has passed
    assert circuit.state == "half_open"
    assert circuit.allows(T0 + 10.0)  # asking again is no probe yet
    circuit.on_start()  # the probe leaves
    assert not circuit.allows(T0 + 10.1)
    assert not circuit.allows(T0 + 500)  # however long the probe takes, one at a time


def test_a_successful_probe_closes_the_circuit() -> None:
    circuit = _opened()
    assert circuit.allows(T0 + 10)
    circuit.on_start()
    circuit.on_success()
    assert circuit.state == "closed"
    assert circuit.allows(T0 + 10) and circuit.allows(T0 + 10)
    circuit.on_failure(T0 + 11)  # a fresh run of failures is needed to open it again
    circuit.on_failure(T0 + 11)
    assert circuit.state == "closed"


def test_a_failed_probe_opens_the_circuit_again_for_a_full_cooldown() -> None:
    circuit = _opened()
    assert circuit.allows(T0 + 10)
    circuit.on_start()
    circuit.on_failure(T0 + 12)  # one failure is enough in half open
    assert circuit.state == "open"
    assert not circuit.allows(T0 + 21.9)
    assert circuit.allows(T0 + 22)  # next probe
    assert circuit.state == "half_open"


def test_a_neutral_answer_frees_the_probe_slot() -> None:
    circuit = _opened()
    assert circuit.allows(T0 + 10)
    circuit.on_start()
    assert not circuit.allows(T0 + 10)
    circuit.on_neutral()  # a 4xx or an abandoned call: says nothing about health
    assert circuit.state == "half_open"
    assert circuit.allows(T0 + 10)  # another probe may go


# ============================================================================ DeploymentLimits
def test_aimd_halves_the_window_at_most_once_a_second_with_a_floor_of_one() -> None:
    limits = DeploymentLimits(deployment_config(max_concurrency=8))
    assert limits.concurrency == 8
    limits.on_throttled(None, T0)
    assert limits.concurrency == 4
    limits.on_throttled(None, T0 + 0.3)  # the same burst of 429s: one signal
    limits.on_throttled(None, T0 + 0.99)
    assert limits.concurrency == 4
    limits.on_throttled(None, T0 + 1.0)
    assert limits.concurrency == 2
    limits.on_throttled(None, T0 + 2.0)
    assert limits.concurrency == 1
    limits.on_throttled(None, T0 + 3.0)
    limits.on_throttled(None, T0 + 4.0)
    assert limits.concurrency == 1  # never below one
    assert limits.window >= 1.0


def test_aimd_recovers_additively_back_to_the_maximum_and_no_further() -> None:
    limits = DeploymentLimits(deployment_config(max_concurrency=8))
    for n in range(4):
        limits.on_throttled(None, T0 + n)
    assert limits.concurrency == 1
    seen = [limits.concurrency]
    for _ in range(100):
        limits.on_success()
        seen.append(limits.concurrency)
    steps = [b - a for a, b in zip(seen, seen[1:], strict=False)]
    assert set(steps) <= {0, 1}  # additive: one slot at a time, never a jump
    assert seen.index(8) > 8  # ...and about one slot per window's worth of successes, not one per success
    assert seen.index(8) <= 40
    assert limits.window == 8.0 and limits.concurrency == 8  # capped at max_concurrency


def test_a_successful_deployment_never_grows_past_max_concurrency() -> None:
    limits = DeploymentLimits(deployment_config(max_concurrency=3))
    for _ in range(50):
        limits.on_success()
    assert limits.window == 3.0 and limits.concurrency == 3


def test_retry_after_pauses_the_deployment() -> None:
    limits = DeploymentLimits(deployment_config())
    assert limits.available(T0) and limits.wait_for(1, T0) == 0.0
    limits.on_throttled(2.0, T0)
    assert not limits.available(T0 + 1.9)
    assert limits.wait_for(1, T0 + 0.5) == pytest.approx(1.5)
    assert limits.available(T0 + 2.0)
    assert limits.wait_for(1, T0 + 2.0) == 0.0


def test_a_shorter_retry_after_does_not_cut_a_longer_pause() -> None:
    limits = DeploymentLimits(deployment_config())
    limits.on_throttled(5.0, T0)
    limits.on_throttled(1.0, T0 + 0.1)
    assert not limits.available(T0 + 4.9)
    assert limits.available(T0 + 5.0)


def test_a_429_without_retry_after_does_not_pause() -> None:
    limits = DeploymentLimits(deployment_config())
    limits.on_throttled(None, T0)
    assert limits.available(T0)


def test_429s_never_open_the_circuit() -> None:
    limits = DeploymentLimits(deployment_config(circuit_failures=2))
    for n in range(10):
        limits.on_throttled(None, T0 + n)
    assert limits.circuit.state == "closed"


def paced(exact: float) -> Any:
    """A wait of `exact` seconds, or up to 5% longer: budgets may pace a little under the configured
    limit (timing jitter must not cross it), never over it."""
    return pytest.approx(exact * 1.025, rel=0.025)


def test_rpm_spaces_requests_evenly() -> None:
    limits = DeploymentLimits(deployment_config(rpm=120))  # 2 a second
    now = T0
    assert limits.wait_for(10, now) == 0.0
    limits.start(10, now)
    assert limits.wait_for(10, now) == paced(0.5)
    now += 0.2
    assert 0.3 <= limits.wait_for(10, now) <= 0.32
    now += limits.wait_for(10, now)
    assert limits.wait_for(10, now) == 0.0
    limits.start(10, now)
    assert limits.wait_for(10, now) == paced(0.5)


def test_rpm_allows_n_requests_a_minute() -> None:
    limits = DeploymentLimits(deployment_config(rpm=30))
    now, starts = T0, 0
    while True:
        now += limits.wait_for(1, now)
        if now >= T0 + 60:
            break
        limits.start(1, now)
        starts += 1
    assert 29 <= starts <= 31  # one burst unit at the start, then (at most) 30 a minute


def test_tpm_waits_for_the_estimated_tokens() -> None:
    limits = DeploymentLimits(deployment_config(tpm=600))  # 10 tokens a second, bursts of 10
    assert limits.wait_for(10, T0) == 0.0
    limits.start(10, T0)
    assert limits.wait_for(5, T0) == paced(0.5)
    assert limits.wait_for(10, T0) == paced(1.0)
    # One request bigger than the per-second budget goes when the bucket is full, then others pay.
    now = T0 + limits.wait_for(100, T0)  # full again
    assert limits.wait_for(100, now) == 0.0
    limits.start(100, now)
    assert limits.wait_for(1, now) == paced(9.1)


def test_the_slowest_of_rpm_tpm_and_pause_wins() -> None:
    limits = DeploymentLimits(deployment_config(rpm=60, tpm=600))
    limits.start(10, T0)  # rpm: next in 1 s; tpm: 10 tokens in 1 s
    assert limits.wait_for(1, T0) == paced(1.0)
    assert limits.wait_for(10, T0) == paced(1.0)
    limits.on_throttled(3.0, T0)
    assert limits.wait_for(1, T0) == pytest.approx(3.0)


def test_no_budgets_means_no_wait() -> None:
    limits = DeploymentLimits(deployment_config())
    for _ in range(1000):
        limits.start(10_000, T0)
    assert limits.wait_for(10_000, T0) == 0.0


def test_deployment_free_slots_follow_the_window_and_the_pause() -> None:
    deployment = Deployment(deployment_config(max_concurrency=8), upstream=object())  # type: ignore[arg-type]
    assert deployment.free == 8
    deployment.in_flight = 3
    assert deployment.free == 5
    deployment.limits.on_throttled(None, time.monotonic())
    assert deployment.free == 1  # window 4, 3 in flight
    deployment.limits.on_throttled(60.0, time.monotonic() + 5)  # paused for a minute (and halved again)
    assert deployment.free == 0


# ============================================================================ estimate_tokens
def test_estimate_is_a_quarter_of_the_line_plus_the_output_allowance() -> None:
    line = b"x" * 400
    assert estimate_tokens(line, {}) == 100
    assert estimate_tokens(line, {"max_tokens": 50}) == 150
    assert estimate_tokens(line, {"max_completion_tokens": 70}) == 170
    assert estimate_tokens(line, {"max_output_tokens": 30}) == 130  # /v1/responses
    assert estimate_tokens(b"x" * 7, {}) == 1


def test_estimate_prefers_max_completion_tokens_over_the_deprecated_max_tokens() -> None:
    assert estimate_tokens(b"", {"max_completion_tokens": 70, "max_tokens": 5}) == 70


@pytest.mark.parametrize("allowance", [True, "100", 1.5, None, -40, [100]])
def test_estimate_ignores_a_malformed_allowance(allowance: Any) -> None:
    assert estimate_tokens(b"x" * 40, {"max_tokens": allowance}) == 10


def test_estimate_of_a_real_line() -> None:
    row = {
        "custom_id": "r1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": "hello " * 50}], "max_tokens": 64},
    }
    line = orjson.dumps(row)
    assert estimate_tokens(line, row["body"]) == len(line) // 4 + 64


# ============================================================================ ModelPool.pick
def make_pool(*specs: tuple[str, float], **overrides: Any) -> ModelPool:
    overrides.setdefault("max_concurrency", 1000)
    configs = [deployment_config(name, weight=weight, **overrides) for name, weight in specs]
    model = ModelConfig(name="m", deployments=configs)
    return ModelPool(model, [Deployment(c, upstream=object()) for c in configs])  # type: ignore[arg-type]


def by_name(pool: ModelPool) -> dict[str, Deployment]:
    return {d.name: d for d in pool.deployments}


def open_circuit(deployment: Deployment, cooldown_from: float | None = None) -> None:
    circuit = deployment.limits.circuit
    now = time.monotonic() if cooldown_from is None else cooldown_from
    for _ in range(circuit.threshold):
        circuit.on_failure(now)
    assert circuit.state == "open"


def test_weights_split_concurrent_requests_three_to_one() -> None:
    """Requests that pile up (none finishes): in flight grows in proportion to the weights."""
    pool = make_pool(("heavy", 3.0), ("light", 1.0))
    picks: Counter[str] = Counter()
    for _ in range(400):
        chosen = pool.pick()
        assert chosen is not None
        chosen.in_flight += 1
        picks[chosen.name] += 1
    assert abs(picks["heavy"] - 300) <= 2 and abs(picks["light"] - 100) <= 2, picks


def test_weights_split_requests_three_to_one_when_in_flight_stays_equal() -> None:
    """Each request finishes before the next one (in flight always 0 everywhere): the weights alone must
    still share the traffic, about 3:1 — not every request to the heavier deployment."""
    pool = make_pool(("heavy", 3.0), ("light", 1.0))
    picks: Counter[str] = Counter()
    for _ in range(400):
        chosen = pool.pick()
        assert chosen is not None
        picks[chosen.name] += 1  # ...and done at once: in_flight never moves
    ratio = picks["heavy"] / max(1, picks["light"])
    assert picks["light"] > 0 and 2.0 <= ratio <= 4.5, picks


def test_fewest_in_flight_wins_at_equal_weight() -> None:
    pool = make_pool(("a", 1.0), ("b", 1.0), ("c", 1.0))
    d = by_name(pool)
    d["a"].in_flight, d["b"].in_flight, d["c"].in_flight = 5, 2, 7
    assert pool.pick() is d["b"]
    d["b"].in_flight = 9
    assert pool.pick() is d["a"]


def test_in_flight_is_weighed_by_weight() -> None:
    """Weighted least connections, as nginx: in flight / weight, lowest first."""
    pool = make_pool(("heavy", 4.0), ("light", 1.0))
    d = by_name(pool)
    d["heavy"].in_flight, d["light"].in_flight = 3, 1  # 3/4 < 1/1
    assert pool.pick() is d["heavy"]
    d["heavy"].in_flight = 6  # 6/4 > 1/1
    assert pool.pick() is d["light"]


def test_a_full_deployment_is_never_picked() -> None:
    pool = make_pool(("a", 1.0), ("b", 1.0), max_concurrency=2)
    d = by_name(pool)
    d["a"].in_flight = 2
    d["b"].in_flight = 1
    assert pool.pick() is d["b"]
    d["b"].in_flight = 2
    assert pool.pick() is None


def test_pinned_pick_uses_only_that_deployment() -> None:
    pool = make_pool(("a", 1.0), ("b", 1.0), max_concurrency=4)
    d = by_name(pool)
    d["a"].in_flight = 3
    assert pool.pick("a") is d["a"]  # although b is idle
    d["a"].in_flight = 4
    assert pool.pick("a") is None  # full: wait for it, do not spill to b
    assert pool.pick("nope") is None


def test_an_open_circuit_is_skipped_while_another_deployment_is_healthy() -> None:
    pool = make_pool(("sick", 1.0), ("well", 1.0))
    d = by_name(pool)
    open_circuit(d["sick"])
    d["well"].in_flight = 50  # busier, but healthy
    for _ in range(20):
        assert pool.pick() is d["well"]


def test_an_open_circuit_is_used_when_no_deployment_is_healthy() -> None:
    pool = make_pool(("a", 1.0), ("b", 1.0))
    d = by_name(pool)
    open_circuit(d["a"])
    open_circuit(d["b"])
    assert pool.pick() in (d["a"], d["b"])
    single = make_pool(("only", 1.0))
    open_circuit(single.deployments[0])
    assert single.pick() is single.deployments[0]


def test_an_open_circuit_is_not_used_just_because_the_healthy_deployment_is_busy() -> None:
    """The healthy deployment is at its concurrency: wait for it rather than send to the ejected one."""
    pool = make_pool(("sick", 1.0), ("well", 1.0), max_concurrency=4)
    d = by_name(pool)
    open_circuit(d["sick"])
    d["well"].in_flight = 4
    assert pool.pick() is None


def test_a_half_open_deployment_gets_one_probe_then_is_skipped_again() -> None:
    pool = make_pool(("sick", 1.0), ("well", 1.0), circuit_failures=2, circuit_cooldown_s=5.0)
    d = by_name(pool)
    open_circuit(d["sick"], cooldown_from=time.monotonic() - 10)  # its cooldown is already over
    d["well"].in_flight = 10
    probe = pool.pick()
    assert probe is d["sick"]  # the probe
    d["sick"].in_flight += 1
    d["sick"].limits.start(0, time.monotonic())
    assert pool.pick() is d["well"]  # while the probe is out, the rest goes to the healthy one
    d["sick"].in_flight -= 1
    d["sick"].limits.on_success()
    d["well"].in_flight = 10
    assert pool.pick() is d["sick"]  # closed again: back in the rotation


# ============================================================================ guardrails: PII
@pytest.mark.parametrize(
    "number", ["4111111111111111", "79927398713", "4012888888881881", "378282246310005", "5555555555554444", "0"]
)
def test_luhn_valid_numbers(number: str) -> None:
    assert luhn_valid(number)


@pytest.mark.parametrize("number", ["4111111111111112", "79927398710", "1234567812345678", "1"])
def test_luhn_invalid_numbers(number: str) -> None:
    assert not luhn_valid(number)


@pytest.mark.parametrize("email", ["bob@example.com", "first.last+tag@mail.example.co.uk", "X_Y%z@sub-d.io"])
def test_emails_are_redacted(email: str) -> None:
    assert redact_pii(f"write to {email} today") == "write to [REDACTED_EMAIL] today"


@pytest.mark.parametrize(
    "phone", ["+1 415-555-0100", "(415) 555-0100", "415.555.0100", "415-555-0100", "+44 20 7946 0958", "020 7946 0958"]
)
def test_phone_numbers_are_redacted(phone: str) -> None:
    assert redact_pii(f"call {phone} now") == "call [REDACTED_PHONE] now"


@pytest.mark.parametrize(
    "card", ["4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111", "5555 5555 5555 4444", "378282246310005"]
)
def test_luhn_valid_card_numbers_are_redacted(card: str) -> None:
    assert redact_pii(f"card {card}, thanks") == "card [REDACTED_CARD], thanks"


@pytest.mark.parametrize(
    "number",
    ["1234567812345678", "1234 5678 9012 3456", "1234-5678-9012-3456", "4111 1111 1111 1112"],
    ids=["plain", "grouped-spaces", "grouped-dashes", "grouped-near-miss"],
)
def test_a_16_digit_number_failing_luhn_is_kept(number: str) -> None:
    text = f"order {number} shipped"
    assert redact_pii(text) == text


@pytest.mark.parametrize(
    "text",
    ["order 12345 shipped", "in 2024 we sold 1500000 units", "v1.2.3 on 2024-01-15", "no pii here at all", "ratio 3:1"],
)
def test_ordinary_text_and_numbers_are_kept(text: str) -> None:
    assert redact_pii(text) == text


@pytest.mark.parametrize("text", ["a\x000\x00b", "nul \x000\x00 then 1234 5678 9012 3456", "\x00\x00 \x0012\x00"])
def test_text_with_nul_characters_is_redacted_safely(text: str) -> None:
    """JSON strings may hold NULs (\\u0000): they are text like any other, kept as they are."""
    assert redact_pii(text) == text
    assert redact_pii(text + " bob@example.com") == text + " [REDACTED_EMAIL]"


def test_several_kinds_in_one_text() -> None:
    text = "bob@example.com paid with 4111 1111 1111 1111, call (415) 555-0100"
    assert redact_pii(text) == "[REDACTED_EMAIL] paid with [REDACTED_CARD], call [REDACTED_PHONE]"


# ============================================================================ guardrails: check_input
CHAT = "/v1/chat/completions"


def rule(name: str = "r", **fields: Any) -> GuardrailConfig:
    return GuardrailConfig(name=name, **fields)


def chat_body(content: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **extra}


def test_a_deny_pattern_blocks_naming_the_rule() -> None:
    rails = Guardrails([rule("no-secrets", deny_patterns=[r"(?i)password\s*[:=]"])])
    with pytest.raises(Blocked) as info:
        rails.check_input("m", None, CHAT, chat_body("my PASSWORD: hunter2"))
    assert info.value.rule == "no-secrets"
    assert "no-secrets" in str(info.value)
    body = chat_body("how do I reset a password?")
    assert rails.check_input("m", None, CHAT, body) == body


def test_deny_patterns_see_every_message_and_content_parts() -> None:
    rails = Guardrails([rule("deny", deny_patterns=["forbidden"])])
    system_body = {
        "model": "m",
        "messages": [{"role": "system", "content": "forbidden words"}, {"role": "user", "content": "hi"}],
    }
    parts_body = chat_body([{"type": "text", "text": "a"}, {"type": "text", "text": "forbidden"}])
    responses_body = {"model": "m", "instructions": "be nice", "input": "say forbidden"}
    prompt_body = {"model": "m", "prompt": ["ok", "forbidden"]}
    for endpoint, body in [
        (CHAT, system_body),
        (CHAT, parts_body),
        ("/v1/responses", responses_body),
        ("/v1/completions", prompt_body),
    ]:
        with pytest.raises(Blocked):
            rails.check_input("m", None, endpoint, body)


def test_the_first_matching_rule_is_named() -> None:
    rails = Guardrails([rule("first", deny_patterns=["a+b"]), rule("second", deny_patterns=["aab"])])
    with pytest.raises(Blocked) as info:
        rails.check_input("m", None, CHAT, chat_body("xaab"))
    assert info.value.rule == "first"
    reversed_rails = Guardrails([rule("second", deny_patterns=["aab"]), rule("first", deny_patterns=["a+b"])])
    with pytest.raises(Blocked) as info:
        reversed_rails.check_input("m", None, CHAT, chat_body("xaab"))
    assert info.value.rule == "second"


def test_max_input_tokens_blocks_long_inputs() -> None:
    rails = Guardrails([rule("short-only", max_input_tokens=10)])
    assert rails.check_input("m", None, CHAT, chat_body("x" * 40))  # 10 tokens: at the limit
    with pytest.raises(Blocked) as info:
        rails.check_input("m", None, CHAT, chat_body("x" * 80))
    assert info.value.rule == "short-only"
    assert "short-only" in str(info.value)


def test_clamp_lowers_max_tokens() -> None:
    rails = Guardrails([rule("clamp", clamp_max_tokens=100)])
    assert rails.check_input("m", None, CHAT, chat_body("hi", max_tokens=5000))["max_tokens"] == 100
    assert rails.check_input("m", None, CHAT, chat_body("hi", max_tokens=30))["max_tokens"] == 30  # never raised
    both = rails.check_input("m", None, CHAT, chat_body("hi", max_completion_tokens=900, max_tokens=50))
    assert both["max_completion_tokens"] == 100 and both["max_tokens"] == 50


def test_clamp_sets_the_allowance_when_absent() -> None:
    rails = Guardrails([rule("clamp", clamp_max_tokens=64)])
    chat = rails.check_input("m", None, CHAT, chat_body("hi"))
    assert chat["max_tokens"] == 64
    completion = rails.check_input("m", None, "/v1/completions", {"model": "m", "prompt": "hi"})
    assert completion["max_tokens"] == 64


def test_clamp_uses_max_output_tokens_for_responses() -> None:
    rails = Guardrails([rule("clamp", clamp_max_tokens=64)])
    absent = rails.check_input("m", None, "/v1/responses", {"model": "m", "input": "hi"})
    assert absent["max_output_tokens"] == 64 and "max_tokens" not in absent
    high = rails.check_input("m", None, "/v1/responses", {"model": "m", "input": "hi", "max_output_tokens": 999})
    assert high["max_output_tokens"] == 64


def test_clamp_leaves_embeddings_alone() -> None:
    rails = Guardrails([rule("clamp", clamp_max_tokens=64)])
    body = {"model": "m", "input": "hi"}
    assert rails.check_input("m", None, "/v1/embeddings", body) == body


def test_check_input_does_not_change_the_callers_body() -> None:
    rails = Guardrails([rule("all", clamp_max_tokens=10, redact_pii=PiiRedactionConfig(input=True))])
    body = chat_body("bob@example.com", max_tokens=500)
    snapshot = orjson.dumps(body)
    rails.check_input("m", None, CHAT, body)
    assert orjson.dumps(body) == snapshot


def test_input_redaction_in_message_strings_and_content_parts() -> None:
    rails = Guardrails([rule("pii", redact_pii=PiiRedactionConfig(input=True))])
    body = {
        "model": "m",
        "temperature": 0.5,
        "messages": [
            {"role": "system", "content": "the user is bob@example.com"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "my card is 4111 1111 1111 1111, phone (415) 555-0100"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                ],
            },
        ],
    }
    out = rails.check_input("m", None, CHAT, body)
    assert out["messages"][0]["content"] == "the user is [REDACTED_EMAIL]"
    parts = out["messages"][1]["content"]
    assert parts[0] == {"type": "text", "text": "my card is [REDACTED_CARD], phone [REDACTED_PHONE]"}
    assert parts[1] == {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    assert out["model"] == "m" and out["temperature"] == 0.5


def test_input_redaction_in_responses_and_completions() -> None:
    rails = Guardrails([rule("pii", redact_pii=PiiRedactionConfig(input=True))])
    responses = rails.check_input(
        "m",
        None,
        "/v1/responses",
        {
            "model": "m",
            "instructions": "reply to bob@example.com",
            "input": [{"role": "user", "content": "I am at 415-555-0100"}],
        },
    )
    assert responses["instructions"] == "reply to [REDACTED_EMAIL]"
    assert responses["input"][0]["content"] == "I am at [REDACTED_PHONE]"
    completion = rails.check_input("m", None, "/v1/completions", {"model": "m", "prompt": "x bob@example.com"})
    assert completion["prompt"] == "x [REDACTED_EMAIL]"


def test_input_rules_see_responses_input_parts_and_embedding_inputs() -> None:
    rails = Guardrails([rule("deny", deny_patterns=["forbidden"]), rule("pii", redact_pii=PiiRedactionConfig())])
    parts = {"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": "forbidden"}]}]}
    with pytest.raises(Blocked):
        rails.check_input("m", None, "/v1/responses", parts)
    with pytest.raises(Blocked):
        rails.check_input("m", None, "/v1/embeddings", {"model": "m", "input": ["fine", "forbidden"]})
    parts["input"][0]["content"][0]["text"] = "from bob@example.com"
    out = rails.check_input("m", None, "/v1/responses", parts)
    assert out["input"][0]["content"][0] == {"type": "input_text", "text": "from [REDACTED_EMAIL]"}
    embedded = rails.check_input("m", None, "/v1/embeddings", {"model": "m", "input": ["bob@example.com", "x"]})
    assert embedded["input"] == ["[REDACTED_EMAIL]", "x"]


def test_output_only_redaction_leaves_the_input_alone() -> None:
    rails = Guardrails([rule("out", redact_pii=PiiRedactionConfig(input=False, output=True))])
    body = chat_body("bob@example.com")
    assert rails.check_input("m", None, CHAT, body) == body
    assert rails.redacts_output("m", None)


def test_rules_are_scoped_by_model() -> None:
    rails = Guardrails([rule("only-a", models=["a"], deny_patterns=["bad"])])
    with pytest.raises(Blocked):
        rails.check_input("a", None, CHAT, chat_body("bad"))
    assert rails.check_input("b", None, CHAT, chat_body("bad")) == chat_body("bad")


def test_rules_are_scoped_by_key() -> None:
    rails = Guardrails(
        [
            rule("for-k1", keys=["key_1"], deny_patterns=["bad"]),
            rule("redact-k2", keys=["key_2"], redact_pii=PiiRedactionConfig(input=True, output=True)),
        ]
    )
    with pytest.raises(Blocked) as info:
        rails.check_input("m", "key_1", CHAT, chat_body("bad"))
    assert info.value.rule == "for-k1"
    assert rails.check_input("m", "key_2", CHAT, chat_body("bad"))  # not key_1's rule
    assert rails.check_input("m", None, CHAT, chat_body("bad"))  # nor the admin's
    assert rails.check_input("m", "key_2", CHAT, chat_body("bob@example.com"))["messages"][0]["content"] == (
        "[REDACTED_EMAIL]"
    )
    assert rails.check_input("m", "key_1", CHAT, chat_body("bob@example.com"))["messages"][0]["content"] == (
        "bob@example.com"
    )
    assert rails.redacts_output("m", "key_2")
    assert not rails.redacts_output("m", "key_1")
    assert not rails.redacts_output("m", None)


def test_rules_scoped_by_model_and_key_need_both() -> None:
    rails = Guardrails([rule("both", models=["a"], keys=["key_1"], deny_patterns=["bad"])])
    with pytest.raises(Blocked):
        rails.check_input("a", "key_1", CHAT, chat_body("bad"))
    for model, key in [("a", "key_2"), ("b", "key_1"), ("a", None)]:
        assert rails.check_input(model, key, CHAT, chat_body("bad"))


def test_no_rules_is_falsy_and_changes_nothing() -> None:
    rails = Guardrails([])
    assert not rails
    body = chat_body("bob@example.com", max_tokens=10**6)
    assert rails.check_input("m", None, CHAT, body) == body
    assert not rails.redacts_output("m", None)


def test_rules_run_in_order_deny_sees_the_input_before_a_later_redaction() -> None:
    rails = Guardrails([rule("redact", redact_pii=PiiRedactionConfig(input=True)), rule("clamp", clamp_max_tokens=8)])
    out = rails.check_input("m", None, CHAT, chat_body("bob@example.com", max_tokens=99))
    assert out["messages"][0]["content"] == "[REDACTED_EMAIL]" and out["max_tokens"] == 8


def test_an_invalid_deny_pattern_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="not a valid regular expression"):
        GuardrailConfig(name="bad", deny_patterns=["(unclosed"])


# ============================================================================ guardrails: redact_output
def test_redact_output_of_a_chat_completion() -> None:
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "mail bob@example.com"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }
    out = Guardrails.redact_output(answer)
    assert out["choices"][0]["message"]["content"] == "mail [REDACTED_EMAIL]"
    assert out["usage"] == answer["usage"] and out["id"] == "chatcmpl-1" and out["model"] == "m"


def test_redact_output_of_responses_and_completions() -> None:
    response = {
        "object": "response",
        "output": [
            {
                "type": "message",
                "content": [{"type": "output_text", "text": "card 4111111111111111", "annotations": []}],
            }
        ],
    }
    assert Guardrails.redact_output(response)["output"][0]["content"][0]["text"] == "card [REDACTED_CARD]"
    completion = {"object": "text_completion", "choices": [{"index": 0, "text": "call 415-555-0100"}]}
    assert Guardrails.redact_output(completion)["choices"][0]["text"] == "call [REDACTED_PHONE]"


def test_redact_output_keeps_clean_answers_identical() -> None:
    answer = {"choices": [{"message": {"role": "assistant", "content": "nothing to hide"}}], "n": 1}
    assert Guardrails.redact_output(answer) == answer
