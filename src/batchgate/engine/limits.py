"""Outbound limits of one deployment: RPM/TPM budgets, an AIMD concurrency window, Retry-After
pauses and a circuit breaker. Pure state machines on a clock passed in, so they test without time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from batchgate.config import DeploymentConfig

AIMD_DECREASE = 0.5  # multiply the window by this on a 429
AIMD_DECREASE_EVERY_S = 1.0  # one cut per second: a burst of 429s from one window is one signal
RATE_MARGIN = 0.98  # pace RPM/TPM a little under the configured limit: timing jitter must not cross it
NO_SHARE_RECHECK_S = 0.5  # a worker holding no share of a rate limit looks again this often


@dataclass
class TokenBucket:
    """`rate` units a second, bursts up to `capacity`; a take bigger than the capacity is let through
    when the bucket is full (and leaves a debt), so one large request is slowed, never stuck.

    `scale` is this worker's share of the limit when several share it: rate and burst shrink with it.
    """

    rate: float
    capacity: float
    tokens: float = field(default=-1.0)
    updated: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.capacity

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity * self.scale, self.tokens + (now - self.updated) * self.rate * self.scale)
            self.updated = now

    def rescale(self, scale: float, now: float) -> None:
        self._refill(now)
        self.scale = scale
        self.tokens = min(self.tokens, self.capacity * scale)

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until `amount` could be taken (0: now)."""
        self._refill(now)
        if self.scale <= 0:
            return NO_SHARE_RECHECK_S
        needed = min(amount, self.capacity * self.scale)
        shortfall = needed - self.tokens
        return 0.0 if shortfall <= 1e-9 else shortfall / (self.rate * self.scale)  # float dust is not a wait

    def take(self, amount: float, now: float) -> None:
        self._refill(now)
        self.tokens -= amount


class CircuitBreaker:
    """Closed until `threshold` failures in a row; then open for `cooldown_s`; then one probe
    (half open): its success closes the circuit, its failure opens it again."""

    def __init__(self, threshold: int, cooldown_s: float) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.failures = 0
        self.state = "closed"
        self.open_until = 0.0
        self.probing = False

    def allows(self, now: float) -> bool:
        if self.state == "closed":
            return True
        if self.state == "open" and now >= self.open_until:
            self.state = "half_open"
        return self.state == "half_open" and not self.probing

    def on_start(self) -> None:
        if self.state == "half_open":
            self.probing = True

    def on_success(self) -> None:
        self.failures, self.state, self.probing = 0, "closed", False

    def on_failure(self, now: float) -> None:
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.threshold:
            self.state, self.open_until, self.probing = "open", now + self.cooldown_s, False

    def on_neutral(self) -> None:
        """An answer that says nothing about health (a 4xx): a probe slot is free again."""
        self.probing = False


class DeploymentLimits:
    def __init__(self, config: DeploymentConfig) -> None:
        self.max_concurrency = config.max_concurrency
        self.window = float(config.max_concurrency)  # AIMD: the concurrency allowed right now
        self.rpm = TokenBucket(RATE_MARGIN * config.rpm / 60.0, 1.0) if config.rpm else None
        self.tpm = TokenBucket(RATE_MARGIN * config.tpm / 60.0, config.tpm / 60.0) if config.tpm else None
        self.paused_until = 0.0
        self._last_decrease = -math.inf
        self.circuit = CircuitBreaker(config.circuit_failures, config.circuit_cooldown_s)
        # Scale-out: the part of the global limits this worker holds (None: all of it, one node).
        self.granted_slots: int | None = None
        self.granted_until = math.inf

    @property
    def concurrency(self) -> int:
        """Calls that may be in flight now: the AIMD window, within this worker's granted slots."""
        window = max(1, math.floor(self.window))
        if self.granted_slots is None:
            return window
        return min(window, self.granted_slots)

    @property
    def capacity(self) -> int:
        """The most this worker could have in flight here (its prefetch is sized from it)."""
        return self.max_concurrency if self.granted_slots is None else self.granted_slots

    def grant(self, slots: int, rate_share: float, valid_until: float, now: float) -> None:
        """This worker's share of the deployment's global limits, valid until `valid_until` (monotonic)."""
        self.granted_slots, self.granted_until = slots, valid_until
        for bucket in (self.rpm, self.tpm):
            if bucket is not None:
                bucket.rescale(rate_share, now)

    def shrink(self, slots: int, rate_share: float, now: float) -> None:
        """Apply only the decreases of a grant (before it is stored, so the sum never passes the limit)."""
        current = self.max_concurrency if self.granted_slots is None else self.granted_slots
        self.granted_slots = min(current, slots)
        for bucket in (self.rpm, self.tpm):
            if bucket is not None and rate_share < bucket.scale:
                bucket.rescale(rate_share, now)

    def available(self, now: float) -> bool:
        """False while the upstream asked for a pause (Retry-After), or while this worker's share of
        the global limits has lapsed (its lease could not be renewed in time)."""
        return self.paused_until <= now < self.granted_until

    def wait_for(self, tokens: int, now: float) -> float:
        """Seconds until a request of `tokens` may start here (0: now)."""
        waits = [self.paused_until - now]
        if self.rpm is not None:
            waits.append(self.rpm.wait_for(1, now))
        if self.tpm is not None:
            waits.append(self.tpm.wait_for(tokens, now))
        return max(0.0, *waits)

    def start(self, tokens: int, now: float) -> None:
        if self.rpm is not None:
            self.rpm.take(1, now)
        if self.tpm is not None:
            self.tpm.take(tokens, now)
        self.circuit.on_start()

    def on_throttled(self, retry_after_s: float | None, now: float) -> None:
        """A 429: halve the window (once a second at most) and pause as long as the upstream asks."""
        if now - self._last_decrease >= AIMD_DECREASE_EVERY_S:
            self.window = max(1.0, self.window * AIMD_DECREASE)
            self._last_decrease = now
        if retry_after_s:
            self.paused_until = max(self.paused_until, now + retry_after_s)
        self.circuit.on_neutral()

    def on_success(self) -> None:
        """Additive increase: about one more slot per window's worth of successes."""
        self.window = min(float(self.max_concurrency), self.window + 1.0 / self.window)
        self.circuit.on_success()

    def on_failure(self, now: float) -> None:
        self.circuit.on_failure(now)

    def on_neutral(self) -> None:
        self.circuit.on_neutral()


def estimate_tokens(line: bytes, body: dict) -> int:
    """No tokenizer at run time: about four bytes a token for the input, plus the output allowance."""
    allowance = body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens") or 0
    if not isinstance(allowance, int) or isinstance(allowance, bool):
        allowance = 0
    return len(line) // 4 + max(0, allowance)
