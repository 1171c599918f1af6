"""End to end: teams and API keys (SPEC §2 errors, §6 CLI keys, §8 Admin API; README "Auth, teams and keys").

One real server with an admin key (``BATCHGATE_ADMIN_KEY``) is shared by the module; every test
makes its own teams and keys (unique names), so tests do not see each other's spend or queues.

- Admin API: teams and keys (shapes, validation, 409 on a duplicate team), the full key shown once,
  hashed storage (the SQLite file is read directly), revocation on the very next request, and the
  403/401 answers of ``/admin/*`` to team keys and to no key.
- Isolation: team B walks every route that takes an id, in every dialect, with team A's ids and
  gets exactly what a made-up id of the same form gets; lists never show the other team; A's
  objects are untouched; the admin key sees both.
- A key's models, its request rate (429 + Retry-After), a team's queued-requests cap, budgets
  (key, team, and a running batch stopped mid-run), ``GET /admin/usage``, the CLI, and SSRF: no
  client input reaches any host but the configured upstream, with the configured upstream key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.helpers import (
    CHAT,
    ENGINE,
    assert_error,
    gateway_config,
    module_server,
    result_files,
    sdk_error,
    submit,
    upload,
    wait_terminal,
    wait_upstream_idle,
)
from tests.fake_upstream import count_tokens
from tests.harness import (
    UPSTREAM_API_KEY,
    FakeUpstreamProcess,
    ServerProcess,
    chat_line,
    openai_client,
    poll_until,
    python_env,
    upstream_model_config,
)

ADMIN_KEY = "admin-secret-for-teams-tests"
MODEL = "fake-model"
OTHER = "second-model"
# Dear on purpose: one short request costs about a cent, so a budget of half a cent is spent at once.
PRICE = {"input_per_mtok": 1000.0, "output_per_mtok": 2000.0}
TINY_BUDGET = 0.005
OPENAI_PREFIXES = ["/v1", "/api/llm", "/api/llm/api/inference/openai"]
CLI_TIMEOUT = 60.0


def config(upstream_url: str) -> dict[str, Any]:
    return gateway_config(
        upstream_model_config(upstream_url, name=MODEL, price=PRICE),
        upstream_model_config(upstream_url, name=OTHER, price=PRICE),
        engine=ENGINE,
    )


server = module_server("server", config, env={"BATCHGATE_ADMIN_KEY": ADMIN_KEY})


# ---------------------------------------------------------------------------- helpers
def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def unknown_like(real_id: str) -> str:
    """A made-up id of the same form (prefix and length) as ``real_id`` that nobody has."""
    tail = "zzzzzzzzzz" if not real_id.endswith("zzzzzzzzzz") else "0000000000"
    return real_id[: -len(tail)] + tail


def request_cost(content: str) -> float:
    """USD the fake upstream's answer to one user message costs at PRICE."""
    p, c = count_tokens(content), count_tokens("echo: " + content)
    return (p * PRICE["input_per_mtok"] + c * PRICE["output_per_mtok"]) / 1e6


def xai_chat(rid: str, text: str, model: str = MODEL, **body: Any) -> dict[str, Any]:
    return {
        "batch_request_id": rid,
        "batch_request": {
            "chat_get_completion": {"model": model, "messages": [{"role": "user", "content": text}], **body}
        },
    }


@dataclass
class Tenant:
    """A team, one of its keys, and clients that use the key (the SDK, and httpx on the server root)."""

    team: dict[str, Any]
    key: dict[str, Any]
    client: openai.OpenAI
    http: httpx.Client

    @property
    def secret(self) -> str:
        return str(self.key["key"])


@dataclass
class Admin:
    """httpx with the admin key on the server root, plus makers of teams, keys and tenants."""

    server: ServerProcess
    http: httpx.Client
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def team(self, prefix: str = "team", **fields: Any) -> dict[str, Any]:
        r = self.http.post("/admin/teams", json={"name": unique(prefix), **fields})
        assert r.status_code == 200, r.text
        return r.json()

    def key(self, team: dict[str, Any], **fields: Any) -> dict[str, Any]:
        r = self.http.post("/admin/keys", json={"team": team["name"], **fields})
        assert r.status_code == 200, r.text
        return r.json()

    def tenant(
        self, team: dict[str, Any] | None = None, *, team_fields: dict[str, Any] | None = None, **key_fields: Any
    ) -> Tenant:
        team = team if team is not None else self.team(**(team_fields or {}))
        key = self.key(team, **key_fields)
        client = self.stack.enter_context(openai_client(self.server, api_key=key["key"]))
        http = self.stack.enter_context(
            httpx.Client(base_url=self.server.url, headers=bearer(key["key"]), timeout=15.0)
        )
        return Tenant(team, key, client, http)


@pytest.fixture(scope="module")
def module_admin(server: ServerProcess) -> Iterator[Admin]:
    with httpx.Client(base_url=server.url, headers=bearer(ADMIN_KEY), timeout=15.0) as http:
        admin = Admin(server, http)
        with admin.stack:
            yield admin


@pytest.fixture
def admin(module_admin: Admin, upstream: FakeUpstreamProcess) -> Admin:
    """The module's admin helper, with the fake upstream's stats reset for the test."""
    return module_admin


def wait_xai(
    http: httpx.Client, batch_id: str, cond: Callable[[dict[str, Any]], bool], timeout: float = 20.0
) -> dict[str, Any]:
    last: list[Any] = []

    def check() -> dict[str, Any] | None:
        r = http.get(f"/xai/v1/batches/{batch_id}")
        assert r.status_code == 200, r.text
        last[:] = [r.json()]
        return last[0] if cond(last[0]) else None

    return poll_until(check, timeout, 0.05, message=lambda: f"xAI batch {batch_id}: {last[0] if last else None}")


def lines(prefix: str, n: int, text: str = "hello", model: str = MODEL) -> list[dict[str, Any]]:
    return [chat_line(f"{prefix}{i}", f"{text} {prefix}{i}", model=model) for i in range(n)]


# ---------------------------------------------------------------------------- admin API: teams
def test_create_team_returns_it_and_list_shows_it(admin: Admin) -> None:
    name = unique("research")
    r = admin.http.post(
        "/admin/teams", json={"name": name, "weight": 2.5, "budget_usd": 50, "max_queued_requests": 1000}
    )
    assert r.status_code == 200, r.text
    team = r.json()
    assert team["name"] == name
    assert team["weight"] == 2.5
    assert team["budget_usd"] == 50
    assert team["max_queued_requests"] == 1000
    assert isinstance(team["id"], str) and team["id"]

    plain = admin.team("plain")
    assert plain["weight"] == 1  # the default
    assert plain["budget_usd"] is None and plain["max_queued_requests"] is None

    listing = admin.http.get("/admin/teams")
    assert listing.status_code == 200, listing.text
    body = listing.json()
    assert body["object"] == "list"
    by_name = {t["name"]: t for t in body["data"]}
    assert by_name[name] == team
    assert by_name[plain["name"]] == plain


def test_duplicate_team_name_is_409(admin: Admin) -> None:
    team = admin.team("dup")
    err = assert_error(admin.http.post("/admin/teams", json={"name": team["name"]}), 409, param="name")
    assert team["name"] in err["message"]
    names = [t["name"] for t in admin.http.get("/admin/teams").json()["data"]]
    assert names.count(team["name"]) == 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": 7}, "name"),
        ({"name": ["x"]}, "name"),
        ({"name": "x" * 129}, "name"),
        ({"weight": "heavy"}, "weight"),
        ({"weight": True}, "weight"),
        ({"weight": 0}, "weight"),
        ({"weight": -1}, "weight"),
        ({"budget_usd": "ten"}, "budget_usd"),
        ({"budget_usd": -1}, "budget_usd"),
        ({"max_queued_requests": 2.5}, "max_queued_requests"),
        ({"max_queued_requests": "10"}, "max_queued_requests"),
        ({"max_queued_requests": -1}, "max_queued_requests"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else v,
)
def test_bad_team_fields_are_400_naming_the_param(admin: Admin, body: dict[str, Any], param: str) -> None:
    name = unique("bad")
    payload = {"name": name, **body} if "name" not in body and body else body
    assert_error(admin.http.post("/admin/teams", json=payload), 400, param=param)
    assert name not in [t["name"] for t in admin.http.get("/admin/teams").json()["data"]]


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b""], ids=["garbage", "array", "empty"])
def test_team_body_must_be_a_json_object(admin: Admin, raw: bytes) -> None:
    r = admin.http.post("/admin/teams", content=raw, headers={"content-type": "application/json"})
    assert_error(r, 400)


# ---------------------------------------------------------------------------- admin API: keys
def test_create_key_shows_the_full_key_once(admin: Admin) -> None:
    team = admin.team("keys")
    r = admin.http.post(
        "/admin/keys", json={"team": team["name"], "name": "nightly", "models": [MODEL], "rpm": 600, "budget_usd": 12.5}
    )
    assert r.status_code == 200, r.text
    key = r.json()
    secret = key["key"]
    assert isinstance(secret, str) and len(secret) >= 32
    assert key["prefix"] == secret[:12]
    assert key["team"] == team["name"]
    assert key["name"] == "nightly"
    assert key["models"] == [MODEL]
    assert key["rpm"] == 600
    assert key["budget_usd"] == 12.5
    assert isinstance(key["id"], str) and key["id"]
    assert secret not in key["id"] and secret[12:] not in key["id"]

    # The key works at once, and is scoped to its team.
    with openai_client(admin.server, api_key=secret) as c:
        assert [m.id for m in c.models.list()] == [MODEL, OTHER]

    listing = admin.http.get("/admin/keys")
    assert listing.status_code == 200, listing.text
    assert secret not in listing.text
    assert secret[12:] not in listing.text  # not even the part after the prefix
    assert hashlib.sha256(secret.encode()).hexdigest() not in listing.text  # nor a plain hash of it
    (item,) = [k for k in listing.json()["data"] if k["id"] == key["id"]]
    assert item["prefix"] == secret[:12]
    assert item["team"] == team["name"]
    assert "key" not in item
    assert item["revoked_at"] is None


def test_two_keys_never_share_a_secret(admin: Admin) -> None:
    team = admin.team("twins")
    a, b = admin.key(team), admin.key(team)
    assert a["key"] != b["key"] and a["id"] != b["id"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({}, 400, "team"),
        ({"team": 5}, 400, "team"),
        ({"team": "no-such-team-anywhere"}, 404, "team"),
        ({"models": ["nope-model"]}, 400, "models"),
        ({"models": [MODEL, "nope-model"]}, 400, "models"),
        ({"models": MODEL}, 400, "models"),
        ({"models": [1]}, 400, "models"),
        ({"rpm": "fast"}, 400, "rpm"),
        ({"rpm": 0}, 400, "rpm"),
        ({"rpm": 1.5}, 400, "rpm"),
        ({"rpm": True}, 400, "rpm"),
        ({"name": "k" * 129}, 400, "name"),
        ({"budget_usd": "lots"}, 400, "budget_usd"),
        ({"budget_usd": -0.5}, 400, "budget_usd"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else str(v),
)
def test_bad_key_fields_are_refused_naming_the_param(
    admin: Admin, body: dict[str, Any], status: int, param: str
) -> None:
    team = admin.team("badkey")
    payload = {"team": team["name"], **body} if "team" not in body and body else body
    before = len(admin.http.get("/admin/keys").json()["data"])
    assert_error(admin.http.post("/admin/keys", json=payload), status, param=param)
    assert len(admin.http.get("/admin/keys").json()["data"]) == before  # nothing was stored


def test_revoked_key_is_refused_on_the_very_next_request(admin: Admin) -> None:
    tenant = admin.tenant()
    assert tenant.client.files.list().data == []
    r = admin.http.delete(f"/admin/keys/{tenant.key['id']}")
    assert r.status_code == 200, r.text
    # No pause: the very next request, on any route and dialect, is refused.
    sdk_error(tenant.client.files.list, 401)
    assert_error(tenant.http.get("/xai/v1/batches"), 401)
    assert_error(tenant.http.get("/api/llm/batches"), 401)
    (item,) = [k for k in admin.http.get("/admin/keys").json()["data"] if k["id"] == tenant.key["id"]]
    assert isinstance(item["revoked_at"], int)
    # Another key of the same team is untouched.
    other = admin.tenant(tenant.team)
    assert other.client.files.list().data == []


def test_open_local_mode_revoked_key_gains_nothing(
    make_server: Callable[..., ServerProcess], upstream: FakeUpstreamProcess
) -> None:
    """Without an admin key (loopback only) team keys still scope their callers (README); revoking one
    must not turn its holder into the admin who sees every team."""
    srv = make_server(config(upstream.url))
    with httpx.Client(base_url=srv.url, timeout=15.0) as anyone:
        local = Admin(srv, anyone)
        with local.stack:
            a, b = local.tenant(), local.tenant()
            b_file = upload(b.client, lines("b", 1))
            assert_error(a.http.get(f"/v1/files/{b_file.id}"), 404)
            assert_error(a.http.get("/admin/keys"), 403)
            assert anyone.delete(f"/admin/keys/{a.key['id']}").status_code == 200
            after = a.http.get(f"/v1/files/{b_file.id}")
            assert after.status_code in (401, 404), f"revoked key reads another team's file: {after.text}"
            after = a.http.get("/admin/keys")
            assert after.status_code in (401, 403), f"revoked key reaches the admin API: {after.text[:300]}"
            assert_error(after, after.status_code)


def test_revoking_an_unknown_key_is_404(admin: Admin) -> None:
    key = admin.key(admin.team())
    assert_error(admin.http.delete(f"/admin/keys/{unknown_like(key['id'])}"), 404)
    assert_error(admin.http.delete("/admin/keys/key_nope"), 404)


def admin_routes(own_key_id: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    return [
        ("POST", "/admin/teams", {"name": unique("sneaky")}),
        ("GET", "/admin/teams", None),
        ("POST", "/admin/keys", {"team": "x"}),
        ("GET", "/admin/keys", None),
        ("DELETE", f"/admin/keys/{own_key_id}", None),
        ("GET", "/admin/usage", None),
    ]


def test_team_key_gets_403_on_every_admin_route(admin: Admin) -> None:
    tenant = admin.tenant()
    teams_before = admin.http.get("/admin/teams").json()["data"]
    for method, path, body in admin_routes(tenant.key["id"]):
        r = tenant.http.request(method, path, json=body)
        err = assert_error(r, 403)
        assert err["type"] == "permission_error", (method, path, err)
    assert admin.http.get("/admin/teams").json()["data"] == teams_before  # nothing created
    assert tenant.client.files.list().data == []  # its own key was not revoked


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("wrong"), bearer(ADMIN_KEY + "x"), {"Authorization": ADMIN_KEY}],
    ids=["none", "wrong", "longer", "no-scheme"],
)
def test_no_or_bad_key_gets_401_on_every_admin_route(admin: Admin, headers: dict[str, str]) -> None:
    key = admin.key(admin.team())
    for method, path, body in admin_routes(key["id"]):
        r = httpx.request(method, admin.server.url + path, json=body, headers=headers)
        assert_error(r, 401)


def test_database_stores_only_a_hash(admin: Admin, server: ServerProcess) -> None:
    key = admin.key(admin.team("hashed"), name="stored")
    secret = key["key"]
    db = server.workdir / ".batchgate" / "batchgate.db"
    assert db.exists(), list(server.workdir.rglob("*.db"))
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        cols = [row[1] for row in conn.execute("PRAGMA table_info(api_keys)")]
        rows = conn.execute("SELECT * FROM api_keys").fetchall()
        assert any(key["id"] in row for row in rows), "the key's row is stored"
        for row in rows:
            for col, value in zip(cols, row, strict=True):
                assert secret not in str(value), f"api_keys.{col} holds the full key"
                assert secret[12:] not in str(value), f"api_keys.{col} holds the key's secret part"
        # Nor does any other table keep it.
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                assert not any(secret in str(v) for v in row), f"table {table} holds the full key"
    assert secret not in server.log_text()


# ---------------------------------------------------------------------------- isolation
@dataclass
class World:
    a: Tenant
    b: Tenant
    files: dict[str, str]  # A's file ids: input, output, error
    batches: dict[str, str]  # A's batch ids: openai (completed), xai (open, running)
    a_file_objects: dict[str, dict[str, Any]]
    a_contents: dict[str, bytes]
    b_ids: list[str]

    @property
    def a_ids(self) -> list[str]:
        return [*self.files.values(), *self.batches.values()]


@pytest.fixture(scope="module")
def world(module_admin: Admin) -> World:
    """Teams A and B; A has a finished batch (input, output and error files) and a running xAI open batch."""
    a, b = module_admin.tenant(team_fields={}), module_admin.tenant(team_fields={})
    rows = [chat_line("ok-1", "alpha one"), chat_line("ok-2", "alpha two"), chat_line("bad", "alpha @status:400")]
    batch = submit(a.client, rows)
    done = wait_terminal(a.client, batch.id)
    assert done.status == "completed", done
    assert done.output_file_id and done.error_file_id, done

    r = a.http.post("/xai/v1/batches", json={"name": "a-open"})
    assert r.status_code == 200, r.text
    xai_id = r.json()["batch_id"]
    r = a.http.post(
        f"/xai/v1/batches/{xai_id}/requests",
        json={"batch_requests": [xai_chat("x1", "alpha x1"), xai_chat("x2", "alpha x2")]},
    )
    assert r.status_code == 200, r.text
    wait_xai(a.http, xai_id, lambda x: x["state"]["num_success"] == 2)

    # B has objects of its own, so its lists are not trivially empty.
    b_file = upload(b.client, lines("b", 1))
    r = b.http.post("/xai/v1/batches", json={"name": "b-open"})
    assert r.status_code == 200, r.text
    files = {"input": done.input_file_id, "output": done.output_file_id, "error": done.error_file_id}
    return World(
        a=a,
        b=b,
        files=files,
        batches={"openai": batch.id, "xai": xai_id},
        a_file_objects={k: a.http.get(f"/v1/files/{v}").json() for k, v in files.items()},
        a_contents={k: a.client.files.content(v).content for k, v in files.items()},
        b_ids=[b_file.id, r.json()["batch_id"]],
    )


ADD_BODY = {"batch_requests": [xai_chat("stolen", "from team b")]}
# (method, path template, which kind of A's ids goes in, JSON body with "{id}" where the id goes)
ID_ROUTES: list[tuple[str, str, str, Any]] = []
for _prefix in OPENAI_PREFIXES:
    ID_ROUTES += [
        ("GET", _prefix + "/files/{id}", "file", None),
        ("DELETE", _prefix + "/files/{id}", "file", None),
        ("GET", _prefix + "/files/{id}/content", "file", None),
        ("POST", _prefix + "/batches", "file", {"input_file_id": "{id}", "endpoint": CHAT, "completion_window": "24h"}),
        ("GET", _prefix + "/batches/{id}", "batch", None),
        ("POST", _prefix + "/batches/{id}/cancel", "batch", None),
        ("GET", _prefix + "/batches/{id}/output", "batch", None),
    ]
ID_ROUTES += [
    ("GET", "/xai/v1/batches/{id}", "batch", None),
    ("GET", "/xai/v1/batches/{id}/requests", "batch", None),
    ("POST", "/xai/v1/batches/{id}/requests", "batch", ADD_BODY),
    ("GET", "/xai/v1/batches/{id}/results", "batch", None),
    ("POST", "/xai/v1/batches/{id}:cancel", "batch", None),
    ("POST", "/xai/v1/batches", "file", {"name": "steal", "input_file_id": "{id}"}),
]


def _fill(template: Any, value: str) -> Any:
    if template is None:
        return None
    return json.loads(json.dumps(template).replace("{id}", value))


def _comparable_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k not in ("date",)}


def assert_same_as_unknown(theirs: httpx.Response, unknown: httpx.Response, real_id: str, fake_id: str) -> None:
    """Another team's id answers exactly what an unknown id of the same form answers (bar the id itself)."""
    assert theirs.status_code == unknown.status_code == 404, (theirs.text, unknown.text)
    mine, ref = assert_error(theirs, 404), assert_error(unknown, 404)
    assert {**mine, "message": mine["message"].replace(real_id, "<ID>")} == {
        **ref,
        "message": ref["message"].replace(fake_id, "<ID>"),
    }
    assert _comparable_headers(theirs) == _comparable_headers(unknown)


def a_sees_unchanged(world: World, kind: str, name: str, object_id: str) -> None:
    a = world.a
    if kind == "file":
        r = a.http.get(f"/v1/files/{object_id}")
        assert r.status_code == 200, f"A lost its {name} file: {r.text}"
        assert r.json() == world.a_file_objects[name]
        assert a.client.files.content(object_id).content == world.a_contents[name]
        return
    r = a.http.get(f"/v1/batches/{object_id}")
    assert r.status_code == 200, r.text
    if name == "openai":
        assert r.json()["status"] == "completed"
    else:
        x = a.http.get(f"/xai/v1/batches/{object_id}").json()
        assert x["cancel_time"] is None, x
        assert x["state"]["num_requests"] == 2 and x["state"]["num_cancelled"] == 0, x
        assert r.json()["status"] == "in_progress"


@pytest.mark.parametrize(
    ("method", "template", "kind", "body"), ID_ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ID_ROUTES]
)
def test_other_teams_ids_answer_like_unknown_ones(
    world: World, method: str, template: str, kind: str, body: Any
) -> None:
    ids = world.files if kind == "file" else world.batches
    for name, real_id in ids.items():
        fake_id = unknown_like(real_id)
        if method == "GET":  # control: the route exists and A reaches its own object there
            mine = world.a.http.get(template.replace("{id}", real_id))
            assert mine.status_code == 200, (name, mine.text)
        theirs = world.b.http.request(method, template.replace("{id}", real_id), json=_fill(body, real_id))
        unknown = world.b.http.request(method, template.replace("{id}", fake_id), json=_fill(body, fake_id))
        assert_same_as_unknown(theirs, unknown, real_id, fake_id)
        a_sees_unchanged(world, kind, name, real_id)


@pytest.mark.parametrize("prefix", OPENAI_PREFIXES)
def test_lists_show_only_the_callers_team(world: World, prefix: str) -> None:
    for path in ("/files", "/files?purpose=batch_output", "/files?purpose=batch", "/batches?limit=100"):
        for me, other_ids in ((world.b, world.a_ids), (world.a, world.b_ids)):
            r = me.http.get(prefix + path)
            assert r.status_code == 200, r.text
            leaked = [i for i in other_ids if i in r.text]
            assert leaked == [], f"{prefix}{path} shows the other team's {leaked}"
    b_files = world.b.http.get(prefix + "/files").json()["data"]
    assert world.b_ids[0] in [f["id"] for f in b_files]
    a_batches = [x["id"] for x in world.a.http.get(prefix + "/batches?limit=100").json()["data"]]
    assert world.batches["openai"] in a_batches


def test_xai_lists_show_only_the_callers_team(world: World) -> None:
    b_list = world.b.http.get("/xai/v1/batches", params={"limit": 1000})
    assert b_list.status_code == 200, b_list.text
    assert [i for i in world.a_ids if i in b_list.text] == []
    assert world.b_ids[1] in [x["batch_id"] for x in b_list.json()["batches"]]
    a_list = world.a.http.get("/xai/v1/batches", params={"limit": 1000})
    assert [i for i in world.b_ids if i in a_list.text] == []
    assert world.batches["xai"] in [x["batch_id"] for x in a_list.json()["batches"]]


def test_admin_sees_every_teams_objects(world: World, module_admin: Admin) -> None:
    http = module_admin.http
    files = {f["id"] for f in http.get("/v1/files").json()["data"]}
    assert {*world.files.values(), world.b_ids[0]} <= files
    batches = {x["id"] for x in http.get("/v1/batches", params={"limit": 100}).json()["data"]}
    assert {*world.batches.values(), world.b_ids[1]} <= batches
    xai = {x["batch_id"] for x in http.get("/xai/v1/batches", params={"limit": 1000}).json()["batches"]}
    assert {world.batches["xai"], world.b_ids[1]} <= xai
    for file_id in world.files.values():
        assert http.get(f"/v1/files/{file_id}").status_code == 200
    assert http.get(f"/xai/v1/batches/{world.batches['xai']}/results").status_code == 200


# ---------------------------------------------------------------------------- a key's models
def test_key_models_narrow_what_its_batches_may_use(admin: Admin) -> None:
    tenant = admin.tenant(models=[MODEL])
    batch = submit(tenant.client, lines("m", 2, model=OTHER))
    done = wait_terminal(tenant.client, batch.id)
    assert done.status == "failed", done
    assert done.errors is not None and done.errors.data
    assert done.errors.data[0].code == "model_not_found", done.errors
    assert OTHER in (done.errors.data[0].message or "")

    ok = wait_terminal(tenant.client, submit(tenant.client, lines("m", 1, model=MODEL)).id)
    assert ok.status == "completed", ok

    r = tenant.http.post("/xai/v1/batches", json={"name": "narrow"})
    assert r.status_code == 200, r.text
    xai_id = r.json()["batch_id"]
    err = assert_error(
        tenant.http.post(
            f"/xai/v1/batches/{xai_id}/requests", json={"batch_requests": [xai_chat("o1", "other", model=OTHER)]}
        ),
        400,
    )
    assert "model" in (err["param"] or "")
    r = tenant.http.post(f"/xai/v1/batches/{xai_id}/requests", json={"batch_requests": [xai_chat("m1", "mine")]})
    assert r.status_code == 200, r.text
    assert wait_xai(tenant.http, xai_id, lambda x: x["state"]["num_success"] == 1)["state"]["num_requests"] == 1


# ---------------------------------------------------------------------------- inbound rate
def test_key_rpm_answers_429_with_retry_after(admin: Admin) -> None:
    limited = admin.tenant(rpm=3)
    free = admin.tenant(limited.team)
    for _ in range(3):
        limited.client.models.list()
    with pytest.raises(openai.RateLimitError) as info:
        limited.client.files.list()
    err = assert_error(info.value.response, 429, code="rate_limit_exceeded")
    assert err["type"] == "rate_limit_error"
    retry_after = info.value.response.headers.get("retry-after")
    assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1, retry_after
    # Still limited on another route and dialect; other keys (same team) and the admin are not.
    assert_error(limited.http.get("/xai/v1/batches"), 429, code="rate_limit_exceeded")
    for _ in range(6):
        free.client.models.list()
        assert admin.http.get("/v1/models").status_code == 200


# ---------------------------------------------------------------------------- queue cap
def test_team_queue_cap_refuses_creates_that_would_pass_it(admin: Admin) -> None:
    tenant = admin.tenant(team_fields={"max_queued_requests": 5})
    slow = [chat_line(f"s{i}", f"slow {i} @latency:2500") for i in range(3)]
    first = submit(tenant.client, slow)

    three = upload(tenant.client, lines("t", 3))
    err = sdk_error(
        lambda: tenant.client.batches.create(input_file_id=three.id, endpoint=CHAT, completion_window="24h"), 429
    )
    assert err["code"] == "max_queued_requests_exceeded", err
    assert "5" in err["message"] and "queue" in err["message"].lower(), err

    second = submit(tenant.client, [chat_line(f"u{i}", f"slow two {i} @latency:2500") for i in range(2)])
    # Now exactly 5 are queued: even one more is refused, through the xAI dialect as well.
    one = upload(tenant.client, lines("o", 1))
    sdk_error(
        lambda: tenant.client.batches.create(input_file_id=one.id, endpoint=CHAT, completion_window="24h"),
        429,
        code="max_queued_requests_exceeded",
    )
    r = tenant.http.post("/xai/v1/batches", json={"name": "capped"})
    assert r.status_code == 200, r.text
    assert_error(
        tenant.http.post(
            f"/xai/v1/batches/{r.json()['batch_id']}/requests", json={"batch_requests": [xai_chat("c1", "capped")]}
        ),
        429,
        code="max_queued_requests_exceeded",
    )

    for b in (first, second):
        assert wait_terminal(tenant.client, b.id).status == "completed"
    # The queue has drained: the 3-line file is accepted now.
    third = tenant.client.batches.create(input_file_id=three.id, endpoint=CHAT, completion_window="24h")
    assert wait_terminal(tenant.client, third.id).status == "completed"


def test_queue_cap_also_holds_for_sealed_xai_batches(admin: Admin) -> None:
    tenant = admin.tenant(team_fields={"max_queued_requests": 2})
    three = upload(tenant.client, lines("x", 3))
    sdk_error(
        lambda: tenant.client.batches.create(input_file_id=three.id, endpoint=CHAT, completion_window="24h"),
        429,
        code="max_queued_requests_exceeded",
    )
    # The same 3 requests as a sealed xAI batch are a create that would pass the cap too.
    r = tenant.http.post("/xai/v1/batches", json={"name": "sealed", "input_file_id": three.id})
    assert_error(r, 429, code="max_queued_requests_exceeded")


# ---------------------------------------------------------------------------- budgets
def run_one(tenant: Tenant, custom_id: str) -> str:
    """Run a one-line batch to its end; returns its content (whose cost is ``request_cost``)."""
    content = f"spend {custom_id}"
    done = wait_terminal(tenant.client, submit(tenant.client, [chat_line(custom_id, content)]).id)
    assert done.request_counts is not None and done.request_counts.completed == 1, done
    return content


def test_key_over_budget_gets_new_batches_refused(admin: Admin) -> None:
    spender = admin.tenant(budget_usd=TINY_BUDGET)
    sibling = admin.tenant(spender.team)  # same team, no budget of its own; the team has none
    content = run_one(spender, "k1")
    assert request_cost(content) > TINY_BUDGET

    refused = upload(spender.client, lines("k", 1))
    err = sdk_error(
        lambda: spender.client.batches.create(input_file_id=refused.id, endpoint=CHAT, completion_window="24h"),
        429,
        code="budget_exceeded",
    )
    assert "budget" in err["message"].lower(), err
    r = spender.http.post("/xai/v1/batches", json={"name": "broke"})
    if r.status_code == 200:  # an empty open batch may be created; adding work to it may not
        assert_error(
            spender.http.post(
                f"/xai/v1/batches/{r.json()['batch_id']}/requests", json={"batch_requests": [xai_chat("b1", "more")]}
            ),
            429,
            code="budget_exceeded",
        )
    else:
        assert_error(r, 429, code="budget_exceeded")
    # The budget is the key's: another key of the same team still works.
    ok = wait_terminal(sibling.client, submit(sibling.client, lines("s", 1)).id)
    assert ok.status == "completed", ok


def test_team_over_budget_gets_new_batches_refused_for_every_key(admin: Admin) -> None:
    tenant = admin.tenant(team_fields={"budget_usd": TINY_BUDGET})
    run_one(tenant, "t1")
    for who in (tenant, admin.tenant(tenant.team)):  # the same key, and a key made afterwards
        f = upload(who.client, lines("t", 1))
        err = sdk_error(
            lambda w=who, f=f: w.client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h"),
            429,
            code="budget_exceeded",
        )
        assert "budget" in err["message"].lower() and tenant.team["name"] in err["message"], err
    # Other teams are not affected.
    other = admin.tenant()
    assert wait_terminal(other.client, submit(other.client, lines("o", 1)).id).status == "completed"


def test_sealed_xai_create_is_refused_over_budget(admin: Admin) -> None:
    tenant = admin.tenant(budget_usd=TINY_BUDGET)
    run_one(tenant, "x1")
    f = upload(tenant.client, lines("x", 2))
    sdk_error(
        lambda: tenant.client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h"),
        429,
        code="budget_exceeded",
    )
    r = tenant.http.post("/xai/v1/batches", json={"name": "sealed-broke", "input_file_id": f.id})
    assert_error(r, 429, code="budget_exceeded")


def test_running_batch_stops_when_its_team_goes_over_budget(admin: Admin, upstream: FakeUpstreamProcess) -> None:
    tenant = admin.tenant(team_fields={"budget_usd": TINY_BUDGET})
    rows = [chat_line("fast", "spend fast"), *(chat_line(f"slow{i}", f"slow {i} @latency:4000") for i in range(4))]
    batch = submit(tenant.client, rows)
    done = wait_terminal(tenant.client, batch.id, timeout=15)
    assert done.status == "cancelled", done  # README: stopped batches end cancelled, saying why
    out, err = result_files(tenant.client, done, rows)  # every custom_id exactly once
    assert set(out) == {"fast"}
    assert set(err) == {f"slow{i}" for i in range(4)}
    for line in err.values():
        assert line["response"] is None
        assert line["error"]["code"] == "budget_exceeded", line
        assert line["error"]["message"]
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 4)
    wait_upstream_idle(upstream)  # the stopped calls were hung up, not left running


def test_batch_whose_last_request_spends_the_budget_still_completes(
    make_server: Callable[..., ServerProcess], upstream: FakeUpstreamProcess
) -> None:
    """A batch with no unfinished line left has nothing to stop: it completes, even if the spend check
    runs between its last result and its completion (a slow engine poll makes that happen every time)."""
    cfg = config(upstream.url)
    cfg["engine"] = {**ENGINE, "poll_interval_s": 3.0}
    srv = make_server(cfg, env={"BATCHGATE_ADMIN_KEY": ADMIN_KEY})
    with httpx.Client(base_url=srv.url, headers=bearer(ADMIN_KEY), timeout=15.0) as http:
        local = Admin(srv, http)
        with local.stack:
            tenant = local.tenant(team_fields={"budget_usd": TINY_BUDGET})
            rows = [chat_line("only", "the whole budget @latency:1300")]
            done = wait_terminal(tenant.client, submit(tenant.client, rows).id)
            out, err = result_files(tenant.client, done, rows)
            assert set(out) == {"only"} and err == {}
            assert done.status == "completed", done
            assert done.cancelled_at is None


# ---------------------------------------------------------------------------- usage
def test_usage_per_team_key_and_model(admin: Admin) -> None:
    first = admin.tenant()
    second = admin.tenant(first.team)
    plans = [  # (tenant, model, contents)
        (first, MODEL, [f"usage first {i}" for i in range(3)]),
        (first, OTHER, [f"usage other {i}" for i in range(2)]),
        (second, MODEL, ["usage second 0"]),
    ]
    started = [
        (t, m, c, submit(t.client, [chat_line(f"u{i}", x, model=m) for i, x in enumerate(c)])) for t, m, c in plans
    ]
    for t, _, _, b in started:
        assert wait_terminal(t.client, b.id).status == "completed"

    r = admin.http.get("/admin/usage", params={"team": first.team["name"]})
    assert r.status_code == 200, r.text
    rows = {(x["key_id"], x["model"]): x for x in r.json()["data"]}
    assert set(rows) == {(first.key["id"], MODEL), (first.key["id"], OTHER), (second.key["id"], MODEL)}
    for tenant, model, contents in plans:
        row = rows[(tenant.key["id"], model)]
        assert row["team"] == first.team["name"] and row["team_id"] == first.team["id"]
        assert row["batches"] == 1
        assert row["requests"] == {"completed": len(contents), "failed": 0}
        assert row["input_tokens"] == sum(count_tokens(c) for c in contents)
        assert row["output_tokens"] == sum(count_tokens("echo: " + c) for c in contents)
        assert row["cost_usd"] == pytest.approx(sum(request_cost(c) for c in contents), rel=1e-9, abs=1e-12)

    by_key = admin.http.get("/admin/usage", params={"key": second.key["id"]}).json()["data"]
    assert [(x["key_id"], x["model"]) for x in by_key] == [(second.key["id"], MODEL)]
    by_id = admin.http.get("/admin/usage", params={"team": first.team["id"]}).json()["data"]
    assert {(x["key_id"], x["model"]) for x in by_id} == set(rows)
    everyone = admin.http.get("/admin/usage").json()["data"]
    assert {(x["key_id"], x["model"]) for x in everyone if x["team"] == first.team["name"]} == set(rows)
    later = admin.http.get("/admin/usage", params={"team": first.team["name"], "since": 4_000_000_000})
    assert later.status_code == 200 and later.json()["data"] == []
    since = admin.http.get("/admin/usage", params={"team": first.team["name"], "since": 0}).json()["data"]
    assert len(since) == 3


@pytest.mark.parametrize(
    ("params", "status", "param"),
    [
        ({"team": "no-such-team-at-all"}, 404, "team"),
        ({"since": "yesterday"}, 400, "since"),
        ({"since": "-5"}, 400, "since"),
        ({"since": "1.5"}, 400, "since"),
    ],
)
def test_usage_bad_filters(admin: Admin, params: dict[str, str], status: int, param: str) -> None:
    assert_error(admin.http.get("/admin/usage", params=params), status, param=param)


# ---------------------------------------------------------------------------- CLI
@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def bg(server: ServerProcess, *args: str, api_key: str = ADMIN_KEY, cwd: Path) -> CliResult:
    cmd = [sys.executable, "-m", "batchgate", *args, "--api-key", api_key, "--base-url", server.base_url]
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=python_env({"COLUMNS": "250", "NO_COLOR": "1"}),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def test_cli_teams_keys_usage(admin: Admin, server: ServerProcess, tmp_path: Path) -> None:
    name = unique("cli-team")
    created = bg(server, "teams", "create", name, "--weight", "2", "--max-queued-requests", "50", cwd=tmp_path)
    assert created.code == 0, created
    (team,) = [t for t in admin.http.get("/admin/teams").json()["data"] if t["name"] == name]
    assert created.out.strip() == team["id"], created
    assert team["weight"] == 2 and team["max_queued_requests"] == 50

    listed = bg(server, "teams", "list", cwd=tmp_path)
    assert listed.code == 0 and name in listed.out, listed

    made = bg(server, "keys", "create", "--team", name, "--name", "cli-key", "--rpm", "1000", cwd=tmp_path)
    assert made.code == 0, made
    out_lines = [line for line in made.out.splitlines() if line.strip()]
    assert len(out_lines) == 1, made  # the key and nothing else on stdout
    secret = out_lines[0].strip()
    keys = [k for k in admin.http.get("/admin/keys").json()["data"] if k["prefix"] == secret[:12]]
    assert len(keys) == 1 and keys[0]["team"] == name and keys[0]["rpm"] == 1000, keys
    key_id = keys[0]["id"]

    with openai_client(server, api_key=secret) as c:
        contents = ["cli usage one", "cli usage two"]
        rows = [chat_line(f"c{i}", x) for i, x in enumerate(contents)]
        assert wait_terminal(c, submit(c, rows).id).status == "completed"

        keys_list = bg(server, "keys", "list", cwd=tmp_path)
        assert keys_list.code == 0, keys_list
        assert secret[:12] in keys_list.out and key_id in keys_list.out, keys_list
        assert secret not in keys_list.out + keys_list.err

        used = bg(server, "usage", "--team", name, cwd=tmp_path)
        assert used.code == 0, used
        (row,) = [line for line in used.out.splitlines() if name in line]
        cells = row.split()
        assert MODEL in cells and key_id in cells, used
        assert "2" in cells, used  # completed requests
        assert str(sum(count_tokens(x) for x in contents)) in cells, used
        assert str(sum(count_tokens("echo: " + x) for x in contents)) in cells, used

        # A team key is no admin key: the CLI says 403 and fails.
        denied = bg(server, "keys", "list", api_key=secret, cwd=tmp_path)
        assert denied.code != 0 and "403" in denied.err, denied

        revoked = bg(server, "keys", "revoke", key_id, cwd=tmp_path)
        assert revoked.code == 0 and key_id in revoked.out, revoked
        sdk_error(c.files.list, 401)

    unknown_key = bg(server, "keys", "revoke", unknown_like(key_id), cwd=tmp_path)
    assert unknown_key.code != 0 and "404" in unknown_key.err, unknown_key
    unknown_team = bg(server, "keys", "create", "--team", unique("nobody"), cwd=tmp_path)
    assert unknown_team.code != 0 and unknown_team.out.strip() == "", unknown_team
    assert "404" in unknown_team.err, unknown_team


# ---------------------------------------------------------------------------- SSRF
@pytest.fixture(scope="module")
def evil() -> Iterator[FakeUpstreamProcess]:
    """A second fake upstream standing in for a host no client may make the gateway call."""
    with FakeUpstreamProcess() as proc:
        yield proc


def test_no_client_input_changes_the_upstream_host(
    admin: Admin, upstream: FakeUpstreamProcess, evil: FakeUpstreamProcess
) -> None:
    wait_upstream_idle(upstream)
    upstream.reset()
    evil.reset()
    tenant = admin.tenant()
    c = tenant.client
    evil_host = f"127.0.0.1:{evil.port}"
    evil_headers = {
        "Host": evil_host,
        "X-Forwarded-Host": evil_host,
        "X-Forwarded-For": "127.0.0.1",
        "X-Forwarded-Proto": "http",
        "Forwarded": f"host={evil_host};proto=http",
        "X-Real-IP": "127.0.0.1",
        "X-Original-URL": evil.url,
    }

    # 1. A line's url naming another host fails validation.
    bad_urls = [
        f"{evil.url}/chat/completions",
        "http://evil.example/v1/chat/completions",
        "//evil.example/v1/chat/completions",
        f"{evil.root_url}/v1/chat/completions",
    ]
    url_rows = [{**chat_line(f"url{i}", "where to"), "url": u} for i, u in enumerate(bad_urls)]
    done = wait_terminal(c, submit(c, [chat_line("fine", "fine"), *url_rows]).id)
    assert done.status == "failed", done
    assert done.errors is not None
    by_line = {e.line: e.code for e in done.errors.data}
    assert by_line == {i + 2: "invalid_url" for i in range(len(bad_urls))}, done.errors

    # ... and so does a sealed xAI batch made from such a file: it is cancelled, saying why.
    evil_file = upload(c, [{**chat_line("x0", "sealed"), "url": f"{evil.url}/chat/completions"}])
    r = tenant.http.post("/xai/v1/batches", json={"name": "sealed-ssrf", "input_file_id": evil_file.id})
    assert r.status_code == 200, r.text
    sealed = wait_xai(tenant.http, r.json()["batch_id"], lambda x: x["cancel_time"] is not None)
    assert "invalid_url" in (sealed["cancel_by_xai_message"] or ""), sealed

    # 2. Model names that look like hosts are unknown models.
    for model in (f"http://{evil_host}/v1", f"{evil.url}/chat/completions", "http://127.0.0.1:1/v1"):
        done = wait_terminal(c, submit(c, [chat_line("m", "which model", model=model)]).id)
        assert done.status == "failed", done
        assert done.errors is not None and done.errors.data[0].code == "model_not_found", done.errors

    # 3. The batch's endpoint cannot be a URL; x-tfy-provider-name cannot name a host.
    f = upload(c, lines("e", 1))
    sdk_error(
        lambda: c.batches.create(input_file_id=f.id, endpoint=f"{evil.url}/chat/completions", completion_window="24h"),
        400,
        param="endpoint",
    )
    for provider in (evil_host, evil.url, "evil.example"):
        for prefix in ("/v1", "/api/llm"):
            assert_error(
                tenant.http.post(
                    prefix + "/files",
                    headers={"x-tfy-provider-name": provider},
                    files={"file": ("p.jsonl", b"{}\n"), "purpose": (None, "batch")},
                ),
                400,
                param="x-tfy-provider-name",
            )
            assert_error(
                tenant.http.post(
                    prefix + "/batches",
                    headers={"x-tfy-provider-name": provider},
                    json={"input_file_id": f.id, "endpoint": CHAT, "completion_window": "24h"},
                ),
                400,
                param="x-tfy-provider-name",
            )

    # 4. Body fields and request headers that name another host run, on the configured upstream only.
    tricks = {
        "base_url": evil.url,
        "api_base": evil.url,
        "azure_endpoint": evil.url,
        "url": evil.url,
        "host": evil_host,
        "extra_headers": {"Host": evil_host},
        "api_key": "client-chosen-key",
    }
    rows = [chat_line(f"body{i}", f"trick {i}", **{k: v}) for i, (k, v) in enumerate(tricks.items())]
    uploaded = c.files.create(
        file=("t.jsonl", b"".join(json.dumps(r).encode() + b"\n" for r in rows)),
        purpose="batch",
        extra_headers=evil_headers,
    )
    batch = c.batches.create(
        input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h", extra_headers=evil_headers
    )
    done = wait_terminal(c, batch.id)
    assert done.status == "completed", done
    out, _ = result_files(c, done, rows)
    assert len(out) == len(rows) and all(x["response"]["status_code"] == 200 for x in out.values())
    with httpx.Client(base_url=admin.server.url, timeout=15.0) as raw:  # the same through the TrueFoundry paths
        r = raw.post(
            "/api/llm/batches",
            json={"input_file_id": uploaded.id, "endpoint": CHAT, "completion_window": "24h"},
            headers={**evil_headers, **bearer(tenant.secret)},
        )
        assert r.status_code == 200, r.text
        assert wait_terminal(c, r.json()["id"]).status == "completed"

    # 5. xAI: a host as model is refused; host-like body fields run on the configured upstream.
    r = tenant.http.post("/xai/v1/batches", json={"name": "ssrf"}, headers=evil_headers)
    assert r.status_code == 200, r.text
    xai_id = r.json()["batch_id"]
    assert_error(
        tenant.http.post(
            f"/xai/v1/batches/{xai_id}/requests",
            headers=evil_headers,
            json={"batch_requests": [xai_chat("h", "host model", model=evil.url)]},
        ),
        400,
    )
    r = tenant.http.post(
        f"/xai/v1/batches/{xai_id}/requests",
        headers=evil_headers,
        json={"batch_requests": [xai_chat("xb", "x base", base_url=evil.url, api_base=evil.url)]},
    )
    assert r.status_code == 200, r.text
    wait_xai(tenant.http, xai_id, lambda x: x["state"]["num_success"] == 1)

    ran = 2 * len(rows) + 1
    assert evil.stats()["requests_total"] == 0, evil.stats()
    stats = upstream.stats()
    assert stats["requests_total"] == ran, stats
    assert stats["by_path"] == {"/v1/chat/completions": ran}, stats
    assert stats["models_seen"] == {MODEL: ran}, stats
    # The upstream sees the config's key, never the client's.
    assert stats["auth_headers"] == [f"Bearer {UPSTREAM_API_KEY}"], stats
