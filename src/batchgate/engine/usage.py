"""Token usage from an upstream's answer, whichever endpoint shape it has."""

from __future__ import annotations

from typing import Any

MAX_TOKENS_PER_REQUEST = 2**31 - 1  # an upstream's absurd count must not overflow a column


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return 0
    return min(value, MAX_TOKENS_PER_REQUEST)


def extract_usage(body: Any) -> tuple[int, int, int, int]:
    """(input, cached input, output, reasoning) tokens from a chat/completions/embeddings/responses body."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return 0, 0, 0, 0
    input_tokens = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
    output_tokens = _int(usage.get("completion_tokens", usage.get("output_tokens")))
    input_details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    output_details = usage.get("completion_tokens_details") or usage.get("output_tokens_details") or {}
    cached = _int(input_details.get("cached_tokens")) if isinstance(input_details, dict) else 0
    reasoning = _int(output_details.get("reasoning_tokens")) if isinstance(output_details, dict) else 0
    return input_tokens, cached, output_tokens, reasoning
