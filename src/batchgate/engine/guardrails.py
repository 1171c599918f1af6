"""Guardrails: rules from the config applied to each request before it leaves the gateway.

A rule may block a request (deny patterns, input too long), change it (clamp the output
allowance, redact PII in the input) or change its answer (redact PII in the output). A blocked
request is never sent upstream; it ends in the error file as `guardrail_blocked`, naming the rule.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchgate.config import GuardrailConfig

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
PHONE = re.compile(r"(?<![\w+])(?:\+?\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])\d{3,4}[\s.-]?\d{3,4}(?!\w)")
CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
OUTPUT_ALLOWANCE_KEYS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


class Blocked(Exception):
    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(f"blocked by guardrail {rule!r}: {reason}")
        self.rule = rule


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def redact_pii(text: str) -> str:
    text = EMAIL.sub("[REDACTED_EMAIL]", text)

    def card(match: re.Match[str]) -> str:
        return "[REDACTED_CARD]" if _is_card(match.group(0)) else match.group(0)

    text = CARD.sub(card, text)
    # Card-shaped numbers that fail Luhn are not PII, and must not be half-read as phone numbers.
    kept = [m.span() for m in CARD.finditer(text)]

    def phone(match: re.Match[str]) -> str:
        start, end = match.span()
        inside = any(s < end and start < e for s, e in kept)
        return match.group(0) if inside else "[REDACTED_PHONE]"

    return PHONE.sub(phone, text)


def _is_card(candidate: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def map_texts(value: Any, change: Callable[[str], str], keys: tuple[str, ...]) -> Any:
    """Apply `change` to every string under the given keys (messages' content, prompt, input, text…)."""
    if isinstance(value, dict):
        return {k: (change_all(v, change) if k in keys else map_texts(v, change, keys)) for k, v in value.items()}
    if isinstance(value, list):
        return [map_texts(v, change, keys) for v in value]
    return value


def change_all(value: Any, change: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return change(value)
    if isinstance(value, list):
        return [change_all(v, change) for v in value]
    if isinstance(value, dict):
        return {
            k: change_all(v, change) if k in ("text", "content", "input", "prompt") else v for k, v in value.items()
        }
    return value


INPUT_KEYS = ("content", "prompt", "input", "text", "instructions", "system", "arguments")  # arguments: tool calls
OUTPUT_KEYS = ("content", "text", "output_text")


def input_text(body: dict[str, Any]) -> str:
    pieces: list[str] = []

    def collect(text: str) -> str:
        pieces.append(text)
        return text

    map_texts(body, collect, INPUT_KEYS)
    return "\n".join(pieces)


@dataclass(frozen=True)
class _Rule:
    config: GuardrailConfig
    patterns: tuple[re.Pattern[str], ...]

    def applies(self, model: str, key_id: str | None) -> bool:
        return (self.config.models is None or model in self.config.models) and (
            self.config.keys is None or key_id in self.config.keys
        )


class Guardrails:
    def __init__(self, rules: list[GuardrailConfig]) -> None:
        self._rules = [_Rule(r, tuple(re.compile(p) for p in r.deny_patterns)) for r in rules]

    def __bool__(self) -> bool:
        return bool(self._rules)

    def check_input(self, model: str, key_id: str | None, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """The body to send (maybe changed); raises Blocked when a rule refuses the request."""
        for rule in (r for r in self._rules if r.applies(model, key_id)):
            config = rule.config
            text = input_text(body)
            for pattern in rule.patterns:
                if pattern.search(text):
                    raise Blocked(config.name, f"the input matches a denied pattern ({pattern.pattern})")
            if config.max_input_tokens is not None and len(text) // 4 > config.max_input_tokens:
                raise Blocked(
                    config.name, f"the input is about {len(text) // 4} tokens; the limit is {config.max_input_tokens}"
                )
            if config.redact_pii and config.redact_pii.input:
                body = map_texts(body, redact_pii, INPUT_KEYS)
            if config.clamp_max_tokens is not None:
                body = _clamp(body, endpoint, config.clamp_max_tokens)
        return body

    def redacts_output(self, model: str, key_id: str | None) -> bool:
        return any(r.config.redact_pii and r.config.redact_pii.output for r in self._rules if r.applies(model, key_id))

    @staticmethod
    def redact_output(answer: Any) -> Any:
        return map_texts(answer, redact_pii, OUTPUT_KEYS)


def _clamp(body: dict[str, Any], endpoint: str, limit: int) -> dict[str, Any]:
    present = [k for k in OUTPUT_ALLOWANCE_KEYS if isinstance(body.get(k), int)]
    if present:
        return {**body, **{k: min(body[k], limit) for k in present}}
    key = "max_output_tokens" if endpoint == "/v1/responses" else "max_tokens"
    if endpoint in ("/v1/embeddings", "/v1/moderations"):
        return body
    return {**body, key: limit}
