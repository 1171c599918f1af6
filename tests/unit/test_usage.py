"""engine/usage.py: token usage from every answer shape."""

from __future__ import annotations

from typing import Any

import pytest

from batchgate.engine.usage import extract_usage


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            {
                "object": "chat.completion",
                "usage": {
                    "prompt_tokens": 120,
                    "completion_tokens": 30,
                    "total_tokens": 150,
                    "prompt_tokens_details": {"cached_tokens": 64, "audio_tokens": 0},
                    "completion_tokens_details": {"reasoning_tokens": 12},
                },
            },
            (120, 64, 30, 12),
            id="chat_completion",
        ),
        pytest.param(
            {"usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}},
            (5, 0, 7, 0),
            id="chat_completion_without_details",
        ),
        pytest.param(
            {
                "object": "response",
                "usage": {
                    "input_tokens": 40,
                    "input_tokens_details": {"cached_tokens": 8},
                    "output_tokens": 22,
                    "output_tokens_details": {"reasoning_tokens": 3},
                    "total_tokens": 62,
                },
            },
            (40, 8, 22, 3),
            id="responses_api_answer",
        ),
        pytest.param(
            {"object": "list", "data": [], "usage": {"prompt_tokens": 9, "total_tokens": 9}},
            (9, 0, 0, 0),
            id="embeddings_answer",
        ),
    ],
)
def test_usage_of_each_answer_shape(body: dict[str, Any], expected: tuple[int, int, int, int]) -> None:
    """(input, cached input, output, reasoning) tokens, from the chat, responses and embeddings usage shapes."""
    assert extract_usage(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        None,
        "a string body",
        ["a", "list"],
        {},
        {"usage": None},
        {"usage": "lots"},
        {"results": [{"flagged": False}]},  # moderations carry no usage
    ],
)
def test_usage_absent_or_malformed_counts_zero(body: Any) -> None:
    assert extract_usage(body) == (0, 0, 0, 0)


def test_usage_ignores_negative_non_integer_and_null_values() -> None:
    body = {
        "usage": {
            "prompt_tokens": -5,
            "completion_tokens": "12",
            "prompt_tokens_details": None,
            "completion_tokens_details": {"reasoning_tokens": 2.5},
        }
    }
    assert extract_usage(body) == (0, 0, 0, 0)
    assert extract_usage({"usage": {"prompt_tokens": None, "completion_tokens": 4}}) == (0, 0, 4, 0)
    details_not_dict = {"usage": {"input_tokens": 3, "input_tokens_details": [1], "output_tokens_details": "x"}}
    assert extract_usage(details_not_dict) == (3, 0, 0, 0)
