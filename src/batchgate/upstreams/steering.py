"""Request-body fields that steer a proxy upstream (LiteLLM and the like) and are never forwarded.

A proxy upstream honours `api_base`, `api_key`, `extra_headers` and their kind in the body: a tenant
could send its request (with the gateway's upstream credentials) to a host the config does not name,
or swap the credentials. batchgate drops them; every other field is forwarded as it came.
"""

from __future__ import annotations

from typing import Any

STEERING_FIELDS = frozenset(
    {
        "api_base",
        "base_url",
        "api_key",
        "api_version",
        "api_type",
        "organization",
        "extra_headers",
        "headers",
        "extra_query",
        "custom_llm_provider",
        "litellm_params",
        "user_config",
        "azure_ad_token",
        "azure_endpoint",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "aws_region_name",
        "aws_profile_name",
        "vertex_project",
        "vertex_location",
        "vertex_credentials",
        "proxy",
        "proxies",
        "http_client",
    }
)


def without_steering(body: dict[str, Any]) -> dict[str, Any]:
    """The body less the steering fields (the same object when it has none: the common case costs a set test)."""
    if STEERING_FIELDS.isdisjoint(body):
        return body
    return {key: value for key, value in body.items() if key not in STEERING_FIELDS}
