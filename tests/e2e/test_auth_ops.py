"""End to end: operations endpoints (SPEC §7), the admin key (SPEC §2 errors) and the safe-bind rule."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.e2e.helpers import API_ENGINE, assert_error, gateway_config, module_server, upload, wait_terminal
from tests.harness import (
    FakeUpstreamProcess,
    ServerProcess,
    chat_line,
    free_port,
    openai_client,
    python_env,
    read_jsonl_bytes,
    running_server,
    upstream_model_config,
)

KEY = "secret"  # short keys are fine on loopback
LONG_KEY = "a-long-enough-admin-key-for-0.0.0.0"  # off loopback a key needs at least 16 characters
MODEL_NAMES = ["fake-model", "second-model", "third/model:v1"]

# Every OpenAI route batchgate serves (method, path), with ids that do not exist.
V1_ROUTES = [
    ("POST", "/v1/files"),
    ("GET", "/v1/files"),
    ("GET", "/v1/files/file-nope"),
    ("DELETE", "/v1/files/file-nope"),
    ("GET", "/v1/files/file-nope/content"),
    ("POST", "/v1/batches"),
    ("GET", "/v1/batches"),
    ("GET", "/v1/batches/batch_nope"),
    ("POST", "/v1/batches/batch_nope/cancel"),
    ("GET", "/v1/models"),
]


def config(upstream_url: str) -> dict[str, Any]:
    return gateway_config(*(upstream_model_config(upstream_url, name=name) for name in MODEL_NAMES), engine=API_ENGINE)


open_server = module_server("open_server", config)  # no admin key, loopback only: the open local mode
keyed_server = module_server("keyed_server", config, env={"BATCHGATE_ADMIN_KEY": KEY})


# ---------------------------------------------------------------------------- operations
@pytest.mark.parametrize("server_name", ["open_server", "keyed_server"])
def test_health_needs_no_key(request: pytest.FixtureRequest, server_name: str) -> None:
    srv: ServerProcess = request.getfixturevalue(server_name)
    response = httpx.get(f"{srv.url}/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize("server_name", ["open_server", "keyed_server"])
def test_ready_needs_no_key(request: pytest.FixtureRequest, server_name: str) -> None:
    srv: ServerProcess = request.getfixturevalue(server_name)
    assert httpx.get(f"{srv.url}/ready").status_code == 200


def test_ready_is_503_while_the_blob_store_is_gone(open_server: ServerProcess) -> None:
    files = open_server.workdir / ".batchgate" / "files"
    away = files.with_name("files.away")
    files.rename(away)
    try:
        response = httpx.get(f"{open_server.url}/ready")
        assert response.status_code == 503, response.text
        assert httpx.get(f"{open_server.url}/health").status_code == 200  # alive, just not ready
    finally:
        away.rename(files)
    assert httpx.get(f"{open_server.url}/ready").status_code == 200


def test_metrics_is_prometheus_text(open_server: ServerProcess) -> None:
    # Something worth counting first.
    with openai_client(open_server) as c:
        c.files.create(file=("m.jsonl", b"metrics\n"), purpose="batch")
    response = httpx.get(f"{open_server.url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "batchgate_" in text
    assert "# TYPE batchgate_" in text
    assert any(
        line.startswith("batchgate_files_uploaded_total ") and float(line.split()[1]) >= 1 for line in text.splitlines()
    ), text[:2000]


def test_models_lists_configured_names(open_server: ServerProcess) -> None:
    raw = httpx.get(f"{open_server.base_url}/models")
    assert raw.status_code == 200
    body = raw.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == MODEL_NAMES
    for model in body["data"]:
        assert model["object"] == "model"
        assert isinstance(model["created"], int)
        assert isinstance(model["owned_by"], str)
    with openai_client(open_server) as c:
        assert [m.id for m in c.models.list()] == MODEL_NAMES


def test_open_mode_refuses_pages_from_other_sites(open_server: ServerProcess) -> None:
    """No admin key means "anyone on this machine", not "any web page a browser here has open"."""
    url = f"{open_server.base_url}/batches"
    # DNS rebinding: a foreign name resolved to 127.0.0.1 arrives with that name in Host.
    assert_error(httpx.get(url, headers={"Host": "attacker.example"}), 403, code="foreign_origin")
    # A cross-site form post (no preflight) carries its page's Origin.
    cancel = f"{open_server.base_url}/batches/batch_x/cancel"
    assert_error(httpx.post(cancel, headers={"Origin": "https://attacker.example"}), 403, code="foreign_origin")
    assert_error(httpx.get(url, headers={"Origin": "null"}), 403, code="foreign_origin")  # sandboxed frame
    # The machine's own names and the console's own pages pass.
    port = open_server.url.rsplit(":", 1)[1]
    for host, origin in [
        ("localhost", None),
        (f"127.0.0.1:{port}", f"http://127.0.0.1:{port}"),
        (f"[::1]:{port}", f"http://localhost:{port}"),
    ]:
        headers = {"Host": host, **({"Origin": origin} if origin else {})}
        assert httpx.get(url, headers=headers).status_code == 200, headers
    assert httpx.get(f"{open_server.url}/health", headers={"Host": "attacker.example"}).status_code == 200


def test_open_mode_matches_host_and_origin_exactly(open_server: ServerProcess) -> None:
    url = f"{open_server.base_url}/batches"
    port = int(open_server.url.rsplit(":", 1)[1])
    # A userinfo prefix, another port or a longer name is another site, however urlsplit reads it.
    for host in [
        "evil.example@127.0.0.1",
        f"evil.example@127.0.0.1:{port}",
        f"127.0.0.1:{port + 1}",
        f"localhost:{port}@evil.example",
        "127.0.0.1.evil.example",
        f"[::1]:{port + 1}",
    ]:
        assert_error(httpx.get(url, headers={"Host": host}), 403, code="foreign_origin")
    # A page served by another local program (another port, https, a path, userinfo) is another site.
    for origin in [
        f"http://127.0.0.1:{port + 1}",
        f"http://localhost:{port + 1}",
        "http://localhost",
        f"https://localhost:{port}",
        f"http://evil.example@localhost:{port}",
        f"http://[::1]:{port}/x",
        f"http://127.0.0.1:{port}.evil.example",
    ]:
        assert_error(httpx.get(url, headers={"Origin": origin}), 403, code="foreign_origin")
    for host, origin in [
        (f"localhost:{port}", f"http://[::1]:{port}"),
        ("[::1]", f"http://localhost:{port}"),
        ("127.0.0.1", None),
    ]:
        headers = {"Host": host, **({"Origin": origin} if origin else {})}
        assert httpx.get(url, headers=headers).status_code == 200, headers


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Forwarded", "for=203.0.113.7"),
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-Host", "gateway.example"),
        ("X-Real-IP", "203.0.113.7"),
    ],
)
def test_open_mode_refuses_requests_through_a_proxy(open_server: ServerProcess, header: str, value: str) -> None:
    """A reverse proxy in front of an open server would give every caller on the network admin rights."""
    err = assert_error(
        httpx.get(f"{open_server.base_url}/batches", headers={header: value}), 403, code="proxied_open_mode"
    )
    assert "admin_key" in err["message"], err


def test_a_keyed_server_serves_through_a_proxy(keyed_server: ServerProcess) -> None:
    headers = {"authorization": f"Bearer {KEY}", "X-Forwarded-For": "203.0.113.7", "Forwarded": "for=203.0.113.7"}
    assert httpx.get(f"{keyed_server.base_url}/batches", headers=headers).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nope"),
        ("GET", "/v1/nope"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/files/file-x/content/extra"),
        ("GET", "/v2/files"),
    ],
)
def test_unknown_route_is_404_envelope(open_server: ServerProcess, method: str, path: str) -> None:
    assert_error(httpx.request(method, f"{open_server.url}{path}"), 404)


def test_wrong_method_is_an_error_envelope(open_server: ServerProcess) -> None:
    response = httpx.put(f"{open_server.base_url}/files")
    assert response.status_code in (404, 405)
    assert_error(response, response.status_code)


# ---------------------------------------------------------------------------- the admin key
@pytest.mark.parametrize(("method", "path"), V1_ROUTES)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": f"Bearer {KEY}x"},
        {"authorization": f"Basic {KEY}"},
        {"authorization": KEY},
        {"authorization": "Bearer"},
        {"x-api-key": KEY},
    ],
    ids=["none", "wrong", "longer", "basic", "bare", "empty", "x-api-key"],
)
def test_v1_without_the_right_key_is_401(
    keyed_server: ServerProcess, method: str, path: str, headers: dict[str, str]
) -> None:
    kwargs: dict[str, Any] = {"headers": headers}
    if path == "/v1/files" and method == "POST":
        kwargs["files"] = {"file": ("a.jsonl", b"x"), "purpose": (None, "batch")}
    elif method == "POST":
        kwargs["json"] = {"input_file_id": "file-nope", "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    response = httpx.request(method, f"{keyed_server.url}{path}", **kwargs)
    # 401, not 404: without a key nothing reveals whether an object exists.
    assert_error(response, 401)


def test_sdk_with_a_wrong_key_gets_authentication_error(keyed_server: ServerProcess) -> None:
    with openai_client(keyed_server, api_key="not-the-key") as c:
        with pytest.raises(openai.AuthenticationError) as info:
            c.files.list()
        assert_error(info.value.response, 401)
        with pytest.raises(openai.AuthenticationError):
            c.batches.list()


def test_the_right_key_works_end_to_end(keyed_server: ServerProcess, upstream: FakeUpstreamProcess) -> None:
    with openai_client(keyed_server, api_key=KEY) as c:
        assert [m.id for m in c.models.list()] == MODEL_NAMES
        f = upload(c, [chat_line(f"k{i}", f"keyed {i}") for i in range(3)], filename="in.jsonl")
        assert f.id in [x.id for x in c.files.list()]
        assert c.files.retrieve(f.id).bytes == f.bytes
        batch = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        done = wait_terminal(c, batch.id)
        assert done.status == "completed", done
        assert done.request_counts is not None and done.request_counts.completed == 3
        assert done.output_file_id is not None
        rows = read_jsonl_bytes(c.files.content(done.output_file_id).content)
        assert sorted(r["custom_id"] for r in rows) == ["k0", "k1", "k2"]
        assert batch.id in [b.id for b in c.batches.list()]
        with pytest.raises(openai.ConflictError):
            c.batches.cancel(batch.id)
        with pytest.raises(openai.NotFoundError):
            c.batches.retrieve("batch_nope")
        assert c.files.delete(f.id).deleted is True
    # The key to the gateway is not the upstream's key: the upstream saw its own.
    assert upstream.stats()["auth_headers"] == ["Bearer upstream-secret"]


def test_lowercase_bearer_scheme_is_accepted(keyed_server: ServerProcess) -> None:
    response = httpx.get(f"{keyed_server.base_url}/models", headers={"authorization": f"bearer {KEY}"})
    assert response.status_code == 200


def test_metrics_needs_the_admin_key_when_one_is_set(keyed_server: ServerProcess) -> None:
    url = f"{keyed_server.url}/metrics"
    assert_error(httpx.get(url), 401)
    admin = {"authorization": f"Bearer {KEY}"}
    team = f"metrics-{uuid.uuid4().hex[:8]}"
    assert httpx.post(f"{keyed_server.url}/admin/teams", json={"name": team}, headers=admin).status_code == 200
    team_key = httpx.post(f"{keyed_server.url}/admin/keys", json={"team": team}, headers=admin).json()["key"]
    assert_error(httpx.get(url, headers={"authorization": f"Bearer {team_key}"}), 403, code="admin_only")
    response = httpx.get(url, headers=admin)
    assert response.status_code == 200
    assert "batchgate_" in response.text


def test_metrics_protection_can_be_turned_off(tmp_path: Path, upstream: FakeUpstreamProcess) -> None:
    cfg = {**config(upstream.url), "auth": {"protect_metrics": False}}
    with running_server(cfg, tmp_path, env={"BATCHGATE_ADMIN_KEY": KEY}) as srv:
        response = httpx.get(f"{srv.url}/metrics")
        assert response.status_code == 200
        assert "batchgate_" in response.text
        assert httpx.get(f"{srv.url}/v1/models").status_code == 401  # only /metrics is opened


def test_unknown_route_on_keyed_server_is_an_envelope(keyed_server: ServerProcess) -> None:
    response = httpx.get(f"{keyed_server.url}/nope", headers={"authorization": f"Bearer {KEY}"})
    assert_error(response, 404)


# ---------------------------------------------------------------------------- the safe-bind rule
@pytest.mark.parametrize("how", ["--host 0.0.0.0", "--host ::", "config server.host 0.0.0.0"])
def test_serve_on_all_interfaces_without_a_key_refuses(tmp_path: Path, upstream: FakeUpstreamProcess, how: str) -> None:
    cfg = config(upstream.url)
    port = free_port()
    args = [sys.executable, "-m", "batchgate", "serve", "--port", str(port)]
    if how.startswith("--host"):
        args += how.split()
    else:
        cfg["server"] = {"host": "0.0.0.0", "port": port}
    (tmp_path / "batchgate.yaml").write_text(yaml.safe_dump(cfg))
    result = subprocess.run(args, cwd=tmp_path, env=python_env(), capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "BATCHGATE_ADMIN_KEY" in output, output
    # It never listened.
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)


def test_serve_on_all_interfaces_with_a_key_starts(tmp_path: Path, upstream: FakeUpstreamProcess) -> None:
    with running_server(
        config(upstream.url), tmp_path, env={"BATCHGATE_ADMIN_KEY": LONG_KEY}, extra_args=["--host", "0.0.0.0"]
    ) as srv:
        assert httpx.get(f"{srv.url}/v1/models").status_code == 401
        assert httpx.get(f"{srv.url}/v1/models", headers={"authorization": f"Bearer {LONG_KEY}"}).status_code == 200


def refused_start(tmp_path: Path, cfg: dict[str, Any], env: dict[str, str], *args: str) -> str:
    """`batchgate serve` exits with code 2 before listening; its output."""
    port = free_port()
    (tmp_path / "batchgate.yaml").write_text(yaml.safe_dump(cfg))
    command = [sys.executable, "-m", "batchgate", "serve", "--port", str(port), *args]
    result = subprocess.run(command, cwd=tmp_path, env=python_env(env), capture_output=True, text=True, timeout=20)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
    return output


def test_open_mode_refuses_to_start_with_forwarded_ips_in_the_environment(
    tmp_path: Path, upstream: FakeUpstreamProcess
) -> None:
    output = refused_start(tmp_path, config(upstream.url), {"FORWARDED_ALLOW_IPS": "*"})
    assert "FORWARDED_ALLOW_IPS" in output and "admin_key" in output, output


def test_open_mode_refuses_to_start_with_forwarded_ips_in_the_config(
    tmp_path: Path, upstream: FakeUpstreamProcess
) -> None:
    cfg = {**config(upstream.url), "server": {"forwarded_allow_ips": "127.0.0.1"}}
    output = refused_start(tmp_path, cfg, {})
    assert "proxy" in output and "admin_key" in output, output


def test_an_admin_key_with_whitespace_inside_is_refused(tmp_path: Path, upstream: FakeUpstreamProcess) -> None:
    output = refused_start(tmp_path, config(upstream.url), {"BATCHGATE_ADMIN_KEY": "two words"})
    assert "whitespace" in output, output
    assert "two words" not in output  # the key itself is never printed


def test_a_short_admin_key_off_loopback_is_refused(tmp_path: Path, upstream: FakeUpstreamProcess) -> None:
    output = refused_start(tmp_path, config(upstream.url), {"BATCHGATE_ADMIN_KEY": "x"}, "--host", "0.0.0.0")
    assert "16 characters" in output, output


def test_an_admin_key_with_a_trailing_newline_works(tmp_path: Path, upstream: FakeUpstreamProcess) -> None:
    with running_server(config(upstream.url), tmp_path, env={"BATCHGATE_ADMIN_KEY": f"  {KEY}\n"}) as srv:
        assert httpx.get(f"{srv.base_url}/models", headers={"authorization": f"Bearer {KEY}"}).status_code == 200
        assert_error(httpx.get(f"{srv.base_url}/models"), 401)
