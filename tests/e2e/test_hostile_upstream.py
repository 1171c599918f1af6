"""An upstream that misbehaves, and tenant input that tries to steer it: huge and never-ending answers
end early with a clear code, redirects are never followed, hosts never reach tenants, proxy-steering
body fields never leave the gateway, and a custom_id has a length limit."""

from __future__ import annotations

import time
from typing import Any

from tests.e2e.helpers import assert_echoed, gateway_config, result_files, submit, wait_terminal
from tests.harness import FakeUpstreamProcess, ServerProcess, chat_line, openai_client, upstream_model_config

CAP = 100_000


def capped(upstream_url: str, **deployment: Any) -> dict[str, Any]:
    return gateway_config(upstream_model_config(upstream_url, max_response_bytes=CAP, **deployment))


def run(server: ServerProcess, rows: list[dict[str, Any]], timeout: float = 20.0) -> tuple[Any, dict, dict]:
    with openai_client(server) as client:
        batch = wait_terminal(client, submit(client, rows).id, timeout=timeout)
        assert batch.status == "completed", batch
        out, err = result_files(client, batch, rows)
        return batch, out, err


def test_an_answer_over_max_response_bytes_ends_its_line_once_not_retried(
    upstream: FakeUpstreamProcess, make_server
) -> None:
    rows = [chat_line("small", "fits"), chat_line("huge", f"@big:{2 * CAP}")]
    _, out, err = run(make_server(capped(upstream.url)), rows)
    assert_echoed(out["small"], rows[0])
    line = err["huge"]
    assert line["response"] is None
    assert line["error"]["code"] == "response_too_large"
    assert str(CAP) in line["error"]["message"] and "max_response_bytes" in line["error"]["message"]
    assert upstream.stats()["requests_total"] == 2  # a deterministic failure: not tried again


def test_a_never_ending_answer_is_cut_at_the_cap_long_before_the_timeout(
    upstream: FakeUpstreamProcess, make_server
) -> None:
    rows = [chat_line("endless", "@endless:1")]
    started = time.monotonic()
    _, _, err = run(make_server(capped(upstream.url, timeout_s=600)), rows, timeout=30)
    assert time.monotonic() - started < 30
    assert err["endless"]["error"]["code"] == "response_too_large"


def test_a_redirect_to_another_origin_is_an_upstream_error_and_never_followed(
    upstream: FakeUpstreamProcess, make_server
) -> None:
    with FakeUpstreamProcess() as elsewhere:
        rows = [chat_line("moved", f"secret tenant text @redirect:{elsewhere.port}")]
        _, _, err = run(make_server(capped(upstream.url, max_attempts=1)), rows)
        assert err["moved"]["response"] is None
        assert err["moved"]["error"]["code"] == "upstream_redirect"
        assert elsewhere.stats()["requests_total"] == 0  # the tenant's body never reached the other origin


def test_an_unreachable_upstream_is_named_by_deployment_and_its_host_stays_in_the_log(make_server) -> None:
    config = gateway_config(
        {
            "name": "fake-model",
            "deployments": [
                {"provider": "openai", "base_url": "http://127.0.0.1:1/v1", "name": "east-1", "max_attempts": 1}
            ],
        }
    )
    server = make_server(config)
    rows = [chat_line("r1", "hello")]
    with openai_client(server) as client:
        batch = wait_terminal(client, submit(client, rows).id)
        errors = client.files.content(batch.error_file_id).text
    assert "upstream_unreachable" in errors and "east-1" in errors
    assert "127.0.0.1" not in errors and ":1" not in errors.replace("east-1", "")
    assert "127.0.0.1:1" in server.log_text()


def test_proxy_steering_fields_are_dropped_and_the_rest_forwarded(upstream: FakeUpstreamProcess, make_server) -> None:
    steering = {
        "api_base": "http://evil.example/v1",
        "base_url": "http://evil.example/v1",
        "api_key": "sk-x",
        "extra_headers": {"X-Evil": "1"},
        "custom_llm_provider": "openai",
    }
    rows = [chat_line("r1", "steer me", temperature=0.5, **steering)]
    _, out, _ = run(make_server(capped(upstream.url)), rows)
    assert_echoed(out["r1"], rows[0])
    seen = upstream.stats()["fields_seen"]
    assert seen.get("temperature") == 1 and seen.get("messages") == 1
    assert not set(steering) & set(seen), seen


def test_a_custom_id_over_the_limit_fails_validation_naming_it(upstream: FakeUpstreamProcess, make_server) -> None:
    server = make_server(gateway_config(upstream_model_config(upstream.url), max_custom_id_chars=64))
    with openai_client(server) as client:
        ok = wait_terminal(client, submit(client, [chat_line("a" * 64, "fits")]).id)
        assert ok.status == "completed" and ok.request_counts.completed == 1
        bad = wait_terminal(client, submit(client, [chat_line("ok", "x"), chat_line("b" * 65, "too long")]).id)
        assert bad.status == "failed"
        assert bad.errors is not None
        [error] = bad.errors.data
        assert (error.code, error.param, error.line) == ("invalid_custom_id", "custom_id", 2)
        assert "65" in (error.message or "") and "64" in (error.message or "")


def test_the_default_custom_id_limit_is_512(upstream: FakeUpstreamProcess, make_server) -> None:
    with openai_client(make_server(gateway_config(upstream_model_config(upstream.url)))) as client:
        bad = wait_terminal(client, submit(client, [chat_line("c" * 513, "x")]).id)
        assert bad.status == "failed" and bad.errors is not None
        assert bad.errors.data[0].code == "invalid_custom_id"
