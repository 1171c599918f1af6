"""schemathesis against the app's own OpenAPI document (`GET /openapi.json`), on a real server.

Every operation is fuzzed three ways: with the admin key, with a team's key, and with no valid
key. Whatever it is sent, the server must never answer 5xx, every error must be SPEC §2's envelope,
every status and body must be what the document says, and without a key every keyed route says 401.
Path ids are sometimes real ones (a file, a batch, an open xAI batch, a key) so handlers get past
their 404s.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_openapi
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Mount, Route

from batchgate.api.app import create_app
from batchgate.api.openapi import document
from batchgate.config import Settings
from tests.e2e.helpers import jsonl
from tests.fuzz.helpers import ADMIN_KEY, envelope_problem, examples, fuzz_config, is_long_form
from tests.harness import FakeUpstreamProcess, ServerProcess, chat_line, poll_until, running_server
from tests.postgres import PostgresCluster

# Each operation × auth mode: this many fuzzed cases (positive and negative), plus the explicit ones.
MAX_EXAMPLES = examples(6)
# No key needed (protect_metrics is off); the console's page asks for a key itself, in the browser.
OPEN_PATHS = {"/health", "/ready", "/openapi.json", "/ui/{path}"}  # /metrics needs the admin key here
# uvicorn's own answer to bytes that are not HTTP (schemathesis sends header names and values no parser
# accepts, e.g. `content-length: Pr`): refused before the app, so there is no envelope to check.
NOT_HTTP = "Invalid HTTP request received."


def _schema(coverage: bool) -> Any:
    """The document as schemathesis sees it; `coverage` adds its boundary, missing-field and no-key cases."""
    config = schemathesis.Config.from_dict(
        {
            "generation": {"max-examples": MAX_EXAMPLES},
            "phases": {"coverage": {"enabled": coverage}, "examples": {"enabled": True}, "fuzzing": {"enabled": True}},
            "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
            "request-timeout": 30,
        }
    )
    return schemathesis.openapi.from_dict(document(), config=config)


deep = _schema(coverage=True)  # with the admin key, which reaches every handler
quick = _schema(coverage=False)  # with a team key and with none: most of it ends at the same 401 or 403


@schemathesis.check
def error_envelope(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    """Every 4xx (and 5xx, /ready's 503 aside) is the SPEC error envelope."""
    if response.status_code < 400 or (case.path == "/ready" and response.status_code == 503):
        return None
    try:
        body = response.json()
    except ValueError as exc:
        raise AssertionError(f"HTTP {response.status_code} without a JSON body: {response.text[:200]!r}") from exc
    problem = envelope_problem(response.status_code, body)
    if problem:
        raise AssertionError(problem)
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    error_envelope,
]


# ---------------------------------------------------------------------------- the fuzzed world
@dataclass
class World:
    server: ServerProcess
    team_key: str
    ids: dict[str, list[str]]  # path parameter name → real ids worth trying

    def headers(self, who: str) -> dict[str, str]:
        if who == "admin":
            return {"Authorization": f"Bearer {ADMIN_KEY}"}
        if who == "team":
            return {"Authorization": f"Bearer {self.team_key}"}
        return {}


def _post(http: httpx.Client, path: str, key: str, **kwargs: Any) -> dict[str, Any]:
    response = http.post(path, headers={"Authorization": f"Bearer {key}"}, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def _seed(server: ServerProcess) -> World:
    """A team with two keys (one only to be revoked by the fuzzer), a file, a batch and an open xAI batch."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        _post(http, "/admin/teams", ADMIN_KEY, json={"name": "fuzzers"})
        team_key = _post(http, "/admin/keys", ADMIN_KEY, json={"team": "fuzzers"})["key"]
        spare = _post(http, "/admin/keys", ADMIN_KEY, json={"team": "fuzzers", "name": "revocable"})["id"]
        data = jsonl(*(chat_line(f"r{i}", f"hello {i}") for i in range(3)))
        file_ids = [
            _post(http, "/v1/files", key, files={"file": ("in.jsonl", data)}, data={"purpose": "batch"})["id"]
            for key in (team_key, team_key, ADMIN_KEY)
        ]
        batch = _post(
            http,
            "/v1/batches",
            team_key,
            json={"input_file_id": file_ids[0], "completion_window": "24h", "endpoint": "/v1/chat/completions"},
        )
        open_batch = _post(http, "/xai/v1/batches", team_key, json={"name": "open"})
    return World(
        server, team_key, {"file_id": file_ids, "batch_id": [batch["id"], open_batch["batch_id"]], "key_id": [spare]}
    )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, fake_upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """One server per database: PostgreSQL refuses some strings SQLite stores (NUL), so both are fuzzed."""
    config = fuzz_config(fake_upstream.url)
    if request.param == "postgresql":
        postgres: PostgresCluster = request.getfixturevalue("postgres")
        config["storage"] = {"database": postgres.new_database()}
    with running_server(
        config, workdir=tmp_path_factory.mktemp(request.param), env={"BATCHGATE_ADMIN_KEY": ADMIN_KEY}
    ) as server:
        world = _seed(server)
        REAL_IDS.update(world.ids)
        yield world
        print(f"\n----- {server!r} log tail -----\n{server.log_tail(40)}")  # shown only if a test failed (-rA)


# ---------------------------------------------------------------------------- the document itself
def test_document_is_valid_openapi_3_1() -> None:
    validate_openapi(document())


def test_served_document_is_the_built_one(world: World) -> None:
    response = httpx.get(world.server.url + "/openapi.json")
    assert response.status_code == 200
    assert response.json() == document()


def _mounted(routes: list[Any], prefix: str = "") -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for route in routes:
        if isinstance(route, Mount):
            found |= _mounted(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            # catch-all convertors (path, the console's anypath) are plain parameters in OpenAPI
            path = re.sub(r"\{(\w+):\w*path\}", r"{\1}", prefix + route.path)
            found |= {(method.lower(), path) for method in route.methods or () if method != "HEAD"}
    return found


def test_document_names_every_route_and_only_those() -> None:
    app = create_app(Settings(), run_engine=False)  # routes only: no lifespan runs
    documented = {(method, path) for path, item in document()["paths"].items() for method in item}
    assert documented == _mounted(app.routes)


# ---------------------------------------------------------------------------- fuzzing
REAL_IDS: dict[str, list[str]] = {}  # filled by the `world` fixture before any case is drawn


def before_generate_path_parameters(context: Any, strategy: st.SearchStrategy) -> st.SearchStrategy:
    """Half the cases get real ids in the path (read when drawn), so handlers run past their lookups."""

    def with_real_ids(params: dict[str, Any] | None) -> st.SearchStrategy:
        names = [name for name in params or {} if REAL_IDS.get(name)]
        if params is None or not names:
            return st.just(params)
        real = {name: st.sampled_from(REAL_IDS[name]) for name in names}
        return st.fixed_dictionaries({**{k: st.just(v) for k, v in params.items()}, **real})

    return st.one_of(strategy, strategy.flatmap(with_real_ids))


def _unrouted(response: schemathesis.Response) -> bool:
    """Turned away before any handler, so before auth: the router's 404 or 405 (an id the path cannot
    carry, another method), or the 400 for a NUL character in the URL."""
    if response.status_code not in (400, 404, 405):
        return False
    return response.json()["error"]["message"].startswith(("unknown route", "method ", "the URL must not contain"))


def _sent_as(world: World, response: schemathesis.Response) -> str:
    """Who the request really spoke as: the coverage phase also sends cases with their key stripped."""
    sent = response.request.headers.get("Authorization")
    return next((who for who in ("admin", "team") if world.headers(who).get("Authorization") == sent), "anonymous")


deep.hook(before_generate_path_parameters)
quick.hook(before_generate_path_parameters)


def _exercise(case: schemathesis.Case, who: str, world: World) -> None:
    response = case.call(base_url=world.server.url, headers=world.headers(who))
    if response.status_code == 400 and response.text == NOT_HTTP:
        return
    case.validate_response(response, checks=CHECKS, headers=world.headers(who))
    what = f"{case.method} {case.formatted_path} → {response.status_code} {response.text[:300]}"
    routed = not _unrouted(response)
    who = _sent_as(world, response)
    if who != "anonymous":  # the keys stay valid all along (a fuzzed revoke only ever hits the spare key)
        assert response.status_code != 401, f"{who}: {what}"
    elif case.path not in OPEN_PATHS and routed:
        assert response.status_code == 401, f"{who}: {what}"
    if who == "team" and case.path.startswith("/admin/") and routed:
        assert response.status_code == 403, f"{who}: {what}"


@deep.parametrize()
def test_fuzz_with_admin_key(case: schemathesis.Case, world: World) -> None:
    _exercise(case, "admin", world)


@quick.parametrize()
@pytest.mark.parametrize("world", ["sqlite", "postgresql"] if is_long_form() else ["sqlite"], indirect=True)
@pytest.mark.parametrize("who", ["team", "anonymous"])
def test_fuzz_with_team_key_and_without(case: schemathesis.Case, who: str, world: World) -> None:
    _exercise(case, who, world)


# ---------------------------------------------------------------------------- what the fuzzing found elsewhere
def test_a_team_with_a_budget_keeps_creating_batches_on_postgresql(
    postgres: PostgresCluster, upstream: FakeUpstreamProcess, tmp_path: Any
) -> None:
    config = {**fuzz_config(upstream.url), "storage": {"database": postgres.new_database()}}
    with (
        running_server(config, workdir=tmp_path, env={"BATCHGATE_ADMIN_KEY": ADMIN_KEY}) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        _post(http, "/admin/teams", ADMIN_KEY, json={"name": "budgeted", "budget_usd": 100})
        key = _post(http, "/admin/keys", ADMIN_KEY, json={"team": "budgeted"})["key"]
        file_id = _post(
            http, "/v1/files", key, files={"file": ("in.jsonl", jsonl(chat_line("a", "hi")))}, data={"purpose": "batch"}
        )["id"]
        create = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        first = _post(http, "/v1/batches", key, json=create)
        poll_until(
            lambda: (
                http.get(f"/v1/batches/{first['id']}", headers={"Authorization": f"Bearer {key}"}).json()["status"]
                == "completed"
            ),
            20,
            message="the first batch never completed",
        )
        second = http.post("/v1/batches", json=create, headers={"Authorization": f"Bearer {key}"})
        assert second.status_code == 200, second.text  # 500 today: the team's spend cannot be priced
