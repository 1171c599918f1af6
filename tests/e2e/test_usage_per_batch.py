"""Spend is reported per batch too: GET /admin/usage?batch=… prices one batch's tokens."""

from __future__ import annotations

import httpx

from tests.e2e.helpers import ENGINE, submit, wait_terminal
from tests.harness import FakeUpstreamProcess, chat_line, openai_client, upstream_model_config


def test_usage_of_one_batch_is_its_tokens_times_the_price(upstream: FakeUpstreamProcess, make_server) -> None:
    model = upstream_model_config(upstream.url, name="priced", price={"input_per_mtok": 2.0, "output_per_mtok": 8.0})
    server = make_server({"models": [model], "engine": dict(ENGINE)}, env={"BATCHGATE_ADMIN_KEY": "adm"})
    with openai_client(server, api_key="adm") as client:
        first = wait_terminal(
            client, submit(client, [chat_line(f"a{i}", f"one {i}", model="priced") for i in range(3)]).id
        )
        second = wait_terminal(client, submit(client, [chat_line("b0", "two", model="priced")]).id)
    assert first.status == second.status == "completed"
    answer = httpx.get(f"{server.url}/admin/usage", params={"batch": first.id}, headers={"Authorization": "Bearer adm"})
    assert answer.status_code == 200, answer.text
    [row] = answer.json()["data"]
    assert row["batches"] == 1 and row["requests"] == {"completed": 3, "failed": 0}
    assert row["input_tokens"] == first.usage.input_tokens and row["output_tokens"] == first.usage.output_tokens
    expected = (first.usage.input_tokens * 2.0 + first.usage.output_tokens * 8.0) / 1e6
    assert abs(row["cost_usd"] - expected) < 1e-9
    unknown = httpx.get(
        f"{server.url}/admin/usage", params={"batch": "batch_none"}, headers={"Authorization": "Bearer adm"}
    )
    assert unknown.status_code == 200 and unknown.json()["data"] == []
