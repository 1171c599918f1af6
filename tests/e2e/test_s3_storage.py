"""The gateway with its files in S3 (moto on loopback): uploads, batches and downloads work the same,
and nothing is left in the bucket by a refused upload."""

from __future__ import annotations

import secrets

import httpx
import openai
import pytest

from tests.e2e.helpers import ENGINE, result_files, submit, wait_terminal
from tests.harness import FakeUpstreamProcess, chat_line, openai_client, upstream_model_config
from tests.s3 import BUCKET, MotoS3Process


def test_batches_run_with_files_in_s3(upstream: FakeUpstreamProcess, s3: MotoS3Process, make_server) -> None:
    prefix = f"e2e-{secrets.token_hex(4)}"
    config = {
        "models": [upstream_model_config(upstream.url)],
        "engine": dict(ENGINE),
        "storage": {"files": f"s3://{BUCKET}/{prefix}"},
        "limits": {"max_upload_bytes": 100_000},
    }
    server = make_server(config, env=s3.env)
    rows = [chat_line(f"r{i}", f"hello {i}") for i in range(25)]
    with openai_client(server) as client:
        batch = wait_terminal(client, submit(client, rows).id)
        assert batch.status == "completed" and batch.request_counts.completed == 25
        out, err = result_files(client, batch, rows)
        assert err == {} and out["r7"]["response"]["body"]["choices"][0]["message"]["content"] == "echo: hello 7"
        stored = s3.keys(prefix)
        assert f"{prefix}/{batch.input_file_id}" in stored and f"{prefix}/{batch.output_file_id}" in stored

        with pytest.raises(openai.APIStatusError) as refused:
            client.files.create(file=("big.jsonl", b"x" * 200_000), purpose="batch")
        assert refused.value.status_code == 413
        assert s3.keys(prefix) == stored  # nothing of the refused upload reached the bucket
    ready = httpx.get(f"{server.url}/ready")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "files": "ok"}
