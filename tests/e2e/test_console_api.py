"""The web console's JSON API (`/ui/api`) and the console's static files, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import TERMINAL, jsonl, module_server, single_model_config, wait_terminal
from tests.harness import ServerProcess, chat_line, openai_client, poll_until

ADMIN_KEY = "sk-admin-console-api"
server = module_server(
    "server", lambda url: single_model_config(url, max_concurrency=4), env={"BATCHGATE_ADMIN_KEY": ADMIN_KEY}
)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keys(server: ServerProcess) -> dict[str, str]:
    """One key for each of two teams, plus the admin's."""
    out = {"admin": ADMIN_KEY}
    with httpx.Client(base_url=server.url, headers=bearer(ADMIN_KEY)) as admin:
        for team in ("alpha", "beta"):
            admin.post("/admin/teams", json={"name": team}).raise_for_status()
            out[team] = admin.post("/admin/keys", json={"team": team}).json()["key"]
    return out


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def new_batch(http: httpx.Client, key: str, rows: list[dict[str, Any]], **create: Any) -> dict[str, Any]:
    file = http.post(
        "/v1/files", headers=bearer(key), files={"file": ("in.jsonl", jsonl(*rows))}, data={"purpose": "batch"}
    ).json()
    return http.post(
        "/v1/batches",
        headers=bearer(key),
        json={"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h", **create},
    ).json()


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_a_newline_in_a_console_path_gets_the_page_or_a_json_404_never_the_page_for_the_api(
    http: httpx.Client,
) -> None:
    """Starlette's path patterns stop at a newline (%0A): the page's catch-all must not answer for the API."""
    page = http.get("/ui/batches/a%0A")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for path in ("/ui/api/batches/a%0A", "/ui/api/%0A", "/ui/static/a%0A", "/ui/api/batches/%C3%B8H%E9%A2%93%0A"):
        err = error_of(http.get(path), 404)
        assert "unknown route" in err["message"], err


def test_the_console_is_served_with_a_same_origin_only_policy(http: httpx.Client) -> None:
    assert http.get("/ui").status_code == 307
    for path in ("/ui/", "/ui/batches/batch_x", "/ui/files"):
        page = http.get(path)
        assert page.status_code == 200 and '<script type="module" src="/ui/static/js/app.js">' in page.text
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    script = http.get("/ui/static/js/views/batch.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    # No file the console loads points anywhere but the gateway.
    for name in ("index.html", "app.css", "js/app.js", "js/api.js", "js/views/files.js"):
        assert "http://" not in http.get(f"/ui/static/{name}").text.replace("http://www.w3.org", "")


def test_a_key_is_required_when_one_is_configured(http: httpx.Client, keys: dict[str, str]) -> None:
    assert error_of(http.get("/ui/api/session"), 401)["code"] == "missing_api_key"
    assert error_of(http.get("/ui/api/batches", headers=bearer("bg_wrong")), 401)["code"] == "invalid_api_key"
    team = http.get("/ui/api/session", headers=bearer(keys["alpha"])).json()
    assert team["admin"] is False and team["team"]["name"] == "alpha" and team["models"] == ["fake-model"]
    assert http.get("/ui/api/session", headers=bearer(ADMIN_KEY)).json()["admin"] is True


def test_filters_and_keyset_pages_over_250_batches(http: httpx.Client, keys: dict[str, str]) -> None:
    rows = [chat_line("a", "hi")]
    file = http.post(
        "/v1/files", headers=bearer(keys["beta"]), files={"file": ("in.jsonl", jsonl(*rows))}, data={"purpose": "batch"}
    ).json()
    made = []
    for i in range(250):
        created = http.post(
            "/v1/batches",
            headers=bearer(keys["beta"]),
            json={
                "input_file_id": file["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "metadata": {"shard": str(i % 5), "tag": "Big" if i % 50 == 0 else "small"},
            },
        )
        made.append(created.json()["id"])
    seen: list[str] = []
    after = ""
    while True:
        page = http.get(f"/ui/api/batches?limit=100&after={after}", headers=bearer(keys["beta"])).json()
        seen += [b["id"] for b in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == made[::-1]  # each once, newest first
    shard = http.get("/ui/api/batches?limit=100&metadata=shard=3", headers=bearer(keys["beta"])).json()
    assert [b["id"] for b in shard["data"]] == made[3::5][::-1]

    def tagged(value: str) -> list[str]:
        page = http.get("/ui/api/batches", params={"metadata": f"tag={value}"}, headers=bearer(keys["beta"])).json()
        return [b["id"] for b in page["data"]]

    assert tagged("Big") == made[::50][::-1]
    assert tagged("big") == []  # case-sensitive (SQLite's LIKE would not be)
    # alpha's key sees none of beta's; the admin filters by team.
    alphas = http.get("/ui/api/batches?limit=100", headers=bearer(keys["alpha"])).json()["data"]
    assert not {b["id"] for b in alphas} & set(made) and all(b["team"] == "alpha" for b in alphas)
    assert http.get("/ui/api/batches?team=beta", headers=bearer(keys["alpha"])).json()["data"] == []
    admin = http.get("/ui/api/batches?team=beta&limit=3", headers=bearer(ADMIN_KEY)).json()
    assert [b["id"] for b in admin["data"]] == made[-3:][::-1] and {b["team"] for b in admin["data"]} == {"beta"}
    by_model = http.get("/ui/api/batches?model=other-model", headers=bearer(ADMIN_KEY)).json()
    assert by_model["data"] == []


def test_bad_filters_answer_400_in_the_error_envelope(http: httpx.Client, keys: dict[str, str]) -> None:
    auth = bearer(keys["alpha"])
    assert error_of(http.get("/ui/api/batches?status=done", headers=auth), 400)["param"] == "status"
    assert error_of(http.get("/ui/api/batches?limit=0", headers=auth), 400)["param"] == "limit"
    assert error_of(http.get("/ui/api/batches?metadata=novalue", headers=auth), 400)["param"] == "metadata"
    assert error_of(http.get("/ui/api/batches?team=nobody", headers=bearer(ADMIN_KEY)), 404)["code"] == "team_not_found"


def test_batch_detail_requests_and_result_lines(
    server: ServerProcess, http: httpx.Client, keys: dict[str, str]
) -> None:
    rows = [chat_line(f"r{i}", f"hello {i}") for i in range(7)] + [chat_line("bad", "x @status:400")]
    batch = new_batch(http, keys["alpha"], rows, metadata={"who": "tests"})
    with openai_client(server, api_key=keys["alpha"]) as client:
        wait_terminal(client, batch["id"])
    auth = bearer(keys["alpha"])
    detail = http.get(f"/ui/api/batches/{batch['id']}", headers=auth).json()
    assert detail["status"] == "completed" and detail["team"] == "alpha"
    assert detail["counts"] == {"total": 8, "completed": 7, "failed": 1, "pending": 0}
    assert [e["status"] for e in detail["timeline"]] == ["validating", "in_progress", "finalizing", "completed"]
    assert detail["batch"]["usage"]["total_tokens"] > 0 and detail["input_filename"] == "in.jsonl"
    assert detail["rate_per_s"] > 0 and detail["eta_s"] is None

    first = http.get(f"/ui/api/batches/{batch['id']}/requests?limit=5", headers=auth).json()
    rest = http.get(f"/ui/api/batches/{batch['id']}/requests?limit=5&after={first['last_line']}", headers=auth).json()
    assert first["has_more"] and not rest["has_more"]
    listed = first["data"] + rest["data"]
    assert [r["custom_id"] for r in listed] == [r["custom_id"] for r in rows]
    assert {r["state"] for r in listed[:7]} == {"succeeded"} and listed[7]["state"] == "failed"
    assert listed[7]["status_code"] == 400 and all(r["attempts"] == 1 for r in listed)

    ok = http.get(f"/ui/api/batches/{batch['id']}/result?custom_id=r2", headers=auth).json()
    assert ok["file"] == "output" and ok["line"] == 3
    assert ok["content"]["response"]["body"]["choices"][0]["message"]["content"] == "echo: hello 2"
    failed = http.get(f"/ui/api/batches/{batch['id']}/result?line=8", headers=auth).json()
    assert failed["file"] == "error" and failed["content"]["response"]["status_code"] == 400
    assert (
        error_of(http.get(f"/ui/api/batches/{batch['id']}/result?line=99", headers=auth), 404)["code"]
        == "result_not_found"
    )
    assert error_of(http.get(f"/ui/api/batches/{batch['id']}/result", headers=auth), 400)["param"] == "line"
    assert (
        error_of(http.get(f"/ui/api/batches/{batch['id']}/requests?state=odd", headers=auth), 400)["param"] == "state"
    )


def test_another_teams_ids_answer_404(http: httpx.Client, keys: dict[str, str]) -> None:
    batch = new_batch(http, keys["alpha"], [chat_line("x", "private")])
    other = bearer(keys["beta"])
    for path in ("", "/requests", "/result?line=1"):
        assert (
            error_of(http.get(f"/ui/api/batches/{batch['id']}{path}", headers=other), 404)["code"] == "batch_not_found"
        )
    assert http.get(f"/ui/api/batches/{batch['id']}", headers=bearer(ADMIN_KEY)).status_code == 200


def test_polled_routes_answer_304_until_something_changes(http: httpx.Client, keys: dict[str, str]) -> None:
    auth = bearer(keys["alpha"])
    poll_until(
        lambda: all(
            b["status"] in TERMINAL for b in http.get("/ui/api/batches?limit=100", headers=auth).json()["data"]
        ),
        20,
    )

    def revalidated(path: str) -> bool:
        tag = http.get(path, headers=auth).headers["etag"]
        again = http.get(path, headers={**auth, "If-None-Match": tag})
        assert again.status_code in (200, 304)
        return again.status_code == 304 and again.content == b"" and again.headers["etag"] == tag

    for path in ("/ui/api/batches?limit=5", "/ui/api/deployments"):
        # Nothing runs now; only a new minute (the deployment charts move on) could change an answer.
        poll_until(lambda path=path: revalidated(path), 5, message=f"{path} never answered 304")
    before = http.get("/ui/api/batches?limit=5", headers=auth)
    new_batch(http, keys["alpha"], [chat_line("y", "new")])
    changed = http.get("/ui/api/batches?limit=5", headers={**auth, "If-None-Match": before.headers["etag"]})
    assert changed.status_code == 200 and changed.headers["etag"] != before.headers["etag"]


def test_deployments_report_this_engines_last_hour(
    server: ServerProcess, http: httpx.Client, keys: dict[str, str]
) -> None:
    batch = new_batch(http, keys["alpha"], [chat_line(f"d{i}", "load") for i in range(6)])
    with openai_client(server, api_key=keys["alpha"]) as client:
        wait_terminal(client, batch["id"])
    page = http.get("/ui/api/deployments", headers=bearer(keys["alpha"])).json()
    assert page["engine"] is True
    (deployment,) = page["data"]
    assert deployment["name"] == "fake-model/0" and deployment["circuit"] == "closed"
    assert deployment["in_flight"] == 0 and deployment["max_concurrency"] == 4
    series = deployment["series"]
    assert all(len(values) == 60 for values in series.values())
    assert sum(series["requests"]) >= 6 and sum(series["tokens"]) > 0
    assert 1 <= max(series["peak_in_flight"]) <= 4
