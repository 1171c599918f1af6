"""engine/finalize.py: output and error lines as OpenAI writes them."""

from __future__ import annotations

from typing import Any

import orjson

from batchgate.engine.finalize import request_id, result_line


def _row(**values: Any) -> dict[str, Any]:
    row = {
        "line_no": 7,
        "custom_id": "req-7",
        "ok": True,
        "status_code": None,
        "upstream_request_id": None,
        "body": None,
        "error_code": None,
        "error_message": None,
    }
    row.update(values)
    return row


def test_result_line_success_embeds_the_upstream_body_verbatim() -> None:
    body = '{"id":"chatcmpl-1","choices":[{"message":{"content":"hi \\u00e9"}}],"n":1.50}'
    line = result_line("batch_abc", _row(status_code=200, upstream_request_id="req_9", body=body))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert body.encode() in line  # verbatim, not re-serialised
    assert orjson.loads(line) == {
        "id": request_id("batch_abc", 7),
        "custom_id": "req-7",
        "response": {"status_code": 200, "request_id": "req_9", "body": orjson.loads(body)},
        "error": None,
    }


def test_result_line_http_error_keeps_response_and_body() -> None:
    body = '{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}'
    parsed = orjson.loads(result_line("b", _row(ok=False, status_code=400, body=body)))
    assert parsed["response"] == {"status_code": 400, "request_id": "", "body": orjson.loads(body)}
    assert parsed["error"] is None


def test_result_line_answer_without_body_has_null_body() -> None:
    parsed = orjson.loads(result_line("b", _row(ok=False, status_code=502, body=None)))
    assert parsed["response"]["body"] is None
    assert parsed["response"]["status_code"] == 502


def test_result_line_never_answered_has_null_response_and_an_error() -> None:
    row = _row(ok=False, error_code="request_timeout", error_message="no answer within 0.5 s")
    parsed = orjson.loads(result_line("b", row))
    assert parsed["response"] is None
    assert parsed["error"] == {"code": "request_timeout", "message": "no answer within 0.5 s"}
    assert parsed["custom_id"] == "req-7"


def test_result_line_error_without_code_says_internal_error() -> None:
    parsed = orjson.loads(result_line("b", _row(ok=False)))
    assert parsed["response"] is None
    assert parsed["error"] == {"code": "internal_error", "message": ""}


def test_result_line_escapes_custom_ids() -> None:
    custom_id = 'quote " backslash \\ newline \n unicode ✓'
    line = result_line("b", _row(custom_id=custom_id, status_code=200, body="{}"))
    assert line.count(b"\n") == 1
    assert orjson.loads(line)["custom_id"] == custom_id


def test_request_ids_are_stable_and_distinct() -> None:
    assert request_id("batch_1", 1) == request_id("batch_1", 1)
    assert request_id("batch_1", 1).startswith("batch_req_")
    assert len({request_id("batch_1", n) for n in range(1, 1001)} | {request_id("batch_2", 1)}) == 1001
