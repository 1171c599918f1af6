"""The OpenAPI 3.1 description of every route, served at `GET /openapi.json`.

The app is plain Starlette (no FastAPI models to derive it from), so the document is written out
here, next to the handlers' own limits it quotes. tests/fuzz checks that it names every mounted
route and nothing else, and fuzzes the server against it (schemathesis).
"""

from __future__ import annotations

import functools

from starlette.requests import Request
from starlette.routing import Route

from batchgate import __version__
from batchgate.api.openapi.build import ERROR_TEXT, OPENAI_PREFIXES, Schema, json_content, ref
from batchgate.api.openapi.dialect_paths import openai_paths, xai_paths
from batchgate.api.openapi.other_paths import admin_paths, console_paths, ops_paths
from batchgate.api.openapi.schemas import schemas
from batchgate.api.responses import JSON


def _prefixed(prefix: str, paths: dict[str, Schema]) -> dict[str, Schema]:
    return {prefix + path: item for path, item in paths.items()}


def document() -> Schema:
    paths: dict[str, Schema] = dict(ops_paths())
    for prefix, tag in zip(OPENAI_PREFIXES, ("openai", "truefoundry", "truefoundry"), strict=True):
        paths.update(_prefixed(prefix, openai_paths(tag)))
    paths.update(_prefixed("/xai/v1", xai_paths()))
    paths.update(_prefixed("/admin", admin_paths()))
    paths.update(_prefixed("/ui/api", console_paths()))
    for path, item in paths.items():  # operation ids, unique across the prefixes
        for method, op in item.items():
            op["operationId"] = f"{method}_{path.strip('/')}".replace("/", "_").replace("{", "").replace("}", "")
    error = {"description": "", **json_content(ref("Error"))}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "batchgate",
            "version": __version__,
            "description": "OpenAI Files + Batches API (also at TrueFoundry's paths), xAI batches, admin API, "
            "the web console's API.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "responses": {f"E{code}": {**error, "description": text} for code, text in ERROR_TEXT.items()},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "The admin key or a team's API key"}
            },
        },
        "security": [{"bearer": []}],
    }


async def openapi_json(_: Request) -> JSON:
    return JSON(_cached_document())


@functools.cache
def _cached_document() -> Schema:
    return document()


def routes() -> list[Route]:
    return [Route("/openapi.json", openapi_json, methods=["GET"])]
